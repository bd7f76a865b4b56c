"""Evaluation: linear probe, kNN, fine-tuning, metrics with confidence intervals, plots."""

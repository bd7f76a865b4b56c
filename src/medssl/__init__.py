"""medssl: label-efficient medical imaging (self-supervised and image-text contrastive learning, report generation)."""

__version__ = "0.1.0"

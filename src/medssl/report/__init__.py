"""Report generation: decoders' generation, retrieval-based reports, the finding labeller, metrics."""

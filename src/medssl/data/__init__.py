"""Data layer: image readers, records and manifests, patient-level splits, augmentations, synthetic data."""

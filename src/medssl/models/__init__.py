"""Networks: image backbones (create_backbone) and the heads put on them."""

from medssl.models.backbones import BACKBONES, create_backbone
from medssl.models.heads import LinearClassifier, PredictionHead, ProjectionHead

__all__ = ["BACKBONES", "LinearClassifier", "PredictionHead", "ProjectionHead", "create_backbone"]

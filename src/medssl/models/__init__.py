"""Networks: image backbones, the heads put on them, the classifier, and the typed spec they are built from."""

from medssl.models.backbones import BACKBONES, create_backbone
from medssl.models.classifier import Classifier
from medssl.models.factory import ModelSpec, build_backbone, build_classifier
from medssl.models.heads import LinearHead, PredictionHead, ProjectionHead
from medssl.models.trainable import Trainable

__all__ = ["BACKBONES", "Classifier", "LinearHead", "ModelSpec", "PredictionHead", "ProjectionHead", "Trainable",
           "build_backbone", "build_classifier", "create_backbone"]

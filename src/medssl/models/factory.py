"""The typed model spec and the one place backbones and classifiers are built from it.

A `ModelSpec` says everything needed to rebuild a network: backbone, stem, width, patch size, depth, input
channels, image size, and the pretraining method with its own typed options. It is stored (as plain data) in every
checkpoint and bundle, so loading never needs the run's config. The method module itself is built by
`medssl.methods.build_model(spec)`: methods sit beside models and import them, so this file stays importable
without any method (a service or notebook loads a backbone or a classifier from here alone).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from torch import nn

from medssl.data.tasks import Task
from medssl.models.backbones import create_backbone
from medssl.models.classifier import Classifier
from medssl.schema import from_mapping, plain


@dataclass(frozen=True)
class ModelSpec:
    """Backbone architecture and input, plus the method (None: a bare backbone or a classifier) and its options."""

    backbone: str = "resnet18"
    stem: str | None = None  # ResNet stem: cifar, small, imagenet; None = chosen from image_size
    patch_size: int | None = None  # ViT only; None = chosen from image_size
    depth: int | None = None  # ViT only; None = the named model's depth
    in_channels: int = 1  # grayscale is repeated to 3 channels for 3
    image_size: int = 64
    method: str | None = None
    options: Any = None  # the method's typed options (a dataclass declared beside the method), or None
    width: int | None = None  # ResNet only: the first stage's channels; None = 64 (the papers' width)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (for checkpoints and YAML)."""
        return plain(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], options_type: type | None = None) -> "ModelSpec":
        """A spec from to_dict's output; options parsed into options_type, or dropped when it is None (a loader
        that needs only the backbone never imports the method that declared them)."""
        fields = {k: v for k, v in data.items() if k != "options"}
        spec = from_mapping(cls, fields, "spec.")
        options = data.get("options")
        if options_type is not None:
            return dataclasses.replace(spec, options=from_mapping(options_type, options or {}, "model.options."))
        return spec

    def bare(self) -> "ModelSpec":
        """The same architecture without a method (what a classifier or the scratch baseline is built on)."""
        return dataclasses.replace(self, method=None, options=None)


def build_backbone(spec: ModelSpec) -> nn.Module:
    """A freshly initialised backbone (from the global torch RNG): (B, C, H, W) -> (B, feature_dim)."""
    options = {k: getattr(spec, k) for k in ("stem", "patch_size", "depth", "width") if getattr(spec, k) is not None}
    return create_backbone(spec.backbone, spec.in_channels, spec.image_size, **options)[0]


def build_classifier(spec: ModelSpec, task: Task, backbone: nn.Module | None = None) -> Classifier:
    """Backbone (given, or fresh from the spec) + the linear head for the task."""
    return Classifier(backbone if backbone is not None else build_backbone(spec), task)

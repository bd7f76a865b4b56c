"""Backbone + linear head: the classifier that fine-tuning trains, `medssl predict` runs and the service will serve."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from medssl.data.tasks import Task
from medssl.models.heads import LinearHead
from medssl.models.trainable import Trainable


class Classifier(Trainable):
    """images (B, C, H, W) -> logits (B, K), K = task.n_outputs (binary 1, else one per class), always 2-D.

    forward(batch with "image" and "target" in the task's target shape) -> {"loss", "logits"}: binary and
    multi-label use binary cross-entropy per logit, multi-class cross-entropy. backbone_lr_scale: the backbone's
    learning rate relative to the head's; freeze_bn keeps the backbone's BatchNorm statistics fixed in training.
    """

    def __init__(self, backbone: nn.Module, task: Task, backbone_lr_scale: float = 1.0, freeze_bn: bool = False):
        super().__init__()
        self.backbone = backbone
        self.head = LinearHead(int(backbone.feature_dim), task.n_outputs)
        self.task = task
        self.backbone_lr_scale, self.freeze_bn = backbone_lr_scale, freeze_bn

    def lr_scales(self) -> dict[str, float]:
        """The backbone learns at backbone_lr_scale times the head's rate."""
        return {"backbone": self.backbone_lr_scale}

    def train(self, mode: bool = True) -> "Classifier":
        """nn.Module.train; with freeze_bn the backbone's BatchNorm layers stay in eval mode (running statistics
        used and never updated; their scale and shift still learn)."""
        super().train(mode)
        if self.freeze_bn and mode:
            for m in self.backbone.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def logits(self, images: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, K)."""
        return self.head(self.backbone(images))

    def loss(self, logits: Tensor, target: Tensor) -> Tensor:
        """The task's loss on (B, K) logits and targets in the task's shape ((B,) or (B, C))."""
        if self.task.kind == "multiclass":
            return F.cross_entropy(logits, target.long())
        target = target.to(logits.dtype)
        return F.binary_cross_entropy_with_logits(logits, target.reshape(logits.shape))  # binary: (B,) -> (B, 1)

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Loss and logits of a labelled batch."""
        logits = self.logits(batch["image"])
        return {"loss": self.loss(logits, batch["target"]), "logits": logits}

"""SimCLR (Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual Representations")."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from medssl.data.datasets import TWO_VIEWS
from medssl.losses import nt_xent
from medssl.models.factory import ModelSpec, build_backbone
from medssl.models.heads import ProjectionHead
from medssl.models.trainable import Trainable
from medssl.schema import check_positive


@dataclass
class SimCLROptions:
    """SimCLR's options (`model.options` in a config)."""

    proj_dim: int = 128
    hidden_dim: int | None = None  # None = the backbone's feature_dim
    temperature: float = 0.1  # SimCLR's value for batches of a few hundred

    def validate(self) -> None:
        """Raise MedsslError naming a bad value."""
        check_positive(self, "model.options", ("proj_dim", "hidden_dim", "temperature"))


class SimCLR(Trainable):
    """Two views -> backbone -> projection head -> NT-Xent. Batch keys: view1, view2 (B, C, H, W)."""

    Options = SimCLROptions
    batch = TWO_VIEWS

    @classmethod
    def build(cls, spec: ModelSpec) -> "SimCLR":
        """Fresh backbone + this method's heads, from the spec and its SimCLROptions."""
        o = spec.options or cls.Options()
        return cls(build_backbone(spec), o.proj_dim, o.hidden_dim, o.temperature)

    def __init__(self, backbone: nn.Module, proj_dim: int = 128, hidden_dim: int | None = None,
                 temperature: float = 0.1):
        super().__init__()
        self.backbone = backbone                                # kept for evaluation; the head is dropped
        dim = int(backbone.feature_dim)
        self.head = ProjectionHead(dim, hidden_dim or dim, proj_dim)
        self.temperature = temperature

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Loss and diagnostics: z_std (std of normalised embeddings, ~0 means collapse), pos_cos."""
        z1 = self.head(self.backbone(batch["view1"]))          # (B, proj_dim)
        z2 = self.head(self.backbone(batch["view2"]))
        loss = nt_xent(z1, z2, self.temperature)
        n1 = F.normalize(z1.detach(), dim=1)
        return {
            "loss": loss,
            "z_std": n1.std(dim=0).mean(),                      # about 1 / sqrt(proj_dim) when healthy
            "pos_cos": (n1 * F.normalize(z2.detach(), dim=1)).sum(dim=1).mean(),
        }

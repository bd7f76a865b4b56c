"""SimCLR (Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual Representations")."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from medssl.losses import nt_xent
from medssl.models.heads import ProjectionHead


class SimCLR(nn.Module):
    """Two views -> backbone -> projection head -> NT-Xent. Batch keys: view1, view2 (B, C, H, W)."""

    def __init__(self, backbone: nn.Module, feature_dim: int, proj_dim: int = 128, hidden_dim: int | None = None,
                 temperature: float = 0.1):
        super().__init__()
        self.backbone = backbone                                # kept for evaluation; the head is dropped
        self.head = ProjectionHead(feature_dim, hidden_dim or feature_dim, proj_dim)
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

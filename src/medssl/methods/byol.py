"""BYOL (Grill et al. 2020, "Bootstrap Your Own Latent: A New Approach to Self-Supervised Learning").

Also home of the two momentum helpers MoCo shares: BYOL introduced the cosine schedule of the target decay
that MoCo v3 adopted.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medssl.data.datasets import TWO_VIEWS
from medssl.losses import byol_loss
from medssl.models.factory import ModelSpec, build_backbone
from medssl.models.heads import PredictionHead, ProjectionHead
from medssl.models.trainable import Trainable
from medssl.schema import bad, check_positive


def cosine_momentum(step: int, total_steps: int, base: float) -> float:
    """Momentum rising from base at step 0 to 1 at total_steps along a half cosine (BYOL, section 3.2)."""
    progress = min(max(step / max(total_steps, 1), 0.0), 1.0)
    return 1 - (1 - base) * (math.cos(math.pi * progress) + 1) / 2


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """target <- momentum * target + (1 - momentum) * online, parameter by parameter (buffers are left alone)."""
    for t, o in zip(target.parameters(), online.parameters(), strict=True):
        t.mul_(momentum).add_(o.detach() * (1 - momentum))   # not add_(alpha=): an FMA rounds differently


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy that takes no gradient: a momentum (target / key) network."""
    twin = copy.deepcopy(module)
    twin.requires_grad_(False)
    return twin


@dataclass
class BYOLOptions:
    """BYOL's options (`model.options` in a config)."""

    proj_dim: int = 256
    hidden_dim: int = 4096
    momentum: float = 0.996  # start of the cosine schedule to 1

    def validate(self) -> None:
        """Raise MedsslError naming a bad value."""
        check_positive(self, "model.options", ("proj_dim", "hidden_dim"))
        if not 0 <= self.momentum < 1:
            raise bad("model.options.momentum", self.momentum, "must be in [0, 1)")


class BYOL(Trainable):
    """Online backbone + projector + predictor regress an EMA target's projection of the other view.

    No negatives; the loss is symmetrised (summed over both view orders, as in the paper: range 0 to 8).
    Batch keys: view1, view2 (B, C, H, W). Call on_step after every optimiser step (the EMA of the target).
    """

    Options = BYOLOptions
    batch = TWO_VIEWS

    @classmethod
    def build(cls, spec: ModelSpec) -> "BYOL":
        """Fresh backbone + projector, predictor and target, from the spec and its BYOLOptions."""
        o = spec.options or cls.Options()
        return cls(build_backbone(spec), o.proj_dim, o.hidden_dim, o.momentum)

    def __init__(self, backbone: nn.Module, proj_dim: int = 256, hidden_dim: int = 4096, momentum: float = 0.996):
        super().__init__()
        self.backbone = backbone                                # kept for evaluation; the heads are dropped
        self.projector = ProjectionHead(int(backbone.feature_dim), hidden_dim, proj_dim)
        self.predictor = PredictionHead(proj_dim, hidden_dim, proj_dim)
        self.target_backbone = frozen_copy(backbone)
        self.target_projector = frozen_copy(self.projector)
        self.base_momentum = momentum
        self.momentum = momentum

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Loss and diagnostics: z_std (std of the normalised projections, ~0 means collapse), momentum."""
        v1, v2 = batch["view1"], batch["view2"]
        z1, z2 = self.projector(self.backbone(v1)), self.projector(self.backbone(v2))   # (B, proj_dim)
        p1, p2 = self.predictor(z1), self.predictor(z2)
        with torch.no_grad():
            t1 = self.target_projector(self.target_backbone(v1))
            t2 = self.target_projector(self.target_backbone(v2))
        loss = byol_loss(p1, t2) + byol_loss(p2, t1)
        return {
            "loss": loss,
            "z_std": F.normalize(z1.detach(), dim=1).std(dim=0).mean(),
            "momentum": torch.tensor(self.momentum, device=loss.device),
        }

    def on_step(self, step: int, total_steps: int) -> None:
        """After an optimiser step: set the decay for this step, then move the target towards the online network."""
        self.momentum = cosine_momentum(step, total_steps, self.base_momentum)
        self.update_target()

    def update_target(self) -> None:
        """EMA of the online backbone and projector into the target ones."""
        ema_update(self.target_backbone, self.backbone, self.momentum)
        ema_update(self.target_projector, self.projector, self.momentum)

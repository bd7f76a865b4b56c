"""MoCo v2 (He et al. 2020, "Momentum Contrast for Unsupervised Visual Representation Learning"; Chen et al. 2020,
"Improved Baselines with Momentum Contrastive Learning").

A query encoder learns by InfoNCE against keys from a momentum (EMA) copy of itself and a queue of earlier keys.
Choices here:
- the momentum follows BYOL's / MoCo v3's cosine schedule from `momentum` to 1 over training (on_step);
- no shuffle-BN, a known risk: a query and its positive key are normalised with statistics of the same images,
  the queued negatives with other batches', a leak a BatchNorm backbone could exploit (the MoCo paper's
  "cheating"). Shuffling on one device changes no statistic (it would take running both encoders on shuffled
  sub-batches) and SyncBatchNorm does not remove the leak (MoCo v3 drops the queue instead); a ViT backbone has
  no BatchNorm. Judge a run by its linear probe, not by the pretext loss;
- the queue and its pointer are buffers, so checkpoints resume with the same negatives; keys are gathered from
  all ranks before they are enqueued, so every rank holds the same queue;
- the queue is written modulo its size, so it need not be a multiple of the batch size (the last batch of an
  epoch may be smaller); it must only hold one global batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medssl.data.datasets import TWO_VIEWS
from medssl.errors import MedsslError
from medssl.losses import concat_all_gather, info_nce
from medssl.methods.byol import cosine_momentum, ema_update, frozen_copy
from medssl.models.factory import ModelSpec, build_backbone
from medssl.models.heads import ProjectionHead
from medssl.models.trainable import Trainable
from medssl.schema import bad, check_positive


@dataclass
class MoCoOptions:
    """MoCo v2's options (`model.options` in a config)."""

    proj_dim: int = 128
    hidden_dim: int | None = None  # None = 2048, as in MoCo v2
    queue_size: int = 4096
    temperature: float = 0.2
    momentum: float = 0.99  # start of the cosine schedule to 1
    symmetric: bool = False

    def validate(self) -> None:
        """Raise MedsslError naming a bad value."""
        check_positive(self, "model.options", ("proj_dim", "hidden_dim", "queue_size", "temperature"))
        if not 0 <= self.momentum < 1:
            raise bad("model.options.momentum", self.momentum, "must be in [0, 1)")


class MoCo(Trainable):
    """MoCo v2: query encoder, momentum key encoder, queue of negatives. Batch keys: view1, view2 (B, C, H, W).

    symmetric=True also uses view2 as queries against view1's keys (MoCo v3) and enqueues both keys.
    Call on_step after every optimiser step (the EMA of the key encoder).
    """

    Options = MoCoOptions
    batch = TWO_VIEWS

    @classmethod
    def build(cls, spec: ModelSpec) -> "MoCo":
        """Fresh backbone + heads and queue, from the spec and its MoCoOptions."""
        o = spec.options or cls.Options()
        return cls(build_backbone(spec), o.proj_dim, o.hidden_dim, o.queue_size, o.temperature, o.momentum,
                   o.symmetric)

    def __init__(self, backbone: nn.Module, proj_dim: int = 128, hidden_dim: int | None = None,
                 queue_size: int = 4096, temperature: float = 0.2, momentum: float = 0.99, symmetric: bool = False):
        super().__init__()
        self.backbone = backbone                                # kept for evaluation; the heads are dropped
        dim = int(backbone.feature_dim)
        self.head = ProjectionHead(dim, hidden_dim or 2048, proj_dim, batch_norm=False)  # as in MoCo v2
        self.key_backbone = frozen_copy(backbone)
        self.key_head = frozen_copy(self.head)
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, proj_dim), dim=1))   # (K, D)
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))
        self.temperature, self.symmetric = temperature, symmetric
        self.base_momentum = momentum
        self.momentum = momentum

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Loss and diagnostics: z_std (std of the normalised queries, ~0 means collapse), momentum.

        In training mode the keys go into the queue after the loss is computed.
        """
        v1, v2 = batch["view1"], batch["view2"]
        q1 = F.normalize(self.head(self.backbone(v1)), dim=1)   # (B, D)
        k2 = self.keys(v2)
        queue = self.queue.clone()                              # the enqueue below writes in place
        loss, keys = info_nce(q1, k2, queue, self.temperature), [k2]
        if self.symmetric:
            q2 = F.normalize(self.head(self.backbone(v2)), dim=1)
            k1 = self.keys(v1)
            loss, keys = (loss + info_nce(q2, k1, queue, self.temperature)) / 2, [k1, k2]
        if self.training:
            self.enqueue(torch.cat(keys))
        return {
            "loss": loss,
            "z_std": q1.detach().std(dim=0).mean(),
            "momentum": torch.tensor(self.momentum, device=loss.device),
        }

    @torch.no_grad()
    def keys(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> normalised key embeddings (B, D) from the momentum encoder."""
        return F.normalize(self.key_head(self.key_backbone(x)), dim=1)

    @torch.no_grad()
    def enqueue(self, keys: Tensor) -> None:
        """Write the keys of all ranks (B * W, D) over the oldest entries, wrapping around the end of the queue."""
        keys = concat_all_gather(keys)
        size = self.queue.shape[0]
        if keys.shape[0] > size:
            raise MedsslError(f"MoCo queue_size {size} is smaller than the global batch of {keys.shape[0]} keys")
        ptr = int(self.queue_ptr)
        idx = (ptr + torch.arange(keys.shape[0], device=keys.device)) % size
        self.queue[idx] = keys.to(self.queue.dtype)
        self.queue_ptr[0] = (ptr + keys.shape[0]) % size

    def on_step(self, step: int, total_steps: int) -> None:
        """After an optimiser step: set the momentum for this step, then move the key encoder towards the query one."""
        self.momentum = cosine_momentum(step, total_steps, self.base_momentum)
        self.update_key_encoder()

    def update_key_encoder(self) -> None:
        """EMA of the query backbone and head into the key ones."""
        ema_update(self.key_backbone, self.backbone, self.momentum)
        ema_update(self.key_head, self.head, self.momentum)

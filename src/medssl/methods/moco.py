"""MoCo v2 (He et al. 2020, "Momentum Contrast for Unsupervised Visual Representation Learning"; Chen et al. 2020,
"Improved Baselines with Momentum Contrastive Learning").

A query encoder learns by InfoNCE against keys from a momentum (EMA) copy of itself and a queue of earlier keys.
Choices here:
- the momentum follows BYOL's / MoCo v3's cosine schedule from `momentum` to 1 over training (on_step);
- shuffle-BN (MoCo, section 3.3; `shuffle_bn`, on by default): under DDP with more than one process, in training
  mode, the key encoder runs on a random share of the global batch (a permutation drawn on rank 0), so a query
  and its positive key are normalised with statistics of different images. Without it they share their batch's
  statistics and the queued negatives do not, a leak a BatchNorm backbone could exploit (the paper's "cheating").
  It does nothing on one process (a batch's statistics do not depend on its order), with train.sync_bn (the key
  encoder's statistics are then global; MoCo v3 drops the queue instead), or for a ViT (no BatchNorm): there the
  leak remains. Judge a run by its linear probe, not by the pretext loss;
- the queue and its pointer are buffers, so checkpoints resume with the same negatives; keys are gathered from
  all ranks before they are enqueued, so every rank holds the same queue;
- the queue is written modulo its size, so it need not be a multiple of the batch size (the last batch of an
  epoch may be smaller); it must only hold one global batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
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


@torch.no_grad()
def batch_shuffle(x: Tensor) -> tuple[Tensor, Tensor]:
    """(B, ...) on each of W ranks -> this rank's B rows of the shuffled global batch, and the permutation (W * B,).

    perm is drawn on rank 0 and broadcast, so every rank holds the same one; row i of the shuffled global batch
    is sample perm[i]. facebookresearch/moco's _batch_shuffle_ddp; every rank must pass the same B.
    """
    gathered = concat_all_gather(x)                             # (W * B, ...), rank-ordered
    rank, b = dist.get_rank(), x.shape[0]
    if rank == 0:
        perm = torch.randperm(gathered.shape[0], device=x.device)
    else:
        perm = torch.empty(gathered.shape[0], dtype=torch.long, device=x.device)
    dist.broadcast(perm, src=0)
    return gathered[perm[rank * b:(rank + 1) * b]], perm


@torch.no_grad()
def batch_unshuffle(y: Tensor, perm: Tensor) -> Tensor:
    """Inverse of batch_shuffle: (B, ...) computed on the shuffled share -> this rank's own B samples, in order."""
    gathered = concat_all_gather(y)                             # (W * B, ...): row i belongs to sample perm[i]
    rank, b = dist.get_rank(), y.shape[0]
    return gathered[torch.argsort(perm)[rank * b:(rank + 1) * b]]


@dataclass
class MoCoOptions:
    """MoCo v2's options (`model.options` in a config)."""

    proj_dim: int = 128
    hidden_dim: int | None = None  # None = 2048, as in MoCo v2
    queue_size: int = 4096
    temperature: float = 0.2
    momentum: float = 0.99  # start of the cosine schedule to 1
    symmetric: bool = False
    shuffle_bn: bool = True  # under DDP: the key encoder sees a random share of the global batch

    def validate(self) -> None:
        """Raise MedsslError naming a bad value."""
        check_positive(self, "model.options", ("proj_dim", "hidden_dim", "queue_size", "temperature"))
        if not 0 <= self.momentum < 1:
            raise bad("model.options.momentum", self.momentum, "must be in [0, 1)")


class MoCo(Trainable):
    """MoCo v2: query encoder, momentum key encoder, queue of negatives. Batch keys: view1, view2 (B, C, H, W).

    symmetric=True also uses view2 as queries against view1's keys (MoCo v3) and enqueues both keys.
    shuffle_bn=True computes the keys on a shuffled share of the global batch under DDP (shuffle-BN, see above).
    Call on_step after every optimiser step (the EMA of the key encoder).
    """

    Options = MoCoOptions
    batch = TWO_VIEWS

    @classmethod
    def build(cls, spec: ModelSpec) -> "MoCo":
        """Fresh backbone + heads and queue, from the spec and its MoCoOptions."""
        o = spec.options or cls.Options()
        return cls(build_backbone(spec), o.proj_dim, o.hidden_dim, o.queue_size, o.temperature, o.momentum,
                   o.symmetric, o.shuffle_bn)

    def __init__(self, backbone: nn.Module, proj_dim: int = 128, hidden_dim: int | None = None,
                 queue_size: int = 4096, temperature: float = 0.2, momentum: float = 0.99, symmetric: bool = False,
                 shuffle_bn: bool = True):
        super().__init__()
        self.backbone = backbone                                # kept for evaluation; the heads are dropped
        dim = int(backbone.feature_dim)
        self.head = ProjectionHead(dim, hidden_dim or 2048, proj_dim, batch_norm=False)  # as in MoCo v2
        self.key_backbone = frozen_copy(backbone)
        self.key_head = frozen_copy(self.head)
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, proj_dim), dim=1))   # (K, D)
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))
        self.temperature, self.symmetric, self.shuffle_bn = temperature, symmetric, shuffle_bn
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
        """(B, C, H, W) -> normalised key embeddings (B, D) from the momentum encoder, in the rows of x.

        With shuffle_bn, in training mode under W > 1 processes, the encoder runs on this rank's share of the
        shuffled global batch (shuffle-BN). On one process that is skipped: the statistics of one batch do not
        change with its order. In eval mode too: BatchNorm then uses its running statistics (and rank 0 alone may
        be evaluating).
        """
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        if not (self.shuffle_bn and self.training and world > 1):
            return F.normalize(self.key_head(self.key_backbone(x)), dim=1)
        shuffled, perm = batch_shuffle(x)
        k = F.normalize(self.key_head(self.key_backbone(shuffled)), dim=1)
        return batch_unshuffle(k, perm)

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

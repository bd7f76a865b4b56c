"""Self-supervised and image-text losses: pure functions on embeddings, written with F.cross_entropy.

Cross-rank negatives. Under torch.distributed (world size W > 1) nt_xent and clip_loss gather every rank's
embeddings; the local rows are the queries and the targets point into the gathered rows at this rank's offset.
Each rank's loss is the mean over its own queries. The gather keeps gradients (GatherLayer: the backward sums the
gradient every rank computed for a slice and hands each rank its own slice), so with DDP averaging the
parameter gradients over ranks, training equals one process on the joined batch (tests/test_losses_ddp.py).
All ranks must pass the same batch size (drop the last incomplete batch or pad it).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor


def _world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside torch.distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class GatherLayer(torch.autograd.Function):
    """all_gather that keeps gradients: forward gathers (B, ...) from W ranks, backward sums over ranks.

    Every rank's loss depends on every rank's rows, so the gradient of a row is the sum of what all ranks computed
    for it: all_reduce(SUM), then this rank's slice. (torch.distributed.nn.functional.all_gather does the same
    in torch 2.13, but is deprecated there.)
    """

    @staticmethod
    def forward(ctx, x: Tensor) -> tuple[Tensor, ...]:
        x = x.contiguous()
        out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(out, x)
        return tuple(out)

    @staticmethod
    def backward(ctx, *grads: Tensor) -> Tensor:
        grad = torch.stack(grads)                               # (W, B, ...)
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[dist.get_rank()]


def gather_with_grad(x: Tensor) -> Tensor:
    """(B, ...) -> (W * B, ...), rank-ordered, differentiable; x itself outside torch.distributed."""
    if _world()[1] == 1:
        return x
    return torch.cat(GatherLayer.apply(x))


@torch.no_grad()
def concat_all_gather(x: Tensor) -> Tensor:
    """(B, ...) -> (W * B, ...), rank-ordered, without gradient (MoCo's keys for the queue); x when not distributed."""
    if _world()[1] == 1:
        return x.detach()
    out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out)


def _gather_keys(x: Tensor, gather: bool) -> tuple[Tensor, int]:
    """Keys and the offset of the local rows among them: gathered from all ranks when asked and distributed."""
    rank, world = _world()
    if not gather or world == 1:
        return x, 0
    return gather_with_grad(x), rank * x.shape[0]


def nt_xent(z1: Tensor, z2: Tensor, temperature: float = 0.1, gather: bool = True) -> Tensor:
    """NT-Xent loss (SimCLR, Chen et al. 2020). z1, z2: (B, D), row i of each is a positive pair.

    Each of the 2B local embeddings is a query; the candidates are the 2WB embeddings of all ranks but itself.
    All embeddings equal gives log(2WB - 1).
    """
    b = z1.shape[0]
    z1, z2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    k1, offset = _gather_keys(z1, gather)                       # (WB, D)
    k2, _ = _gather_keys(z2, gather)
    n = k1.shape[0]
    logits = torch.cat([z1, z2]) @ torch.cat([k1, k2]).T / temperature   # (2B, 2WB)
    idx = torch.arange(b, device=z1.device) + offset            # local rows among the gathered ones
    self_idx = torch.cat([idx, idx + n])
    is_self = F.one_hot(self_idx, 2 * n).bool()                 # a sample is not its own negative
    logits = logits.masked_fill(is_self, float("-inf"))
    targets = torch.cat([idx + n, idx])                         # z1_i <-> z2_i
    return F.cross_entropy(logits, targets)


def info_nce(q: Tensor, k: Tensor, queue: Tensor, temperature: float = 0.2) -> Tensor:
    """InfoNCE with a queue of negatives (MoCo, He et al. 2020): q, k (B, D) positives, queue (K, D) negatives.

    Inputs are L2-normalised here; k and queue should carry no gradient (MoCo's keys).
    With q = k and a queue orthogonal to q: log(1 + K * exp(-1 / temperature)).
    """
    q, k, queue = F.normalize(q, dim=1), F.normalize(k, dim=1), F.normalize(queue, dim=1)
    pos = (q * k).sum(dim=1, keepdim=True)                      # (B, 1)
    neg = q @ queue.T                                           # (B, K)
    logits = torch.cat([pos, neg], dim=1) / temperature
    targets = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)   # the positive is column 0
    return F.cross_entropy(logits, targets)


def byol_loss(p: Tensor, z: Tensor) -> Tensor:
    """BYOL regression loss (Grill et al. 2020): mean over the batch of 2 - 2 cos(p, z); 0 aligned, 4 opposite."""
    return (2 - 2 * F.cosine_similarity(p, z, dim=1)).mean()


def masked_mse(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """MAE loss (He et al. 2022): pred, target (B, N, P) patches, mask (B, N) 1 = masked; mean over masked patches.

    Visible patches get exactly zero weight, hence zero gradient.
    """
    per_patch = ((pred - target) ** 2).mean(dim=-1)             # (B, N)
    return (per_patch * mask).sum() / mask.sum()


def clip_loss(img: Tensor, txt: Tensor, temperature: float | Tensor = 0.07, gather: bool = True) -> Tensor:
    """Symmetric InfoNCE over image-text pairs (ConVIRT, Zhang et al. 2020; CLIP, Radford et al. 2021).

    img, txt: (B, D), row i of each is a pair; the candidates of a query are the other modality's rows of all ranks.
    temperature may be a tensor (a learned one). All embeddings equal gives log(WB).
    """
    img, txt = F.normalize(img, dim=1), F.normalize(txt, dim=1)
    img_keys, offset = _gather_keys(img, gather)                # (WB, D)
    txt_keys, _ = _gather_keys(txt, gather)
    targets = torch.arange(img.shape[0], device=img.device) + offset
    loss_i = F.cross_entropy(img @ txt_keys.T / temperature, targets)   # image -> text
    loss_t = F.cross_entropy(txt @ img_keys.T / temperature, targets)   # text -> image
    return (loss_i + loss_t) / 2

"""Two CPU processes (gloo) on two halves of a batch, gradients averaged as DDP does, equal one process on the
joined batch: the cross-rank gather of nt_xent and clip_loss sends every rank its share of the gradient."""

import torch
import torch.distributed as dist
from torch import nn

from medssl.losses import clip_loss, concat_all_gather, nt_xent

from _ddp import WORLD, process_group, spawn

BATCH = 8


def _ddp_loss_and_grads(loss_fn, enc: nn.Module, a: torch.Tensor, b: torch.Tensor, rank: int):
    """This rank's half through loss_fn; loss and gradients averaged over ranks (what DDP does)."""
    rows = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
    loss = loss_fn(enc(a[rows]), enc(b[rows]))
    grads = torch.autograd.grad(loss, list(enc.parameters()))
    for t in (loss := loss.detach().clone(), *grads):
        dist.all_reduce(t)
        t /= WORLD
    return loss, grads


def _worker(rank: int, store: str) -> None:
    with process_group(rank, store):
        torch.manual_seed(0)                                    # same encoder and data on both ranks
        enc = nn.Linear(8, 4)
        a, b = torch.randn(BATCH, 8), torch.randn(BATCH, 8)
        losses = {
            "nt_xent": lambda u, v, gather=True: nt_xent(u, v, 0.5, gather=gather),
            "clip_loss": lambda u, v, gather=True: clip_loss(u, v, 0.5, gather=gather),
        }
        for name, fn in losses.items():
            ref = fn(enc(a), enc(b), gather=False)              # one process, joined batch
            ref_grads = torch.autograd.grad(ref, list(enc.parameters()))
            loss, grads = _ddp_loss_and_grads(fn, enc, a, b, rank)
            torch.testing.assert_close(loss, ref.detach(), rtol=0, atol=1e-6, msg=f"{name} loss")
            for g, r in zip(grads, ref_grads, strict=True):
                torch.testing.assert_close(g, r, rtol=0, atol=1e-6, msg=f"{name} gradient")
            # control: without the gather each rank sees only its own negatives and the numbers differ
            local, _ = _ddp_loss_and_grads(lambda u, v, fn=fn: fn(u, v, gather=False), enc, a, b, rank)
            assert (local - ref).abs() > 1e-3, name
        gathered = concat_all_gather(torch.full((2, 3), float(rank)))
        assert gathered[:, 0].tolist() == [0.0, 0.0, 1.0, 1.0]  # rank order


def test_two_ranks_equal_one_process_on_the_joined_batch():
    spawn(_worker)                                          # raises if an assertion fails in a worker

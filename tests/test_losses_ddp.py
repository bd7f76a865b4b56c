"""Two CPU processes (gloo) on two halves of a batch, gradients averaged as DDP does, equal one process on the
joined batch: the cross-rank gather of every contrastive loss sends each rank its share of the gradient. NT-Xent
and CLIP; ConVIRT, CLIP with a learned temperature, soft targets whose positives sit on the other rank, and GLoRIA's
local loss (padded words, reports against every rank's images). One spawn for all: starting two processes that
import torch is most of the cost."""

import torch
import torch.distributed as dist
from torch import nn

from medssl.losses import ClipLoss, clip_loss, concat_all_gather, convirt_loss, gloria_local_loss, nt_xent

from _ddp import WORLD, process_group, spawn

BATCH, REGIONS, WORDS = 8, 3, 5


def _grads(loss: torch.Tensor, params: list[torch.Tensor]) -> list[torch.Tensor]:
    """Gradients of loss, zeros for the parameters it does not use (each loss uses only some encoders)."""
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params, strict=True)]


def _ddp_loss_and_grads(fn, params: list[torch.Tensor], rank: int, gather: bool = True):
    """This rank's half through fn; loss and gradients averaged over ranks (what DDP does)."""
    rows = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
    loss = fn(rows, gather)
    grads = _grads(loss, params)
    for t in (loss := loss.detach().clone(), *grads):
        dist.all_reduce(t)
        t /= WORLD
    return loss, grads


def _worker(rank: int, store: str) -> None:
    with process_group(rank, store):
        torch.manual_seed(0)                                    # same encoders and data on both ranks
        enc = nn.ModuleDict({k: nn.Linear(8, 4) for k in ("img", "txt", "region", "word")})
        clip = ClipLoss(init_temperature=0.2)
        params = [*enc.parameters(), clip.logit_scale]
        x_img, x_txt = torch.randn(BATCH, 8), torch.randn(BATCH, 8)
        x_region, x_word = torch.randn(BATCH, REGIONS, 8), torch.randn(BATCH, WORDS, 8)
        lengths = torch.tensor([5, 2, 3, 1, 4, 5, 2, 3])
        mask = torch.arange(WORDS)[None] < lengths[:, None]     # (B, T), padding at the end
        # rank 0 holds rows 0-3, rank 1 rows 4-7: row 0's report equals rows 4 and 6, row 2's equals row 7
        findings = torch.tensor([[0, 0], [1, 0], [0, 1], [1, 1], [0, 0], [1, 0], [0, 0], [0, 1]])

        def clip_learned(rows, gather):
            clip.gather = gather
            return clip(enc["img"](x_img[rows]), enc["txt"](x_txt[rows]))

        def local(rows, gather, **kw):
            return gloria_local_loss(enc["region"](x_region[rows]), enc["word"](x_word[rows]), mask[rows],
                                     gather=gather, **kw)

        losses = {
            "nt_xent": lambda rows, gather: nt_xent(enc["img"](x_img[rows]), enc["img"](x_txt[rows]), 0.5,
                                                    gather=gather),
            "clip_loss": lambda rows, gather: clip_loss(enc["img"](x_img[rows]), enc["txt"](x_txt[rows]), 0.5,
                                                        gather=gather),
            "convirt": lambda rows, gather: convirt_loss(enc["img"](x_img[rows]), enc["txt"](x_txt[rows]), 0.5,
                                                         0.75, gather=gather),
            "clip_learned_temperature": clip_learned,
            "convirt_soft": lambda rows, gather: convirt_loss(enc["img"](x_img[rows]), enc["txt"](x_txt[rows]), 0.5,
                                                              0.75, gather=gather, findings=findings[rows]),
            "gloria_local": lambda rows, gather: local(rows, gather)[0],
            "gloria_local_soft": lambda rows, gather: local(rows, gather, findings=findings[rows])[0],
        }
        refs = {}
        for name, fn in losses.items():
            ref = refs[name] = fn(slice(None), False)           # one process, joined batch
            ref_grads = _grads(ref, params)
            loss, grads = _ddp_loss_and_grads(fn, params, rank)
            torch.testing.assert_close(loss, ref.detach(), rtol=1e-5, atol=1e-6, msg=f"{name} loss")
            for g, r in zip(grads, ref_grads, strict=True):
                torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6, msg=f"{name} gradient")
            # control: without the gather each rank sees only its own candidates and the numbers differ
            alone, _ = _ddp_loss_and_grads(fn, params, rank, gather=False)
            assert (alone - ref).abs() > 1e-3, name
            if name == "clip_learned_temperature":
                assert ref_grads[-1].abs() > 0                  # the temperature learns, and its gradient matched
        for soft, hard in (("convirt_soft", "convirt"), ("gloria_local_soft", "gloria_local")):
            assert (refs[soft] - refs[hard]).abs() > 1e-3, soft  # the shared findings do change the targets
        # the attention maps of a rank's own pairs are the joined batch's rows
        rows = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
        torch.testing.assert_close(local(rows, True)[1], local(slice(None), False)[1][rows])
        gathered = concat_all_gather(torch.full((2, 3), float(rank)))
        assert gathered[:, 0].tolist() == [0.0, 0.0, 1.0, 1.0]  # rank order


def test_two_ranks_equal_one_process_on_the_joined_batch():
    spawn(_worker)                                              # raises if an assertion fails in a worker

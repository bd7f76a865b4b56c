"""Self-supervised and image-text losses: pure functions on embeddings, written with F.cross_entropy.

Cross-rank negatives. Under torch.distributed (world size W > 1) nt_xent and the image-text losses (clip_loss,
convirt_loss, ClipLoss, gloria_local_loss, gloria_loss) gather every rank's embeddings; the local rows are the
queries and the targets point into the gathered rows at this rank's offset. Each rank's loss is the mean over its
own queries. The gather keeps gradients (GatherLayer: the backward sums the gradient every rank computed for a
slice and hands each rank its own slice), so with DDP averaging the parameter gradients over ranks, training equals
one process on the joined batch (tests/test_losses_ddp.py, tests/test_losses_image_text_ddp.py).
All ranks must pass the same batch size (drop the last incomplete batch or pad it).

Soft targets (image-text losses, `findings=` (B, C) or `same=`): pairs whose reports state the same findings are
positives, row i's target uniform over them; findings are gathered too, so positives span every rank's batch.
Without them the targets are the plain indices, the very same computation as before the option existed.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from medssl.errors import MedsslError


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


# ---- image-text losses: ConVIRT, CLIP, GLoRIA -------------------------------------------------------------------


def _check_positive(**values: float | Tensor) -> None:
    """Temperatures and scales must be > 0 (a tensor is a learned value and is not checked)."""
    for name, value in values.items():
        if not isinstance(value, Tensor) and not value > 0:
            raise MedsslError(f"{name} must be > 0, got {value}")


def _check_weight(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise MedsslError(f"{name} must be in [0, 1], got {value}")


def same_findings(findings: Tensor, keys: Tensor) -> Tensor:
    """(B, C) findings of the queries, (N, C) of the keys -> (B, N) bool: True where all C findings agree."""
    return (findings[:, None, :] == keys[None, :, :]).all(dim=-1)


def _targets(idx: Tensor, n_keys: int, findings: Tensor | None, same: Tensor | None, gather: bool) -> Tensor:
    """Targets of the local queries over the (gathered) keys: the indices idx (B,), or soft targets (B, n_keys).

    Soft targets (findings or same given): row i is uniform over the keys whose report states the same findings as
    query i's report, i itself included. findings (B, C) are gathered like the keys, so positives span all ranks;
    same is (B, n_keys) bool already (local rows x gathered keys; (B, B) in one process).
    """
    if findings is None and same is None:
        return idx
    b = idx.shape[0]
    if findings is not None and same is not None:
        raise MedsslError("soft targets: give findings or same, not both")
    if findings is not None:
        if findings.ndim != 2 or findings.shape[0] != b:
            raise MedsslError(f"findings must be (B={b}, C), got {tuple(findings.shape)}")
        findings = findings.float()                         # gloo gathers floats; 0/1 compare exactly
        pos = same_findings(findings, concat_all_gather(findings) if gather else findings)
    else:
        if tuple(same.shape) != (b, n_keys):
            raise MedsslError(f"same must be ({b}, {n_keys}) (local rows x gathered keys), got {tuple(same.shape)}")
        pos = same.bool()
    pos = (pos | F.one_hot(idx, n_keys).bool()).float()     # a pair is always its own positive
    return pos / pos.sum(dim=1, keepdim=True)


def _two_way(logits_i: Tensor, logits_t: Tensor, target: Tensor, weight: float) -> Tensor:
    """weight * CE(image -> text) + (1 - weight) * CE(text -> image); logits (B, N), rows are the local queries."""
    return weight * F.cross_entropy(logits_i, target) + (1 - weight) * F.cross_entropy(logits_t, target)


def _bidirectional(img: Tensor, txt: Tensor, temperature: float | Tensor, weight: float, gather: bool,
                   findings: Tensor | None, same: Tensor | None) -> Tensor:
    """InfoNCE both ways over L2-normalised (B, D) pairs, candidates = the other modality's rows of all ranks."""
    if img.ndim != 2 or img.shape != txt.shape:
        raise MedsslError(f"image and text embeddings must both be (B, D), got {tuple(img.shape)} and "
                          f"{tuple(txt.shape)}")
    img, txt = F.normalize(img, dim=1), F.normalize(txt, dim=1)
    img_keys, offset = _gather_keys(img, gather)                # (WB, D)
    txt_keys, _ = _gather_keys(txt, gather)
    idx = torch.arange(img.shape[0], device=img.device) + offset
    target = _targets(idx, img_keys.shape[0], findings, same, gather)
    return _two_way(img @ txt_keys.T / temperature, txt @ img_keys.T / temperature, target, weight)


def clip_loss(img: Tensor, txt: Tensor, temperature: float | Tensor = 0.07, gather: bool = True, *,
              findings: Tensor | None = None, same: Tensor | None = None) -> Tensor:
    """Symmetric InfoNCE over image-text pairs (ConVIRT, Zhang et al. 2020; CLIP, Radford et al. 2021).

    img, txt: (B, D), row i of each is a pair; the candidates of a query are the other modality's rows of all ranks.
    temperature may be a tensor (a learned one: ClipLoss). All embeddings equal gives log(WB).
    findings (B, C) or same (B, WB): soft targets, pairs whose reports state the same findings are positives.
    """
    _check_positive(temperature=temperature)
    return _bidirectional(img, txt, temperature, 0.5, gather, findings, same)


def convirt_loss(img: Tensor, txt: Tensor, temperature: float = 0.1, weight: float = 0.75, gather: bool = True, *,
                 findings: Tensor | None = None, same: Tensor | None = None) -> Tensor:
    """ConVIRT loss (Zhang et al. 2020): weight * l(image -> text) + (1 - weight) * l(text -> image).

    img, txt: (B, D) pairs, L2-normalised here; each direction is InfoNCE averaged over the local queries, with the
    other modality's rows of all ranks as candidates. The paper's defaults: temperature 0.1, weight (lambda) 0.75.
    weight 0.5 is clip_loss. findings (B, C) or same (B, WB): soft targets, as in clip_loss.
    """
    _check_positive(temperature=temperature)
    _check_weight("weight", weight)
    return _bidirectional(img, txt, temperature, weight, gather, findings, same)


class ClipLoss(nn.Module):
    """CLIP's loss with its learnable temperature (Radford et al. 2021): logits = exp(logit_scale) * cos.

    logit_scale starts at ln(1 / init_temperature) and is kept in [0, ln 100] (logits scaled by at most 100), as
    CLIP clips it after every optimiser step; here it is clamped in place before each use, which gives the same
    sequence of values and needs no call from the training loop. Put it in the model so the optimiser sees it.
    """

    MAX_LOGIT_SCALE = math.log(100.0)

    def __init__(self, init_temperature: float = 0.07, gather: bool = True):
        super().__init__()
        if not 0.01 <= init_temperature <= 1.0:
            raise MedsslError(f"init_temperature must be in [0.01, 1], got {init_temperature}")
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)))
        self.gather = gather

    @property
    def temperature(self) -> float:
        """The temperature the next forward uses (for logging)."""
        return math.exp(-min(max(self.logit_scale.item(), 0.0), self.MAX_LOGIT_SCALE))

    def forward(self, img: Tensor, txt: Tensor, findings: Tensor | None = None,
                same: Tensor | None = None) -> Tensor:
        """img, txt: (B, D) pairs -> the symmetric loss (0-d); findings / same: soft targets as in clip_loss."""
        with torch.no_grad():
            self.logit_scale.clamp_(0.0, self.MAX_LOGIT_SCALE)
        return _bidirectional(img, txt, (-self.logit_scale).exp(), 0.5, self.gather, findings, same)


def _local_scores(regions: Tensor, words: Tensor, word_mask: Tensor, tau1: float,
                  gamma2: float) -> tuple[Tensor, Tensor]:
    """GLoRIA's local similarity Z(image a, report b) of every pair, and the word-to-region attention.

    regions (A, R, D), words (N, T, D), word_mask (N, T) bool -> Z (A, N), attention (A, N, T, R).
    For word t of report b: a_tr = softmax_r(cos(w_t, v_r) / tau1), context c_t = sum_r a_tr v_r,
    Z = log(sum over real words of exp(gamma2 cos(c_t, w_t))) / gamma2.
    """
    v_norm = regions.norm(dim=-1).clamp_min(1e-8)               # (A, R)
    cos = torch.einsum("ard,ntd->antr", regions / v_norm[..., None], F.normalize(words, dim=-1))  # (A, N, T, R)
    attn = (cos / tau1).softmax(dim=-1)
    # c_t is never formed, (A, N, T, D) would dominate memory: c.w_hat = sum_r a_r (v_r.w_hat), |c|^2 = a^T (V V^T) a
    c_dot_w = (attn * cos * v_norm[:, None, None, :]).sum(dim=-1)             # (A, N, T)
    gram = regions @ regions.transpose(1, 2)                                   # (A, R, R)
    c_sq = ((attn @ gram[:, None]) * attn).sum(dim=-1)                         # (A, N, T)
    word_sim = c_dot_w / c_sq.clamp_min(1e-16).sqrt()                         # cos(c_t, w_t)
    word_sim = word_sim.masked_fill(~word_mask[None], float("-inf"))          # padding words count for nothing
    return torch.logsumexp(gamma2 * word_sim, dim=-1) / gamma2, attn


def _check_local(regions: Tensor, words: Tensor, word_mask: Tensor) -> None:
    b = regions.shape[0]
    if regions.ndim != 3 or words.ndim != 3 or words.shape[0] != b or words.shape[2] != regions.shape[2]:
        raise MedsslError(f"regions must be (B, R, D) and words (B, T, D), got {tuple(regions.shape)} and "
                          f"{tuple(words.shape)}")
    if tuple(word_mask.shape) != tuple(words.shape[:2]):
        raise MedsslError(f"word_mask must be (B, T) = {tuple(words.shape[:2])}, got {tuple(word_mask.shape)}")
    empty = (~word_mask.bool().any(dim=1)).nonzero().flatten().tolist()
    if empty:
        raise MedsslError(f"word_mask: report(s) {empty} of the batch have no words (all padding)")


def gloria_local_loss(regions: Tensor, words: Tensor, word_mask: Tensor, *, tau1: float = 0.25, gamma2: float = 5.0,
                      tau3: float = 0.1, gather: bool = True, findings: Tensor | None = None,
                      same: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """GLoRIA's local loss (Huang et al. 2021): word-to-region attention, then InfoNCE over Z(image, report).

    regions: (B, R, D) image sub-region features (a (B, D, H, W) map flattened, R = H W); words: (B, T, D) word
    features; word_mask: (B, T), True for a real word (mask [CLS], [SEP] and padding out). Returns the loss (mean of
    image -> report and report -> image InfoNCE on Z / tau3) and the attention of each image's own report's words,
    (B, T, R) detached, for plots. Under DDP, Z is computed for the local images against every rank's reports and
    for every rank's images against the local reports. All ranks must pass the same B and T (pad the words).
    tau1, gamma2, tau3 = 0.25, 5, 0.1 are the reference code's multipliers 4, 5, 10. Two departures: word-region
    similarity is the cosine (the reference's dot product is bounded by a softmax over words first), and Z carries
    the paper's 1 / gamma2.
    """
    _check_positive(tau1=tau1, gamma2=gamma2, tau3=tau3)
    _check_local(regions, words, word_mask)
    word_mask = word_mask.bool()
    rank, world = _world()
    b = regions.shape[0]
    distributed = gather and world > 1
    offset = rank * b if distributed else 0
    if distributed:
        all_mask = concat_all_gather(word_mask.float()).bool()
        z_img, attn = _local_scores(regions, gather_with_grad(words), all_mask, tau1, gamma2)   # (B, WB)
        z_txt = _local_scores(gather_with_grad(regions), words, word_mask, tau1, gamma2)[0].T   # (B, WB)
    else:
        z_img, attn = _local_scores(regions, words, word_mask, tau1, gamma2)                   # (B, B)
        z_txt = z_img.T
    idx = torch.arange(b, device=regions.device) + offset
    target = _targets(idx, z_img.shape[1], findings, same, gather)
    loss = _two_way(z_img / tau3, z_txt / tau3, target, 0.5)
    return loss, attn[torch.arange(b, device=regions.device), idx].detach()


class GloriaLoss(NamedTuple):
    """gloria_loss's result: the weighted total, its two terms, and the word-to-region attention (B, T, R)."""

    loss: Tensor
    global_loss: Tensor
    local_loss: Tensor
    attention: Tensor


def gloria_loss(img: Tensor, txt: Tensor, regions: Tensor, words: Tensor, word_mask: Tensor, *, tau1: float = 0.25,
                gamma2: float = 5.0, tau3: float = 0.1, local_weight: float = 1.0, global_weight: float = 1.0,
                gather: bool = True, findings: Tensor | None = None, same: Tensor | None = None) -> GloriaLoss:
    """GLoRIA (Huang et al. 2021): global_weight * global + local_weight * local.

    Global: symmetric InfoNCE on the pooled (B, D) embeddings img, txt at temperature tau3 (clip_loss); local:
    gloria_local_loss on regions (B, R, D), words (B, T, D), word_mask (B, T). The reference code sums the two
    directions of each term; here each is their mean (a factor 2 on the learning rate).
    """
    if local_weight < 0 or global_weight < 0:
        raise MedsslError(f"local_weight and global_weight must be >= 0, got {local_weight} and {global_weight}")
    global_ = clip_loss(img, txt, tau3, gather, findings=findings, same=same)
    local, attention = gloria_local_loss(regions, words, word_mask, tau1=tau1, gamma2=gamma2, tau3=tau3,
                                         gather=gather, findings=findings, same=same)
    return GloriaLoss(global_weight * global_ + local_weight * local, global_, local, attention)

"""Image-text losses (ConVIRT, CLIP with a learned temperature, soft targets, GLoRIA) against by-hand computations:
the expected numbers are built here with plain Python math on lists, never with the code under test."""

import math

import pytest
import torch
from torch import nn

from medssl.errors import MedsslError
from medssl.losses import ClipLoss, clip_loss, convirt_loss, gloria_local_loss, gloria_loss

# ---- by-hand references (plain Python floats) -----------------------------------------------------------------


def _unit(v: list[float]) -> list[float]:
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def _dot(u: list[float], v: list[float]) -> float:
    return sum(a * b for a, b in zip(u, v, strict=True))


def _cos(u: list[float], v: list[float]) -> float:
    return _dot(_unit(u), _unit(v))


def _xent(row: list[float], target: list[float]) -> float:
    """-sum_j target_j log softmax(row)_j."""
    log_z = math.log(sum(math.exp(x) for x in row))
    return -sum(t * (x - log_z) for x, t in zip(row, target, strict=True) if t)


def _two_way(scores: list[list[float]], weight: float, targets: list[list[float]] | None = None) -> float:
    """scores[i][j] = logit of image i with text j; weight * mean_i CE(row i) + (1 - weight) * mean_j CE(column j)."""
    n = len(scores)
    targets = targets or [[float(i == j) for j in range(n)] for i in range(n)]
    rows = sum(_xent(scores[i], targets[i]) for i in range(n)) / n
    cols = sum(_xent([scores[i][j] for i in range(n)], targets[j]) for j in range(n)) / n
    return weight * rows + (1 - weight) * cols


def _pair_logits(img: list[list[float]], txt: list[list[float]], temperature: float) -> list[list[float]]:
    return [[_cos(u, v) / temperature for v in txt] for u in img]


def _gloria_pair(regions: list[list[float]], words: list[list[float]], mask: list[bool], tau1: float,
                 gamma2: float) -> tuple[float, list[list[float]]]:
    """Z(image, report) and the attention: softmax over regions of cos / tau1, context, cosine, LogSumExp / gamma2."""
    sims, attention = [], []
    for w, real in zip(words, mask, strict=True):
        logits = [_cos(w, v) / tau1 for v in regions]
        total = sum(math.exp(x) for x in logits)
        a = [math.exp(x) / total for x in logits]
        attention.append(a)
        context = [sum(a[r] * regions[r][d] for r in range(len(regions))) for d in range(len(w))]
        if real:
            sims.append(_cos(context, w))
    return math.log(sum(math.exp(gamma2 * s) for s in sims)) / gamma2, attention


def _gloria_local(regions, words, mask, tau1, gamma2, tau3) -> tuple[float, list]:
    n = len(regions)
    z = [[_gloria_pair(regions[a], words[b], mask[b], tau1, gamma2)[0] / tau3 for b in range(n)] for a in range(n)]
    own = [_gloria_pair(regions[i], words[i], mask[i], tau1, gamma2)[1] for i in range(n)]
    return _two_way(z, 0.5), own


IMG = [[1.0, 0.0], [0.0, 2.0]]          # unit e1, e2 after normalising
TXT = [[3.0, 0.0], [1.0, 1.0]]          # e1, (e1 + e2) / sqrt 2
T = torch.tensor


# ---- ConVIRT, CLIP ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("weight", [0.0, 0.5, 0.75, 1.0])
def test_convirt_equals_hand_computation(weight):
    # cos = [[1, 1/sqrt2], [0, 1/sqrt2]]; tau = 0.5
    s = 1 / math.sqrt(2)
    i2t = (-math.log(math.exp(2) / (math.exp(2) + math.exp(2 * s)))
           - math.log(math.exp(2 * s) / (1 + math.exp(2 * s)))) / 2
    t2i = (-math.log(math.exp(2) / (math.exp(2) + 1)) + math.log(2)) / 2
    expected = weight * i2t + (1 - weight) * t2i
    assert expected == pytest.approx(_two_way(_pair_logits(IMG, TXT, 0.5), weight))   # the helper agrees
    assert convirt_loss(T(IMG), T(TXT), 0.5, weight).item() == pytest.approx(expected, rel=1e-6)


def test_convirt_lambda_and_symmetry():
    g = torch.Generator().manual_seed(0)
    img, txt = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    # swapping the modalities swaps the directions: lambda -> 1 - lambda
    torch.testing.assert_close(convirt_loss(img, txt, 0.2, 0.75), convirt_loss(txt, img, 0.2, 0.25))
    torch.testing.assert_close(convirt_loss(img, txt, 0.2, 0.5), clip_loss(img, txt, 0.2))
    torch.testing.assert_close(clip_loss(img, txt, 0.2), clip_loss(txt, img, 0.2))
    one_way, other_way = convirt_loss(img, txt, 0.2, 1.0), convirt_loss(img, txt, 0.2, 0.0)
    assert (one_way - other_way).abs() > 1e-3                  # the directions differ on random data
    torch.testing.assert_close(convirt_loss(img, txt, 0.2, 0.3), 0.3 * one_way + 0.7 * other_way)


def test_clip_loss_learnable_temperature_starts_at_init_and_is_clamped_at_100():
    img = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0, 1.0]]
    txt = [[1.0, 0.5, 0.0], [0.0, 1.0, 1.0], [0.0, 0.0, 1.0]]
    loss = ClipLoss(init_temperature=0.07)
    assert loss.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    assert loss(T(img), T(txt)).item() == pytest.approx(_two_way(_pair_logits(img, txt, 0.07), 0.5), rel=1e-5)
    with torch.no_grad():
        loss.logit_scale.fill_(10.0)                          # past CLIP's cap: logits scaled by at most 100
    value = loss(T(img), T(txt))
    assert loss.logit_scale.item() == pytest.approx(math.log(100.0))
    assert loss.temperature == pytest.approx(0.01)
    assert value.item() == pytest.approx(_two_way(_pair_logits(img, txt, 0.01), 0.5), rel=1e-5)
    value.backward()
    assert loss.logit_scale.grad.abs() > 0                    # at the cap the gradient still flows
    with torch.no_grad():
        loss.logit_scale.fill_(-1.0)                          # below 0: scale 1
    assert loss(T(img), T(txt)).item() == pytest.approx(_two_way(_pair_logits(img, txt, 1.0), 0.5), rel=1e-5)


def test_gradients_reach_both_encoders_and_the_temperature():
    torch.manual_seed(0)
    img_enc, txt_enc, loss = nn.Linear(6, 4), nn.Linear(5, 4), ClipLoss()
    x_img, x_txt = torch.randn(4, 6), torch.randn(4, 5)
    loss(img_enc(x_img), txt_enc(x_txt)).backward()
    convirt_loss(img_enc(x_img), txt_enc(x_txt)).backward()   # accumulates; ConVIRT on the same encoders
    for p in [*img_enc.parameters(), *txt_enc.parameters(), loss.logit_scale]:
        assert p.grad is not None and p.grad.abs().sum() > 0


# ---- soft targets -------------------------------------------------------------------------------------------------


def test_soft_targets_equal_hard_ones_when_every_report_differs():
    g = torch.Generator().manual_seed(1)
    img, txt = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    findings = T([[0, 0], [1, 0], [0, 1], [1, 1]])             # four different reports
    for fn in (lambda **kw: convirt_loss(img, txt, 0.3, 0.75, **kw), lambda **kw: clip_loss(img, txt, 0.3, **kw),
               lambda **kw: ClipLoss(0.3)(img, txt, **kw)):
        torch.testing.assert_close(fn(findings=findings), fn(), rtol=0, atol=1e-6)
        torch.testing.assert_close(fn(same=torch.zeros(4, 4, dtype=torch.bool)), fn(), rtol=0, atol=1e-6)


def test_soft_targets_by_hand_when_two_reports_state_the_same_findings():
    img = [[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]]
    txt = [[1.0, 0.2], [0.0, 1.0], [1.0, 1.0]]
    findings = T([[1, 0, 1], [1, 0, 1], [0, 1, 0]])            # reports 0 and 1 say the same
    targets = [[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]
    expected = _two_way(_pair_logits(img, txt, 0.5), 0.75, targets)
    soft = convirt_loss(T(img), T(txt), 0.5, 0.75, findings=findings)
    assert soft.item() == pytest.approx(expected, rel=1e-6)
    assert abs(soft.item() - convirt_loss(T(img), T(txt), 0.5, 0.75).item()) > 1e-3
    same = T([[False, True, False], [True, False, False], [False, False, False]])   # the diagonal is implied
    torch.testing.assert_close(convirt_loss(T(img), T(txt), 0.5, 0.75, same=same), soft)
    expected_clip = _two_way(_pair_logits(img, txt, 0.5), 0.5, targets)
    assert clip_loss(T(img), T(txt), 0.5, findings=findings).item() == pytest.approx(expected_clip, rel=1e-6)


# ---- GLoRIA -------------------------------------------------------------------------------------------------------

REGIONS = [[[1.0, 0.0], [0.0, 1.0]], [[1.0, 1.0], [-1.0, 0.5]]]     # (B=2, R=2, D=2)
WORDS = [[[1.0, 0.0], [0.2, 1.0]], [[2.0, 1.0], [5.0, -5.0]]]        # (B=2, T=2, D=2)
MASK = [[True, True], [True, False]]                                # report 1's second word is padding


def test_gloria_local_loss_equals_hand_computation():
    tau1, gamma2, tau3 = 0.25, 5.0, 0.1
    expected, own_attention = _gloria_local(REGIONS, WORDS, MASK, tau1, gamma2, tau3)
    loss, attention = gloria_local_loss(T(REGIONS), T(WORDS), T(MASK), tau1=tau1, gamma2=gamma2, tau3=tau3)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert attention.shape == (2, 2, 2)                       # (B, T, R)
    torch.testing.assert_close(attention, T(own_attention), rtol=0, atol=1e-6)
    torch.testing.assert_close(attention.sum(dim=-1), torch.ones(2, 2))   # a distribution over regions


def test_gloria_local_loss_matches_naive_loop_on_random_features():
    g = torch.Generator().manual_seed(2)
    regions, words = torch.randn(3, 4, 5, generator=g), torch.randn(3, 6, 5, generator=g)
    mask = T([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0]]).bool()
    expected, _ = _gloria_local(regions.tolist(), words.tolist(), mask.tolist(), 0.5, 3.0, 0.2)
    loss, _ = gloria_local_loss(regions, words, mask, tau1=0.5, gamma2=3.0, tau3=0.2)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_gloria_padding_words_change_nothing():
    g = torch.Generator().manual_seed(3)
    regions, words = torch.randn(3, 4, 5, generator=g), torch.randn(3, 3, 5, generator=g)
    mask = T([[1, 1, 1], [1, 1, 0], [1, 0, 0]]).bool()
    loss, attention = gloria_local_loss(regions, words, mask)
    padded = torch.cat([words, 50 * torch.randn(3, 4, 5, generator=g)], dim=1).requires_grad_(True)
    padded_mask = torch.cat([mask, torch.zeros(3, 4, dtype=torch.bool)], dim=1)
    # words already masked inside the batch get wild values too
    with torch.no_grad():
        padded[~padded_mask] = 50 * torch.randn(int((~padded_mask).sum()), 5, generator=g)
    loss_p, attention_p = gloria_local_loss(regions, padded, padded_mask)
    torch.testing.assert_close(loss_p, loss, rtol=0, atol=1e-6)
    torch.testing.assert_close(attention_p[:, :3][mask], attention[mask])
    loss_p.backward()
    assert torch.all(padded.grad[~padded_mask] == 0)          # exactly zero, not small
    assert torch.all(padded.grad[padded_mask].abs().sum(-1) > 0)


def test_gloria_loss_is_weighted_global_plus_local_and_gradients_reach_both_encoders():
    torch.manual_seed(0)
    region_enc, word_enc = nn.Linear(6, 4), nn.Linear(5, 4)
    regions, words = region_enc(torch.randn(3, 4, 6)), word_enc(torch.randn(3, 5, 5))   # (B, R, D), (B, T, D)
    mask = T([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0]]).bool()
    img, txt = regions.mean(dim=1), (words * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    out = gloria_loss(img, txt, regions, words, mask, tau3=0.2, local_weight=0.7, global_weight=1.5)
    local, attention = gloria_local_loss(regions, words, mask, tau3=0.2)
    torch.testing.assert_close(out.global_loss, clip_loss(img, txt, 0.2))
    torch.testing.assert_close(out.local_loss, local)
    torch.testing.assert_close(out.loss, 1.5 * out.global_loss + 0.7 * out.local_loss)
    torch.testing.assert_close(out.attention, attention)
    assert not out.attention.requires_grad
    out.loss.backward()
    for p in [*region_enc.parameters(), *word_enc.parameters()]:
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_gloria_soft_targets_equal_hard_when_reports_differ_and_differ_when_two_match():
    g = torch.Generator().manual_seed(4)
    regions, words = torch.randn(3, 4, 5, generator=g), torch.randn(3, 3, 5, generator=g)
    mask = torch.ones(3, 3, dtype=torch.bool)
    hard, _ = gloria_local_loss(regions, words, mask)
    differ, _ = gloria_local_loss(regions, words, mask, findings=T([[0, 1], [1, 0], [1, 1]]))
    torch.testing.assert_close(differ, hard, rtol=0, atol=1e-6)
    match, _ = gloria_local_loss(regions, words, mask, findings=T([[0, 1], [0, 1], [1, 1]]))
    assert abs(match.item() - hard.item()) > 1e-3


# ---- bad input ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("call, words", [
    (lambda: convirt_loss(torch.ones(2, 3), torch.ones(2, 3), weight=1.5), "weight"),
    (lambda: convirt_loss(torch.ones(2, 3), torch.ones(2, 3), temperature=0.0), "temperature"),
    (lambda: clip_loss(torch.ones(2, 3), torch.ones(3, 3)), "(B, D)"),
    (lambda: clip_loss(torch.ones(2, 3), torch.ones(2, 3), findings=torch.ones(3, 2)), "findings"),
    (lambda: clip_loss(torch.ones(2, 3), torch.ones(2, 3), findings=torch.ones(2, 1), same=torch.ones(2, 2)),
     "not both"),
    (lambda: clip_loss(torch.ones(2, 3), torch.ones(2, 3), same=torch.ones(2, 3).bool()), "same"),
    (lambda: ClipLoss(init_temperature=0.0), "init_temperature"),
    (lambda: gloria_local_loss(torch.ones(2, 4, 3), torch.ones(2, 2, 3), T([[1, 1], [0, 0]]).bool()), "no words"),
    (lambda: gloria_local_loss(torch.ones(2, 4, 3), torch.ones(2, 2, 5), torch.ones(2, 2).bool()), "regions"),
    (lambda: gloria_local_loss(torch.ones(2, 4, 3), torch.ones(2, 2, 3), torch.ones(2, 3).bool()), "word_mask"),
    (lambda: gloria_local_loss(torch.ones(2, 4, 3), torch.ones(2, 2, 3), torch.ones(2, 2).bool(), tau1=-1), "tau1"),
])
def test_bad_input_is_one_clear_error(call, words):
    with pytest.raises(MedsslError, match=words.replace("(", r"\(").replace(")", r"\)")):
        call()

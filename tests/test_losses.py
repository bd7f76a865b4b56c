"""Losses: values derivable by hand, agreement with naive reference loops, gradients where they must vanish."""

import math

import pytest
import torch
import torch.nn.functional as F

from medssl.losses import byol_loss, clip_loss, concat_all_gather, gather_with_grad, info_nce, masked_mse, nt_xent


def naive_nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent written as in the SimCLR paper: a loop over the 2N anchors, l(i, j) = -log softmax over k != i."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = z1.shape[0]
    total = 0.0
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        sims = [math.exp(float(z[i] @ z[k]) / temperature) for k in range(2 * n) if k != i]
        total += -math.log(math.exp(float(z[i] @ z[j]) / temperature) / sum(sims))
    return torch.tensor(total / (2 * n))


@pytest.mark.parametrize("batch_size", [1, 4, 32])
def test_nt_xent_equals_log_candidates_when_embeddings_are_equal(batch_size):
    z = torch.ones(batch_size, 16)
    assert nt_xent(z, z).item() == pytest.approx(math.log(2 * batch_size - 1), abs=1e-5)


def test_nt_xent_is_zero_for_separated_orthogonal_pairs():
    z = torch.eye(8)[:4] * 3.0                                  # pairs aligned, pairs orthogonal to each other
    # each anchor: positive logit 1 / T = 50, six negatives at 0 -> log(1 + 6 exp(-50))
    assert nt_xent(z, z, temperature=0.02).item() == pytest.approx(0.0, abs=1e-6)


def test_nt_xent_matches_naive_loop():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    expected = naive_nt_xent(z1.double(), z2.double(), 0.3)
    assert nt_xent(z1, z2, temperature=0.3).item() == pytest.approx(expected.item(), rel=1e-5)


def test_nt_xent_is_symmetric():
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(7, 4, generator=g), torch.randn(7, 4, generator=g)
    torch.testing.assert_close(nt_xent(z1, z2), nt_xent(z2, z1))


def test_info_nce_with_orthogonal_queue():
    q = torch.tensor([[1.0, 0, 0, 0], [0, 2.0, 0, 0]])
    queue = torch.tensor([[0, 0, 1.0, 0], [0, 0, 0, 1.0], [0, 0, -1.0, 0]])   # K = 3, orthogonal to every q
    t = 0.5
    expected = math.log(1 + 3 * math.exp(-1 / t))               # positive logit 1/T, three negatives at 0
    assert info_nce(q, q, queue, t).item() == pytest.approx(expected, rel=1e-6)


def test_info_nce_is_log_k_plus_one_when_everything_is_equal():
    q = torch.ones(3, 4)
    assert info_nce(q, q, torch.ones(5, 4), 0.2).item() == pytest.approx(math.log(6), rel=1e-6)


def test_byol_loss_zero_when_aligned_up_to_scale_and_four_when_opposite():
    z = torch.randn(5, 8, generator=torch.Generator().manual_seed(2))
    assert byol_loss(3 * z, z).item() == pytest.approx(0.0, abs=1e-6)
    assert byol_loss(-z, z).item() == pytest.approx(4.0, abs=1e-6)
    p = torch.tensor([[1.0, 0.0]])
    assert byol_loss(p, torch.tensor([[0.0, 1.0]])).item() == pytest.approx(2.0)   # orthogonal: 2 - 0


def test_masked_mse_counts_masked_patches_only():
    g = torch.Generator().manual_seed(3)
    target = torch.randn(2, 4, 6, generator=g)
    mask = torch.tensor([[1.0, 0, 1, 0], [0, 0, 0, 1]])
    pred = target.clone()
    pred[mask.bool()] += 1.0                                    # error of 1 on every masked pixel
    pred.requires_grad_(True)
    loss = masked_mse(pred, target, mask)
    assert loss.item() == pytest.approx(1.0)
    loss.backward()
    assert torch.all(pred.grad[~mask.bool()] == 0)             # exactly zero, not small
    assert torch.all(pred.grad[mask.bool()] != 0)
    other = pred.detach().clone()
    other[~mask.bool()] = 100.0                                 # visible predictions do not matter
    assert masked_mse(other, target, mask).item() == pytest.approx(1.0)


def test_clip_loss_is_log_batch_when_embeddings_are_equal_and_matches_naive():
    assert clip_loss(torch.ones(4, 3), torch.ones(4, 3)).item() == pytest.approx(math.log(4), rel=1e-6)
    g = torch.Generator().manual_seed(4)
    img, txt = torch.randn(5, 6, generator=g), torch.randn(5, 6, generator=g)
    logits = F.normalize(img, dim=1) @ F.normalize(txt, dim=1).T / 0.1   # (B, B), pairs on the diagonal
    expected = -(logits.log_softmax(dim=1).diag().mean() + logits.log_softmax(dim=0).diag().mean()) / 2
    assert clip_loss(img, txt, 0.1).item() == pytest.approx(expected.item(), rel=1e-6)
    assert clip_loss(img, txt, torch.tensor(0.1)).item() == pytest.approx(expected.item(), rel=1e-6)


def test_gathers_are_identity_outside_distributed():
    x = torch.randn(3, 2, requires_grad=True)
    assert gather_with_grad(x) is x
    assert torch.equal(concat_all_gather(x), x) and not concat_all_gather(x).requires_grad

"""The linear probe both sides of bench/time_to_quality.py score with: torch and numpy only, so that the peer's own
virtual environment (bench/peer_lightly_simclr.py) imports this same file and neither side gets a different probe.

probe_auc: standardise the frozen features with the probe-training set's statistics, fit an L2-regularised
logistic regression with L-BFGS (full batch, fixed iterations, deterministic), return the ROC-AUC on the scored set
(rank statistic, ties averaged). probe_scores gives two probes: with every training label, and with 1 % of
them (the label-scarce setting medssl is for), averaged over fixed label subsets. `Clock` keeps training time off the probes: what the probes cost is not counted.
"""

from __future__ import annotations

import time

import numpy as np
import torch

L2 = 1e-3  # on standardised features; weak, as a linear-probe protocol uses
ITERS = 100


def roc_auc(y: np.ndarray, score: np.ndarray) -> float:
    """Binary ROC-AUC (Mann-Whitney U with average ranks for ties)."""
    y = np.asarray(y).astype(bool).ravel()
    s = np.asarray(score, dtype=np.float64).ravel()
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    i = 0
    while i < len(s):  # average rank over each run of ties
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    pos, neg = int(y.sum()), int((~y).sum())
    return float((ranks[y].sum() - pos * (pos + 1) / 2) / (pos * neg))


@torch.no_grad()
def features(backbone: torch.nn.Module, images: torch.Tensor, batch: int = 512) -> torch.Tensor:
    """(N, D) pooled features of (N, C, H, W) inputs, in eval mode; the module's mode is restored after."""
    was = backbone.training
    backbone.eval()
    out = torch.cat([backbone(images[i : i + batch]).flatten(1) for i in range(0, len(images), batch)])
    backbone.train(was)
    return out


def probe_auc(train_x: torch.Tensor, train_y: np.ndarray, test_x: torch.Tensor, test_y: np.ndarray) -> float:
    """Fit the logistic probe on (train_x, train_y), return its ROC-AUC on (test_x, test_y)."""
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    a, b = (train_x - mean) / std, (test_x - mean) / std
    y = torch.as_tensor(np.asarray(train_y).ravel(), dtype=torch.float32)
    w = torch.zeros(a.shape[1], requires_grad=True)
    c = torch.zeros((), requires_grad=True)
    opt = torch.optim.LBFGS([w, c], lr=1.0, max_iter=ITERS, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(a @ w + c, y) + L2 * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return roc_auc(test_y, (b @ w + c).detach().numpy())


FEW_LABELS = 0.01  # the label-scarce probe: 1 % of the training labels (47 images of PneumoniaMNIST)
FEW_SUBSETS = 5  # ... averaged over this many fixed random subsets (seeds 0..4, the same on both sides)


def probe_scores(train_x: torch.Tensor, train_y: np.ndarray, val_x: torch.Tensor, val_y: np.ndarray) -> dict:
    """Both probes' validation AUCs: 'all' (every training label) and 'few' (FEW_LABELS of them, mean over
    FEW_SUBSETS fixed subsets, each holding both classes)."""
    train_y = np.asarray(train_y).ravel()
    few = []
    for seed in range(FEW_SUBSETS):
        idx = few_label_subset(train_y, seed)
        few.append(probe_auc(train_x[idx], train_y[idx], val_x, val_y))
    return {"all": probe_auc(train_x, train_y, val_x, val_y), "few": float(np.mean(few))}


def few_label_subset(y: np.ndarray, seed: int) -> np.ndarray:
    """FEW_LABELS of the training rows, drawn with seed, with at least two of each class."""
    rng = np.random.default_rng(seed)
    n = max(4, round(FEW_LABELS * len(y)))
    while True:
        idx = np.sort(rng.choice(len(y), n, replace=False))
        if min(np.bincount(y[idx].astype(int), minlength=2)) >= 2:
            return idx


class Clock:
    """Training seconds with the probes taken off: start() when training begins, pause() / resume() around each
    probe; now() is the training time so far."""

    def __init__(self) -> None:
        self.t0 = self.paused_at = 0.0
        self.off = 0.0

    def start(self) -> None:
        self.t0, self.off = time.perf_counter(), 0.0

    def pause(self) -> float:
        self.paused_at = time.perf_counter()
        return self.paused_at - self.t0 - self.off

    def resume(self) -> None:
        self.off += time.perf_counter() - self.paused_at

    def now(self) -> float:
        return time.perf_counter() - self.t0 - self.off

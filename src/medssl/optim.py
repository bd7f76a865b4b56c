"""Optimisers and learning-rate schedules for the training loop: AdamW, LARS, SGD; warm-up then cosine."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from medssl.config import OptimConfig


def lr_factor(step: int, warmup: int, total: int, schedule: str = "cosine", min_ratio: float = 0.0) -> float:
    """Multiplier of the base lr at optimiser step `step` (0-based): linear warm-up to 1, then cosine to min_ratio."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise trust ratios (LARS, You et al. 2017; SimCLR's optimiser, Chen et al. 2020).

    update = lr * eta * ||w|| / ||g + wd w|| * (g + wd w), accumulated with momentum. Groups with lars=False
    (biases and normalisation parameters) get plain momentum SGD: no adaptation, no weight decay.
    """

    def __init__(self, params: Iterable[Any], lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 eta: float = 0.001):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, lars=True))

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """One update of every parameter that has a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                d = p.grad
                if group["lars"]:
                    d = d.add(p, alpha=group["weight_decay"])
                    w_norm, d_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(d)
                    trust = torch.where((w_norm > 0) & (d_norm > 0), group["eta"] * w_norm / d_norm, 1.0)
                    d = d.mul(trust)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = d.clone()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(d)
                p.add_(state["momentum_buffer"], alpha=-group["lr"])
        return loss


def make_optimizer(model: nn.Module, optim: OptimConfig) -> torch.optim.Optimizer:
    """AdamW, LARS or SGD; weight decay (and LARS adaptation) skip biases and normalisation parameters (ndim < 2).

    Parameters under a prefix of the model's optional `lr_scales` get lr * scale; unscaled groups come first, so
    param_groups[0] (the logged lr) has the base lr. Without lr_scales: two groups, as always (resume-compatible).
    """
    scales: dict[str, float] = getattr(model, "lr_scales", {})
    by_scale: dict[float, tuple[list[Tensor], list[Tensor]]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            scale = next((v for k, v in scales.items() if name == k or name.startswith(k + ".")), 1.0)
            by_scale.setdefault(float(scale), ([], []))[p.ndim < 2].append(p)
    groups = []
    for scale in sorted(by_scale or {1.0: ([], [])}, key=lambda v: v != 1.0):
        decay, rest = by_scale.get(scale, ([], []))
        lr = {"lr": optim.lr * scale, "lr_scale": scale}
        groups += [{"params": decay, "weight_decay": optim.weight_decay, **lr},
                   {"params": rest, "weight_decay": 0.0, "lars": False, **lr}]
    if optim.name == "lars":
        return LARS(groups, lr=optim.lr, momentum=optim.momentum, eta=optim.lars_eta)
    for g in groups:
        g.pop("lars", None)
    if optim.name == "sgd":
        return torch.optim.SGD(groups, lr=optim.lr, momentum=optim.momentum)
    return torch.optim.AdamW(groups, lr=optim.lr, betas=tuple(optim.betas))  # type: ignore[arg-type]

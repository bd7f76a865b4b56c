"""Heads put on a backbone's pooled features: projection (SimCLR, MoCo v2), prediction (BYOL), the linear head."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from medssl.errors import MedsslError


class ProjectionHead(nn.Sequential):
    """MLP projector (SimCLR, Chen et al. 2020; MoCo v2, Chen et al. 2020): (B, in_dim) -> (B, out_dim).

    num_layers linear layers; every hidden layer is Linear -> BatchNorm1d (if batch_norm) -> ReLU.
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int = 2, batch_norm: bool = True):
        layers: list[nn.Module] = []
        dim = in_dim
        for _ in range(num_layers - 1):
            layers.append(nn.Linear(dim, hidden_dim, bias=not batch_norm))   # BatchNorm has its own bias
            if batch_norm:
                layers.append(nn.BatchNorm1d(hidden_dim))
            layers.append(nn.ReLU(inplace=True))
            dim = hidden_dim
        layers.append(nn.Linear(dim, out_dim))
        super().__init__(*layers)


class PredictionHead(ProjectionHead):
    """BYOL predictor (Grill et al. 2020): Linear -> BatchNorm1d -> ReLU -> Linear, (B, dim) -> (B, out_dim)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int):
        super().__init__(in_dim, hidden_dim, out_dim, num_layers=2, batch_norm=True)


class LinearHead(nn.Module):
    """THE linear classifier head: pooled features (B, in_dim) -> logits (B, n_outputs), always 2-D.

    Used by fine-tuning, by the linear probe (its fitted weights copied in with `load`), by classifier bundles and
    Grad-CAM. batch_norm=True puts a BatchNorm1d without affine parameters first, as MAE's linear probing does
    (He et al. 2022): it rescales features whose magnitudes differ a lot between methods.
    """

    def __init__(self, in_dim: int, n_outputs: int, batch_norm: bool = False):
        super().__init__()
        self.norm = nn.BatchNorm1d(in_dim, affine=False) if batch_norm else nn.Identity()
        self.linear = nn.Linear(in_dim, n_outputs)

    def forward(self, x: Tensor) -> Tensor:
        """(B, in_dim) -> (B, n_outputs)."""
        return self.linear(self.norm(x))

    @torch.no_grad()
    def load(self, weight: np.ndarray | Tensor, bias: np.ndarray | Tensor) -> "LinearHead":
        """Copy weight (K, D) and bias (K,) in (a linear probe's); MedsslError when the shapes differ."""
        w, b = torch.as_tensor(np.asarray(weight)), torch.as_tensor(np.asarray(bias))
        if tuple(w.shape) != tuple(self.linear.weight.shape) or tuple(b.shape) != tuple(self.linear.bias.shape):
            raise MedsslError(f"head weights {tuple(w.shape)} / {tuple(b.shape)} do not fit the head "
                              f"{tuple(self.linear.weight.shape)}")
        self.linear.weight.copy_(w.to(self.linear.weight.dtype))
        self.linear.bias.copy_(b.to(self.linear.bias.dtype))
        return self

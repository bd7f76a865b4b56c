"""Heads put on a backbone's pooled features: projection (SimCLR, MoCo v2), prediction (BYOL), linear classifier."""

from __future__ import annotations

from torch import Tensor, nn


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


class LinearClassifier(nn.Module):
    """Linear probe on frozen features: (B, in_dim) -> logits (B, num_classes).

    batch_norm=True puts a BatchNorm1d without affine parameters first, as MAE's linear probing does
    (He et al. 2022): it rescales features whose magnitudes differ a lot between methods.
    """

    def __init__(self, in_dim: int, num_classes: int, batch_norm: bool = False):
        super().__init__()
        self.norm = nn.BatchNorm1d(in_dim, affine=False) if batch_norm else nn.Identity()
        self.linear = nn.Linear(in_dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """(B, in_dim) -> (B, num_classes)."""
        return self.linear(self.norm(x))

"""Shared fixtures: tiny synthetic data sets built once per session, and a CLI runner."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from medssl.cli import main

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_file(name: str) -> Path:
    """A file of ../shared/data, or skip the test with the reason when it is absent (a fresh clone elsewhere)."""
    path = SHARED_DATA / name
    if not path.is_file():
        pytest.skip(f"{path} not present: real-data tests need ../shared/data beside the checkout")
    return path


@pytest.fixture(scope="session")
def synth_manifest(tmp_path_factory) -> Path:
    """12 synthetic patients at 32 px written to disk (images, masks, manifest.csv)."""
    from medssl.synthetic import write_synthetic

    return write_synthetic(tmp_path_factory.mktemp("synth") / "data", 12, 32, seed=0, progress=False)


@pytest.fixture
def cli(capsys):
    """Run `medssl ARGS` in-process; returns (exit code, stdout, stderr)."""

    def run(*args: str) -> tuple[int, str, str]:
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


class TinyNet(nn.Module):
    """A small conv net with BatchNorm standing in for a backbone (running statistics change on a forward pass in
    train mode): (B, 1, H, W) -> (B, dim), average-pooled to pool x pool before the last layer; seeded weights."""

    def __init__(self, dim: int = 8, pool: int = 1):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(pool), nn.Flatten(), nn.Linear(8 * pool * pool, dim))
        self.feature_dim = dim

    def forward(self, x):
        return self.net(x)

"""Shared fixtures: tiny synthetic data sets built once per session, and a CLI runner.

Threads are set before torch loads: one intra-op thread per test process, and OMP_NUM_THREADS=1 in the environment
every process a test starts inherits (CLI subprocesses, spawned DDP ranks, loader workers). `make test` runs two
test processes on the 2-core machine (pytest-xdist), so both cores work without any thread waiting on another;
with two threads per process on a loaded machine, torch's spinning OpenMP threads made single tests 10x slower.
MEDSSL_TEST_THREADS overrides the count.

Decoded-image caches (medssl.data.cache) go to one temporary folder per test process ($MEDSSL_CACHE, removed at
exit), never beside the data: a test never writes into ../shared/data. Tests of the default place unset it.
"""

from __future__ import annotations

import os

THREADS = os.environ.get("MEDSSL_TEST_THREADS", "1")
os.environ["OMP_NUM_THREADS"] = THREADS
os.environ["MKL_NUM_THREADS"] = THREADS

import atexit  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

if "MEDSSL_CACHE" not in os.environ:
    os.environ["MEDSSL_CACHE"] = tempfile.mkdtemp(prefix="medssl-test-cache-")
    atexit.register(shutil.rmtree, os.environ["MEDSSL_CACHE"], True)

from pathlib import Path  # noqa: E402  (the thread settings above come before torch is imported)

import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from medssl.cli import main  # noqa: E402

torch.set_num_threads(int(THREADS))

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


# A tiny image-text run, shared by the zeroshot and retrieve tests
ALIGN_TINY = ["data.size=16", "data.synthetic_patients=16", "data.batch_size=8", "data.num_workers=0",
              "train.steps=3", "model.stem=small", "model.width=16", "model.options.context=32",
              "model.options.text_width=32", "model.options.text_depth=1", "model.options.text_heads=2", "model.options.proj_dim=16",
              "train.log_every=1"]


@pytest.fixture(scope="session")
def clip_run(tmp_path_factory):
    """A tiny CLIP run of `medssl align` (16 px, 3 steps) on built-in data: for zeroshot and retrieve."""
    from medssl.cli import main

    run = tmp_path_factory.mktemp("align") / "clip"
    sets = [a for kv in ALIGN_TINY for a in ("--set", kv)]
    assert main(["align", "--config", "configs/clip.yaml", "--out", str(run), "--quiet", *sets]) == 0
    return run

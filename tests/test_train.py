"""The training loop: schedule values, logging, checkpoints, NaN guard, collapse warning, on_step, init, exact
resume after SIGKILL, and 2-process DDP equal to one process on the joined batch."""

from __future__ import annotations

import csv
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medssl.checkpoint import load_checkpoint
from medssl.config import load_config, to_dict
from medssl.data.augment import preset
from medssl.data.datasets import TWO_VIEWS, BatchDataset, EpochLoader, ImageDataset
from medssl.errors import MedsslError
from medssl.losses import nt_xent
from medssl.models.trainable import Trainable
from medssl.optim import LARS, lr_factor
from medssl.runspec import RunSpec
from medssl.train import fit

SRC = Path(__file__).resolve().parents[1] / "src"


class Toy(Trainable):
    """A SimCLR-like model small enough for many steps: conv + BatchNorm + dropout, and a random input mask
    drawn from the global torch RNG (as MAE does), so exact resume must restore RNG and BN state."""

    def __init__(self, dim: int = 8):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Dropout(0.2), nn.Linear(16, dim))
        self.calls, self.steps = 0, []

    def forward(self, batch):
        self.calls += 1
        keep = (torch.rand(batch["view1"].shape[0], 1, 1, 1) > 0.2).float()
        z1, z2 = self.net(batch["view1"] * keep), self.net(batch["view2"])
        return {"loss": nt_xent(z1, z2, 0.2), "z_std": F.normalize(z1.detach(), dim=1).std(0).mean()}


def toy_source(n: int = 48, batch: int = 8, size: int = 16, workers: int = 0, rank: int = 0, world: int = 1):
    """Real batch pipeline over random in-memory images."""
    images = ImageDataset.from_array(np.random.default_rng(0).random((n, size, size), dtype=np.float32))
    ds = BatchDataset(images, batch, TWO_VIEWS, preset("chest_xray", size), seed=3, rank=rank, world_size=world)
    return EpochLoader(ds, workers)


def toy_cfg(*overrides: str) -> RunSpec:
    """fit's RunSpec from a pretraining config with overrides; the config is what its checkpoints record."""
    cfg = load_config(None, ["train.epochs=null", "train.steps=6", "train.log_every=2", "train.checkpoint_every=3",
                             "data.batch_size=8", "optim.lr=0.01", *overrides])
    return RunSpec(cfg.train, cfg.optim, record={"config": to_dict(cfg)})


def read_log(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_lr_factor_warmup_then_cosine():
    assert lr_factor(0, 4, 20) == pytest.approx(0.25)
    assert lr_factor(3, 4, 20) == pytest.approx(1.0)
    assert lr_factor(4, 4, 20) == pytest.approx(1.0)             # cosine starts at 1
    assert lr_factor(12, 4, 20) == pytest.approx(0.5)            # half-way through the 16 cosine steps
    assert lr_factor(20, 4, 20) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(20, 4, 20, min_ratio=0.1) == pytest.approx(0.1)
    assert lr_factor(10, 0, 20, schedule="constant") == 1.0


def test_fit_runs_logs_and_checkpoints(tmp_path):
    cfg = toy_cfg("optim.warmup_steps=2")
    metrics = fit(Toy(), lambda r, w: toy_source(), cfg, tmp_path, progress=False)
    assert metrics["steps"] == 6 and math.isfinite(metrics["final_loss"])
    rows = read_log(tmp_path)
    assert [int(r["step"]) for r in rows] == [2, 4, 6]
    assert set(rows[0]) >= {"step", "epoch", "loss", "lr", "images_per_s", "z_std"}
    # the logged lr is the one the step used: base * lr_factor(step - 1)
    for r in rows:
        assert float(r["lr"]) == pytest.approx(0.01 * lr_factor(int(r["step"]) - 1, 2, 6), rel=1e-5)
    assert int(rows[-1]["epoch"]) == 1                            # 6 batches per epoch: step 6 ends epoch 0
    ckpt = load_checkpoint(tmp_path)
    assert (ckpt["step"], ckpt["epoch"], ckpt["batch"]) == (6, 1, 0)
    assert ckpt["config"]["train"]["steps"] == 6 and ckpt["version"]
    assert set(ckpt["model"]) == set(Toy().state_dict())


def test_fit_trains_only_a_trainable(tmp_path):
    with pytest.raises(TypeError, match="Trainable"):
        fit(nn.Linear(2, 2), lambda r, w: toy_source(), toy_cfg(), tmp_path, progress=False)


def test_lars_trust_ratio_and_plain_groups():
    w = nn.Parameter(torch.tensor([[3.0, 4.0]]))                  # |w| = 5
    b = nn.Parameter(torch.tensor([1.0]))
    opt = LARS([{"params": [w]}, {"params": [b], "lars": False}], lr=1.0, momentum=0.0, eta=0.001,
               weight_decay=0.0)
    w.grad, b.grad = torch.tensor([[0.6, 0.8]]), torch.tensor([0.5])  # |g| = 1
    opt.step()
    assert torch.allclose(w, torch.tensor([[3.0 - 0.003, 4.0 - 0.004]]))  # lr * eta * |w| / |g| * g
    assert torch.allclose(b, torch.tensor([0.5]))                 # plain SGD


class NanAt3(Toy):
    def forward(self, batch):
        out = super().forward(batch)
        if self.calls == 3:
            out["loss"] = out["loss"] * float("nan")
        return out


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    cfg = toy_cfg("train.checkpoint_every=1")
    with pytest.raises(MedsslError, match=r"step 3: loss is nan; the last good checkpoint is .*last\.pt"):
        fit(NanAt3(), lambda r, w: toy_source(), cfg, tmp_path, progress=False)
    ckpt = load_checkpoint(tmp_path)
    assert ckpt["step"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    assert [int(r["step"]) for r in read_log(tmp_path)] == [2]


class BreaksWeights(Toy):
    def on_step(self, step, total):
        if step == 2:
            self.net[0].weight.data.fill_(float("inf"))


def test_broken_weights_are_never_checkpointed(tmp_path):
    with pytest.raises(MedsslError, match=r"step 2: the weights became nan or inf.*checkpoint is .*last\.pt"):
        fit(BreaksWeights(), lambda r, w: toy_source(), toy_cfg("train.checkpoint_every=1"), tmp_path, progress=False)
    assert load_checkpoint(tmp_path)["step"] == 1


@pytest.mark.parametrize("optim, precision", [("lars", "32-true"), ("sgd", "32-true"), ("adamw", "bf16-mixed")])
def test_optimisers_precisions_and_clipping(optim, precision, tmp_path):
    cfg = toy_cfg(f"optim.name={optim}", f"train.precision={precision}", "optim.grad_clip=0.1", "train.steps=2")
    assert math.isfinite(fit(Toy(), lambda r, w: toy_source(), cfg, tmp_path, progress=False)["final_loss"])


class Collapsed(Toy):
    def forward(self, batch):
        return {**super().forward(batch), "z_std": torch.tensor(0.0)}


def test_collapse_warning_is_one_line_once(tmp_path, capsys):
    fit(Collapsed(), lambda r, w: toy_source(), toy_cfg("train.log_every=1"), tmp_path, progress=False)
    err = capsys.readouterr().err
    assert err.count("may be collapsing") == 1


class Recorder(Toy):
    def on_step(self, step, total):
        self.steps.append((step, total))


def test_on_step_after_every_optimiser_step(tmp_path):
    model = Recorder()
    fit(model, lambda r, w: toy_source(), toy_cfg(), tmp_path, progress=False)
    assert model.steps == [(s, 6) for s in range(1, 7)]


def test_init_loads_matching_weights_and_reports(tmp_path, capsys):
    fit(Toy(), lambda r, w: toy_source(), toy_cfg(), tmp_path / "a", progress=False)
    trained = load_checkpoint(tmp_path / "a")["model"]
    bigger = Toy(dim=8)
    bigger.extra_head = nn.Linear(8, 2)                           # a head the first stage did not have
    fit(bigger, lambda r, w: toy_source(), toy_cfg("train.steps=1", "optim.lr=1e-12"), tmp_path / "b",
        init=tmp_path / "a", progress=False)
    out = capsys.readouterr().out
    assert f"loaded {len(trained)} tensors" in out and "extra_head" in out
    assert torch.allclose(bigger.net[0].weight, trained["net.0.weight"], atol=1e-9)


def test_epochs_mode_and_resume_of_a_finished_run(tmp_path):
    cfg = toy_cfg("train.steps=null", "train.epochs=2")
    assert fit(Toy(), lambda r, w: toy_source(), cfg, tmp_path, progress=False)["steps"] == 12
    again = fit(Toy(), lambda r, w: toy_source(), cfg, tmp_path, resume=True, progress=False)
    assert again["steps"] == 12 and again["steps_this_run"] == 0
    assert [int(r["step"]) for r in read_log(tmp_path)] == [2, 4, 6, 8, 10, 12]


# ---- resume after SIGKILL -------------------------------------------------------------------------------------

SCRIPT = """
import sys, time
sys.path.insert(0, {tests!r})
import test_train as t
from medssl.train import fit

class Slow(t.Toy):
    def forward(self, batch):
        time.sleep({delay})                 # lets the parent kill it mid-run
        return super().forward(batch)

torch = t.torch
torch.manual_seed(0)
cfg = t.toy_cfg("train.steps=40", "train.checkpoint_every=5", "train.log_every=1")
fit(Slow(), lambda r, w: t.toy_source(n=64, workers=1), cfg, sys.argv[1], resume=len(sys.argv) > 2, progress=False)
"""


def _script(tmp_path: Path, delay: float) -> Path:
    path = tmp_path / f"run_{delay}.py"
    path.write_text(textwrap.dedent(SCRIPT.format(tests=str(Path(__file__).parent), delay=delay)))
    return path


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}


def test_resume_after_sigkill_is_exact(tmp_path):
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    ref = subprocess.Popen([sys.executable, str(_script(tmp_path, 0.0)), str(reference)], env=_env())
    proc = subprocess.Popen([sys.executable, str(_script(tmp_path, 0.05)), str(killed)], env=_env(),
                            start_new_session=True)
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if (killed / "log.csv").is_file() and len(read_log(killed)) >= 12:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)                        # the run and its data-loader worker
    proc.wait()
    assert 12 <= len(read_log(killed)) < 40
    ckpt_step = load_checkpoint(killed)["step"]
    assert ckpt_step % 5 == 0 and ckpt_step % 8 != 0              # mid-epoch: 8 batches per epoch
    subprocess.run([sys.executable, str(_script(tmp_path, 0.0)), str(killed), "--resume"], env=_env(), check=True,
                   timeout=120)
    assert ref.wait(timeout=120) == 0
    assert [int(r["step"]) for r in read_log(killed)] == list(range(1, 41))
    a, b = load_checkpoint(reference), load_checkpoint(killed)
    assert a["step"] == b["step"] == 40
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key  # bitwise: same batches, RNG draws, BN stats
    assert [r["loss"] for r in read_log(reference)] == [r["loss"] for r in read_log(killed)]


# ---- DDP ------------------------------------------------------------------------------------------------------

class LinearSimCLR(Trainable):
    """Linear encoder + NT-Xent with the cross-rank gather: no BatchNorm, so per-rank statistics cannot differ."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.enc = nn.Linear(12, 6)

    def forward(self, batch):
        return {"loss": nt_xent(self.enc(batch["view1"]), self.enc(batch["view2"]), 0.5)}


class FixedBatches:
    """Global batch k is a fixed random (8, 12) pair; rank r of W gets rows [r * 8 / W, (r + 1) * 8 / W)."""

    def __init__(self, rank: int, world: int):
        self.rank, self.world = rank, world

    def __len__(self):
        return 4

    def epoch(self, epoch, start=0):
        for k in range(start, 4):
            g = torch.Generator().manual_seed(100 * epoch + k)
            v1, v2 = torch.randn(8, 12, generator=g), torch.randn(8, 12, generator=g)
            n = 8 // self.world
            rows = slice(self.rank * n, (self.rank + 1) * n)
            yield {"view1": v1[rows], "view2": v2[rows]}


def fixed_batches(rank: int, world: int) -> FixedBatches:
    return FixedBatches(rank, world)


def test_ddp_two_processes_equal_one_process_on_the_joined_batch(tmp_path):
    common = ["train.steps=3", "train.log_every=1", "optim.name=sgd", "optim.momentum=0", "optim.weight_decay=0",
              "optim.lr=0.5", "optim.schedule=constant", "train.accelerator=cpu"]
    one = toy_cfg(*common)
    two = toy_cfg(*common, "train.devices=2", "train.strategy=ddp_spawn")
    fit(LinearSimCLR(), fixed_batches, one, tmp_path / "one", progress=False)
    fit(LinearSimCLR(), fixed_batches, two, tmp_path / "two", progress=False)
    loss1 = [float(r["loss"]) for r in read_log(tmp_path / "one")]
    loss2 = [float(r["loss"]) for r in read_log(tmp_path / "two")]
    assert loss1 == pytest.approx(loss2, abs=1e-5)                # mean of the ranks' losses = the joined loss
    w1, w2 = load_checkpoint(tmp_path / "one")["model"], load_checkpoint(tmp_path / "two")["model"]
    for key in w1:                                                # equal weights after 3 SGD steps: equal gradients
        assert torch.allclose(w1[key], w2[key], atol=1e-6), key
    assert load_checkpoint(tmp_path / "two")["world_size"] == 2
    assert len(load_checkpoint(tmp_path / "two")["rng"]) == 2      # every rank's RNG state is kept


def test_launch_script_leaves_a_spawned_strategy_to_fit():
    """`medssl pretrain --set train.strategy=ddp_spawn` failed: fabric.launch() without a function, which a spawn
    launcher refuses. Only a strategy whose processes are copies of the command is launched before the data."""
    from medssl.runspec import TrainConfig
    from medssl.train import launch_script, launched, make_fabric

    fabric = make_fabric(TrainConfig(accelerator="cpu", devices=2, strategy="ddp_spawn"))
    assert launch_script(fabric) is False and not launched(fabric)


def test_each_process_takes_its_share_of_the_cores(monkeypatch):
    from medssl.runspec import TrainConfig
    from medssl.train import process_threads

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert process_threads(TrainConfig(), 2) == 1          # two DDP processes on two cores: one thread each
    assert process_threads(TrainConfig(), 1) == 2
    assert process_threads(TrainConfig(), 4) == 1          # never zero
    assert process_threads(TrainConfig(threads=3), 2) == 3  # asked for: kept

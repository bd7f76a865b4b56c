"""run_pretrain end to end on tiny data: the run folder, each method, MedMNIST train split, resume, refusals."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from medssl.checkpoint import load_checkpoint
from medssl.config import load_config, to_dict
from medssl.data.records import read_manifest
from medssl.errors import MedsslError
from medssl.pretrain import load_records, resume_config, run_pretrain
from medssl.optim import lr_factor

TINY = ["data.size=16", "data.batch_size=8", "data.synthetic_patients=4", "data.num_workers=0", "model.stem=small",
        "model.width=16", "train.epochs=null", "train.steps=3", "train.log_every=1", "train.checkpoint_every=2"]
METHOD_OPTIONS = {
    "simclr": ["model.options.hidden_dim=32"],
    "micle": ["model.options.hidden_dim=32", "data.pair_by=study"],
    "moco": ["model.options.hidden_dim=32", "model.options.queue_size=64"],
    "byol": ["model.options.hidden_dim=32", "model.options.proj_dim=16"],
    "mae": ["model.backbone=vit_tiny", "model.stem=null", "model.width=null", "model.depth=1", "model.options.decoder_depth=1",
            "model.options.decoder_dim=32"],
}


def tiny(method: str, *more: str):
    return load_config(None, [f"method={method}", *TINY, *METHOD_OPTIONS[method], *more])


def log_steps(run_dir) -> list[int]:
    with open(run_dir / "log.csv", newline="") as f:
        return [int(r["step"]) for r in csv.DictReader(f)]


def test_run_folder_holds_config_log_checkpoint_metrics_and_data(tmp_path):
    cfg = tiny("simclr")
    run = tmp_path / "run"
    metrics = run_pretrain(cfg, run, progress=False)
    assert metrics["steps"] == 3 and np.isfinite(metrics["final_loss"]) and metrics["images_per_s"] > 0
    assert json.loads((run / "metrics.json").read_text())["steps"] == 3
    assert load_config(run / "config.yaml") == cfg
    assert (run / "data" / "manifest.csv").is_file()              # the synthetic data it trained on
    records = read_manifest(run / "data" / "manifest.csv")
    assert metrics["images"] == sum(r.split == "train" for r in records) < len(records)   # its train split only
    assert log_steps(run) == [1, 2, 3]
    ckpt = load_checkpoint(run)
    assert ckpt["step"] == 3 and ckpt["config"] == to_dict(cfg)  # the run's record beside the weights
    assert ckpt["spec"] == cfg.model_spec().to_dict() and ckpt["preprocess"] == {"size": 16, "channels": 1}
    with pytest.raises(MedsslError, match="holds a run with checkpoints; continue it with --resume"):
        run_pretrain(cfg, run, progress=False)
    longer = resume_config(run, ["train.steps=5"])
    assert run_pretrain(longer, run, resume=True, progress=False)["steps"] == 5
    assert log_steps(run) == [1, 2, 3, 4, 5]
    with open(run / "log.csv", newline="") as f:
        lr = {int(r["step"]): float(r["lr"]) for r in csv.DictReader(f)}
    assert lr[2] == pytest.approx(1e-3 * lr_factor(1, 0, 3), rel=1e-5)    # the first run's schedule
    assert lr[4] == pytest.approx(1e-3 * lr_factor(3, 0, 5), rel=1e-5)    # stretched to the new length


@pytest.mark.parametrize("method", ["micle", "moco", "byol", "mae"])
def test_each_method_pretrains_a_few_steps(method, tmp_path):
    metrics = run_pretrain(tiny(method, "train.steps=2"), tmp_path / method, progress=False)
    assert metrics["steps"] == 2 and np.isfinite(metrics["final_loss"])
    if method == "moco":
        assert "queue" in load_checkpoint(tmp_path / method)["model"]   # resumes with the same negatives


def test_medmnist_npz_trains_on_its_train_split_only(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {f"{s}_images": rng.integers(0, 256, (n, 20, 20), dtype=np.uint8) for s, n in
              (("train", 10), ("val", 3), ("test", 4))}
    arrays.update({f"{s}_labels": rng.integers(0, 2, (len(arrays[f"{s}_images"]), 1)) for s in ("train", "val", "test")})
    np.savez(tmp_path / "pneumoniamnist_20.npz", **arrays)
    cfg = tiny("simclr", f"data.source={tmp_path / 'pneumoniamnist_20.npz'}", "train.steps=1")
    assert len(load_records(cfg, tmp_path / "run")) == 10
    metrics = run_pretrain(cfg, tmp_path / "run", progress=False)
    assert metrics["images"] == 10 and not (tmp_path / "run" / "data").exists()


def test_refusals(tmp_path):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(MedsslError, match="busy: folder is not empty"):
        run_pretrain(tiny("simclr"), busy, progress=False)
    with pytest.raises(MedsslError, match="not a pretraining run folder"):
        resume_config(busy)
    with pytest.raises(MedsslError, match="no such run folder"):
        run_pretrain(tiny("simclr"), tmp_path / "nowhere", resume=True, progress=False)


def test_compile_falls_back_to_eager_in_one_line_when_torch_compile_fails(tmp_path, capsys, monkeypatch):
    # a real compile takes tens of seconds (bench/data_scale.py measures it); here the compiler fails at the first
    # step, as it does without a C++ toolchain, and the run trains eager from that same step on
    import torch

    def broken_compile(self, *args, **kwargs):
        def fail(*a, **k):
            raise RuntimeError("inductor: no working C++ compiler found\nlong details")
        self._compiled_call_impl = fail

    monkeypatch.setattr(torch.nn.Module, "compile", broken_compile)
    metrics = run_pretrain(tiny("simclr", "train.steps=2", "train.compile=true"), tmp_path / "run", progress=False)
    out = capsys.readouterr().out
    assert out.count("train.compile: torch.compile failed (RuntimeError: inductor: no working C++ compiler "
                     "found); training eager") == 1
    assert metrics["steps"] == 2 and np.isfinite(metrics["final_loss"])

"""data.augment_on: batches that travel as uint8 and are augmented on the training device give the views the loader
path gives for the same key (same parameters, same pixels on the CPU), and `auto` keeps the faster path."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from medssl.checkpoint import load_checkpoint
from medssl.config import load_config
from medssl.data.augment import Augment, preset
from medssl.data.datasets import LABELLED_IMAGE, PATIENT_PAIRS, TWO_VIEWS, BatchDataset, EpochLoader, ImageDataset
from medssl.data.records import Record
from medssl.errors import MedsslError
from medssl.pretrain import run_pretrain
from medssl.train import _AugmentChoice


def _images(n: int = 40, size: int = 24) -> ImageDataset:
    x = np.random.default_rng(n).random((n, size, size), dtype=np.float32)
    records = [Record(path=f"img{i}", patient_id=f"p{i // 2}", study_id=f"s{i}", index=i) for i in range(n)]
    return ImageDataset.from_array(x, records)


def _dataset(spec=TWO_VIEWS, augment_on: str = "device", **kw) -> BatchDataset:
    images = _images()
    if spec is PATIENT_PAIRS:
        from medssl.data.datasets import MultiInstanceDataset

        kw["pairs"] = MultiInstanceDataset(images, "patient", seed=3)
    if spec.target:
        kw["targets"] = np.arange(len(images)) % 2
    # every random transform on: crop, rotation, shift, flips, intensity, blur and noise for every sample
    aug = preset("pathology", 16, rotation_deg=20.0, translate=0.1, noise_p=1.0, blur_p=1.0)
    return BatchDataset(images, 8, spec, aug, seed=5, augment_on=augment_on, **kw)


@pytest.mark.parametrize("spec", [TWO_VIEWS, PATIENT_PAIRS, LABELLED_IMAGE], ids=["two_views", "micle", "labelled"])
def test_device_path_gives_the_loader_paths_views_for_the_same_key(spec):
    ds = _dataset(spec)
    for key in [(0, 0), (0, 3), (2, 1)]:
        loader_made = ds[(*key, False)]
        travelling = ds[(*key, True)]
        assert travelling["pixels"].dtype == torch.uint8                     # the batch travels as uint8 ...
        assert not any(k in travelling for k in spec.views)                  # ... with no float views
        finished = ds.finish(travelling)
        assert sorted(finished) == sorted(loader_made)
        for k, v in loader_made.items():
            assert v.dtype == finished[k].dtype and v.shape == finished[k].shape, k
            assert torch.allclose(v.float(), finished[k].float(), atol=1e-6), k  # the same pixels on the CPU
    assert ds.finish(loader_made) is loader_made                             # a loader batch passes untouched


def test_the_travelling_numbers_are_the_loader_paths_parameters():
    cfg = preset("chest_xray", 16)
    a, b = Augment(cfg, seed=9), Augment(cfg, seed=9)
    for _ in range(3):                                                       # the same stream, draw after draw
        p, (u, seed) = a.params(32), b.draw(32)
        q = b.derive(u, seed)
        assert sorted(p) == sorted(q) and all(torch.equal(p[k], q[k]) for k in p)


def test_same_seeds_give_the_same_distribution_of_augmented_images():
    """Over many batches both paths give the same per-pixel mean and spread (a distribution check that also
    holds where the device's noise generator differs from the CPU's)."""
    loader_ds, device_ds = _dataset(augment_on="loader"), _dataset(augment_on="device")
    keys = [(e, k) for e in range(4) for k in range(len(loader_ds))]
    a = torch.cat([loader_ds[key]["view1"] for key in keys])
    b = torch.cat([device_ds.finish(device_ds[key])["view1"] for key in keys])
    assert a.shape == b.shape == (len(keys) * 8, 1, 16, 16)
    assert torch.allclose(a.mean(0), b.mean(0), atol=1e-5) and torch.allclose(a.std(0), b.std(0), atol=1e-5)


def test_epoch_loader_with_a_worker_carries_device_batches_and_switches():
    ds = _dataset(augment_on="device")
    loader = EpochLoader(ds, num_workers=1)
    try:
        batches = list(loader.epoch(1))
        assert all("pixels" in b for b in batches)
        made = [ds[(1, k, False)] for k in range(len(ds))]
        assert all(torch.allclose(loader.finish(b)["view2"], m["view2"], atol=1e-6) for b, m in zip(batches, made))
        loader.use_device(False)                                             # keys from now on: the loader path
        assert not any("pixels" in b for b in loader.epoch(1))
    finally:
        loader.close()


def test_bad_augment_on_is_one_line():
    with pytest.raises(MedsslError, match="data.augment_on='gpu' must be one of loader, device, auto"):
        load_config(None, ["data.augment_on=gpu"])
    with pytest.raises(MedsslError, match="augment_on"):
        _dataset(augment_on="gpu")


class _FakeLoader:
    def __init__(self, in_flight: int):
        self.in_flight, self.on_device = in_flight, False

    def use_device(self, on: bool) -> None:
        self.on_device = on


@pytest.mark.parametrize("device_faster", [True, False])
def test_auto_times_both_paths_skipping_batches_in_flight(device_faster):
    loader = _FakeLoader(in_flight=2)
    chooser = _AugmentChoice(loader)
    t, step, switch, decided = chooser.last, 0, None, False
    while not decided:
        step += 1
        # after a switch at step s the loader had already handed out batches s+1..s+in_flight in the old mode
        on_device = switch is not None and step > switch + loader.in_flight
        t += (0.5 if device_faster else 2.0) if on_device else 1.0
        decided = chooser.observe(on_device, t, 100 - step)
        chooser.last = t                                      # no time after the optimiser step in this fake
        if switch is None and loader.on_device:
            switch = step
        assert step < 30
    choice = chooser.decide()
    chooser.set(choice)
    assert choice == ("device" if device_faster else "loader") and loader.on_device == device_faster
    assert len(chooser.times[False]) >= 3 and len(chooser.times[True]) == 3
    assert all(s == 1.0 for s in chooser.times[False])                   # no device step counted as a loader one


def test_auto_in_a_run_too_short_to_time_both_stays_on_the_loader():
    chooser = _AugmentChoice(_FakeLoader(in_flight=2))
    assert not chooser.observe(False, chooser.last + 1, steps_left=4)
    assert chooser.choice == "loader"


TINY = ["method=simclr", "data.size=16", "data.batch_size=8", "data.synthetic_patients=12", "data.num_workers=1",
        "model.stem=small", "model.width=8", "model.options.hidden_dim=16", "train.epochs=null", "train.steps=14",
        "train.log_every=1", "train.checkpoint_every=7", "train.threads=1", "data.augment_overrides={noise_p: 1.0}"]


def _losses(run_dir) -> list[float]:
    with open(run_dir / "log.csv", newline="") as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


def test_pretraining_gives_the_same_run_on_every_path_and_auto_records_its_choice(tmp_path, capsys):
    runs = {}
    for where in ("loader", "device", "auto"):
        run_pretrain(load_config(None, [*TINY, f"data.augment_on={where}"]), tmp_path / where, progress=False)
        runs[where] = _losses(tmp_path / where)
    assert runs["loader"] == pytest.approx(runs["device"], rel=1e-5)
    assert runs["loader"] == pytest.approx(runs["auto"], rel=1e-5)    # auto switched twice mid-run, same batches
    err = capsys.readouterr().err
    assert "data.augment_on=auto: loader" in err and " s/step" in err
    choice = load_checkpoint(tmp_path / "auto" / "checkpoints" / "last.pt")["augment_on"]
    assert choice in ("loader", "device")

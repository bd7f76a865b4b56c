"""`medssl pretrain` in a new user's first hour: cheap checks before decoding, failed runs that do not block a rerun,
--resume with overrides that keep the model, --skip-bad, and a --help with examples."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import yaml

from medssl.cli import build_parser
from medssl.config import load_config, save_config
from medssl.data.preprocess import Preprocess
from medssl.data.records import read_manifest
from medssl.errors import MedsslError
from medssl.pretrain import run_pretrain

SIMCLR = Path(__file__).resolve().parents[1] / "configs" / "simclr.yaml"
TINY = ["data.size=16", "data.synthetic_patients=4", "data.batch_size=8", "data.num_workers=0", "model.stem=small",
        "model.width=16", "model.options.hidden_dim=32", "train.steps=3", "train.log_every=1", "train.checkpoint_every=2",
        "train.threads=1"]


def pretrain(cli, out, *sets: str, more: tuple[str, ...] = ()):
    """`medssl pretrain --config configs/simclr.yaml` with the tiny settings (later --set win)."""
    args = ["pretrain", "--config", SIMCLR, "--out", out, "--quiet", *more]
    for s in (*TINY, *sets):
        args += ["--set", s]
    return cli(*args)


def one_line(err: str, *words: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("medssl: error: "), err
    assert all(w in lines[0] for w in words), err
    return lines[0]


def log_steps(run: Path) -> list[int]:
    with open(run / "log.csv", newline="") as f:
        return [int(r["step"]) for r in csv.DictReader(f)]


@pytest.fixture
def no_decoding(monkeypatch):
    """Fail the test if any image is decoded (the checks under test must come before)."""
    def decode(self, source):
        raise AssertionError("an image was decoded before the cheap checks")
    monkeypatch.setattr(Preprocess, "decode", decode)


@pytest.fixture
def broken_copy(synth_manifest, tmp_path) -> tuple[Path, str]:
    """A copy of the synthetic data set with one unreadable image; (manifest, the broken file's name)."""
    data = tmp_path / "broken"
    shutil.copytree(synth_manifest.parent, data)
    name = Path(read_manifest(data / "manifest.csv")[0].path).name
    (data / "images" / name).write_bytes(b"not a png")
    return data / "manifest.csv", name


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A 3-step SimCLR run with checkpoints (copied by each test that changes it)."""
    run = tmp_path_factory.mktemp("finished") / "run"
    cfg = load_config(SIMCLR, TINY)
    run_pretrain(cfg, run, progress=False)
    return run


# item 4: cheap checks first

def test_batch_size_above_the_images_of_the_manifest_fails_before_decoding_and_writes_nothing(
        tmp_path, synth_manifest, no_decoding):
    n = len(read_manifest(synth_manifest))
    cfg = load_config(SIMCLR, [*TINY, f"data.source={synth_manifest}", "data.batch_size=999"])
    with pytest.raises(MedsslError, match=rf"data\.batch_size=999 is larger than the {n} training images"):
        run_pretrain(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_batch_size_above_the_builtin_patients_fails_at_once_from_the_command_line(cli, tmp_path):
    code, _, err = pretrain(cli, tmp_path / "run", "data.batch_size=128")
    assert code == 2
    one_line(err, "data.batch_size=128", "data.synthetic_patients=4")
    assert not (tmp_path / "run").exists()                       # nothing left to block the rerun


def test_a_missing_init_checkpoint_is_named_before_decoding(tmp_path, synth_manifest, no_decoding):
    cfg = load_config(SIMCLR, [*TINY, f"data.source={synth_manifest}"])
    with pytest.raises(MedsslError, match="nope.pt: no such checkpoint file"):
        run_pretrain(cfg, tmp_path / "run", init=tmp_path / "nope.pt", progress=False)


# item 3: a failed run does not block a rerun; --resume takes overrides that keep the model

def test_a_run_that_failed_before_its_first_checkpoint_does_not_block_a_rerun(cli, tmp_path, broken_copy):
    manifest, name = broken_copy
    run = tmp_path / "run"
    code, _, err = pretrain(cli, run, "data.split=null", more=("--data", str(manifest)))
    assert code == 2
    one_line(err, name)                                          # item 6: one line naming the unreadable file
    assert (run / "config.yaml").is_file() and not (run / "checkpoints" / "last.pt").exists()
    code, out, err = pretrain(cli, run)                          # another config, same --out: starts again
    assert code == 0, err
    assert "for 3 steps" in out and log_steps(run) == [1, 2, 3]
    assert load_config(run / "config.yaml").data.source is None  # config.yaml is the run that ran


def test_an_unfinished_folder_with_foreign_files_is_still_refused(tmp_path):
    run = tmp_path / "run"
    save_config(load_config(SIMCLR, TINY), run / "config.yaml")
    (run / "notes.txt").write_text("mine")
    with pytest.raises(MedsslError, match="folder is not empty and holds something else"):
        run_pretrain(load_config(SIMCLR, TINY), run, progress=False)


def test_resume_applies_overrides_that_keep_the_model_and_records_them(cli, tmp_path, finished_run):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    code, out, err = cli("pretrain", "--resume", run, "--set", "train.steps=5", "--set", "data.batch_size=4",
                         "--quiet")
    assert code == 0, err
    assert "resume: applied data.batch_size=4 (was 8), train.steps=5 (was 3)" in out.splitlines()
    cfg = load_config(run / "config.yaml")
    assert cfg.data.batch_size == 4 and cfg.train.steps == 5      # config.yaml: the settings of the last part
    assert yaml.safe_load((run / "resumes.yaml").read_text()) == [   # and from which step they hold
        {"step": 3, "applied": {"data.batch_size": {"was": 8, "now": 4}, "train.steps": {"was": 3, "now": 5}}}]
    assert log_steps(run) == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("override, key", [("model.options.temperature=0.5", "model.options.temperature"),
                                           ("model.backbone=resnet34", "model.backbone"),
                                           ("method=byol", "method")])
def test_resume_refuses_an_override_that_changes_the_model_naming_the_key(cli, finished_run, override, key):
    before = (finished_run / "config.yaml").read_text()
    code, _, err = cli("pretrain", "--resume", finished_run, "--set", override, "--quiet")
    assert code == 2
    one_line(err, f"--resume cannot change {key} ", "train.steps")  # names the key and what may change
    assert (finished_run / "config.yaml").read_text() == before and not (finished_run / "resumes.yaml").exists()


def test_resume_of_a_run_without_checkpoint_accepts_any_override(cli, tmp_path):
    run = tmp_path / "run"
    save_config(load_config(SIMCLR, [*TINY, "data.batch_size=128"]), run / "config.yaml")  # left by a failed run
    code, out, err = cli("pretrain", "--resume", run, "--set", "data.batch_size=8", "--set",
                         "model.options.temperature=0.2", "--quiet")
    assert code == 0, err
    assert "resume: applied data.batch_size=8 (was 128), model.options.temperature=0.2 (was 0.1)" in out
    assert load_config(run / "config.yaml").model.options.temperature == 0.2


# item 6: --skip-bad

def test_skip_bad_goes_past_unreadable_images_and_lists_them(cli, tmp_path, broken_copy):
    manifest, name = broken_copy
    run = tmp_path / "run"
    code, _, err = pretrain(cli, run, "data.split=null", more=("--data", str(manifest), "--skip-bad"))
    assert code == 0, err
    assert "skipped 1 unreadable image(s):" in err and name in err
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["images"] == len(read_manifest(manifest)) - 1
    assert [Path(s["path"]).name for s in metrics["skipped"]] == [name]
    assert load_config(run / "config.yaml").data.skip_bad is True


# item 10: --help

def test_pretrain_help_has_examples_and_every_option_has_help():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    pre = sub.choices["pretrain"]
    assert all(a.help for a in pre._actions), [a.dest for a in pre._actions if not a.help]
    text = pre.format_help()
    assert "examples:" in text and "medssl pretrain --resume" in text and "--skip-bad" in text
    assert "\n  medssl pretrain --config configs/simclr.yaml" in text   # kept as written (RawDescription)

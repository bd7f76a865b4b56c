"""`medssl evaluate` on a new user's small, imperfect data (issue 10): checks before work, outputs that degrade
instead of failing, numbers that say what they are (CIs with their resample counts, no spread for one seed,
asked and actual label fractions, a baseline always in the table), --skip-bad, step-level progress and --help."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medssl.checkpoint import atomic_save
from medssl.data.preprocess import Preprocess
from medssl.data.records import Record, write_manifest
from medssl.data.tasks import Task
from medssl.errors import MedsslError
from medssl.evaluate.metrics import over_seeds
from medssl.evaluate.run import EvalOptions, run_evaluate
from medssl.models.factory import ModelSpec, build_backbone

from conftest import TinyNet

BINARY = Task("binary", ("normal", "pneumonia"))
SIZE = 16


def labelled_set(root: Path, counts: dict[str, dict[str, int]], write: bool = True) -> Path:
    """A manifest of one-image patients: counts[split][class] images, bright for pneumonia, dark for normal;
    write=False leaves the image files absent (for checks that must come before any decoding)."""
    rng = np.random.default_rng(0)
    records = []
    for split, per_class in counts.items():
        for label, n in per_class.items():
            for i in range(n):
                path = root / "images" / f"{split}_{label}_{i}.png"
                if write:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    level = 180 if label == "pneumonia" else 60
                    Image.fromarray(np.clip(rng.normal(level, 30, (SIZE, SIZE)), 0, 255).astype(np.uint8)).save(path)
                records.append(Record(path=str(path), patient_id=f"{split}-{label}-{i}", labels=(label,), split=split))
    return write_manifest(records, root / "manifest.csv")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A pretraining checkpoint of a random ResNet-18 at 16 px (what load_bundle needs, without pretraining)."""
    spec = ModelSpec(backbone="resnet18", image_size=SIZE)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("pre") / "last.pt"
    atomic_save({"model": build_backbone(spec).state_dict(), "spec": spec.to_dict(),
                 "preprocess": Preprocess(SIZE, 1).to_dict(), "config": {}}, path)
    return path


SMALL = {"train": {"normal": 6, "pneumonia": 6}, "val": {"normal": 2, "pneumonia": 2},
         "test": {"normal": 1, "pneumonia": 2}}  # 3 test images: t-SNE cannot run, AUC undefined on resamples


@pytest.fixture(scope="module")
def small_run(checkpoint, tmp_path_factory) -> tuple[Path, dict]:
    """linear + kNN with the scratch baseline, one seed, on a 3-image test split; no UserWarning allowed."""
    root = tmp_path_factory.mktemp("small")
    manifest = labelled_set(root / "data", SMALL)
    torch.set_num_threads(1)
    opts = EvalOptions(checkpoint=str(checkpoint), data=str(manifest), out=root / "ev", protocols=("linear", "knn"),
                       fractions=(0.01, 1.0), seeds=1, baseline="scratch", n_boot=100, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)                # raw warnings were item 5
        metrics = run_evaluate(opts)
    return root / "ev", metrics


def test_a_tiny_test_split_ends_in_a_report_that_says_why_a_plot_is_missing(small_run):
    out, metrics = small_run
    html = (out / "report.html").read_text()
    assert "Not drawn: t-SNE needs at least 5 test images; the test split has 3." in html
    assert not (out / "plots" / "tsne.png").exists() and (out / "plots" / "roc.png").is_file()
    # a 3-image test split is said to be too small, in the results, the report and metrics.json
    small = [n for n in metrics["notes"] if n.startswith("the test split is too small")]
    assert len(small) == 1 and "3 images of 3 patients: normal 1, pneumonia 2" in small[0]
    assert small[0] in (out / "results.md").read_text() and "too small for its metrics" in html


def test_bootstrap_cis_carry_their_resample_count_everywhere(small_run):
    out, metrics = small_run
    run = next(r for r in metrics["runs"] if r["protocol"] == "linear" and r["fraction"] == 1.0)
    used = run["bootstrap"]["resamples"]["roc_auc_macro"]
    assert run["bootstrap"]["n_boot"] == 100 and 0 < used < 100   # a resample without a normal image has no AUC
    assert run["bootstrap"]["resamples"]["accuracy"] == 100
    text = f"from {used} of 100 resamples"
    assert text in (out / "results.md").read_text() and text in (out / "report.html").read_text()
    assert "AUC 95 % CI" in (out / "results.md").read_text()


def test_one_seed_prints_no_spread():
    from medssl.evaluate.outputs import mean_spread

    assert mean_spread(over_seeds([0.5])) == "0.500"
    assert mean_spread(over_seeds([0.5, 0.7])) == "0.600 ± 0.141"


def test_one_seed_results_have_no_zero_spread(small_run):
    out, _ = small_run
    md = (out / "results.md").read_text()
    assert "± 0.000" not in md and "one seed, so no spread" in md


def test_the_scratch_baseline_of_a_linear_probe_is_a_probe_on_a_random_backbone(small_run):
    out, metrics = small_run
    assert set(metrics["summary"]) == {"linear", "linear_scratch", "knn", "knn_scratch"}
    assert metrics["summary"]["linear_scratch"]["1"]["roc_auc_macro"]["n"] == 1
    md = (out / "results.md").read_text()
    assert "| linear probe (random init) | 1% |" in md and "| kNN (random init) | 100% |" in md
    assert "add --protocol finetune" in md and "add --protocol finetune" in (out / "report.html").read_text()
    assert sorted(p.name for p in (out / "bundles").iterdir()) == ["linear.pt"]   # a baseline keeps no bundle


def test_asked_and_actual_label_fractions_are_recorded_and_shown(small_run):
    out, metrics = small_run
    one = next(f for f in metrics["label_fractions"] if f["asked"] == 0.01)
    # each class keeps one patient: 2 of the 12 training images, not 1 %
    assert (one["images"], one["patients"], one["actual"], one["train_images"]) == (2, 2, round(2 / 12, 4), 12)
    assert "| linear probe | 1% | 2 img, 2 pat (16.7%) |" in (out / "results.md").read_text()
    assert "1% asked: 2 images of 2 patients (16.7%)" in (out / "report.html").read_text()


def test_fraction_stats_and_notes_by_hand():
    from medssl.evaluate.checks import check_fractions, fraction_stats, fraction_subsets

    train = [Record(path=f"{c}{i}.png", patient_id=f"{c}{i}", labels=(c,), split="train")
             for c in ("normal", "pneumonia") for i in range(10)]
    y = np.array([0] * 10 + [1] * 10)
    subsets = fraction_subsets(train, (0.01, 0.05, 0.5), seeds=2)
    stats = {s["asked"]: s for s in fraction_stats(train, subsets)}
    assert (stats[0.01]["images"], stats[0.01]["patients"], stats[0.01]["actual"]) == (2, 2, 0.1)
    assert (stats[0.5]["images"], stats[0.5]["actual"]) == (10, 0.5)
    notes = check_fractions(train, y, BINARY, subsets, trains=True)
    assert any(n.startswith("label fraction 1% asked is 2 images of 2 patients (10%)") for n in notes)
    assert "label fractions 1% and 5% draw the same 2 training images, so their rows match" in notes
    assert not any("50%" in n for n in notes)                   # 10 of 20 images is what was asked


@pytest.mark.parametrize("counts, fractions, protocols, expect", [
    ({"train": {"normal": 4, "pneumonia": 4}, "val": {"normal": 1, "pneumonia": 1}, "test": {"pneumonia": 3}},
     (1.0,), ("linear",), "test split (3 images: normal 0, pneumonia 3) has no class both present and absent"),
    ({"train": {"normal": 4, "pneumonia": 4}, "val": {"normal": 1}, "test": {}},
     (1.0,), ("linear",), "the test split is empty"),
], ids=["one-class-test", "empty-test"])
def test_bad_data_is_refused_before_the_checkpoint_is_loaded_or_an_image_decoded(tmp_path, counts, fractions,
                                                                                 protocols, expect):
    manifest = labelled_set(tmp_path / "data", counts, write=False)   # no image file exists
    opts = EvalOptions(checkpoint=str(tmp_path / "absent.pt"), data=str(manifest), out=tmp_path / "ev",
                       protocols=protocols, fractions=fractions, seeds=1, progress=False)
    with pytest.raises(MedsslError, match=re.escape(expect)):
        run_evaluate(opts)


def test_a_fraction_too_small_to_fine_tune_on_is_refused_before_any_work(tmp_path):
    # every training image has both labels: one stratum, so 10 % of 10 patients is a single image
    layout = [("train", ("a", "b"), 10), ("val", ("a",), 2), ("val", ("b",), 1), ("test", ("a",), 2),
              ("test", ("b",), 2)]
    records = [Record(path=str(tmp_path / f"{s}_{'+'.join(labels)}_{i}.png"), patient_id=f"{s}-{'+'.join(labels)}-{i}",
                      labels=labels, split=s) for s, labels, n in layout for i in range(n)]
    manifest = write_manifest(records, tmp_path / "manifest.csv")
    opts = EvalOptions(checkpoint=str(tmp_path / "absent.pt"), data=str(manifest), out=tmp_path / "ev",
                       protocols=("linear", "finetune"), fractions=(0.1, 1.0), seeds=1, progress=False)
    with pytest.raises(MedsslError, match=r"--fractions 0.1: seed 0 draws 1 training image\(s\) of 10"):
        run_evaluate(opts)


def test_skip_bad_goes_on_past_an_unreadable_image_and_lists_it(cli, checkpoint, tmp_path):
    manifest = labelled_set(tmp_path / "data", {"train": {"normal": 4, "pneumonia": 4},
                                                "val": {"normal": 1, "pneumonia": 1},
                                                "test": {"normal": 3, "pneumonia": 3}})
    bad = tmp_path / "data" / "images" / "train_normal_0.png"
    bad.write_bytes(b"not a png")
    args = ["evaluate", "--checkpoint", checkpoint, "--data", manifest, "--protocol", "knn", "--fractions", "1",
            "--seeds", "1", "--n-boot", "20", "--no-bundles", "--quiet"]
    code, out, err = cli(*args, "--out", tmp_path / "ev1")
    assert code == 2 and out == ""
    (line,) = err.strip().splitlines()                           # one line, naming the file
    assert line.startswith(f"medssl: error: {bad}: not a readable") and "--skip-bad" in line
    code, out, err = cli(*args, "--out", tmp_path / "ev2", "--skip-bad")
    assert code == 0, err
    assert f"skipped 1 unreadable image(s):\n  {bad}: not a readable" in err
    metrics = json.loads((tmp_path / "ev2" / "metrics.json").read_text())
    assert [s["path"] for s in metrics["skipped"]] == [str(bad)] and metrics["split_sizes"]["train"] == 7
    assert str(bad) in (tmp_path / "ev2" / "report.html").read_text()


def test_fine_tuning_shows_a_step_bar_named_after_the_run(tmp_path, capsys):
    from medssl.evaluate.finetune import FinetuneConfig, finetune
    from medssl.evaluate.features import extract_features, feature_bar

    torch.set_num_threads(1)
    x = torch.randint(0, 255, (8, 1, SIZE, SIZE), dtype=torch.uint8)
    y = np.array([0, 1] * 4)
    cfg = FinetuneConfig(steps=3, batch_size=4, val_every=3, augment="none", keep_checkpoints=True)
    model, _ = finetune(TinyNet(), x, y, x, y, BINARY, cfg, tmp_path, progress=True, desc="scratch 10% s0")
    with feature_bar(2 * len(x), "features (pretrained)", enabled=True) as bar:   # one bar over two calls
        extract_features(TinyNet(), x, bar=bar, batch_size=3)
        extract_features(TinyNet(), x, bar=bar)
        assert bar.n == 16
    err = capsys.readouterr().err
    assert "scratch 10% s0: " in err and "step/s" in err and "pretrain:" not in err   # not fit's own bar
    assert "features (pretrained)" in err and "img/s" in err
    best = torch.load(tmp_path / "checkpoints" / "best.pt", weights_only=False)["model"]
    assert set(best) == set(model.state_dict())                 # checkpoints still load into the classifier
    finetune(TinyNet(), x, y, x, y, BINARY, cfg, tmp_path / "quiet", progress=False)
    assert capsys.readouterr().err == ""


def test_every_evaluate_option_has_help_and_the_parser_has_examples():
    from medssl.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["evaluate"]
    undocumented = [a.option_strings[0] for a in sub._actions if a.option_strings and not a.help]
    assert undocumented == []
    assert sub.epilog.count("medssl evaluate --checkpoint") >= 2 and "--skip-bad" in sub.format_help()


def test_the_demo_report_shows_asked_and_actual_fractions(tmp_path):
    from medssl.pipeline_config import load_run_config
    from medssl.pipeline_html import write_run_report

    auc = {"roc_auc_macro": over_seeds([0.7, 0.8]), "balanced_accuracy": over_seeds([0.6, 0.7])}
    fractions = [{"asked": 0.01, "images": 22, "patients": 11, "actual": 0.0833, "train_images": 264,
                  "train_patients": 140, "per_seed": [{"seed": 0, "images": 22, "patients": 11}]}]
    (tmp_path / "evaluate" / "simclr").mkdir(parents=True)
    (tmp_path / "evaluate" / "simclr" / "metrics.json").write_text(json.dumps(
        {"summary": {"linear": {"0.01": auc}, "scratch": {"0.01": auc}}, "runs": [], "label_fractions": fractions}))
    cfg = load_run_config(None, ["pretrain.steps=10", "evaluate.finetune_steps=10", "evaluate.fractions=[0.01]",
                                 "evaluate.seeds=2"])
    metrics = write_run_report(tmp_path, cfg, {"data": 1.0}, 1.0)
    html = (tmp_path / "report.html").read_text()
    assert "1% asked: 22 images of 11 patients (8.33%)" in html
    assert "<td>1%</td><td>22 img, 11 pat (8.33%)</td>" in html
    assert metrics["label_fractions"] == fractions
    assert metrics["verdict"]["text"].startswith("At 1% of the labels asked (22 images of 11 patients (8.33%)), ")


def test_ci_text_averages_bounds_over_seeds_and_counts_resamples():
    from medssl.evaluate.outputs import ci_text, table_rows

    runs = [{"protocol": "linear", "fraction": 0.1, "ci95": {"roc_auc_macro": [0.6, 0.8]},
             "bootstrap": {"n_boot": 100, "resamples": {"roc_auc_macro": n}}} for n in (61, 70)]
    runs[1]["ci95"]["roc_auc_macro"] = [0.7, 0.9]
    assert ci_text(runs, "linear", 0.1) == "[0.650, 0.850] from 61-70 of 100 resamples"
    rows = table_rows({"linear": {"0.1": {"roc_auc_macro": over_seeds([0.7, 0.8])}}}, runs)
    assert rows[0]["AUC 95 % CI"] == "[0.650, 0.850] from 61-70 of 100 resamples"

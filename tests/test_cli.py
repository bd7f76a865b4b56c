"""`medssl data ...` and `medssl demo` end to end, run in-process through main([...])."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pydicom.data
import pytest
from PIL import Image

from conftest import shared_file
from medssl.data.records import read_manifest

PYDICOM_FILES = Path(pydicom.data.__file__).parent / "test_files"
SIMCLR = str(Path(__file__).resolve().parents[1] / "configs" / "simclr.yaml")


def one_error_line(err: str, *must_contain: str) -> None:
    """Bad input ends in exactly one line on stderr, no traceback, naming what is wrong."""
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("medssl: error: ") and "Traceback" not in err
    for text in must_contain:
        assert text in lines[0], lines[0]


def _png_folder(root: Path, n: int = 6) -> Path:
    rng = np.random.default_rng(0)
    for i in range(n):
        sub = root / ("normal" if i % 2 else "pneumonia")
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray((rng.random((20, 24)) * 255).astype(np.uint8)).save(sub / f"img{i}.png")
    return root


def test_synth_info_split_round_trip(cli, tmp_path):
    code, out, _ = cli("data", "synth", tmp_path / "s", "--patients", 10, "--size", 32, "--quiet")
    assert code == 0 and "manifest.csv" in out
    code, out, _ = cli("data", "info", tmp_path / "s", "--json", tmp_path / "info.json", "--quiet")
    info = json.loads((tmp_path / "info.json").read_text())
    assert code == 0 and info["patients"] == 10 and info["image_sizes"] == {"32x32": info["images"]}
    assert info["images"] == 2 * info["studies"]  # a frontal and a lateral view per study
    assert info["reports"]["present"] == info["images"] and "patients" in out
    code, out, _ = cli("data", "split", tmp_path / "s", "--out", tmp_path / "split.csv",
                       "--label-fractions", "0.1,0.5", "--seed", 1, "--quiet")
    assert code == 0
    recs = read_manifest(tmp_path / "split.csv")
    by_patient = {}
    for r in recs:
        by_patient.setdefault(r.patient_id, set()).add(r.split)
    assert all(len(s) == 1 for s in by_patient.values())  # no patient in two splits
    small = {r.key for r in recs if r.extra["frac_0.1"] == "1"}
    large = {r.key for r in recs if r.extra["frac_0.5"] == "1"}
    assert small and small <= large <= {r.key for r in recs if r.split == "train"}


def test_info_without_source_uses_builtin_synthetic(cli):
    code, out, _ = cli("data", "info", "--quiet")
    assert code == 0 and "built-in synthetic" in out and "cardiomegaly" in out


def test_index_png_folder_with_patient_csv_and_folder_labels(cli, tmp_path):
    root = _png_folder(tmp_path / "imgs")
    side = tmp_path / "patients.csv"
    with side.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filename", "patient_id", "view"])
        for i in range(6):
            w.writerow([f"img{i}.png", f"P{i // 2}", "PA"])
    code, out, err = cli("data", "index", root, "--patients", side, "--labels-from-folders", "--quiet")
    assert code == 0, err
    recs = read_manifest(root / "manifest.csv")
    assert len(recs) == 6 and {r.patient_id for r in recs} == {"P0", "P1", "P2"}
    assert {r.labels for r in recs} == {("normal",), ("pneumonia",)} and {r.view for r in recs} == {"PA"}


def test_index_dicom_folder_takes_ids_from_tags(cli, tmp_path):
    root = tmp_path / "dcm"
    root.mkdir()
    for name in ("CT_small.dcm", "MR_small.dcm"):
        shutil.copy(PYDICOM_FILES / name, root / name)
    shutil.copy(PYDICOM_FILES / "MR_small.dcm", root / "no_suffix")  # DICOM recognised by content
    code, _, err = cli("data", "index", root, "--quiet")
    assert code == 0, err
    recs = read_manifest(root / "manifest.csv")
    assert len(recs) == 3
    ct = next(r for r in recs if r.path.endswith("CT_small.dcm"))
    from medssl.data.dicom import pseudonym

    raw = str(pydicom.dcmread(PYDICOM_FILES / "CT_small.dcm").PatientID)
    assert ct.patient_id == pseudonym(raw) != raw                # the tag's id, pseudonymised


def test_corrupt_image_fails_with_one_line_and_skip_bad_goes_on(cli, tmp_path):
    root = _png_folder(tmp_path / "imgs")
    good = (root / "normal" / "img1.png").read_bytes()
    (root / "normal" / "broken.png").write_bytes(good[: len(good) // 2])  # truncated
    code, _, err = cli("data", "index", root, "--quiet")
    assert code == 2
    one_error_line(err, "broken.png")
    code, out, err = cli("data", "index", root, "--skip-bad", "--quiet")
    assert code == 0 and "skipped 1 unreadable image" in err and "broken.png" in err
    assert len(read_manifest(root / "manifest.csv")) == 6


@pytest.mark.parametrize(
    "name, setup, args, expect",
    [
        ("empty", lambda p: p.mkdir(), ("data", "index", "{p}"), "no images found"),
        ("x.bmp", lambda p: p.write_bytes(b"BM" + bytes(100)), ("data", "info", "{p}"), "not a data source"),
        ("m.csv", lambda p: p.write_text("path,patientid\na.png,P1\n"), ("data", "info", "{p}"), "'patientid' looks"),
        ("m.csv", lambda p: p.write_text("path,patient_id\na.png,P1\na.png,P2\n"), ("data", "info", "{p}"),
         "duplicate path"),
        ("m.csv", lambda p: p.write_text("path,patient_id,labels\na.png,P1,0.25\n"), ("data", "info", "{p}"),
         "'0.25'"),
        ("out", lambda p: None, ("data", "synth", "{p}", "--patients", "0"), "0"),
        ("s.csv", lambda p: None, ("data", "split", "--out", "{p}", "--fractions", "0.5,0.6,0.1"), "split fractions"),
        ("nope", lambda p: None, ("data", "info", "{p}"), "no such file"),
    ],
    ids=["empty-folder", "unsupported-format", "misspelt-column", "duplicate-paths", "label-type",
         "bad-patient-count", "bad-fractions", "missing-path"],
)
def test_bad_input_is_one_line_and_exit_2(cli, tmp_path, name, setup, args, expect):
    target = tmp_path / name
    setup(target)
    code, _, err = cli(*[a.format(p=target) for a in args], "--quiet")
    assert code == 2
    one_error_line(err, expect)


def test_manifest_pointing_at_missing_images(cli, tmp_path):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "ok.png")
    (tmp_path / "m.csv").write_text("path,patient_id\nok.png,P1\nmissing.png,P2\n")
    code, out, err = cli("data", "info", tmp_path / "m.csv", "--quiet")
    assert code == 2
    one_error_line(err, "missing.png: no such file", "--skip-bad")
    code, out, err = cli("data", "info", tmp_path / "m.csv", "--skip-bad", "--quiet")
    assert code == 0 and "missing.png" in err and "images    1" in out
    (tmp_path / "m.csv").write_text("path,patient_id\nmissing.png,P2\n")
    code, out, err = cli("data", "info", tmp_path / "m.csv", "--skip-bad", "--quiet")
    assert code == 2
    one_error_line(err, "none of its 1 image(s) could be read", "missing.png")


def test_demo_writes_summary_plots_and_html(cli, tmp_path):
    # the smallest demo: 30 patients give the 64 training images of one pretraining batch
    tiny = ["--patients", 30, "--size", 16, "--width", 8, "--pretrain-steps", 1, "--align-steps", 1,
            "--finetune-steps", 2, "--report-steps", 2, "--seeds", 1, "--fractions", "0.1,1", "--quiet"]
    code, out, err = cli("demo", "--out", tmp_path / "run", *tiny)
    assert code == 0, err
    run = tmp_path / "run"
    assert json.loads((run / "data_summary.json").read_text())["patients"] == 30
    metrics = json.loads((run / "metrics.json").read_text())
    config = metrics["config"]
    assert config["data"]["patients"] == 30 and config["evaluate"]["fractions"] == [0.1, 1.0]
    assert config["model"]["width"] == 8
    assert all(len(points) == 2 for points in metrics["curves"].values())        # every arm at both fractions
    assert len(metrics["curves"]) == 7                                           # 3 methods x 2 protocols + scratch
    assert "scratch (no pretraining)" in metrics["curves"] and len(metrics["predictions"]) == 6
    html = (run / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 4 and "synthetic" in html
    for section in ("Label efficiency", "Test metrics", "Pretraining curves", "Image-text similarity",
                    "Zero-shot classification", "Retrieval (ConVIRT)", "Report generation", "attention LSTM (draft)",
                    "retrieval-based (draft)", "medssl predict", "Samples"):
        assert section in html, section
    image_text = metrics["image_text"]["convirt"]
    assert 0 <= image_text["zeroshot"]["roc_auc_macro"] <= 1 and "SimCLR+ConVIRT + LP-FT" in metrics["curves"]
    assert {"image_to_image", "text_to_image", "image_to_text"} <= set(image_text["retrieval"])
    examples = json.loads((run / "retrieval" / "convirt" / "examples.json").read_text())
    assert [e["query"].get("text") for e in examples[:2]] == ["pleural effusion", "cardiomegaly"]
    shown = [e["query"]["image"] for e in examples if "image" in e["query"]] + [
        h["path"] for e in examples for h in e["images"]]
    assert all(not Path(p).is_absolute() and (run / p).is_file() for p in shown)  # relative to the run folder
    by_image = examples[2]                                                       # a test image: other patients only
    assert by_image["images"] and by_image["sentences"]
    assert all(h["patient"] != by_image["query"]["patient"] for h in by_image["images"] + by_image["sentences"])
    methods = [r["method"] for r in metrics["report_generation"]]
    assert len(methods) == 4 and "most common training report" in methods, methods
    assert all(0 <= r["clinical"]["f1"] <= 1 for r in metrics["report_generation"])
    assert "[run]" in out and metrics["verdict"]["text"] in out
    # a second run into the same folder skips the stages it finished; other settings or a foreign non-empty
    # folder are refused
    code, out, err = cli("demo", "--out", run, *tiny)
    assert code == 0, err
    assert out.count("done in an earlier run") == len(metrics["stage_seconds"]) == 11
    code, _, err = cli("demo", "--out", run, *tiny, "--seeds", 2)
    assert code == 2
    one_error_line(err, "stage evaluate_simclr ran with other settings", "--from evaluate_simclr")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "precious.txt").write_text("x")
    code, _, err = cli("demo", "--out", tmp_path / "other", "--quiet")
    assert code == 2 and (tmp_path / "other" / "precious.txt").exists()
    code, _, err = cli("demo", "--out", tmp_path / "few", "--patients", 12, "--quiet")
    assert code == 2
    one_error_line(err, "patients=12 is too few")
    code, _, err = cli("demo", "--out", tmp_path / "few", "--fractions", "0,1", "--quiet")
    assert code == 2
    one_error_line(err, "evaluate.fractions=[0.0, 1.0]")


def test_info_on_real_pneumoniamnist(cli, tmp_path):
    path = shared_file("pneumoniamnist_28.npz")
    code, out, _ = cli("data", "info", path, "--json", tmp_path / "i.json", "--quiet")
    info = json.loads((tmp_path / "i.json").read_text())
    assert code == 0 and info["images"] == 4708 + 524 + 624
    assert info["splits"] == {"train": 4708, "val": 524, "test": 624}
    assert info["classes"] == ["normal", "pneumonia"] and info["image_sizes"] == {"28x28": 5856}
    # the official training split is about 3:1 pneumonia:normal
    train = info["label_counts"]["train"]
    assert 2.5 < train["pneumonia"] / train["normal"] < 3.2


def test_info_and_split_on_real_covid_set(cli, tmp_path):
    path = shared_file("covid_cxr_224.npz")
    code, out, _ = cli("data", "info", path, "--json", tmp_path / "i.json", "--quiet")
    info = json.loads((tmp_path / "i.json").read_text())
    assert code == 0 and info["images"] == 575 and info["patients"] == 313
    assert info["patients_with_2plus_images"] == 144 and info["views"]["L"] == 44
    code, _, err = cli("data", "split", path, "--out", tmp_path / "split.csv", "--quiet")
    assert code == 0, err
    recs = read_manifest(tmp_path / "split.csv")
    splits_of = {}
    for r in recs:
        splits_of.setdefault(r.patient_id, set()).add(r.split)
    assert all(len(s) == 1 for s in splits_of.values())


def test_pretrain_resume_and_export_from_the_command_line(cli, tmp_path):
    run = tmp_path / "run"
    common = ["--set", "train.steps=4", "--set", "data.synthetic_patients=6", "--set", "data.size=16",
              "--set", "data.batch_size=8", "--set", "data.num_workers=0", "--set", "train.checkpoint_every=2",
              "--quiet"]
    code, out, err = cli("pretrain", "--config", SIMCLR, "--out", run, *common)
    assert code == 0, err
    assert "pretrained simclr (resnet18) for 4 steps" in out
    assert json.loads((run / "metrics.json").read_text())["steps"] == 4
    # a finished run continues only through --resume, with more steps
    code, _, err = cli("pretrain", "--config", SIMCLR, "--out", run, *common)
    assert code == 2
    one_error_line(err, "--resume")
    code, out, err = cli("pretrain", "--resume", run, "--set", "train.steps=6", "--quiet")
    assert code == 0 and "for 6 steps" in out, err
    code, out, err = cli("export", run, "--format", "torchscript")
    assert code == 0 and (run / "backbone.pt").is_file(), err


@pytest.mark.parametrize("args, expect", [
    (("pretrain",), "needs --config"),
    (("pretrain", "--config", SIMCLR, "--set", "optim.lr=-1"), "optim.lr=-1.0 must be positive"),
    (("pretrain", "--config", "{tmp}/nope.yaml"), "nope.yaml"),
    (("pretrain", "--resume", "{tmp}/absent"), "absent"),
    (("export", "{tmp}/absent"), "absent"),
])
def test_pretrain_and_export_bad_input(cli, tmp_path, args, expect):
    code, _, err = cli(*[a.format(tmp=tmp_path) for a in args], "--quiet" if args[0] == "pretrain" else "--format=onnx")
    assert code == 2
    one_error_line(err, expect)


def test_evaluate_end_to_end_on_synthetic_data(cli, tmp_path):
    run = tmp_path / "pre"
    # evaluation scores on the val / test patients of the run's own built-in data: enough patients for both
    code, _, err = cli("pretrain", "--config", SIMCLR, "--out", run, "--set", "train.steps=2", "--set",
                       "data.synthetic_patients=16", "--set", "data.size=16", "--set", "data.batch_size=8",
                       "--set", "data.num_workers=0", "--set", "model.width=16", "--quiet")
    assert code == 0, err
    code, out, err = cli("evaluate", "--checkpoint", run, "--protocol", "linear,knn,finetune,segment",
                         "--fractions", "0.5,1", "--seeds", 2, "--baseline", "scratch", "--finetune-steps", 3,
                         "--n-boot", 50, "--quiet")
    assert code == 0, err
    res = json.loads((run / "evaluate" / "metrics.json").read_text())
    assert set(res["summary"]) == {"linear", "knn", "finetune", "scratch", "segment", "segment_scratch"}
    auc = res["summary"]["linear"]["1"]["roc_auc_macro"]
    assert auc["n"] == 2 and len(auc["values"]) == 2 and 0 <= auc["mean"] <= 1
    assert all("ci95" in r for r in res["runs"] if not r["protocol"].startswith("segment"))
    html = (run / "evaluate" / "report.html").read_text()
    for plot in ("Label efficiency", "ROC curves", "Confusion matrix", "t-SNE", "Grad-CAM", "Segmentation"):
        assert plot in html, plot
    assert "| protocol |" in (run / "evaluate" / "results.md").read_text() and "fine-tune (scratch)" in out
    # the best classifier of each protocol is kept as a bundle, and `medssl predict` runs it on an image file
    bundles = run / "evaluate" / "bundles"
    assert sorted(p.name for p in bundles.iterdir()) == ["finetune.pt", "linear.pt", "scratch.pt"]
    assert f"medssl predict {bundles / 'finetune.pt'}" in out
    image = next(r.path for r in read_manifest(run / "evaluate" / "data" / "manifest.csv") if r.split == "test")
    code, out, err = cli("predict", bundles / "finetune.pt", image, "--json")
    assert code == 0, err
    (result,) = json.loads(out)["results"]
    assert result["image"] == image and isinstance(result["predicted"], list) and len(result["probabilities"]) > 1
    assert set(result["predicted"]) <= set(result["probabilities"])
    assert all(0 <= p <= 1 for p in result["probabilities"].values())
    code, _, err = cli("evaluate", "--checkpoint", run, "--protocol", "linear,magic", "--quiet")
    assert code == 2
    one_error_line(err, "magic")


@pytest.mark.parametrize("flags, head, freeze", [((), "probe", True),
                                                  (("--finetune-head", "random", "--finetune-bn", "train"),
                                                   "random", False)])
def test_evaluate_fine_tuning_flags_reach_the_options(cli, tmp_path, monkeypatch, flags, head, freeze):
    seen = _fake_evaluate(monkeypatch)
    code, _, err = cli("evaluate", "--checkpoint", tmp_path / "run", "--out", tmp_path / "ev", *flags, "--quiet")
    assert code == 0, err
    assert (seen["opts"].finetune_head, seen["opts"].finetune_freeze_bn) == (head, freeze)


def _fake_evaluate(monkeypatch) -> dict:
    """Replace run_evaluate by a stub that records the EvalOptions the CLI built; returns where it records them."""
    import medssl.evaluate.run as run

    seen: dict = {}

    def fake(opts):
        seen["opts"] = opts
        (opts.out / "results.md").parent.mkdir(parents=True, exist_ok=True)
        (opts.out / "results.md").write_text("| protocol |\n")
        return {"seconds": 0.0}

    monkeypatch.setattr(run, "run_evaluate", fake)
    return seen


@pytest.mark.parametrize("flags, expect", [
    ((), dict(finetune_steps=300, finetune_epochs=None, finetune_lr=1e-3, finetune_patience=6, segment_steps=300,
              segment_lr=1e-3, segment_patience=None, keep_bundles=True)),
    (("--finetune-epochs", "2", "--finetune-lr", "0.01", "--finetune-patience", "0", "--segment-steps", "5",
      "--segment-lr", "0.02", "--segment-patience", "3", "--no-bundles"),
     dict(finetune_steps=None, finetune_epochs=2, finetune_lr=0.01, finetune_patience=None, segment_steps=5,
          segment_lr=0.02, segment_patience=3, keep_bundles=False)),
], ids=["defaults", "given"])
def test_evaluate_budget_and_bundle_flags_reach_the_options(cli, tmp_path, monkeypatch, flags, expect):
    seen = _fake_evaluate(monkeypatch)
    code, _, err = cli("evaluate", "--checkpoint", tmp_path / "run", "--out", tmp_path / "ev", *flags, "--quiet")
    assert code == 0, err
    assert {k: getattr(seen["opts"], k) for k in expect} == expect
    seen["opts"].validate()                                     # what the flags gave is a valid evaluation

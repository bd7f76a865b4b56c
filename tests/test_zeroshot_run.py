"""`medssl zeroshot` end to end: an image-text run classifies the test patients of its own synthetic data from
prompts, with CIs beside chance; a plain pretraining run is refused in one line."""

from __future__ import annotations

import json


def test_zeroshot_scores_the_runs_own_test_patients_with_cis_beside_chance(clip_run, cli):
    code, out, err = cli("zeroshot", clip_run, "--n-boot", "50", "--quiet")
    assert code == 0, err
    metrics = json.loads((clip_run / "zeroshot" / "zeroshot.json").read_text())
    assert metrics["method"] == "clip" and metrics["task"]["kind"] == "multilabel"
    assert metrics["test_patients"] >= 2 and metrics["chance"]["roc_auc_macro"] == 0.5
    assert 0.0 <= metrics["roc_auc_macro"] <= 1.0 and "roc_auc_macro" in metrics["ci95"]
    assert set(metrics["per_class"]) == set(metrics["task"]["classes"])
    assert "zero-shot clip on" in out and "chance 0.500" in out


def test_classes_pick_findings_and_unknown_ones_are_named(clip_run, cli, tmp_path):
    code, out, err = cli("zeroshot", clip_run, "--classes", "pleural_effusion,cardiomegaly", "--n-boot", "20",
                         "--out", tmp_path / "two", "--quiet")
    assert code == 0, err
    assert json.loads((tmp_path / "two" / "zeroshot.json").read_text())["task"]["classes"] == [
        "pleural_effusion", "cardiomegaly"]
    code, _, err = cli("zeroshot", clip_run, "--classes", "pleural_efusion", "--out", tmp_path / "bad", "--quiet")
    assert code == 2 and "pleural_efusion" in err and len(err.strip().splitlines()) == 1


def test_a_plain_pretraining_run_is_refused_in_one_line(cli, tmp_path):
    from medssl.cli import main

    run = tmp_path / "simclr"
    assert main(["pretrain", "--config", "configs/simclr.yaml", "--out", str(run), "--quiet", "--set", "data.size=16",
                 "--set", "data.synthetic_patients=8", "--set", "train.steps=1", "--set", "model.stem=small",
                 "--set", "data.batch_size=8", "--set", "data.num_workers=0"]) == 0
    code, _, err = cli("zeroshot", run, "--quiet")
    assert code == 2 and "not an image-text run" in err and len(err.strip().splitlines()) == 1

"""`medssl run CONFIG`: the config, an ablation into one page, stages skipped, refused or rerun, the dry-run plan."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from medssl.pipeline_config import RunConfig, load_run_config, to_dict

from tests.conftest import shared_file
from tests.test_cli import one_error_line

ROOT = Path(__file__).resolve().parents[1]
TINY = ["data.patients=30", "data.size=16", "model.width=8", "pretrain.steps=1", "align.steps=1",
        "evaluate.finetune_steps=2", "report.steps=2", "evaluate.n_boot=20"]


def test_demo_config_states_the_built_in_defaults():
    # `medssl demo` runs RunConfig(); configs/demo.yaml must say exactly that, key for key
    assert to_dict(load_run_config(ROOT / "configs" / "demo.yaml")) == to_dict(RunConfig())
    raw = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    assert set(raw) == set(to_dict(RunConfig()))


@pytest.mark.parametrize("sets, message", [
    (["pretrain.methods=[convirt]"], "pretrain.methods[0].method='convirt' belongs under align"),
    (["align.methods=[simclr]"], "align.methods[0].method='simclr' belongs under pretrain"),
    (["pretrain.methods=[simclr, simclr]"], "must have distinct names"),
    (["align.init=byol"], "align.init='byol' must name a pretrain arm"),
    (["align.methods=[]"], "report.methods=['lstm', 'retrieval'] need an image-text arm"),
    (["evaluate.protocols=[linear, probe]"], "evaluate.protocols='probe' must be one of linear, knn, finetune"),
    (["evaluate.seeds=0"], "evaluate.seeds=0 must be positive"),
    (["pretrain.stepz=3"], "unknown key pretrain.stepz; did you mean 'steps'?"),
    (["pretrain.methods=[{name: a b, method: simclr}]"], "pretrain.methods[0].name='a b' must be letters"),
    (["pretrain.methods=[{name: simclr, set: {model.options.temprature: 0.5}}]"],
     "simclr: config: unknown key model.options.temprature"),
])
def test_bad_configs_end_in_one_line_before_any_work(cli, tmp_path, sets, message):
    args = [f"--set={s}" for s in sets]
    code, out, err = cli("run", ROOT / "configs" / "demo.yaml", "--out", tmp_path / "run", *args, "--quiet")
    assert code == 2
    one_error_line(err, message)
    assert not (tmp_path / "run").exists()                     # checked before the folder was made


def _ablation(tmp_path: Path) -> Path:
    config = {"title": "ablation", "data": {"patients": 30, "size": 16},
              "model": {"width": 8},
              "pretrain": {"methods": ["simclr", {"name": "simclr_t05", "method": "simclr",
                                                  "set": {"model.options.temperature": 0.5}}], "steps": 1},
              "align": {"methods": [], "init": None}, "report": {"methods": []},
              "evaluate": {"protocols": ["linear", "knn"], "fractions": [0.5, 1.0], "seeds": 2, "n_boot": 20},
              "zeroshot": {"queries": []}, "predict_images": 2}
    path = tmp_path / "ablation.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_an_ablation_runs_into_one_page_and_later_runs_skip_add_refuse_and_rerun(cli, tmp_path):
    config, run = _ablation(tmp_path), tmp_path / "run"
    code, out, err = cli("run", config, "--out", run, "--quiet")
    assert code == 0, err
    metrics = json.loads((run / "metrics.json").read_text())
    assert yaml.safe_load((run / "pretrain" / "simclr_t05" / "config.yaml").read_text())["model"]["options"][
        "temperature"] == 0.5
    names = [r["method + protocol"] for r in metrics["comparison"]]
    assert names == ["SimCLR + linear probe", "SimCLR + kNN", "simclr_t05 + linear probe", "simclr_t05 + kNN",
                     "random network (no pretraining) + linear probe", "random network (no pretraining) + kNN"]
    assert "for the random network (no pretraining) + " in metrics["verdict"]["text"]
    columns = ["50% labels", "100% labels"]
    for col in columns:                                        # every cell: mean [t-interval over 2 seeds]
        cells = [r[col] for r in metrics["comparison"]]
        assert all(re.fullmatch(r"\d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\]( \*)?", c) for c in cells), cells
        best = max(float(c.split()[0]) for c in cells)
        assert [c.endswith("*") for c in cells] == [float(c.split()[0]) == best for c in cells]
    html = (run / "report.html").read_text()
    assert "Comparison (test macro ROC-AUC" in html and "<td><b>" in html and "Label efficiency" in html
    assert "Zero-shot" not in html and "Report generation" not in html  # no image-text arm, no report methods
    assert len(json.loads((run / "predictions.json").read_text())) == 2
    stages = json.loads((run / "stages.json").read_text())
    assert list(stages) == ["data", "pretrain_simclr", "pretrain_simclr_t05", "evaluate_simclr",
                            "evaluate_simclr_t05", "predict"]
    # an arm added: only its stages run (and the page gains its rows)
    code, out, err = cli("run", config, "--out", run, "--quiet", "--set", "pretrain.methods=[simclr, simclr_t05, byol]")
    assert code == 2                                           # simclr_t05 is no longer the ablation arm it was
    code, out, err = cli("run", config, "--out", run, "--quiet", "--set",
                         "pretrain.methods=[simclr, {name: simclr_t05, method: simclr, set: "
                         "{model.options.temperature: 0.5}}, byol]")
    assert code == 0, err
    assert out.count("done in an earlier run") == 6 and "[run] pretrain_byol ..." in out
    assert "BYOL + kNN" in [r["method + protocol"] for r in json.loads((run / "metrics.json").read_text())["comparison"]]
    # other seeds: refused, naming the first stage that would change and how to rerun it; nothing is touched
    before = (run / "evaluate" / "simclr" / "metrics.json").read_bytes()
    code, out, err = cli("run", config, "--out", run, "--quiet", "--set", "evaluate.seeds=3")
    assert code == 2
    one_error_line(err, "stage evaluate_simclr ran with other settings", "--from evaluate_simclr")
    assert (run / "evaluate" / "simclr" / "metrics.json").read_bytes() == before
    # --from evaluate reruns every evaluation and what follows; the pretraining is kept
    code, out, err = cli("run", config, "--out", run, "--quiet", "--set", "evaluate.seeds=3", "--from", "evaluate")
    assert code == 0, err
    assert "pretrain_simclr: done in an earlier run" in out and "[run] evaluate_simclr ..." in out
    assert json.loads((run / "metrics.json").read_text())["curves"]["SimCLR + kNN"]["1"]["roc_auc_macro"]["n"] == 3
    code, out, err = cli("run", config, "--out", run, "--quiet", "--from", "nonsense")
    assert code == 2
    one_error_line(err, "--from nonsense: no such stage")


def test_a_killed_stage_is_not_recorded_and_runs_again(cli, tmp_path, monkeypatch):
    from medssl import pipeline

    config, run = _ablation(tmp_path), tmp_path / "run"

    def killed(self, arm, baseline):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline.Pipeline, "evaluate", killed)
    code, out, err = cli("run", config, "--out", run, "--quiet")     # a Ctrl-C mid-evaluation
    assert code != 0 and "Traceback" not in err
    assert set(json.loads((run / "stages.json").read_text())) == {"data", "pretrain_simclr", "pretrain_simclr_t05"}
    monkeypatch.undo()
    code, out, err = cli("run", config, "--out", run, "--quiet")
    assert code == 0, err
    assert out.count("done in an earlier run") == 3 and (run / "report.html").is_file()


def test_dry_run_plans_without_running_or_writing(cli, tmp_path):
    run = tmp_path / "run"
    code, out, err = cli("run", ROOT / "configs" / "demo.yaml", "--out", run, "--dry-run", "--quiet",
                         *[f"--set={s}" for s in TINY])
    assert code == 0, err
    assert not run.exists()
    for stage in ("data", "pretrain_simclr", "pretrain_micle", "align_convirt", "evaluate_convirt",
                  "zeroshot_convirt", "retrieval_convirt", "report", "predict"):
        assert re.search(rf"^  {stage} +run +\d", out, re.M), (stage, out)
    assert re.search(r"to run: 11 of 11 stages, about \d", out)
    assert "1 steps x " in out and "measured" in out


def test_pneumoniamnist_config_dry_run_gives_a_plan(cli, tmp_path, monkeypatch):
    path = shared_file("pneumoniamnist_28.npz")                # skips with the reason when ../shared is absent
    monkeypatch.chdir(ROOT)                                    # the config names the data relative to the checkout
    assert Path(load_run_config("configs/pneumoniamnist.yaml").data.source).resolve() == path.resolve()
    code, out, err = cli("run", "configs/pneumoniamnist.yaml", "--out", tmp_path / "pm", "--dry-run", "--quiet")
    assert code == 0, err
    assert "4708 training images" in out or "5856 images" in out
    for stage in ("pretrain_simclr", "pretrain_moco", "pretrain_byol", "evaluate_byol", "predict"):
        assert re.search(rf"^  {stage} +run ", out, re.M), (stage, out)
    assert "zeroshot" not in out and "report" not in out.split("to run")[0].replace("reports", "")
    assert re.search(r"to run: 8 of 8 stages, about \d+ (min|h)", out)
    assert not (tmp_path / "pm").exists()

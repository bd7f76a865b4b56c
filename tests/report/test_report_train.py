"""`medssl report train / generate / label` end to end on tiny built-in studies: the loss falls, the generated
reports state the images' findings more often than chance, the run loads and writes reports from the command line,
and bad input ends in one line with exit code 2."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch

from medssl.report.bundle import MODEL, load_report_run
from medssl.report.config import load_report_config
from medssl.report.train import run_report_train

# 32 px studies, a small decoder on the frozen encoder's cached maps; enough steps to learn
TINY = ["data.size=32", "decoder.dim=96", "decoder.context=72", "train.batch_size=32", "train.val_every=100",
        "evaluate.n_boot=20", "evaluate.meteor=false", "evaluate.gallery=2", "optim.lr=0.002", "train.log_every=20"]


def _train(tmp: Path, config: str, *extra: str, steps: int = 300) -> tuple[Path, dict]:
    cfg = load_report_config(config, [*TINY, f"train.steps={steps}", *extra])
    out = tmp / Path(config).stem
    return out, run_report_train(cfg, out, progress=False)


@pytest.fixture(scope="module")
def encoder_run(tmp_path_factory) -> Path:
    """A stand-in for a `medssl pretrain` run, made in seconds: a ResNet-18 at width 8 trained for 150 steps on the
    built-in training images' findings, saved as a pretraining checkpoint is (spec, preprocess, backbone.*). A
    report decoder needs an encoder whose maps carry the findings; a SimCLR or ConVIRT run would take minutes."""
    from medssl.checkpoint import atomic_save
    from medssl.data.preprocess import Preprocess
    from medssl.data.records import read_manifest
    from medssl.data.tasks import make_task, targets
    from medssl.models.classifier import Classifier
    from medssl.models.factory import ModelSpec, build_backbone
    from medssl.synthetic.builtin import builtin_source

    folder = tmp_path_factory.mktemp("encoder")
    records = [r for r in read_manifest(builtin_source(folder / "data", size=32, progress=False))
               if r.split == "train"]
    pre = Preprocess(32, 1)
    x = pre.to_input(torch.stack([pre.decode(r) for r in records]))
    task = make_task(records, "multilabel")
    y = torch.as_tensor(targets(records, task), dtype=torch.float32)
    spec = ModelSpec(backbone="resnet18", stem="small", width=8, in_channels=1, image_size=32)
    torch.manual_seed(0)
    model = Classifier(build_backbone(spec), task)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(150):
        idx = torch.randint(len(x), (64,), generator=g)
        loss = model({"image": x[idx], "target": y[idx]})["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    run = folder / "run"
    atomic_save({"model": {f"backbone.{k}": v for k, v in model.backbone.state_dict().items()},
                 "spec": spec.to_dict(), "preprocess": pre.to_dict(),
                 "config": {"data": {"synthetic_patients": 200, "synthetic_seed": 0}}},
                run / "checkpoints" / "last.pt")
    return run


@pytest.fixture(scope="module")
def lstm_run(tmp_path_factory, encoder_run):
    return _train(tmp_path_factory.mktemp("report"), "configs/report_lstm.yaml", f"encoder.run={encoder_run}")


def test_training_lowers_the_loss_and_reports_state_the_images_findings(lstm_run):
    out, m = lstm_run
    rows = [line.split(",") for line in (out / "log.csv").read_text().splitlines()]
    col = rows[0].index("word_loss")
    losses = [float(r[col]) for r in rows[1:]]
    assert losses[-1] < 0.5 * losses[0]
    agree = m["test"]["label_agreement"]
    assert set(agree["observations"]) <= {"cardiomegaly", "pleural_effusion", "consolidation", "lung_lesion",
                                          "pneumothorax", "atelectasis"}
    assert agree["f1"] > agree["f1_shuffled"] + 0.05, agree
    for key in ("bleu1", "bleu4", "rouge_l", "cider"):
        assert 0 <= m["test"]["nlg"][key] <= (10 if key == "cider" else 1)
    assert m["test"]["nlg"]["bleu1"] > 0.2                  # the reports are report-like, not noise
    assert m["test"]["nlg"]["meteor"] is None and "meteor" in m["test"]["nlg"]["missing"]
    assert m["cache"]["images"] > 0 and m["cache"]["bytes"] > 0
    samples = json.loads((out / "samples.json").read_text())
    assert len(samples) == m["studies"]["test"] and samples[0]["generated"]
    assert (out / "report.html").is_file() and (out / MODEL).is_file()
    assert all(s["patient"].startswith("p-") for s in samples)   # digests, never the source's ids


def test_the_feature_cache_is_reused_and_rebuilt_when_the_images_change(lstm_run, encoder_run):
    from medssl.report.studies import load_studies
    from medssl.report.train import _fingerprint, feature_cache

    out, _ = lstm_run
    run = load_report_run(out)
    studies = load_studies(out / "data" / "manifest.csv", run.preprocess, 2, progress=False)
    fp = _fingerprint(str(encoder_run), studies, run.preprocess)
    maps, info = feature_cache(run.model, studies, run.preprocess, out / "cache", fp, progress=False)
    assert info["reused"] and maps.dtype == torch.float16
    studies.images[0] = 255 - studies.images[0]
    _, again = feature_cache(run.model, studies, run.preprocess, out / "cache",
                             _fingerprint(str(encoder_run), studies, run.preprocess), progress=False)
    assert not again["reused"]


def test_generate_writes_text_and_json_for_files_and_study_folders(lstm_run, cli, tmp_path):
    out, _ = lstm_run
    images = sorted((out / "data" / "images").rglob("*.png"))[:2]
    study = tmp_path / "study"
    study.mkdir()
    for i, p in enumerate(images):
        (study / (f"view{i}_lateral.png" if i else f"view{i}_frontal.png")).write_bytes(p.read_bytes())
    code, text, _ = cli("report", "generate", out, images[0], study)
    assert code == 0 and "draft for a radiologist's review" in text and str(study) in text
    code, text, _ = cli("report", "generate", out, study, "--json", "--beam", "1")
    result = json.loads(text)["results"][0]
    assert code == 0 and result["report"] and len(result["views"]) == 2
    assert all(0 <= v <= 1 for v in result["findings"].values()) and result["findings"]


def test_generate_refuses_bad_input_in_one_line(lstm_run, cli, tmp_path):
    out, _ = lstm_run
    empty = tmp_path / "empty"
    empty.mkdir()
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    other = tmp_path / "other.pt"
    torch.save({"model": {}, "spec": {"method": "simclr"}, "preprocess": {"size": 32}}, other)
    state = torch.load(out / MODEL, weights_only=False)
    state["decoder"] = {**state["decoder"], "vocab_size": state["decoder"]["vocab_size"] + 1}
    mixed = tmp_path / "mixed.pt"
    torch.save(state, mixed)
    many = tmp_path / "collection"
    many.mkdir()
    for i in range(5):
        (many / f"p{i}.png").write_bytes(b"")
    for args, words in [((out, empty), "no image files"), ((out, many), "5 images in one folder"), ((out, bad), "broken.png"),
                        ((out, tmp_path / "nope.png"), "no such image"), ((other, bad), "not a report model"),
                        ((mixed, bad), "vocabulary mismatch"), ((tmp_path / "norun", bad), "no such")]:
        code, _, err = cli("report", "generate", *args)
        assert code == 2 and words in err and len(err.strip().splitlines()) == 1, (args, err)


def test_train_refuses_bad_config_in_one_line(cli, tmp_path):
    for args, words in [(("--set", "decoder.dimm=3"), "decoder.dimm"),
                        (("--config", "configs/report_retrieval.yaml"), "needs encoder.run"),
                        (("--set", "generate.beam=0"), "beam"),
                        (("--set", "encoder.run=" + str(tmp_path / "missing")), "no such checkpoint")]:
        code, _, err = cli("report", "train", "--out", tmp_path / "r", *args)
        assert code == 2 and words in err and len(err.strip().splitlines()) == 1, (args, err)


def test_a_finished_run_is_not_overwritten(lstm_run, cli):
    out, _ = lstm_run
    code, _, err = cli("report", "train", "--config", "configs/report_lstm.yaml", "--out", out)
    assert code == 2 and "--resume" in err


@pytest.fixture(scope="module")
def retrieval_run(tmp_path_factory, clip_run):
    return _train(tmp_path_factory.mktemp("repair"), "configs/report_retrieval.yaml", f"encoder.run={clip_run}",
                  "data.synthetic_patients=16", "data.size=16", "retrieval.ks=[1,2,3]",
                  "retrieval.unit=sentence", "retrieval.center=false")


def test_retrieval_reports_come_from_training_sentences_without_near_duplicates(retrieval_run, cli):
    from medssl.report.retrieval_based import jaccard, word_set

    out, m = retrieval_run
    assert m["retrieval"]["k"] in (1, 2, 3) and len(m["retrieval"]["k_curve"]) == 3
    run = load_report_run(out)
    samples = json.loads((out / "samples.json").read_text())
    bank = set(run.bank_texts)
    for s in samples:
        sources = [x["sentence"] for x in s["sources"]]
        assert len(sources) == run.k
        assert all(x.lower() in bank for x in sources)
        sets = [word_set(x) for x in sources]
        assert all(jaccard(a, b) < run.dup_jaccard for i, a in enumerate(sets) for b in sets[i + 1:])
        scores = [x["score"] for x in s["sources"]]
        assert scores == sorted(scores, reverse=True)
    image = sorted((out / "data" / "images").rglob("*.png"))[0]
    code, text, _ = cli("report", "generate", out, image, "--json")
    result = json.loads(text)["results"][0]
    assert code == 0 and result["sources"] and result["method"] == "retrieval"


def test_label_command_reads_stdin_and_prints_json(cli, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("No pleural effusion. Mild cardiomegaly.\nLungs are clear.\n"))
    code, text, _ = cli("report", "label", "-", "--json")
    rows = [json.loads(line) for line in text.splitlines()]
    assert code == 0 and len(rows) == 2
    assert rows[0]["pleural_effusion"] == "negative" and rows[0]["cardiomegaly"] == "positive"
    assert rows[1]["no_finding"] == "positive"


def test_retrieval_of_whole_reports_is_a_choice_on_validation(tmp_path, clip_run):
    _, m = _train(tmp_path, "configs/report_retrieval.yaml", f"encoder.run={clip_run}", "data.synthetic_patients=16",
                  "data.size=16", "retrieval.ks=[1,2]", "retrieval.center=false")
    units = {(row["unit"], row["k"]) for row in m["retrieval"]["k_curve"]}
    assert units == {("sentence", 1), ("sentence", 2), ("report", 1)}
    best = max(m["retrieval"]["k_curve"], key=lambda r: (r["clinical_f1"], -r["k"]))
    assert (m["retrieval"]["unit"], m["retrieval"]["k"]) == (best["unit"], best["k"])


def test_selection_skips_contradictions_and_centring_demotes_hubs():
    import numpy as np

    from medssl.report.labeler import label_reports
    from medssl.report.retrieval_based import retrieve_reports

    texts = ["small left pleural effusion.", "no pleural effusion.", "the heart is enlarged.", "lungs are clear."]
    bank = np.eye(4, dtype=np.float32)
    query = np.array([[0.9, 0.8, 0.1, 0.5]], dtype=np.float32)
    query /= np.linalg.norm(query)
    report, sources = retrieve_reports(query, bank, texts, 2, 0.6, statuses=label_reports(texts))[0]
    assert [s for s, _ in sources] == ["small left pleural effusion.", "lungs are clear."]  # not "no effusion"
    hub = np.array([0.8, 0.0, 0.0, 0.0], dtype=np.float32)  # the first sentence scores high for every image
    _, centred = retrieve_reports(query, bank, texts, 1, 0.6, bias=hub)[0]
    assert centred[0][0] == "no pleural effusion."

"""Image-report batches and `medssl align`: studies as items, reports as tokens, the tokenizer in every checkpoint,
resume exactness, the run page, the refusals between pretrain and align, other text columns and case notes.

The image-text method here is a toy defined in this file (a linear image encoder, a bag of token embeddings and
clip_loss), registered by monkeypatching METHODS as tests/methods/test_new_method.py does, so these tests do not
depend on the real ConVIRT / CLIP / GLoRIA modules.
"""

from __future__ import annotations

import csv
import functools
import json
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from medssl import methods
from medssl.checkpoint import load_checkpoint
from medssl.cli import main
from medssl.config import load_config
from medssl.data.augment import preset
from medssl.data.datasets import (IMAGE_REPORT, BatchDataset, BatchSpec, EpochLoader, ImageDataset, StudyReports,
                                  finding_names, study_groups)
from medssl.data.records import Record
from medssl.data.sources import load_source, with_text_column
from medssl.errors import MedsslError
from medssl.losses import clip_loss
from medssl.models.factory import ModelSpec
from medssl.models.trainable import Trainable
from medssl.pretrain import check_command, load_text, resume_config, run_pretrain, text_origin
from medssl.schema import check_positive
from medssl.text.reports import report_sentences
from medssl.text.tokenizer import ReportTokenizer

REPORTS = {
    "A": "FINDINGS: The heart is enlarged. No effusion. IMPRESSION: Cardiomegaly.",
    "B": "FINDINGS: Small left pleural effusion. Lungs otherwise clear. IMPRESSION: Effusion.",
    "C": "FINDINGS: Lungs are clear. No pneumothorax. IMPRESSION: No acute disease.",
    "D": "FINDINGS: Nodule in the right upper lobe. Heart normal. IMPRESSION: Pulmonary nodule.",
}
LABELS = {"A": ("cardiomegaly",), "B": ("effusion",), "C": ("no_finding",), "D": ("nodule",)}


@dataclass
class PairOptions:
    """Options of the toy image-text method: the two every image-text method declares, and an embedding size."""

    vocab_size: int = 200
    context: int = 16
    dim: int = 8

    def validate(self) -> None:
        check_positive(self, "model.options", ("vocab_size", "context", "dim"))


class Pair(Trainable):
    """A toy image-text method: linear image encoder, mean of token embeddings, symmetric InfoNCE with soft targets."""

    Options = PairOptions
    batch = IMAGE_REPORT

    @classmethod
    def build(cls, spec: ModelSpec) -> "Pair":
        return cls(spec.in_channels * spec.image_size ** 2, spec.options)

    def __init__(self, pixels: int, options: PairOptions):
        super().__init__()
        self.backbone = nn.Sequential(nn.Flatten(), nn.Linear(pixels, options.dim))
        self.tokens = nn.Embedding(options.vocab_size, options.dim)
        self.vocab = options.vocab_size

    def encode_image(self, x: Tensor) -> Tensor:
        """(B, C, S, S) -> (B, D), L2-normalised."""
        return F.normalize(self.backbone(x), dim=1)

    def encode_text(self, ids: Tensor, mask: Tensor) -> Tensor:
        """(B, L) ids and mask -> (B, D), L2-normalised mean of the real tokens' embeddings."""
        m = mask.unsqueeze(-1).float()
        return F.normalize((self.tokens(ids) * m).sum(1) / m.sum(1).clamp_min(1), dim=1)

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        assert int(batch["ids"].max()) < self.vocab  # the tokenizer's vocabulary is the model's
        loss = clip_loss(self.encode_image(batch["image"]), self.encode_text(batch["ids"], batch["mask"]), 0.1,
                         findings=batch["findings"])
        return {"loss": loss, "tokens": batch["mask"].sum(1).float().mean()}


@pytest.fixture
def pair(monkeypatch):
    monkeypatch.setitem(methods.METHODS, "pair", Pair)


def _studies(n_studies: int = 8, size: int = 8) -> tuple[ImageDataset, list[Record]]:
    """Two images (PA, LATERAL) per study, one study per patient, reports cycling through REPORTS."""
    records, keys = [], list(REPORTS)
    for s in range(n_studies):
        key = keys[s % len(keys)]
        for view in ("PA", "LATERAL"):
            records.append(Record(path=f"img{s}{view}", patient_id=f"P{s}", study_id=f"S{s}", view=view,
                                  labels=LABELS[key], report=REPORTS[key], index=len(records)))
    images = np.random.default_rng(0).random((len(records), size, size)).astype(np.float32)
    return ImageDataset.from_array(images, records), records


@functools.cache
def _tokenizer() -> ReportTokenizer:
    """One tokenizer for the whole file: two trainings may number the tokens differently."""
    return ReportTokenizer.train(list(REPORTS.values()), vocab_size=120, min_frequency=1, context=16)


def _batches(images: ImageDataset, records: list[Record], sentences: int = 1, **kw) -> BatchDataset:
    reports = StudyReports(records, _tokenizer(), finding_names(records), sentences)
    return BatchDataset(images, 4, IMAGE_REPORT, preset("chest_xray", 8), seed=3, reports=reports, **kw)


def test_batch_spec_declares_reports_and_refuses_nonsense():
    assert IMAGE_REPORT.report and IMAGE_REPORT.views == ("image",) and IMAGE_REPORT.min_per_process == 2
    assert not BatchSpec().report                                   # every image-only method keeps its batches
    with pytest.raises(MedsslError, match="not with a partner image"):
        BatchSpec(("a", "b"), partner=True, report=True)
    with pytest.raises(MedsslError, match="clash with the report keys"):
        BatchSpec(("ids",), report=True)


def test_report_batches_hold_one_image_per_study_its_tokens_and_findings():
    images, records = _studies()
    data = _batches(images, records)
    assert len(data) == 2                                           # 8 studies (16 images) in batches of 4
    b = data[(0, 0)]
    assert b["image"].shape == (4, 1, 8, 8) and b["image"].dtype == torch.float32
    assert b["ids"].shape == b["mask"].shape == (4, 16) and b["ids"].dtype == b["mask"].dtype == torch.int64
    assert b["findings"].shape == (4, 3) and b["findings"].dtype == torch.float32
    assert finding_names(records) == ["cardiomegaly", "effusion", "nodule"]   # no_finding is no class
    for row, (study, image) in enumerate(zip(b["study"].tolist(), b["index"].tolist())):
        rec = records[image]
        assert rec.study_id == f"S{study}"                         # the image belongs to the study of its row
        expected = [float(n in rec.labels) for n in ["cardiomegaly", "effusion", "nodule"]]
        assert b["findings"][row].tolist() == expected             # no_finding: all zeros
        options = _tokenizer().encode(report_sentences(rec.report), pad_to="context")["ids"]
        assert any(torch.equal(b["ids"][row], o) for o in options)  # one sentence of the study's own report
    assert (b["mask"].sum(1) < 16).all() and (b["ids"][b["mask"] == 0] == _tokenizer().pad_id).all()


def test_report_batches_are_pure_functions_of_their_key_and_show_every_view():
    images, records = _studies()
    a, b = _batches(images, records), _batches(images, records)
    for key in [(0, 1), (2, 0), (0, 1)]:                            # any order, a fresh dataset: the same batch
        x, y = a[key], b[key]
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
    assert not torch.equal(a[(0, 0)]["study"], a[(1, 0)]["study"]) or not torch.equal(
        a[(0, 0)]["index"], a[(1, 0)]["index"])                    # epochs differ
    views = {records[i].view for e in range(6) for k in range(2) for i in a[(e, k)]["index"].tolist()}
    assert views == {"PA", "LATERAL"}                               # frontal and lateral both meet the report
    texts = {tuple(a[(e, 0)]["ids"][0].tolist()) for e in range(8)}
    assert len(texts) > 1                                           # ConVIRT: a different sentence now and then


def test_whole_report_option_and_rank_slices():
    images, records = _studies()
    whole = _batches(images, records, sentences=0)
    one = _batches(images, records, sentences=1)
    assert (whole[(0, 0)]["mask"].sum(1) > one[(0, 0)]["mask"].sum(1)).all()  # every sentence, not one
    ranks = [_batches(images, records, rank=r, world_size=2)[(0, 1)]["study"] for r in (0, 1)]
    assert torch.equal(torch.cat(ranks), one[(0, 1)]["study"])     # ranks split each global batch of studies
    with pytest.raises(MedsslError, match="larger than the 8 studies"):
        BatchDataset(images, 12, IMAGE_REPORT, preset("chest_xray", 8), reports=one.reports)
    with pytest.raises(MedsslError, match="give the StudyReports"):
        BatchDataset(images, 4, IMAGE_REPORT, preset("chest_xray", 8))
    bare = [Record(path="x", patient_id="p", report="FINDINGS: ")]
    with pytest.raises(MedsslError, match="x: its study has no usable report"):
        StudyReports(bare, _tokenizer(), [])


def test_study_groups_key_on_patient_and_study():
    recs = [Record("a", "p1", "s1"), Record("b", "p2", "s1"), Record("c", "p1", "s1"), Record("d", "p1")]
    assert study_groups(recs) == [[0, 2], [1], [3]]                # s1 of p2 is another study; no id: its own


def _config(*extra: str):
    return load_config(None, ["method=pair", "data.size=16", "data.synthetic_patients=10", "data.batch_size=4",
                              "data.num_workers=0", "train.steps=2", "train.log_every=1", *extra])


def test_align_run_saves_tokenizer_and_findings_and_writes_its_page(tmp_path, pair):
    run = tmp_path / "run"
    metrics = run_pretrain(_config(), run, progress=False)
    ckpt = load_checkpoint(run)
    tok = ReportTokenizer.from_json(ckpt["tokenizer"])               # restored from the checkpoint alone
    assert tok.context == 16 and tok.vocab_size <= 200
    assert ckpt["spec"]["options"]["vocab_size"] == tok.vocab_size == metrics["vocab_size"]
    assert ckpt["findings"] and "no_finding" not in ckpt["findings"]
    shared = load_text(run)                                          # what the other DDP processes read
    assert shared.tokenizer.to_json() == ckpt["tokenizer"] and shared.findings == ckpt["findings"]
    assert ckpt["config"]["model"]["options"]["vocab_size"] == 200  # the config keeps the asked maximum
    assert metrics["steps"] == 2 and metrics["studies"] <= metrics["images"]
    test = metrics["test_batch"]
    assert test["from"] == "val split"                             # 10 built-in patients: none in test
    assert test["studies"] >= 2 and test["chance"] == 1 / test["studies"]
    assert 0 <= test["image_to_text_top1"] <= 1 and -1 <= test["mean_matching"] <= 1
    page = (run / "report.html").read_text()
    assert "Image-text similarity" in page and page.count("data:image/png;base64") == 2
    assert (run / "plots" / "similarity.png").is_file() and (run / "plots" / "loss.png").is_file()
    assert "test_batch" in json.loads((run / "metrics.json").read_text())


def test_resumed_align_run_equals_an_uninterrupted_one(tmp_path, pair, monkeypatch):
    train, trained = ReportTokenizer.train, {}

    def once(texts, **kw):  # WordPiece training numbers tokens differently from call to call: one for both runs
        return trained.setdefault(tuple(texts), train(texts, **kw))

    monkeypatch.setattr(ReportTokenizer, "train", once)
    constant = "optim.schedule=constant"  # a cosine's length is the run's: 2 steps then 4 would be another run
    run_pretrain(_config("train.steps=4", constant), tmp_path / "whole", progress=False)
    run_pretrain(_config(constant), tmp_path / "parts", progress=False)
    run_pretrain(resume_config(tmp_path / "parts", ["train.steps=4"]), tmp_path / "parts", resume=True,
                 progress=False)
    a, b = load_checkpoint(tmp_path / "whole"), load_checkpoint(tmp_path / "parts")
    assert a["step"] == b["step"] == 4 and a["tokenizer"] == b["tokenizer"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert len(trained) == 1                                       # the resumed part took the checkpoint's


def test_pretrain_and_align_refuse_each_others_methods(tmp_path, pair, capsys):
    check_command(_config(), "align")
    check_command(load_config(None, ["method=simclr"]), "pretrain")
    with pytest.raises(MedsslError, match="run it with medssl align"):
        check_command(_config(), "pretrain")
    assert main(["pretrain", "--config", str(_write_yaml(tmp_path, "pair")), "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "medssl align" in err[0]
    assert main(["align", "--config", str(_write_yaml(tmp_path, "simclr")), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "learns from images alone: run it with medssl pretrain" in err[0]
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # refused before any work


def _write_yaml(tmp_path, name: str):
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"method: {name}\n")
    return path


def _manifest(tmp_path, rows: list[dict[str, str]]):
    folder = tmp_path / "data"
    folder.mkdir(exist_ok=True)
    for i, row in enumerate(rows):
        Image.fromarray(np.full((8, 8), 25 * i, np.uint8)).save(folder / row["path"])
    with open(folder / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return folder / "manifest.csv"


def test_missing_reports_are_skipped_and_counted_and_none_left_is_refused(tmp_path, pair, capsys):
    rows = [{"path": f"{i}.png", "patient_id": f"p{i}", "report": REPORTS["ABCD"[i % 4]] if i % 3 else "",
             "labels": "", "note": f"Case note {i}. Chest film looked abnormal."} for i in range(9)]
    manifest = _manifest(tmp_path, rows)
    cfg = _config(f"data.source={manifest}", "data.batch_size=2", "train.steps=1")
    metrics = run_pretrain(cfg, tmp_path / "run", progress=False)
    assert "skipped 3 of 9 training image(s) with a missing or empty report" in capsys.readouterr().out
    assert metrics["images"] == 6 and metrics["test_batch"]["from"].startswith("training images")
    for r in rows:
        r["report"] = ""
    manifest = _manifest(tmp_path, rows)
    with pytest.raises(MedsslError, match="no report left: 9 of 9"):
        run_pretrain(_config(f"data.source={manifest}", "data.batch_size=2"), tmp_path / "none", progress=False)
    other = run_pretrain(_config(f"data.source={manifest}", "data.batch_size=2", "train.steps=1",
                                 "data.text_column=note"), tmp_path / "notes", progress=False)
    assert other["images"] == 9                                    # the note column is the text
    with pytest.raises(MedsslError, match="no column 'nope' for data.text_column"):
        with_text_column(load_source(manifest, progress=False)[0], "nope", manifest)


def test_npz_case_notes_are_texts_and_named_so(tmp_path):
    path = tmp_path / "cases.npz"
    notes = np.array(["A 60-year-old man with fever. The film showed a left infiltrate.", ""])
    np.savez(path, images=np.zeros((2, 8, 8), np.uint8), patientid=np.array(["1", "2"]), clinical_notes=notes,
             finding=np.array(["COVID-19", "No Finding"]))
    records = load_source(path, progress=False)[0]
    assert records[0].report.startswith("A 60-year-old")            # .npz clinical_notes are the records' text
    again = with_text_column(records, "finding", path)
    assert [r.report for r in again] == ["COVID-19", "No Finding"]
    with pytest.raises(MedsslError, match="no per-image field 'nope'"):
        with_text_column(records, "nope", path)
    cfg = load_config(None, [f"data.source={path}"])
    assert "clinical case notes" in text_origin(cfg, tmp_path) and "not radiology reports" in text_origin(cfg, tmp_path)
    assert text_origin(load_config(None, [f"data.source={path}", "data.text_column=finding"]), tmp_path) is None


def test_align_command_trains_and_names_its_page(tmp_path, pair, capsys):
    config = tmp_path / "pair.yaml"
    config.write_text("method: pair\ndata: {size: 16, synthetic_patients: 10, batch_size: 4, num_workers: 0}\n"
                      "train: {steps: 1, epochs: null, log_every: 1}\n")
    assert main(["align", "--config", str(config), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "aligned pair" in out and f"run report: {tmp_path / 'run' / 'report.html'}" in out
    assert main(["align", "--resume", str(tmp_path / "run"), "--set", "train.steps=2", "--quiet"]) == 0
    assert "kept from the checkpoint" in capsys.readouterr().out     # the resumed part keeps its tokenizer
    assert main(["align", "--config", str(config), "--text-column", "nope", "--out", str(tmp_path / "b")]) == 2
    assert "no column 'nope' for data.text_column" in capsys.readouterr().err


def test_report_batches_are_made_in_worker_processes_alike():
    images, records = _studies()
    data = _batches(images, records)
    loader = EpochLoader(_batches(images, records), num_workers=1)
    try:
        got = list(loader.epoch(1, start=1))                        # the tokenizer travels to the worker
    finally:
        loader.close()
    assert len(got) == 1 and all(torch.equal(got[0][k], data[(1, 1)][k]) for k in got[0])


def test_convirt_on_two_spawned_processes_trains_and_leaves_a_run_that_loads(tmp_path):
    """`medssl align`'s code path with train.devices=2 (ddp_spawn, CPU): the tokenizer rank 0 trained reaches the
    workers with the loader, each step's loss is over both ranks' pairs (the losses' gradients against one process
    are tests/test_losses_ddp.py's), and the run folder is the one-process kind: it loads for zero-shot."""
    import math

    from conftest import ALIGN_TINY
    from medssl.zeroshot_run import load_image_text

    cfg = load_config(None, ["method=convirt", *ALIGN_TINY, "train.steps=2", "train.accelerator=cpu",
                             "train.devices=2", "train.strategy=ddp_spawn"])
    run = tmp_path / "run"
    metrics = run_pretrain(cfg, run, progress=False)
    assert metrics["world_size"] == 2 and metrics["steps"] == 2 and math.isfinite(metrics["final_loss"])
    with open(run / "log.csv", newline="") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == [1, 2]
    aligned = load_image_text(run)
    assert aligned.tokenizer.to_json() == load_checkpoint(run)["tokenizer"] == load_text(run).tokenizer.to_json()
    enc = aligned.tokenizer.encode(["no pleural effusion"], pad_to="context")
    with torch.no_grad():
        z = aligned.model.encode_text(enc["ids"], enc["mask"])
    assert z.shape == (1, aligned.spec.options.proj_dim) and torch.allclose(z.norm(dim=1), torch.ones(1))
    assert (run / "report.html").is_file()

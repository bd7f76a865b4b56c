"""`medssl report train`: a report generator (LSTM with attention, Transformer) or a retrieval-based reporter
(CXR-RePaiR) on an image encoder from `medssl pretrain` / `medssl align`, scored on the test split.

Steps, cheap checks first: the config, the run folder, the encoder run, the studies (each split non-empty), then
decoding (once), the feature cache (frozen encoder: the encoder runs once per image; the decoder then trains on
cached maps, see `feature_cache`), training through `train.fit` (resumable, NaN guard, validation loss every
val_every steps keeps the best weights), generation on val and test, metrics with patient bootstrap CIs.

The run folder: config.yaml, log.csv, checkpoints/last.pt (training state), model.pt (the weights kept: best
validation loss; what `medssl report generate` loads), cache/ (feature maps and their fingerprint), metrics.json,
samples.json (test studies: references, generated reports, findings), report.html and gallery/.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from medssl import __version__
from medssl.checkpoint import atomic_save, last_checkpoint
from medssl.data.preprocess import Preprocess
from medssl.errors import MedsslError
from medssl.inference import load_bundle
from medssl.models.decoders import DecoderSpec
from medssl.models.factory import ModelSpec, build_backbone
from medssl.models.report_model import ReportModel
from medssl.optim import OptimConfig
from medssl.report.bundle import GENERATOR, MODEL, load_report_run, study_inputs
from medssl.report.config import ReportConfig, save_report_config, to_dict
from medssl.report.studies import Study, StudySet, load_studies, study_tensors
from medssl.runspec import RunSpec, TrainConfig, Validation
from medssl.text.tokenizer import ReportTokenizer

CACHE_FORMAT = 1


def finding_targets(studies: list[Study], names: tuple[str, ...]) -> Tensor:
    """(N, K) 0/1 of each study's labels among names."""
    y = torch.zeros(len(studies), len(names))
    for i, s in enumerate(studies):
        for x in s.labels:
            if x in names:
                y[i, names.index(x)] = 1.0
    return y


class StudyBatches:
    """fit's BatchSource over studies: batch b of epoch e is a pure function of (seed, e, b), so a resumed run
    continues at the exact next batch. Items: cached maps (frozen encoder) or model inputs, views, ids, findings."""

    def __init__(self, rows: dict[str, Tensor], batch_size: int, seed: int, pad_id: int,
                 preprocess: Preprocess | None = None):
        self.rows, self.seed, self.pad_id, self.preprocess = rows, seed, pad_id, preprocess
        self.n = len(rows["ids"])
        self.batch_size = min(batch_size, self.n)

    def __len__(self) -> int:
        return max(1, self.n // self.batch_size)

    def batch(self, idx: Tensor) -> dict[str, Tensor]:
        """The batch of these study rows; token ids cut to the batch's longest report."""
        ids = self.rows["ids"][idx]
        length = int((ids != self.pad_id).sum(1).max())
        out = {"ids": ids[:, :length], "views": self.rows["views"][idx]}
        if "maps" in self.rows:
            out["maps"] = self.rows["maps"][idx]
        else:
            assert self.preprocess is not None
            out["images"] = study_inputs(self.preprocess, self.rows["images"][idx])
        if "findings" in self.rows:
            out["findings"] = self.rows["findings"][idx]
        return out

    def epoch(self, epoch: int, start: int = 0):
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = torch.randperm(self.n, generator=g)
        for b in range(start, len(self)):
            yield self.batch(order[b * self.batch_size:(b + 1) * self.batch_size])


def _fingerprint(encoder: str | None, studies: StudySet, preprocess: Preprocess) -> dict[str, Any]:
    """What a feature cache was computed from: the encoder checkpoint file, the decoded images, the preprocess."""
    where = None
    if encoder is not None:
        p = Path(encoder)
        p = last_checkpoint(p) if p.is_dir() else p
        st = p.stat()
        where = {"path": str(p.resolve()), "size": st.st_size, "mtime": st.st_mtime_ns}
    h = hashlib.sha256(studies.images.numpy().tobytes()).hexdigest()
    return {"format": CACHE_FORMAT, "encoder": where, "images": h, "preprocess": preprocess.to_dict()}


def feature_cache(model: ReportModel, studies: StudySet, preprocess: Preprocess, folder: Path,
                  fingerprint: dict[str, Any], progress: bool) -> tuple[Tensor, dict[str, Any]]:
    """Every decoded image's last feature map (N, F, h, w) float16, computed once by the frozen encoder and kept in
    folder/maps.pt with its fingerprint; a later run (or a resume) with the same encoder file, images and
    preprocess reads it instead. Returns (maps, {seconds, bytes, images, reused})."""
    from tqdm import tqdm

    folder.mkdir(parents=True, exist_ok=True)
    path, meta = folder / "maps.pt", folder / "fingerprint.json"
    t0 = time.perf_counter()
    if path.is_file() and meta.is_file():
        try:
            if json.loads(meta.read_text()) == fingerprint:
                maps = torch.load(path, map_location="cpu", weights_only=True)
                return maps, {"seconds": time.perf_counter() - t0, "bytes": path.stat().st_size,
                              "images": len(maps), "reused": True}
        except (OSError, ValueError, RuntimeError):
            pass                                             # a damaged cache is rebuilt
    out = []
    model.encoder.eval()
    with torch.no_grad():
        for lo in tqdm(range(0, len(studies.images), 64), desc="report: caching encoder feature maps",
                       unit="batch", disable=not progress, file=sys.stderr, leave=False, dynamic_ncols=True):
            x = preprocess.to_input(studies.images[lo:lo + 64])
            out.append(model.encoder.forward_features(x).to(torch.float16))
    maps = torch.cat(out)
    meta.unlink(missing_ok=True)                             # never a fingerprint beside half-written maps
    atomic_save(maps, path)
    meta.write_text(json.dumps(fingerprint) + "\n")
    return maps, {"seconds": time.perf_counter() - t0, "bytes": path.stat().st_size, "images": len(maps),
                  "reused": False}


def _encoder(cfg: ReportConfig, size: int | None) -> tuple[torch.nn.Module, ModelSpec, Preprocess, dict[str, Any]]:
    """The image encoder: the given run's backbone, else a seeded random one (a baseline; said in the notes)."""
    if cfg.encoder.run:
        bundle = load_bundle(cfg.encoder.run)
        if bundle.is_classifier:
            raise MedsslError(f"{cfg.encoder.run}: is a classifier bundle; encoder.run takes a `medssl pretrain` or "
                              "`medssl align` run")
        spec = bundle.spec.bare()
        if size is not None and size != bundle.preprocess.size:
            spec = replace(spec, image_size=size) if spec.backbone.startswith("resnet") else spec
        pre = Preprocess(size or bundle.preprocess.size, bundle.preprocess.channels)
        return bundle.model, spec, pre, bundle.meta.get("config", {}) or {}
    size = size or 64
    spec = ModelSpec(backbone=cfg.encoder.backbone, in_channels=1, image_size=size, width=cfg.encoder.width)
    torch.manual_seed(cfg.train.seed)
    return build_backbone(spec), spec, Preprocess(size, 1), {}


def _source(cfg: ReportConfig, out: Path, preprocess: Preprocess, encoder_config: dict[str, Any],
            progress: bool) -> str:
    """--data, else the built-in synthetic studies with the encoder run's own parameters (so its val / test
    patients are ones the encoder never saw), written to OUT/data."""
    if cfg.data.source:
        return cfg.data.source
    from medssl.synthetic.builtin import builtin_source

    d = encoder_config.get("data") or {}
    patients = int(d.get("synthetic_patients", cfg.data.synthetic_patients)) if cfg.encoder.run \
        else cfg.data.synthetic_patients
    seed = int(d.get("synthetic_seed", cfg.data.synthetic_seed)) if cfg.encoder.run else cfg.data.synthetic_seed
    return str(builtin_source(out / "data", size=preprocess.size, patients=patients, seed=seed, progress=progress))


def _check_out(out: Path, resume: bool) -> None:
    """A run folder is new, a failed start (no checkpoint, no model), or resumed; never silently overwritten."""
    if resume:
        if not out.is_dir():
            raise MedsslError(f"--resume {out}: no such run folder")
        return
    if (out / MODEL).exists() or last_checkpoint(out).exists():
        raise MedsslError(f"{out}: holds a report run already; give another --out or continue it with --resume")


def run_report_train(cfg: ReportConfig, out: str | Path, resume: bool = False, progress: bool = True,
                     meteor: Any = None) -> dict[str, Any]:
    """Train (or build) the configured report method into OUT and score it; the metrics (also OUT/metrics.json).
    meteor: an open MeteorScorer to share (a demo scores several runs); None = as evaluate.meteor says."""
    t0 = time.perf_counter()
    out = Path(out)
    _check_out(out, resume)
    encoder, spec, preprocess, enc_cfg = _encoder(cfg, cfg.data.size)
    out.mkdir(parents=True, exist_ok=True)
    save_report_config(cfg, out / "config.yaml")
    source = _source(cfg, out, preprocess, enc_cfg, progress)
    studies = load_studies(source, preprocess, cfg.data.views, cfg.data.skip_bad, progress, cfg.data.text_column)
    notes = list(studies.notes)
    if not cfg.encoder.run:
        notes.append(f"no encoder run given: a randomly initialised {spec.backbone} encoder (a baseline); set "
                     "encoder.run to a `medssl pretrain` or `medssl align` run")
    if cfg.method == "retrieval":
        from medssl.report.retrieval_train import build_retrieval

        info = build_retrieval(cfg, studies, out, progress)
    else:
        info = _train_generator(cfg, encoder, spec, preprocess, studies, out, resume, progress)
    run = load_report_run(out)  # model.pt: the weights kept
    from medssl.report.evaluation import evaluate_run

    metrics = evaluate_run(run, cfg, studies, out, progress, meteor)
    metrics.update({"method": cfg.method, "source": str(source) if cfg.data.source else "built-in synthetic",
                    "encoder": cfg.encoder.run, "freeze_encoder": cfg.encoder.freeze, "notes": notes,
                    "skipped": [{"path": p, "error": e} for p, e in studies.skipped],
                    "studies": {s: len(v) for s, v in studies.studies.items()}, **info,
                    "seconds": time.perf_counter() - t0, "version": __version__})
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float) + "\n")
    from medssl.report.page import write_page

    write_page(out, metrics)
    return metrics


def _train_generator(cfg: ReportConfig, encoder: torch.nn.Module, spec: ModelSpec, preprocess: Preprocess,
                     studies: StudySet, out: Path, resume: bool, progress: bool) -> dict[str, Any]:
    """Tokenizer, decoder spec, feature cache, fit; model.pt holds the best-validation weights."""
    from medssl.train import fit

    dec, views = cfg.decoder, cfg.data.views
    train, val = studies.studies["train"], studies.studies["val"]
    tokenizer = ReportTokenizer.train([s.text for s in train], vocab_size=dec.vocab_size,
                                      min_frequency=dec.min_frequency, context=dec.context)
    with torch.no_grad():
        probe = encoder.eval().forward_features(torch.zeros(1, preprocess.channels, preprocess.size,
                                                            preprocess.size))
    if probe.ndim != 4:
        raise MedsslError(f"encoder {spec.backbone}: report generation needs a convolutional encoder (ResNet) whose "
                          "feature map it attends over")
    feature_dim, h, w = probe.shape[1:]
    ids_of = tokenizer.ids
    dspec = DecoderSpec(kind=cfg.method, vocab_size=tokenizer.vocab_size, feature_dim=int(feature_dim),
                        regions=int(h * w), views=views, dim=dec.dim, layers=dec.layers, heads=dec.heads,
                        dropout=dec.dropout, max_len=dec.context, bos_id=ids_of["cls"], eos_id=ids_of["sep"],
                        pad_id=ids_of["pad"]).validate()
    names = studies.label_names
    torch.manual_seed(cfg.train.seed)
    model = ReportModel(dspec, encoder, n_findings=len(names) if dec.finding_weight > 0 else 0,
                        freeze_encoder=cfg.encoder.freeze, encoder_lr_scale=cfg.encoder.lr_scale,
                        finding_weight=dec.finding_weight, label_smoothing=dec.label_smoothing)
    cache: dict[str, Any] | None = None
    if cfg.encoder.freeze:
        maps, cache = feature_cache(model, studies, preprocess, out / "cache",
                                    _fingerprint(cfg.encoder.run, studies, preprocess), progress)

    def rows_of(split: list[Study]) -> dict[str, Tensor]:
        imgs, have = study_tensors(split, studies.images, views)
        rows = {"ids": tokenizer.encode([s.text for s in split], pad_to="context")["ids"], "views": have}
        if cfg.encoder.freeze:
            idx = torch.tensor([s.images[:views] for s in split])              # (N, V), -1 = none
            m = maps[idx.clamp_min(0)]                                         # (N, V, F, h, w)
            rows["maps"] = m * (idx >= 0)[:, :, None, None, None].to(m.dtype)
        else:
            rows["images"] = imgs
        if model.findings is not None:
            rows["findings"] = finding_targets(split, names)
        return rows

    train_rows, val_rows = rows_of(train), rows_of(val)
    pad = dspec.pad_id

    def make_loader(rank: int, world_size: int) -> StudyBatches:
        return StudyBatches(train_rows, cfg.train.batch_size, cfg.train.seed, pad, preprocess)

    val_batches = StudyBatches(val_rows, 64, 0, pad, preprocess)

    def val_score(m: torch.nn.Module) -> float:
        total, count = 0.0, 0
        with torch.no_grad():
            for lo in range(0, val_batches.n, 64):
                b = val_batches.batch(torch.arange(lo, min(lo + 64, val_batches.n)))
                total += float(m(b)["word_loss"]) * len(b["ids"])
                count += len(b["ids"])
        return -total / max(count, 1)

    t = cfg.train
    record = {"kind": GENERATOR, "method": cfg.method, "decoder": dspec.to_dict(),
              "encoder_spec": spec.to_dict(), "preprocess": preprocess.to_dict(), "views": views,
              "tokenizer": tokenizer.to_json(), "findings": list(names) if model.findings is not None else [],
              "generate": asdict(cfg.generate), "config": to_dict(cfg), "version": __version__}
    optim: OptimConfig = cfg.optim
    train_cfg = TrainConfig(steps=t.steps, epochs=None, seed=t.seed, log_every=t.log_every,
                            checkpoint_every=t.checkpoint_every, threads=t.threads).validate()
    spec_run = RunSpec(train_cfg, optim.validate(), Validation(val_score, t.val_every, t.patience),
                       keep_checkpoints=True, record=record, label=f"report {cfg.method}")
    t1 = time.perf_counter()
    result = fit(model, make_loader, spec_run, out, resume=resume, progress=progress)
    seconds = time.perf_counter() - t1
    atomic_save({"model": {k: v.detach().cpu() for k, v in model.state_dict().items()}, **record,
                 "step": result.get("best_step"), "val_word_loss": -float(result.get("best_val", math.nan))},
                out / MODEL)
    return {"train": {"steps": result["steps"], "best_step": result.get("best_step"),
                      "best_val_word_loss": -float(result.get("best_val", math.nan)),
                      "val_curve": [(int(s), -float(v)) for s, v in result.get("val_curve", [])],
                      "seconds": seconds, "studies_per_s": result.get("images_per_s"),
                      "final_loss": result.get("final_loss")},
            "cache": cache, "vocab_size": tokenizer.vocab_size, "decoder": dspec.to_dict()}

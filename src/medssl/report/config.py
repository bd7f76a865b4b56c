"""The config of `medssl report train` (configs/report_lstm.yaml, report_transformer.yaml, report_retrieval.yaml):
typed sections read with medssl.schema, so an unknown key or a wrong type is one line naming it."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from medssl.config import apply_overrides, read_yaml
from medssl.errors import MedsslError
from medssl.optim import OptimConfig
from medssl.report.generate import GenerateConfig
from medssl.schema import bad, check_choice, from_mapping, plain
from medssl.synthetic.builtin import BUILTIN_PATIENTS, BUILTIN_SEED

METHODS = ("lstm", "transformer", "retrieval")


@dataclass
class ReportData:
    """Where the studies come from; every record needs a report, a study is one patient visit's views."""

    source: str | None = None  # manifest .csv, folder, .npz; None = the built-in synthetic studies in RUN/data
    synthetic_patients: int = BUILTIN_PATIENTS
    synthetic_seed: int = BUILTIN_SEED
    size: int | None = None  # image side; None = the encoder run's own size
    views: int = 2  # views per study the model takes (frontal, then lateral)
    skip_bad: bool = False
    text_column: str | None = None  # the reports from this manifest column / .npz field; None = report


@dataclass
class ReportEncoder:
    """The image encoder: a `medssl pretrain` or `medssl align` run (frozen, or fine-tuned at a lower rate)."""

    run: str | None = None  # RUN_DIR or checkpoint; None = a randomly initialised backbone (a baseline only)
    freeze: bool = True  # frozen: feature maps computed once and cached (RUN/cache); else fine-tuned
    lr_scale: float = 0.1  # fine-tuned encoder's learning rate as a share of the decoder's
    backbone: str = "resnet18"  # with run: null only
    width: int | None = None  # with run: null only


@dataclass
class ReportDecoder:
    """The decoder and its tokenizer (trained on the training split's reports)."""

    dim: int = 256
    layers: int = 2  # Transformer only
    heads: int = 4  # Transformer only
    dropout: float = 0.1
    vocab_size: int = 2000  # the most: the tokenizer trained on the reports sets the actual size
    min_frequency: int = 2
    context: int = 100  # tokens per report, [CLS] and [SEP] included; longer reports lose trailing sentences
    finding_weight: float = 0.2  # weight of the finding head's loss (0 = no head)
    label_smoothing: float = 0.0


@dataclass
class ReportTrain:
    """Decoder training: steps of batch_size studies, validation loss every val_every steps keeps the best."""

    steps: int = 300
    batch_size: int = 32
    seed: int = 0
    val_every: int = 50
    patience: int | None = None  # validation scores without improvement before stopping; None = all steps
    log_every: int = 10
    checkpoint_every: int = 100
    threads: int | None = None


@dataclass
class ReportRetrieval:
    """CXR-RePaiR: the top sentences of the training reports for the image, near-duplicates skipped."""

    k: int | None = None  # sentences per report; None = chosen on the validation split from ks
    ks: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5, 6, 8])
    dup_jaccard: float = 0.6  # a sentence whose word set overlaps a chosen one's this much (Jaccard) is skipped
    select_by: str = "clinical_f1"  # what picks k on validation: clinical_f1 or bleu4
    center: bool | None = None  # rank by cosine minus the sentence's mean on training images; None = on validation
    unit: str | None = None  # retrieve "sentence"s (k of them) or whole "report"s (the best one); None = on validation


@dataclass
class ReportEvaluate:
    """What is scored after training."""

    n_boot: int = 200  # patient bootstrap resamples of the CIs
    gallery: int = 8  # test studies shown in report.html
    meteor: bool = True  # METEOR needs java and starts in about 8 s; false leaves it out (said in the results)


@dataclass
class ReportConfig:
    """A `medssl report train` run."""

    method: str = "lstm"
    data: ReportData = field(default_factory=ReportData)
    encoder: ReportEncoder = field(default_factory=ReportEncoder)
    decoder: ReportDecoder = field(default_factory=ReportDecoder)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=5e-4, warmup_steps=20, grad_clip=1.0))
    train: ReportTrain = field(default_factory=ReportTrain)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    retrieval: ReportRetrieval = field(default_factory=ReportRetrieval)
    evaluate: ReportEvaluate = field(default_factory=ReportEvaluate)

    def validate(self) -> "ReportConfig":
        """Raise MedsslError naming the first bad value; return self."""
        check_choice("method", self.method, METHODS)
        d, e, dec, t, r = self.data, self.encoder, self.decoder, self.train, self.retrieval
        if d.size is not None and d.size < 8:
            raise bad("data.size", d.size, "must be at least 8")
        if d.views not in (1, 2):
            raise bad("data.views", d.views, "must be 1 or 2 (frontal, lateral)")
        if d.synthetic_patients < 10:
            raise bad("data.synthetic_patients", d.synthetic_patients, "must be at least 10 (three splits)")
        if not 0 <= e.lr_scale <= 1:
            raise bad("encoder.lr_scale", e.lr_scale, "must lie in [0, 1]")
        if self.method == "retrieval" and not e.run:
            raise MedsslError("config: method retrieval needs encoder.run: a `medssl align` run (ConVIRT, CLIP, "
                              "GLoRIA) that scores sentences against images")
        for name in ("dim", "layers", "heads", "vocab_size", "min_frequency", "context"):
            if getattr(dec, name) < 1:
                raise bad(f"decoder.{name}", getattr(dec, name), "must be at least 1")
        if dec.context < 8:
            raise bad("decoder.context", dec.context, "must be at least 8 tokens")
        if dec.finding_weight < 0 or not 0 <= dec.label_smoothing < 1 or not 0 <= dec.dropout < 1:
            raise MedsslError(f"config: decoder.finding_weight={dec.finding_weight} must be >= 0, "
                              f"decoder.label_smoothing={dec.label_smoothing} and decoder.dropout={dec.dropout} "
                              "in [0, 1)")
        for name in ("steps", "batch_size", "val_every", "log_every", "checkpoint_every"):
            if getattr(t, name) < 1:
                raise bad(f"train.{name}", getattr(t, name), "must be at least 1")
        if t.patience is not None and t.patience < 1:
            raise bad("train.patience", t.patience, "must be at least 1 (or null)")
        if r.k is not None and r.k < 1 or not r.ks or min(r.ks) < 1:
            raise MedsslError(f"config: retrieval.k={r.k} and retrieval.ks={r.ks} must be at least 1")
        if not 0 < r.dup_jaccard <= 1:
            raise bad("retrieval.dup_jaccard", r.dup_jaccard, "must lie in (0, 1]")
        check_choice("retrieval.select_by", r.select_by, ("clinical_f1", "bleu4"))
        if r.unit is not None:
            check_choice("retrieval.unit", r.unit, ("sentence", "report"))
        if self.evaluate.n_boot < 1 or self.evaluate.gallery < 0:
            raise MedsslError(f"config: evaluate.n_boot={self.evaluate.n_boot} must be >= 1 and evaluate.gallery="
                              f"{self.evaluate.gallery} >= 0")
        self.optim.validate()
        self.generate.validate()
        return self


def load_report_config(path: str | os.PathLike | None, overrides: list[str] | tuple[str, ...] = (),
                       data: str | None = None) -> ReportConfig:
    """ReportConfig from a YAML file (None = defaults), `a.b=value` overrides and --data, validated."""
    raw = read_yaml(path) if path is not None else {}
    raw = apply_overrides(raw, list(overrides))
    if data is not None:
        raw.setdefault("data", {})
        if not isinstance(raw["data"], dict):
            raise MedsslError(f"{path}: data must be a mapping")
        raw["data"]["source"] = data
    try:
        return from_mapping(ReportConfig, raw, "").validate()
    except MedsslError as e:
        if path is None:
            raise
        raise MedsslError(f"{path}: {e}") from None


def to_dict(cfg: ReportConfig) -> dict[str, Any]:
    """Plain YAML-able data."""
    return plain(cfg)


def save_report_config(cfg: ReportConfig, path: str | os.PathLike) -> Path:
    """The resolved config as YAML (atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False), encoding="utf-8")
    os.replace(tmp, path)
    return path

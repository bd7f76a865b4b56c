"""The config of `medssl run`: one study (data, the methods to pretrain and align, how to evaluate them, zero-shot,
retrieval, report generation) as typed dataclasses read from YAML.

The defaults ARE the demo (`medssl demo` = `medssl run configs/demo.yaml`; tests/test_pipeline checks the file
states exactly these). A method entry is a name (`simclr`) or a mapping {name, method, set} for an ablation arm:
`{name: simclr_t05, method: simclr, set: {model.options.temperature: 0.5}}` pretrains SimCLR under its own name
with that override of its `medssl pretrain` config.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

from medssl.errors import MedsslError
from medssl.schema import bad, check_choice, from_mapping, plain

SYNTHETIC = "synthetic"  # data.source of the built-in synthetic chest radiographs
PROTOCOLS = ("linear", "knn", "finetune")
REPORT_METHODS = ("lstm", "transformer", "retrieval")


@dataclass
class Arm:
    """One pretraining arm: a method under a name, with overrides of its pretrain config ('optim.lr': 0.001)."""

    name: str
    method: str = ""  # empty: the name is the method
    set: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.method = self.method or self.name


@dataclass
class RunData:
    source: str = SYNTHETIC  # "synthetic" or a manifest .csv, image folder or MedMNIST .npz
    name: str | None = None  # what the page calls the data; None = the source's name
    patients: int = 200  # synthetic only
    size: int = 32  # image side every stage trains and evaluates at
    seed: int = 0  # synthesis, patient-level split (a source without splits), training seeds
    skip_bad: bool = False  # go on past unreadable images (listed) instead of stopping at the first


@dataclass
class RunModel:
    backbone: str = "resnet18"
    stem: str | None = "small"
    width: int | None = 32  # ResNet-18 at half the papers' width: a quarter of the compute, for a 2-core CPU


@dataclass
class RunPretrain:
    methods: list[Arm] = field(default_factory=lambda: [Arm("simclr"), Arm("micle")])
    steps: int = 150
    batch: int = 64
    # overrides of every arm's pretrain config; a model.options.X applies to the arms whose method has option X
    set: dict[str, Any] = field(default_factory=lambda: {"model.options.proj_dim": 64})


@dataclass
class RunAlign:
    methods: list[Arm] = field(default_factory=lambda: [Arm("convirt")])
    init: str | None = "simclr"  # the pretrain arm each align arm starts from; None = random weights
    steps: int = 100  # ConVIRT from the SimCLR encoder: its zero-shot AUC was 0.69 after 60 steps already
    batch: int = 64
    # the whole report as the text view (a synthetic report's single sentence is mostly a negation, "No
    # pneumothorax."), in a 64-token context, at a lower rate than the image arms'
    set: dict[str, Any] = field(default_factory=lambda: {
        "model.options.proj_dim": 64, "model.options.context": 64, "optim.lr": 0.0005, "optim.weight_decay": 0.0001,
        "data.report_sentences": 0})


@dataclass
class RunEvaluate:
    protocols: tuple[str, ...] = ("linear", "finetune")
    fractions: tuple[float, ...] = (0.01, 0.1, 1.0)
    seeds: int = 3
    baseline: str | None = "scratch"  # the same network trained from scratch on the same labels; None = none
    finetune_steps: int = 30
    finetune_batch: int = 32
    n_boot: int = 200
    reference: dict[str, float] = field(default_factory=dict)  # published numbers drawn as lines on the curve


@dataclass
class RunZeroshot:
    classes: tuple[str, ...] | None = None  # findings to classify; None = every finding of the task
    queries: tuple[str, ...] = ("pleural effusion", "cardiomegaly")  # retrieval examples by words


@dataclass
class RunReport:
    methods: tuple[str, ...] = ("lstm", "retrieval")
    encoder: str | None = None  # the align arm whose image encoder the decoders read; None = the first
    steps: int = 300  # decoder steps on the frozen encoder's cached feature maps
    # overrides of every report config: the 32 px demo reports fit 80 tokens; a wider decoder than 128 is idle
    set: dict[str, Any] = field(default_factory=lambda: {"decoder.dim": 128, "decoder.context": 80, "optim.lr": 0.002,
                                                         "train.val_every": 50})


@dataclass
class RunConfig:
    title: str = "medssl demo: self-supervised and image-text pretraining, few labels, draft reports"
    data: RunData = field(default_factory=RunData)
    model: RunModel = field(default_factory=RunModel)
    pretrain: RunPretrain = field(default_factory=RunPretrain)
    align: RunAlign = field(default_factory=RunAlign)
    evaluate: RunEvaluate = field(default_factory=RunEvaluate)
    zeroshot: RunZeroshot = field(default_factory=RunZeroshot)
    report: RunReport = field(default_factory=RunReport)
    predict_images: int = 6  # test images `medssl predict` runs on with the kept classifier; 0 = none

    @property
    def arms(self) -> list[Arm]:
        """Every pretrained network, in order: the image arms, then the image-text arms."""
        return [*self.pretrain.methods, *self.align.methods]

    def is_align(self, arm: Arm) -> bool:
        return any(a.name == arm.name for a in self.align.methods)

    def arm(self, name: str) -> Arm:
        return next(a for a in self.arms if a.name == name)

    @property
    def report_encoder(self) -> str | None:
        """The align arm the report decoders read (None without align arms or report methods)."""
        if not self.report.methods or not self.align.methods:
            return None
        return self.report.encoder or self.align.methods[0].name

    @property
    def synthetic(self) -> bool:
        return self.data.source == SYNTHETIC


def _arms(value: Any, key: str) -> Any:
    """Method entries as mappings: a bare name `simclr` is {name: simclr}."""
    if not isinstance(value, list):
        return value
    return [{"name": v} if isinstance(v, str) else v for v in value]


def from_dict(data: dict[str, Any]) -> RunConfig:
    """A validated RunConfig from a plain mapping; MedsslError naming the key."""
    for section in ("pretrain", "align"):
        if isinstance(data.get(section), dict) and "methods" in data[section]:
            data[section] = {**data[section], "methods": _arms(data[section]["methods"], f"{section}.methods")}
    return validate(from_mapping(RunConfig, data, ""))


def validate(cfg: RunConfig) -> RunConfig:
    """Every value checked before any work starts (cheap checks before slow ones)."""
    from medssl.methods import METHODS, method

    for section, image_text in (("pretrain", False), ("align", True)):
        for i, arm in enumerate(getattr(cfg, section).methods):
            key = f"{section}.methods[{i}]"
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", arm.name):
                raise bad(f"{key}.name", arm.name, "must be letters, digits, '_', '-' or '.' (it names a folder)")
            check_choice(f"{key}.method", arm.method, tuple(METHODS))
            if bool(getattr(method(arm.method), "batch").report) != image_text:
                where = "align (image-text)" if not image_text else "pretrain (images alone)"
                raise bad(f"{key}.method", arm.method, f"belongs under {where}")
    names = [a.name for a in cfg.arms]
    if len(set(names)) != len(names):
        raise bad("pretrain/align methods", names, "must have distinct names (give an ablation arm a name:)")
    if not cfg.arms:
        raise MedsslError("config: no methods: list at least one under pretrain.methods or align.methods")
    if cfg.align.methods and cfg.align.init is not None and cfg.align.init not in [a.name for a in cfg.pretrain.methods]:
        raise bad("align.init", cfg.align.init, "must name a pretrain arm ("
                  + (", ".join(a.name for a in cfg.pretrain.methods) or "there are none") + ") or be null")
    for key, value in (("data.patients", cfg.data.patients), ("data.size", cfg.data.size),
                       ("pretrain.steps", cfg.pretrain.steps), ("pretrain.batch", cfg.pretrain.batch),
                       ("align.steps", cfg.align.steps), ("align.batch", cfg.align.batch),
                       ("evaluate.seeds", cfg.evaluate.seeds), ("evaluate.finetune_steps", cfg.evaluate.finetune_steps),
                       ("evaluate.finetune_batch", cfg.evaluate.finetune_batch), ("evaluate.n_boot", cfg.evaluate.n_boot),
                       ("report.steps", cfg.report.steps)):
        if value < 1:
            raise bad(key, value, "must be positive")
    if cfg.predict_images < 0:
        raise bad("predict_images", cfg.predict_images, "must be zero or positive")
    if cfg.data.size < 8:
        raise bad("data.size", cfg.data.size, "must be at least 8 pixels")
    if cfg.synthetic and cfg.data.patients < 20:
        raise MedsslError(f"config: data.patients={cfg.data.patients} is too few for 1 % labels and three splits (20+)")
    e = cfg.evaluate
    if not e.protocols:
        raise bad("evaluate.protocols", list(e.protocols), "must list at least one of " + ", ".join(PROTOCOLS))
    for p in e.protocols:
        check_choice("evaluate.protocols", p, PROTOCOLS)
    if not e.fractions or any(not 0 < f <= 1 for f in e.fractions):
        raise bad("evaluate.fractions", list(e.fractions), "must each be in (0, 1]")
    if e.baseline is not None:
        check_choice("evaluate.baseline", e.baseline, ("scratch",))
    for m in cfg.report.methods:
        check_choice("report.methods", m, REPORT_METHODS)
    if cfg.report.methods and not cfg.align.methods:
        raise bad("report.methods", list(cfg.report.methods), "need an image-text arm under align.methods (their "
                  "image encoder); list one or empty report.methods")
    if cfg.report.encoder is not None and cfg.report.encoder not in [a.name for a in cfg.align.methods]:
        raise bad("report.encoder", cfg.report.encoder, "must name an align arm")
    if not cfg.data.source:
        raise bad("data.source", cfg.data.source, f"must be {SYNTHETIC!r} or a path")
    return cfg


def load_run_config(path: str | os.PathLike | None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """RunConfig from a YAML file (None = the demo's defaults) and `a.b=value` overrides."""
    from medssl.config import apply_overrides, read_yaml

    data = read_yaml(path) if path is not None else {}
    try:
        return from_dict(apply_overrides(data, list(overrides)))
    except MedsslError as e:
        if path is None or str(e).startswith(str(path)):
            raise
        raise MedsslError(f"{path}: {e}") from None


def to_dict(cfg: RunConfig) -> dict[str, Any]:
    return plain(cfg)


def key(*parts: Any) -> str:
    """A short fingerprint of what a stage depends on (plain data)."""
    return hashlib.sha256(json.dumps(plain(list(parts)), sort_keys=True, default=str).encode()).hexdigest()[:16]

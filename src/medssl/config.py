"""Typed pretraining configuration: dataclasses loaded from YAML plus `a.b=value` overrides.

A config only describes a run: it never builds objects or runs code. `load_config` checks every key and value and
raises MedsslError naming the key (with a close match for a misspelt one); `save_config` writes the resolved
config, and loading that file gives an equal object.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from medssl.data.datasets import AUGMENT_ON
from medssl.errors import MedsslError
from medssl.methods import METHODS, method
from medssl.models.factory import ModelSpec
from medssl.optim import OptimConfig
from medssl.schema import bad, check_choice, check_positive, from_mapping, plain
from medssl.synthetic.builtin import BUILTIN_PATIENTS, BUILTIN_SEED
from medssl.runspec import TrainConfig

PAIR_BY = ("patient", "study")
# What `--resume` may change in a run with checkpoints: where the images come from and how many per step, how long,
# where and how fast it runs, what it logs, and the two remedies the NaN guard suggests (optim.lr, optim.grad_clip).
# Everything else shapes the model, the method or what the optimiser state means, and needs a new run.
RESUME_SAFE = ("data.source", "data.split", "data.skip_bad", "data.batch_size", "data.num_workers",
               "data.prefetch_factor", "data.cache", "data.augment_on", "train.steps", "train.epochs", "train.log_every",
               "train.checkpoint_every", "train.collapse_threshold", "train.threads", "train.accelerator",
               "train.devices", "train.num_nodes", "train.strategy", "train.precision", "train.channels_last",
               "train.compile", "optim.lr", "optim.grad_clip")


@dataclass
class DataConfig:
    """Where the images come from and how batches are made. batch_size is the GLOBAL batch over all processes."""

    source: str | None = None  # manifest .csv, folder, .npz or image; None = built-in synthetic data
    split: str | None = "train"  # records of this split (all when the source has no splits); None = all
    synthetic_patients: int = BUILTIN_PATIENTS  # only when source is None (medssl.synthetic.builtin)
    synthetic_seed: int = BUILTIN_SEED
    size: int = 64  # side of the decoded and augmented images
    channels: int = 1  # grayscale is repeated to 3 channels for 3
    augment: str = "chest_xray"  # preset name of medssl.data.augment.PRESETS
    augment_overrides: dict[str, Any] = field(default_factory=dict)  # AugmentConfig fields, e.g. {hflip: true}
    pair_by: str = "patient"  # MICLe: positive = another image of the same 'patient' or, first, 'study'
    batch_size: int = 128
    num_workers: int = 1  # processes making augmented batches; 0 = in the training process
    prefetch_factor: int = 2  # batches each worker keeps ready
    augment_on: str = "auto"  # where the views are augmented: 'loader' (worker processes), 'device' (uint8 batches
    #                           travel, augmented on the training device), 'auto' (a few steps of each, the faster)
    skip_bad: bool = False  # go on past unreadable images (listed at the start and in metrics.json)
    cache: str | None = None  # decoded-image cache root; None: beside the data, $MEDSSL_CACHE or ~/.cache/medssl;
    #                           "off": decode into memory every run (medssl.data.cache)
    # image-text methods (medssl align) only:
    report_sentences: int = 1  # ConVIRT's text view: 1..N consecutive sentences of the report; 0 = the whole report
    text_column: str | None = None  # the records' text from this manifest column / .npz field; None = report


@dataclass
class ModelConfig:
    """Backbone and the method's options; `options` is parsed into the method's own typed Options dataclass."""

    backbone: str = "resnet18"
    stem: str | None = None  # ResNet stem: cifar, small, imagenet; None = chosen from the image size
    width: int | None = None  # ResNet only: first stage's channels (then x2 per stage); None = 64, the papers' width
    patch_size: int | None = None  # ViT only; None = chosen from the image size
    depth: int | None = None  # ViT only; None = the named model's depth
    options: Any = None  # e.g. {temperature: 0.1, proj_dim: 128}; checked by the method's Options


@dataclass
class PretrainConfig:
    """A self-supervised pretraining run: method + data + model + optimiser + training."""

    method: str = "simclr"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    @property
    def world_size(self) -> int:
        """Processes over all nodes."""
        return self.train.devices * self.train.num_nodes

    def model_spec(self) -> ModelSpec:
        """The typed model spec of this run (stored in its checkpoints)."""
        m = self.model
        return ModelSpec(backbone=m.backbone, stem=m.stem, patch_size=m.patch_size, depth=m.depth,
                         in_channels=self.data.channels, image_size=self.data.size, method=self.method,
                         options=m.options, width=m.width)


def from_dict(data: dict[str, Any]) -> PretrainConfig:
    """A validated PretrainConfig from a plain mapping (as read from YAML); model.options asks the method."""
    d = data.get("data")
    if isinstance(d, dict) and d.get("cache") is False:  # YAML 1.1 reads `cache: off` as false
        data = {**data, "data": {**d, "cache": "off"}}
    cfg = from_mapping(PretrainConfig, data, "")
    check_choice("method", cfg.method, tuple(METHODS))  # a config error naming the key, as every other value's
    options_type = method(cfg.method).Options
    options = cfg.model.options
    if options is not None and not isinstance(options, dict):
        raise bad("model.options", options, "must be a mapping of the method's options")
    cfg.model.options = from_mapping(options_type, options or {}, "model.options.")
    return validate(cfg)


def to_dict(cfg: PretrainConfig) -> dict[str, Any]:
    """The config as plain YAML-able data."""
    return plain(cfg)


def flat(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested mapping as {'a.b': value} (lists stay values)."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        if isinstance(v, dict) and v:
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def changes(old: dict[str, Any], new: PretrainConfig) -> dict[str, tuple[Any, Any]]:
    """{key: (old value, new value)} of every setting the new config changes, sorted by key."""
    a, b = flat(old), flat(to_dict(new))
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def check_resume_changes(changed: dict[str, tuple[Any, Any]]) -> None:
    """Refuse, in one line naming the keys, changes that a run with checkpoints cannot take (not in RESUME_SAFE)."""
    unsafe = [k for k in changed if k not in RESUME_SAFE]
    if unsafe:
        what = ", ".join(f"{k} ({show(changed[k][0])} -> {show(changed[k][1])})" for k in unsafe)
        raise MedsslError(f"--resume cannot change {what}: its checkpoints were trained with it; start a new run "
                          f"with --config and another --out (--resume may change {', '.join(RESUME_SAFE)})")


def show(value: Any) -> str:
    """A config value as it is written on the command line."""
    if isinstance(value, (dict, list)):
        return yaml.safe_dump(value, default_flow_style=True).strip()
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def _validate_data(cfg: PretrainConfig) -> None:
    from medssl.data.augment import preset  # checks the preset name and every override field and value

    d = cfg.data
    check_positive(d, "data", ("size", "channels", "batch_size", "synthetic_patients", "prefetch_factor"))
    check_positive(d, "data", ("num_workers", "synthetic_seed", "report_sentences"), allow_zero=True)
    if d.text_column is not None and not d.text_column.strip():
        raise bad("data.text_column", d.text_column, "must name a manifest column or .npz field, or be null")
    if d.channels not in (1, 3):
        raise bad("data.channels", d.channels, "must be 1 or 3")
    check_choice("data.pair_by", d.pair_by, PAIR_BY)
    check_choice("data.augment_on", d.augment_on, AUGMENT_ON)
    if "size" in d.augment_overrides:
        raise bad("data.augment_overrides.size", d.augment_overrides["size"], "is set by data.size; remove it")
    try:
        preset(d.augment, d.size, **{k: tuple(v) if isinstance(v, list) else v for k, v in d.augment_overrides.items()})
    except MedsslError as e:
        raise MedsslError(f"config: data.augment / data.augment_overrides: {e}") from None
    world = cfg.world_size
    if d.batch_size % world:
        raise bad("data.batch_size", d.batch_size, f"must be a multiple of the {world} processes (it is the global batch)")
    need = method(cfg.method).batch.min_per_process
    if d.batch_size // world < need:
        raise bad("data.batch_size", d.batch_size, f"is too small: {cfg.method} needs at least {need} images per "
                  "process (contrastive negatives and BatchNorm)")


def _validate_model(cfg: PretrainConfig) -> None:
    cfg.model.options.validate()  # the method's own checks
    check_positive(cfg.model, "model", ("patch_size", "depth"))


def validate(cfg: PretrainConfig) -> PretrainConfig:
    """Check values (types are checked on loading); raise MedsslError naming the key and value; return cfg."""
    cfg.train.validate()
    _validate_model(cfg)
    _validate_data(cfg)
    cfg.optim.validate()
    return cfg


def parse_override(text: str) -> tuple[list[str], Any]:
    """'a.b=1' -> (['a', 'b'], 1); the value is read as a YAML scalar or flow collection ('[1, 2]', 'null')."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip() or any(not p for p in key.strip().split(".")):
        raise MedsslError(f"override {text!r} is not of the form key.sub=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise MedsslError(f"override {text!r}: value is not valid YAML ({e.problem if hasattr(e, 'problem') else e})") from None
    return key.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set each `a.b=value` in the nested mapping (creating levels as needed; unknown keys are caught later)."""
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for i, part in enumerate(path[:-1]):
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise MedsslError(f"override {text!r}: {'.'.join(path[: i + 1])} is a value, not a section")
            node = nxt
        node[path[-1]] = value
    return data


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """A YAML mapping from a file; MedsslError naming the file (and the line of a syntax error)."""
    path = Path(path)
    if not path.is_file():
        raise MedsslError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise MedsslError(f"{path}{where}: not valid YAML ({getattr(e, 'problem', None) or e})") from None
    except UnicodeDecodeError:
        raise MedsslError(f"{path}: not a UTF-8 text file") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise MedsslError(f"{path}: a config must be a mapping of keys to values, got {type(data).__name__}")
    return data


def load_config(path: str | os.PathLike | None, overrides: list[str] | tuple[str, ...] = ()) -> PretrainConfig:
    """PretrainConfig from a YAML file (None = defaults) and `a.b=value` overrides, validated."""
    data = read_yaml(path) if path is not None else {}
    overrides = list(overrides)
    keys = {o.split("=", 1)[0].strip() for o in overrides}
    for length, other in (("train.steps", "train.epochs"), ("train.epochs", "train.steps")):
        if length in keys and other not in keys:  # one training length on the command line replaces the file's
            overrides.append(f"{other}=null")
    try:
        return from_dict(apply_overrides(data, overrides))
    except MedsslError as e:
        if path is None:
            raise
        raise MedsslError(f"{path}: {e}") from None


def save_config(cfg: PretrainConfig, path: str | os.PathLike) -> Path:
    """Write the resolved config as YAML (atomically); load_config of the file gives an equal config."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False), encoding="utf-8")
    os.replace(tmp, path)
    return path

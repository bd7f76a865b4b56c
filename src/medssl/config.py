"""Typed pretraining configuration: dataclasses loaded from YAML plus `a.b=value` overrides.

A config only describes a run: it never builds objects or runs code. `load_config` checks every key and value and
raises MedsslError naming the key (with a close match for a misspelt one); `save_config` writes the resolved
config, and loading that file gives an equal object.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from medssl.errors import MedsslError

PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")
OPTIMIZERS = ("adamw", "lars", "sgd")
SCHEDULES = ("cosine", "constant")
ACCELERATORS = ("auto", "cpu", "cuda", "gpu", "mps")
PAIR_BY = ("patient", "study")


@dataclass
class DataConfig:
    """Where the images come from and how batches are made. batch_size is the GLOBAL batch over all processes."""

    source: str | None = None  # manifest .csv, folder, .npz or image; None = built-in synthetic data
    split: str | None = "train"  # records of this split (all when the source has no splits); None = all
    synthetic_patients: int = 200  # only when source is None
    synthetic_seed: int = 0
    size: int = 64  # side of the decoded and augmented images
    channels: int = 1  # grayscale is repeated to 3 channels for 3
    augment: str = "chest_xray"  # preset name of medssl.data.augment.PRESETS
    augment_overrides: dict[str, Any] = field(default_factory=dict)  # AugmentConfig fields, e.g. {hflip: true}
    pair_by: str = "patient"  # MICLe: positive = another image of the same 'patient' or, first, 'study'
    batch_size: int = 128
    num_workers: int = 1  # processes making augmented batches; 0 = in the training process
    prefetch_factor: int = 2  # batches each worker keeps ready


@dataclass
class ModelConfig:
    """Backbone and method options; kwargs go to the method's constructor and are checked against it."""

    backbone: str = "resnet18"
    stem: str | None = None  # ResNet stem: cifar, small, imagenet; None = chosen from the image size
    patch_size: int | None = None  # ViT only; None = chosen from the image size
    depth: int | None = None  # ViT only; None = the named model's depth
    kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. {temperature: 0.1, proj_dim: 128}


@dataclass
class OptimConfig:
    """Optimiser and learning-rate schedule (linear warm-up, then cosine to min_lr_ratio * lr)."""

    name: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4  # not applied to biases and normalisation parameters
    momentum: float = 0.9  # sgd and lars
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # adamw
    lars_eta: float = 0.001  # LARS trust coefficient
    warmup_steps: int = 0
    warmup_epochs: float = 0.0  # alternative to warmup_steps; at most one of the two is set
    schedule: str = "cosine"
    min_lr_ratio: float = 0.0
    grad_clip: float | None = None  # max global gradient norm; None = no clipping


@dataclass
class TrainConfig:
    """Length, devices and bookkeeping of a run. Exactly one of steps and epochs is set."""

    steps: int | None = None
    epochs: int | None = 10
    precision: str = "32-true"
    accelerator: str = "auto"
    devices: int = 1  # processes per node
    num_nodes: int = 1
    strategy: str = "auto"  # auto, ddp (launches a copy of the command per extra process), ddp_spawn, ...
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 500  # steps; also at the end
    collapse_threshold: float = 1e-3  # warn when the method's z_std falls below this
    channels_last: bool = False  # memory format of the model and 4D batch tensors
    threads: int | None = None  # torch intra-op threads; None = torch's default


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


def _suggest(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(known)}"


def _is_optional(tp: Any) -> tuple[bool, Any]:
    """(True, X) for `X | None`, else (False, tp)."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return True, rest[0]
    return False, tp


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """value checked (and int -> float widened) against a field type; MedsslError naming the key otherwise."""
    optional, tp = _is_optional(tp)
    if value is None:
        if optional:
            return None
        raise MedsslError(f"config: {key} must not be empty (null)")
    origin = typing.get_origin(tp) or tp
    ok = True
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        value = _yaml11_float(value)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif tp is str:
        ok = isinstance(value, (str, int, float)) and not isinstance(value, bool)
        value = str(value) if ok else value  # `precision: 32` is the string '32'
    elif origin is dict:
        ok = isinstance(value, dict) and all(isinstance(k, str) for k in value)
        value = {k: _plain(v) for k, v in value.items()} if ok else value
    elif origin is list:
        ok = isinstance(value, (list, tuple))
        value = [_coerce(v, typing.get_args(tp)[0], f"{key}[{i}]") for i, v in enumerate(value)] if ok else value
    if not ok:
        raise MedsslError(f"config: {key}={value!r} has the wrong type; expected {_type_name(tp)}")
    return value


def _yaml11_float(value: Any) -> Any:
    """'1e-3' as a number: PyYAML follows YAML 1.1, which reads exponents without a dot as strings."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _type_name(tp: Any) -> str:
    return {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}.get(
        tp, "a mapping" if typing.get_origin(tp) is dict else "a list" if typing.get_origin(tp) is list else str(tp))


def _plain(value: Any) -> Any:
    """Tuples become lists, so that a config survives a YAML round trip unchanged."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _from_dict(cls: type, data: Any, prefix: str) -> Any:
    """Build dataclass `cls` from a mapping, checking keys and types recursively."""
    where = prefix.rstrip(".") or "the top level"
    if not isinstance(data, dict):
        raise MedsslError(f"config: {where} must be a mapping of keys to values, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise MedsslError(f"config: unknown key {prefix}{key}{_suggest(str(key), names)}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _from_dict(tp, value if value is not None else {}, f"{prefix}{key}.")
        else:
            kwargs[key] = _coerce(value, tp, f"{prefix}{key}")
    return cls(**kwargs)


def from_dict(data: dict[str, Any]) -> PretrainConfig:
    """A validated PretrainConfig from a plain mapping (as read from YAML)."""
    return validate(_from_dict(PretrainConfig, data, ""))


def to_dict(cfg: PretrainConfig) -> dict[str, Any]:
    """The config as plain YAML-able data."""
    return _plain(dataclasses.asdict(cfg))


def _bad(key: str, value: Any, why: str) -> MedsslError:
    return MedsslError(f"config: {key}={value!r} {why}")


def _check_positive(cfg: Any, prefix: str, names: tuple[str, ...], allow_zero: bool = False) -> None:
    for name in names:
        v = getattr(cfg, name)
        if v is not None and (not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero)):
            raise _bad(f"{prefix}.{name}", v, "must be " + ("zero or positive" if allow_zero else "positive"))


def _check_choice(key: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise _bad(key, value, f"must be one of {', '.join(choices)}")


def _validate_data(cfg: PretrainConfig) -> None:
    from medssl.data.augment import preset  # checks the preset name and every override field and value

    d = cfg.data
    _check_positive(d, "data", ("size", "channels", "batch_size", "synthetic_patients", "prefetch_factor"))
    _check_positive(d, "data", ("num_workers", "synthetic_seed"), allow_zero=True)
    if d.channels not in (1, 3):
        raise _bad("data.channels", d.channels, "must be 1 or 3")
    _check_choice("data.pair_by", d.pair_by, PAIR_BY)
    if "size" in d.augment_overrides:
        raise _bad("data.augment_overrides.size", d.augment_overrides["size"], "is set by data.size; remove it")
    try:
        preset(d.augment, d.size, **{k: tuple(v) if isinstance(v, list) else v for k, v in d.augment_overrides.items()})
    except MedsslError as e:
        raise MedsslError(f"config: data.augment / data.augment_overrides: {e}") from None
    world = cfg.world_size
    if d.batch_size % world:
        raise _bad("data.batch_size", d.batch_size, f"must be a multiple of the {world} processes (it is the global batch)")
    if cfg.method != "mae" and d.batch_size // world < 2:
        raise _bad("data.batch_size", d.batch_size, f"is too small: {cfg.method} needs at least 2 images per process "
                   "(contrastive negatives and BatchNorm)")


def _validate_model(cfg: PretrainConfig) -> None:
    from medssl.methods import METHODS

    _check_choice("method", cfg.method, tuple(METHODS))
    params = inspect.signature(METHODS[cfg.method]).parameters
    known = sorted(set(params) - {"backbone", "feature_dim"})
    for key in cfg.model.kwargs:
        if key not in known:
            raise MedsslError(f"config: unknown key model.kwargs.{key} for method {cfg.method}{_suggest(key, known)}")
    _check_positive(cfg.model, "model", ("patch_size", "depth"))


def _validate_optim(o: OptimConfig) -> None:
    _check_choice("optim.name", o.name, OPTIMIZERS)
    _check_choice("optim.schedule", o.schedule, SCHEDULES)
    _check_positive(o, "optim", ("lr", "grad_clip", "lars_eta"))
    _check_positive(o, "optim", ("weight_decay", "momentum", "warmup_steps", "warmup_epochs", "min_lr_ratio"),
                    allow_zero=True)
    if o.momentum >= 1 or o.min_lr_ratio > 1:
        raise _bad("optim.momentum" if o.momentum >= 1 else "optim.min_lr_ratio",
                   o.momentum if o.momentum >= 1 else o.min_lr_ratio, "must be below 1" if o.momentum >= 1 else
                   "must be at most 1")
    if len(o.betas) != 2 or not all(0 <= b < 1 for b in o.betas):
        raise _bad("optim.betas", o.betas, "must be two numbers in [0, 1)")
    if o.warmup_steps and o.warmup_epochs:
        raise _bad("optim.warmup_epochs", o.warmup_epochs, "cannot be set together with optim.warmup_steps")


def _validate_train(t: TrainConfig) -> None:
    if (t.steps is None) == (t.epochs is None):
        raise MedsslError(f"config: set exactly one of train.steps ({t.steps}) and train.epochs ({t.epochs}); "
                          "the other must be null")
    _check_positive(t, "train", ("steps", "epochs", "devices", "num_nodes", "log_every", "checkpoint_every", "threads"))
    _check_positive(t, "train", ("seed", "collapse_threshold"), allow_zero=True)
    _check_choice("train.precision", t.precision, PRECISIONS)
    _check_choice("train.accelerator", t.accelerator, ACCELERATORS)


def validate(cfg: PretrainConfig) -> PretrainConfig:
    """Check values (types are checked on loading); raise MedsslError naming the key and value; return cfg."""
    _validate_train(cfg.train)
    _validate_model(cfg)
    _validate_data(cfg)
    _validate_optim(cfg.optim)
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

"""Typed dataclasses from plain mappings (YAML, checkpoints): keys and types checked, one-line errors naming the key.

The one parser behind every typed config: the run configs (medssl.config), each method's options
(medssl.methods.*), the model spec (medssl.models.factory). It never builds objects or runs code.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from typing import Any, TypeVar

from medssl.errors import MedsslError

T = TypeVar("T")


def suggest(key: str, known: list[str]) -> str:
    """'; did you mean X?' for a close match, else the list of known keys."""
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(known)}"


def _is_optional(tp: Any) -> tuple[bool, Any]:
    """(True, X) for `X | None`, else (False, tp)."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return True, rest[0]
    return False, tp


def _yaml11_float(value: Any) -> Any:
    """'1e-3' as a number: PyYAML follows YAML 1.1, which reads exponents without a dot as strings."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    return {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}.get(
        tp, "a mapping" if origin is dict else "a list" if origin in (list, tuple) else str(tp))


def plain(value: Any) -> Any:
    """Tuples become lists, dataclasses mappings: a config survives a YAML round trip unchanged."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def coerce(value: Any, tp: Any, key: str) -> Any:
    """value checked (and int -> float widened) against a field type; MedsslError naming the key otherwise."""
    optional, tp = _is_optional(tp)
    if value is None:
        if optional:
            return None
        raise MedsslError(f"config: {key} must not be empty (null)")
    if dataclasses.is_dataclass(tp):
        return from_mapping(tp, value, f"{key}.")
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
        value = {k: plain(v) for k, v in value.items()} if ok else value
    elif origin in (list, tuple):
        ok = isinstance(value, (list, tuple))
        inner = typing.get_args(tp)[0] if typing.get_args(tp) else Any
        items = [v if inner is Any else coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)] if ok else value
        value = tuple(items) if ok and origin is tuple else items
    if not ok:
        raise MedsslError(f"config: {key}={value!r} has the wrong type; expected {_type_name(tp)}")
    return value


def from_mapping(cls: type[T], data: Any, prefix: str = "") -> T:
    """Build dataclass `cls` from a mapping, checking keys and types recursively (nested dataclasses too)."""
    where = prefix.rstrip(".") or "the top level"
    if not isinstance(data, dict):
        raise MedsslError(f"config: {where} must be a mapping of keys to values, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise MedsslError(f"config: unknown key {prefix}{key}{suggest(str(key), names)}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp) and value is None:
            value = {}
        kwargs[key] = coerce(value, tp, f"{prefix}{key}")
    return cls(**kwargs)


def bad(key: str, value: Any, why: str) -> MedsslError:
    """The error of a value that has the right type but is not allowed."""
    return MedsslError(f"config: {key}={value!r} {why}")


def check_positive(obj: Any, prefix: str, names: tuple[str, ...], allow_zero: bool = False) -> None:
    """Each named field of obj is None, or a finite number above zero (or at least zero)."""
    for name in names:
        v = getattr(obj, name)
        if v is not None and (not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero)):
            raise bad(f"{prefix}.{name}", v, "must be " + ("zero or positive" if allow_zero else "positive"))


def check_choice(key: str, value: Any, choices: tuple[str, ...]) -> None:
    """value is one of choices."""
    if value not in choices:
        raise bad(key, value, f"must be one of {', '.join(choices)}")

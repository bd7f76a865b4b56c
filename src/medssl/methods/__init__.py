"""Self-supervised methods: one Trainable module each, forward(batch) -> dict with "loss".

Each method declares, beside its class: `Options` (a typed dataclass of its options, with validate()), `batch`
(the BatchSpec of what it consumes: two views of one image, two images of one patient, one image, ...) and
`build(spec)` (a fresh model from a ModelSpec). METHODS is the one dict of them (no registry decorators): adding a
method is one file and one line here. Nothing outside this package compares a method's name. The image-text
methods (ConVIRT, CLIP, GLoRIA) share one file, image_text.py: one base class and three small ones.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

from torch import nn

from medssl.data.datasets import BatchSpec
from medssl.errors import MedsslError
from medssl.methods.byol import BYOL
from medssl.methods.image_text import CLIP, GLoRIA, ConVIRT
from medssl.methods.mae import MAE
from medssl.methods.micle import MICLe
from medssl.methods.moco import MoCo
from medssl.methods.simclr import SimCLR
from medssl.models.factory import ModelSpec


class Method(Protocol):
    """What METHODS holds: a class with its typed options, its batch declaration and a builder."""

    Options: type
    batch: BatchSpec

    @classmethod
    def build(cls, spec: ModelSpec) -> nn.Module: ...


METHODS: dict[str, Any] = {"simclr": SimCLR, "micle": MICLe, "moco": MoCo, "byol": BYOL, "mae": MAE,
                           "convirt": ConVIRT, "clip": CLIP, "gloria": GLoRIA}


def method(name: str) -> Method:
    """The method class of a name; MedsslError listing the known ones."""
    if name not in METHODS:
        raise MedsslError(f"unknown method {name!r}; known: {', '.join(METHODS)}")
    return METHODS[name]


def build_model(spec: ModelSpec) -> nn.Module:
    """The method module of a spec (backbone + the method's heads), freshly initialised from the global torch RNG."""
    if spec.method is None:
        raise MedsslError("the model spec names no method")
    cls = method(spec.method)
    options = spec.options if spec.options is not None else cls.Options()
    if not isinstance(options, cls.Options):
        raise MedsslError(f"options {options!r} are not {cls.Options.__name__} of method {spec.method!r}")
    options.validate()
    return cls.build(dataclasses.replace(spec, options=options))

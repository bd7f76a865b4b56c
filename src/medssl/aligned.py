"""An image-text model of `medssl align` (ConVIRT, CLIP, GLoRIA) ready for use: `load_image_text(path)` or, from a
checkpoint already read (a retrieval-based report run keeps one inside its own), `image_text_from_checkpoint`.

Library code (floor 4): it imports the methods to build the model, no training code, so zero-shot classification,
retrieval and report generation load an aligned model the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medssl.checkpoint import load_checkpoint, resolve_checkpoint
from medssl.data.preprocess import Preprocess
from medssl.errors import MedsslError
from medssl.methods import build_model, method
from medssl.models.factory import ModelSpec
from medssl.text.tokenizer import ReportTokenizer

# what a checkpoint of `medssl align` holds besides the training state, and all an ImageTextRun is rebuilt from
ESSENTIAL = ("model", "spec", "preprocess", "tokenizer")


@dataclass
class ImageTextRun:
    """An image-text model ready for zero-shot use and retrieval (eval mode, CPU)."""

    model: nn.Module  # encode_image (B, C, S, S) -> (B, D), encode_text (ids, mask) -> (B, D), unit norm
    tokenizer: ReportTokenizer
    preprocess: Preprocess
    spec: ModelSpec
    meta: dict[str, Any]


def image_text_from_checkpoint(ckpt: dict[str, Any], path: str | Path) -> ImageTextRun:
    """An ImageTextRun from a read checkpoint (path names it in errors); MedsslError naming what is missing."""
    spec_data, tokenizer = ckpt.get("spec"), ckpt.get("tokenizer")
    if not isinstance(spec_data, dict) or not isinstance(ckpt.get("preprocess"), dict):
        raise MedsslError(f"{path}: holds no model spec and preprocess; this needs a `medssl align` run")
    name = spec_data.get("method")
    if name is None or not method(name).batch.report or not isinstance(tokenizer, str):
        raise MedsslError(f"{path}: is a {name or 'plain'} model, not an image-text run: this needs a run of "
                          "`medssl align` (convirt, clip, gloria), whose checkpoint keeps its report tokenizer")
    spec = ModelSpec.from_dict(spec_data, method(name).Options)
    torch.manual_seed(0)  # initial weights are overwritten; the seed keeps loading deterministic
    model = build_model(spec)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise MedsslError(f"{path}: weights do not fit the stored model spec: {str(e).splitlines()[0][:300]}") from None
    meta = {k: v for k, v in ckpt.items() if k not in ("model", "optimizer", "scheduler", "rng", "validation")}
    return ImageTextRun(model.eval(), ReportTokenizer.from_json(tokenizer), Preprocess.from_dict(ckpt["preprocess"]),
                        spec, meta)


def load_image_text(path: str | Path) -> ImageTextRun:
    """A run folder or checkpoint of `medssl align` -> ImageTextRun; MedsslError naming what is missing."""
    path = resolve_checkpoint(path)
    return image_text_from_checkpoint(load_checkpoint(path), path)

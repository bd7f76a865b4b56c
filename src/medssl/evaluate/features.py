"""Frozen features of a backbone: batched, in eval mode, without gradients, leaving the backbone as it was."""

from __future__ import annotations

import sys
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from medssl.data.preprocess import Preprocess
from medssl.errors import MedsslError


@torch.no_grad()
def extract_features(backbone: nn.Module, images: Tensor, preprocess: Preprocess | None = None,
                     batch_size: int = 256, bar: tqdm | None = None,
                     encode: Callable[[Tensor], Tensor] | None = None) -> np.ndarray:
    """Pooled features (N, D) float32 of stored images (N, 1 or C, S, S), uint8 or float in [0, 1], fed through
    the model's Preprocess (default: the images' own side and channels); eval mode, no gradients.
    bar: a progress bar (the caller's, which may span several calls) advanced by the images done.
    encode: what maps a batch to features (default: the module itself; an image-text model's encode_image)."""
    if images.ndim != 4:
        raise MedsslError(f"expected images (N, C, S, S), got shape {tuple(images.shape)}")
    preprocess = preprocess or Preprocess(int(images.shape[-1]), int(images.shape[1]))
    was_training = backbone.training
    backbone.eval()  # BatchNorm uses (and never updates) its running statistics
    chunks = []
    try:
        device = next(backbone.parameters(), torch.empty(0)).device
        for x in preprocess.batches(images, batch_size, device):
            chunks.append((encode or backbone)(x).float().cpu())
            if bar is not None:
                bar.update(len(x))
    finally:
        backbone.train(was_training)
    if not chunks:
        raise MedsslError("no images to extract features from")
    return torch.cat(chunks).numpy()


def feature_bar(total: int, desc: str, enabled: bool) -> tqdm:
    """A transient bar of images (rate, ETA) for extract_features."""
    return tqdm(total=total, desc=desc, unit="img", leave=False, disable=not enabled, file=sys.stderr,
                dynamic_ncols=True)

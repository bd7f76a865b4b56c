"""Frozen features of a backbone: batched, in eval mode, without gradients, leaving the backbone as it was."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor, nn

from medssl.data.augment import resize
from medssl.errors import MedsslError


def input_channels(backbone: nn.Module) -> int:
    """Channels the backbone's first convolution expects (1 when it has none)."""
    conv = next((m for m in backbone.modules() if isinstance(m, nn.Conv2d)), None)
    return conv.in_channels if conv is not None else 1


def image_batches(images: Tensor, batch_size: int, channels: int = 1, size: int | None = None,
                  device: torch.device | str = "cpu") -> Iterator[Tensor]:
    """(N, C, S, S) uint8 or float in [0, 1] -> float32 batches (B, channels, size, size) on `device`.

    Converted one batch at a time, so a large uint8 set never exists whole as float32. Grayscale is repeated to
    the backbone's channels, as BatchDataset does for training.
    """
    if images.ndim != 4 or images.shape[1] not in (1, channels):
        raise MedsslError(f"expected images (N, 1 or {channels}, S, S), got shape {tuple(images.shape)}")
    for lo in range(0, len(images), batch_size):
        x = images[lo : lo + batch_size].to(device)
        x = x.float().div_(255) if x.dtype == torch.uint8 else x.float()
        if size is not None:
            x = resize(x, size)
        yield x.expand(-1, channels, -1, -1) if x.shape[1] != channels else x


@torch.no_grad()
def extract_features(backbone: nn.Module, images: Tensor, batch_size: int = 256) -> np.ndarray:
    """Pooled features (N, D) float32 of images (N, C, S, S), uint8 or float in [0, 1]; eval mode, no gradients."""
    was_training = backbone.training
    backbone.eval()  # BatchNorm uses (and never updates) its running statistics
    try:
        device = next(backbone.parameters(), torch.empty(0)).device
        chunks = [backbone(x).float().cpu() for x in image_batches(images, batch_size, input_channels(backbone),
                                                                   device=device)]
    finally:
        backbone.train(was_training)
    if not chunks:
        raise MedsslError("no images to extract features from")
    return torch.cat(chunks).numpy()

"""THE file/array -> model-input function. Its parameters (size, channels) are stored in every checkpoint.

Every path into a model goes through one `Preprocess`: training datasets (decode once, keep uint8), feature
extraction, fine-tuning, segmentation and `medssl predict`. Two steps, so that datasets can keep the compact form:
- decode(source) -> (1, size, size) uint8: read (any format medssl reads, DICOM included: modality / VOI LUT,
  MONOCHROME1 inverted), intensities in [0, 1], antialiased resize to size x size, quantised to 1/255 steps;
- to_input(x) -> (B, channels, size, size) float32 in [0, 1]: the stored form as the network takes it, grayscale
  repeated to the channels of the backbone's first convolution.
`__call__(source)` is the two together for one image: the same file gives the same tensor on every path.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from medssl.data.augment import resize
from medssl.data.records import Record
from medssl.data.sources import read_record_image
from medssl.errors import MedsslError

Source = str | os.PathLike | Record | np.ndarray | Tensor


@dataclass(frozen=True)
class Preprocess:
    """Model input: size x size pixels, `channels` channels, intensities in [0, 1] (the readers' scale)."""

    size: int
    channels: int = 1

    def __post_init__(self) -> None:
        if self.size < 1 or self.channels not in (1, 3):
            raise MedsslError(f"preprocess: size {self.size} must be positive and channels {self.channels} 1 or 3")

    def to_dict(self) -> dict[str, Any]:
        """Plain data (for checkpoints)."""
        return {"size": self.size, "channels": self.channels}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Preprocess":
        """The Preprocess of to_dict's output."""
        return cls(int(data["size"]), int(data.get("channels", 1)))

    def decode(self, source: Source) -> Tensor:
        """An image file, a Record or an (H, W) array in [0, 1] -> (1, size, size) uint8."""
        x = torch.from_numpy(np.ascontiguousarray(_pixels(source), dtype=np.float32))[None, None]
        # out of place first: at the same size resize returns x, which may share memory with the caller's array
        return resize(x, self.size)[0].clamp(0, 1).mul_(255).round_().to(torch.uint8)

    def to_input(self, x: Tensor) -> Tensor:
        """(B, 1 or channels, S, S) uint8 or float in [0, 1] -> (B, channels, size, size) float32."""
        if x.ndim != 4 or x.shape[1] not in (1, self.channels):
            raise MedsslError(f"expected images (B, 1 or {self.channels}, S, S), got shape {tuple(x.shape)}")
        x = x.float().div_(255) if x.dtype == torch.uint8 else x.float()
        if tuple(x.shape[-2:]) != (self.size, self.size):
            x = resize(x, self.size)
        return x.expand(-1, self.channels, -1, -1) if x.shape[1] != self.channels else x

    def __call__(self, source: Source) -> Tensor:
        """One image -> its model input (channels, size, size) float32."""
        return self.to_input(self.decode(source)[None])[0]

    def batches(self, images: Tensor, batch_size: int = 256, device: torch.device | str = "cpu") -> Iterator[Tensor]:
        """Stored images (N, 1 or C, S, S) -> model-input batches on device, one batch converted at a time (a large
        uint8 set never exists whole as float32)."""
        for lo in range(0, len(images), batch_size):
            yield self.to_input(images[lo : lo + batch_size].to(device))


def _pixels(source: Source) -> np.ndarray:
    """(H, W) float32 in [0, 1] of a file, a record or an array (checked)."""
    if isinstance(source, Record):
        return read_record_image(source)
    if isinstance(source, (str, os.PathLike)):
        return read_record_image(Record(path=str(Path(source)), patient_id=""))
    x = source.detach().cpu().numpy() if isinstance(source, Tensor) else np.asarray(source)
    if x.ndim != 2 or not np.issubdtype(x.dtype, np.floating) or not np.isfinite(x).all():
        raise MedsslError(f"expected a finite float (H, W) image array in [0, 1], got {x.dtype} {x.shape}")
    return x

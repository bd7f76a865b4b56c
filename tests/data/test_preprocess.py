"""One Preprocess: the same file gives the same model input on every path (training, features, predict)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from medssl.data.datasets import ImageDataset
from medssl.data.preprocess import Preprocess
from medssl.data.records import Record
from medssl.errors import MedsslError


@pytest.fixture
def png(tmp_path):
    x = (np.random.default_rng(0).random((40, 40)) * 255).round().astype(np.uint8)
    Image.fromarray(x).save(tmp_path / "x.png")
    return tmp_path / "x.png"


@pytest.mark.parametrize("channels", [1, 3])
def test_the_same_file_gives_the_same_tensor_on_every_path(png, channels):
    pre = Preprocess(16, channels)
    direct = pre(png)                                             # predict's path: file -> input
    assert direct.shape == (channels, 16, 16) and direct.dtype == torch.float32
    stored = ImageDataset([Record(path=str(png), patient_id="p")], pre).images   # training / evaluation storage
    assert torch.equal(pre.to_input(stored)[0], direct)
    (batch,) = list(pre.batches(stored))                          # feature extraction and fine-tuning scoring
    assert torch.equal(batch[0], direct)
    assert torch.equal(pre(Record(path=str(png), patient_id="p")), direct)
    if channels == 3:
        assert torch.equal(direct[0], direct[2])                  # grayscale repeated


def test_values_are_the_quantised_resized_image(png):
    x = np.asarray(Image.open(png), dtype=np.float32) / 255
    out = Preprocess(40, 1)(png)                                  # no resize: exactly the file's pixels
    assert torch.allclose(out[0], torch.from_numpy(x), atol=1e-7)
    small = Preprocess(20, 1).decode(x)                           # 2x2 area means (antialiased bilinear)
    assert abs(float(small.float().mean()) / 255 - float(x.mean())) < 2e-3


def test_bad_values(png):
    with pytest.raises(MedsslError, match="channels"):
        Preprocess(16, 2)
    with pytest.raises(MedsslError, match="float"):
        Preprocess(16).decode(np.zeros((4, 4), dtype=np.uint8))
    with pytest.raises(MedsslError, match=r"expected images"):
        Preprocess(16, 3).to_input(torch.zeros(1, 2, 16, 16))
    assert Preprocess.from_dict(Preprocess(16, 3).to_dict()) == Preprocess(16, 3)


def test_decode_leaves_the_callers_array_alone():
    arr = np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32)
    before = arr.copy()
    Preprocess(32, 1).decode(arr)                            # same size: resize is a no-op on the shared memory
    np.testing.assert_array_equal(arr, before)

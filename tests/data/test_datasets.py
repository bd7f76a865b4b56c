"""Pretraining datasets: in-memory decoding, MICLe pairs, and whole batches that are pure functions of their key."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from medssl.data.augment import preset, resize
from medssl.data.datasets import (LABELLED_IMAGE, ONE_IMAGE, PATIENT_PAIRS, TWO_VIEWS, BatchDataset, EpochLoader,
                                  ImageDataset, MultiInstanceDataset)
from medssl.data.preprocess import Preprocess
from medssl.data.records import Record, read_manifest
from medssl.data.sources import read_record_image
from medssl.errors import MedsslError


@pytest.fixture(scope="module")
def synth_images(synth_manifest):
    return ImageDataset(read_manifest(synth_manifest), Preprocess(16))


def _records(patients: dict[str, list[str]]) -> list[Record]:
    """patient -> list of study ids, one record per entry."""
    return [Record(path=f"img{i}", patient_id=p, study_id=s, index=i)
            for i, (p, s) in enumerate((p, s) for p, studies in patients.items() for s in studies)]


def _array(n: int, size: int = 16) -> np.ndarray:
    return np.random.default_rng(n).random((n, size, size), dtype=np.float32)


def test_image_dataset_decodes_once_into_uint8(synth_manifest, synth_images):
    records = read_manifest(synth_manifest)
    assert synth_images.images.shape == (len(records), 1, 16, 16) and synth_images.images.dtype == torch.uint8
    x = torch.from_numpy(read_record_image(records[3]))[None, None]
    expected = resize(x, 16)[0]                                   # antialiased resize of the decoded image
    assert torch.allclose(synth_images[3], expected, atol=0.5 / 255 + 1e-6)
    assert torch.equal(synth_images.images[3], Preprocess(16).decode(records[3]))   # the one preprocess path
    assert synth_images.batch(np.array([3, 0])).shape == (2, 1, 16, 16)


def test_micle_pairs_stay_within_the_patient_and_differ(synth_images):
    records = synth_images.records
    pairs = MultiInstanceDataset(synth_images, "patient", seed=0)
    idx = np.arange(len(records))
    for epoch in range(5):
        partner, same = pairs.partners(idx, epoch)
        assert all(records[i].patient_id == records[j].patient_id for i, j in zip(idx, partner))
        assert (partner != idx).all() and not same.any()          # every synthetic patient has 2+ images
    a, b = pairs.partners(idx, 0)[0], pairs.partners(idx, 1)[0]
    assert (a != b).any()                                         # each epoch pairs anew
    assert (pairs.partners(idx, 1)[0] == MultiInstanceDataset(synth_images, "patient", 0).partners(idx, 1)[0]).all()


def test_micle_pair_by_study_prefers_the_same_study():
    records = _records({"p1": ["s1", "s1", "s2"], "p2": ["t1", "t2"], "p3": ["u1"]})
    images = ImageDataset.from_array(_array(len(records)), records)
    pairs = MultiInstanceDataset(images, "study", seed=0)
    idx = np.arange(len(records))
    for epoch in range(10):
        partner, same = pairs.partners(idx, epoch)
        assert partner[0] == 1 and partner[1] == 0                # the other image of study s1
        assert partner[2] in (0, 1)                               # s2 has one image: another study of p1
        assert (partner[3], partner[4]) == (4, 3)
        assert partner[5] == 5 and same.tolist() == [False] * 5 + [True]   # a single image: paired with itself
    x1, x2, same_image = pairs[5]
    assert same_image and torch.equal(x1, x2)


def test_micle_never_pairs_two_patients_even_when_all_are_single():
    records = _records({f"p{i}": ["s"] for i in range(6)})
    pairs = MultiInstanceDataset(ImageDataset.from_array(_array(6), records), "patient")
    partner, same = pairs.partners(np.arange(6), 0)
    assert partner.tolist() == list(range(6)) and same.all()


def _batches_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_batch_is_a_pure_function_of_seed_epoch_and_index():
    images = ImageDataset.from_array(_array(40))
    make = lambda: BatchDataset(images, 8, TWO_VIEWS, preset("chest_xray", 16), seed=5)  # noqa: E731
    ds = make()
    assert len(ds) == 5
    first = ds[(2, 3)]
    _ = ds[(0, 0)], ds[(2, 1)]                                    # other batches in between change nothing
    assert _batches_equal(first, ds[(2, 3)]) and _batches_equal(first, make()[(2, 3)])
    # made in a DataLoader worker process, it is the same batch
    loader = DataLoader(ds, batch_size=None, sampler=[(2, 3)], num_workers=1)
    assert _batches_equal(first, next(iter(loader)))
    assert first["view1"].shape == (8, 1, 16, 16) and not torch.equal(first["view1"], first["view2"])
    other_seed = BatchDataset(images, 8, TWO_VIEWS, preset("chest_xray", 16), seed=6)[(2, 3)]
    assert not torch.equal(first["view1"], other_seed["view1"])


def test_each_epoch_is_a_permutation_and_differs():
    ds = BatchDataset(ImageDataset.from_array(_array(42)), 8, ONE_IMAGE, preset("none", 16), seed=0)
    seen = np.concatenate([ds[(0, k)]["index"].numpy() for k in range(len(ds))])
    assert len(ds) == 5 and len(set(seen)) == 40                  # the last 2 images wait for another epoch
    assert not np.array_equal(seen, np.concatenate([ds[(1, k)]["index"].numpy() for k in range(5)]))
    batch = ds[(0, 0)]
    assert set(batch) == {"image", "index"}
    # the 'none' preset is the identity at the stored size: the batch holds the stored images themselves
    assert torch.allclose(batch["image"], ds.images.batch(batch["index"]))


def test_ranks_take_disjoint_slices_of_the_global_batch():
    images = ImageDataset.from_array(_array(48))
    aug = preset("chest_xray", 16)
    whole = BatchDataset(images, 12, TWO_VIEWS, aug, seed=1)
    ranks = [BatchDataset(images, 12, TWO_VIEWS, aug, seed=1, rank=r, world_size=3) for r in range(3)]
    for k in range(len(whole)):
        parts = [r[(0, k)]["index"].numpy() for r in ranks]
        assert all(len(p) == 4 for p in parts)
        assert np.array_equal(np.concatenate(parts), whole[(0, k)]["index"].numpy())
    with pytest.raises(MedsslError, match="not a multiple"):
        BatchDataset(images, 10, ONE_IMAGE, aug, world_size=3)


def test_micle_batches_hold_pairs_of_one_patient(synth_images):
    pairs = MultiInstanceDataset(synth_images, "patient", seed=0)
    ds = BatchDataset(synth_images, 8, PATIENT_PAIRS, preset("chest_xray", 16), seed=0, pairs=pairs)
    batch = ds[(0, 0)]
    assert batch["same_image"].dtype == torch.bool and not batch["same_image"].any()
    assert batch["view2"].shape == (8, 1, 16, 16)
    partners = pairs.partners(batch["index"].numpy(), 0)[0]      # view2 is the partner image, augmented
    assert all(synth_images.records[i].patient_id == synth_images.records[j].patient_id
               for i, j in zip(batch["index"].tolist(), partners))
    with pytest.raises(MedsslError, match="give the MultiInstanceDataset"):
        BatchDataset(synth_images, 8, PATIENT_PAIRS, preset("chest_xray", 16))


def test_epoch_loader_starts_mid_epoch_with_workers():
    ds = BatchDataset(ImageDataset.from_array(_array(40)), 8, TWO_VIEWS, preset("chest_xray", 16), seed=2)
    loader = EpochLoader(ds, num_workers=1)
    try:
        full = list(loader.epoch(1))
        tail = list(loader.epoch(1, start=3))                    # the same persistent worker, a new position
        assert len(full) == 5 and len(tail) == 2
        assert all(_batches_equal(a, b) for a, b in zip(full[3:], tail))
        assert _batches_equal(full[0], ds[(1, 0)])
    finally:
        loader.close()


def test_three_channels_and_bad_batch_sizes():
    images = ImageDataset.from_array(_array(8))
    ds = BatchDataset(images, 4, TWO_VIEWS, preset("chest_xray", 16), channels=3)
    assert ds[(0, 0)]["view1"].shape == (4, 3, 16, 16)
    with pytest.raises(MedsslError, match="larger than the 8 images"):
        BatchDataset(images, 16, ONE_IMAGE, preset("none", 16))


def test_targets_ride_along_with_their_images():
    images = ImageDataset.from_array(_array(12))
    y = np.arange(12) * 10                                        # target i is 10 * i: its image index, visibly
    ds = BatchDataset(images, 4, LABELLED_IMAGE, preset("chest_xray", 16), seed=1, targets=y)
    batch = ds[(1, 2)]
    assert torch.equal(batch["target"], batch["index"] * 10)
    again = BatchDataset(images, 4, LABELLED_IMAGE, preset("chest_xray", 16), seed=1, targets=y)[(1, 2)]
    assert _batches_equal(batch, again)                           # still a pure function of its key
    multilabel = np.eye(3, dtype=np.int64)[np.arange(12) % 3]
    ds = BatchDataset(images, 4, LABELLED_IMAGE, preset("none", 16), targets=multilabel, rank=1, world_size=2)
    batch = ds[(0, 1)]
    assert batch["target"].shape == (2, 3)
    assert torch.equal(batch["target"], torch.from_numpy(multilabel)[batch["index"]])
    assert "target" not in BatchDataset(images, 4, ONE_IMAGE, preset("none", 16))[(0, 0)]
    with pytest.raises(MedsslError, match="trains on labels: give the targets"):
        BatchDataset(images, 4, LABELLED_IMAGE, preset("none", 16))
    with pytest.raises(MedsslError, match="11 targets for 12 images"):
        BatchDataset(images, 4, LABELLED_IMAGE, preset("none", 16), targets=y[:11])

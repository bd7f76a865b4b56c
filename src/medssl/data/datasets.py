"""Datasets for training: decoded images in memory, MICLe pairs, and whole augmented (optionally labelled) batches.

Training batches are made whole in DataLoader workers (`BatchDataset`): item (epoch, k) is batch k of a seeded
permutation for that epoch, augmented with a generator seeded from (seed, epoch, k, rank). A batch is therefore a
pure function of its key, whichever worker makes it, so a resumed run starts mid-epoch at batch k without replaying
the loader and sees exactly the batches an uninterrupted run would have seen.

DDP: `batch_size` is the global batch. Rank r of W takes rows [r * B / W, (r + 1) * B / W) of each global batch,
so the ranks see disjoint slices and together the same images as one process would (their augmentations are drawn
per rank, so pixels differ from a one-process run's). The last incomplete global batch of an epoch is dropped:
every rank must pass the same number of rows to the cross-rank gather in the losses.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from medssl.data.augment import Augment, AugmentConfig
from medssl.data.preprocess import Preprocess
from medssl.data.records import Record
from medssl.errors import MedsslError


def _derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers, well mixed (numpy SeedSequence), so nearby keys give unrelated streams."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0] >> np.uint64(1))


class ImageDataset(Dataset):
    """Every record decoded once by the model's Preprocess and kept in memory as uint8 (N, 1, size, size).

    uint8 is 4x smaller than float32 and its 1/255 steps are below the augmentation noise; holding everything in
    memory keeps CPU training from waiting on image decoding.
    """

    def __init__(self, records: Sequence[Record], preprocess: Preprocess, progress: bool = False):
        if not records:
            raise MedsslError("no images to train on: the data source gave no records")
        self.records = list(records)
        self.size = preprocess.size
        self.images = torch.empty(len(records), 1, self.size, self.size, dtype=torch.uint8)
        for i, rec in enumerate(tqdm(self.records, desc="decoding images", unit="img", disable=not progress,
                                     file=sys.stderr, dynamic_ncols=True)):
            self.images[i] = preprocess.decode(rec)

    @classmethod
    def from_array(cls, images: np.ndarray | Tensor, records: Sequence[Record] | None = None) -> "ImageDataset":
        """Wrap images already in memory, (N, H, W) float in [0, 1] (e.g. synthetic.generate); one patient each
        unless records are given."""
        x = torch.as_tensor(np.asarray(images, dtype=np.float32))
        if x.ndim != 3 or x.shape[1] != x.shape[2]:
            raise MedsslError(f"expected square images (N, S, S), got shape {tuple(x.shape)}")
        self = cls.__new__(cls)
        self.records = list(records) if records is not None else [
            Record(path=f"array[{i}]", patient_id=str(i), index=i) for i in range(len(x))]
        if len(self.records) != len(x):
            raise MedsslError(f"{len(self.records)} records for {len(x)} images")
        self.size = int(x.shape[-1])
        self.images = x[:, None].clamp(0, 1).mul_(255).round_().to(torch.uint8)
        return self

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> Tensor:
        """(1, size, size) float32 in [0, 1]."""
        return self.images[i].float().div_(255)

    def batch(self, idx: np.ndarray | Tensor) -> Tensor:
        """(B, 1, size, size) float32 in [0, 1] for the given indices."""
        return self.images[torch.as_tensor(idx, dtype=torch.long)].float().div_(255)


class MultiInstanceDataset(Dataset):
    """MICLe pairs (Azizi et al. 2021): each anchor with a DIFFERENT image of the same patient, never another's.

    pair_by='study' prefers another image of the same study (frontal + lateral of one visit) and falls back to the
    patient's other studies; pair_by='patient' draws from all of the patient's other images. A patient with a single
    image is paired with itself (two augmentations of one image) and flagged same_image. Partners are drawn with a
    generator seeded from (seed, epoch), so each epoch pairs anew and reproducibly.
    """

    def __init__(self, images: ImageDataset, pair_by: str = "patient", seed: int = 0):
        if pair_by not in ("patient", "study"):
            raise MedsslError(f"pair_by={pair_by!r} must be 'patient' or 'study'")
        self.images, self.pair_by, self.seed = images, pair_by, seed
        self.offsets, self.candidates = _candidate_table(images.records, pair_by)

    def __len__(self) -> int:
        return len(self.images)

    def partners(self, idx: np.ndarray, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(partner index, same_image flag) for each anchor index, drawn for this epoch."""
        idx = np.asarray(idx, dtype=np.int64)
        if len(self.candidates) == 0:  # every patient has a single image
            return idx.copy(), np.ones(len(idx), dtype=bool)
        start, count = self.offsets[idx], self.offsets[idx + 1] - self.offsets[idx]
        u = np.random.default_rng([self.seed, epoch, 7]).random(len(self))[idx]  # one draw per anchor and epoch
        pick = np.minimum((u * np.maximum(count, 1)).astype(np.int64), np.maximum(count - 1, 0))
        partner = np.where(count > 0, self.candidates[np.minimum(start + pick, len(self.candidates) - 1)], idx)
        return partner, count == 0

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor, bool]:
        """(anchor, partner, same_image) of epoch 0."""
        j, same = self.partners(np.array([i]), 0)
        return self.images[i], self.images[int(j[0])], bool(same[0])


def _candidate_table(records: Sequence[Record], pair_by: str) -> tuple[np.ndarray, np.ndarray]:
    """CSR table: candidates[offsets[i]:offsets[i + 1]] are the images record i may be paired with (never itself)."""
    by_patient: dict[str, list[int]] = defaultdict(list)
    by_study: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        by_patient[r.patient_id].append(i)
        if r.study_id:
            by_study[(r.patient_id, r.study_id)].append(i)  # a study id is only unique within its patient
    offsets, flat = [0], []
    for i, r in enumerate(records):
        same_study = [j for j in by_study.get((r.patient_id, r.study_id), []) if j != i] if pair_by == "study" else []
        flat.extend(same_study or [j for j in by_patient[r.patient_id] if j != i])
        offsets.append(len(flat))
    return np.asarray(offsets, dtype=np.int64), np.asarray(flat, dtype=np.int64)


@dataclass(frozen=True)
class BatchSpec:
    """What a method consumes, declared next to it; BatchDataset builds its batches from this alone.

    views: batch keys that each get their own augmentation of the sample's image, (B, C, S, S) each;
    partner: the second view comes from ANOTHER image of the same patient (MICLe; data.pair_by chooses patient
    or study) and the batch gains "same_image" (B,) bool; target: the batch gains "target" (labels, fine-tuning);
    min_per_process: the fewest images a process may hold (contrastive negatives, BatchNorm statistics).
    Later: a report's tokens, a mask - a new field here and its few lines in BatchDataset, no method name anywhere.
    """

    views: tuple[str, ...] = ("view1", "view2")
    partner: bool = False
    target: bool = False
    min_per_process: int = 1

    def __post_init__(self) -> None:
        if not self.views or len(set(self.views)) != len(self.views) or "index" in self.views:
            raise MedsslError(f"batch views {self.views} must be distinct names other than 'index'")
        if self.partner and len(self.views) != 2:
            raise MedsslError(f"a partner batch has exactly two views, not {self.views}")


TWO_VIEWS = BatchSpec(("view1", "view2"), min_per_process=2)  # SimCLR, MoCo, BYOL: two augmentations of one image
PATIENT_PAIRS = BatchSpec(("view1", "view2"), partner=True, min_per_process=2)  # MICLe: two images of one patient
ONE_IMAGE = BatchSpec(("image",))  # MAE: one augmented image
LABELLED_IMAGE = BatchSpec(("image",), target=True)  # fine-tuning: one augmented image and its label


class BatchDataset(Dataset):
    """Map-style dataset of whole augmented batches: item (epoch, k) -> dict of (B / W, C, S, S) tensors + index.

    spec: what the method declared it consumes (BatchSpec); pairs: the patients' partner images (spec.partner);
    targets: labels, one row per image ((N,) or (N, C)), added to each batch as "target" (spec.target).
    """

    def __init__(self, images: ImageDataset, batch_size: int, spec: BatchSpec, augment: AugmentConfig,
                 seed: int = 0, rank: int = 0, world_size: int = 1, pairs: MultiInstanceDataset | None = None,
                 channels: int = 1, targets: np.ndarray | Tensor | None = None):
        if batch_size % world_size:
            raise MedsslError(f"batch size {batch_size} is not a multiple of the {world_size} processes")
        if batch_size > len(images):
            raise MedsslError(f"batch size {batch_size} is larger than the {len(images)} images of the data set")
        if spec.partner and pairs is None:
            raise MedsslError("this method pairs two images of a patient: give the MultiInstanceDataset (pairs)")
        if spec.target and targets is None:
            raise MedsslError("this method trains on labels: give the targets")
        self.images, self.batch_size, self.spec, self.seed = images, batch_size, spec, seed
        self.rank, self.world_size, self.pairs, self.channels = rank, world_size, pairs, channels
        self.local = batch_size // world_size
        self.targets = None if targets is None else torch.as_tensor(np.asarray(targets))
        if self.targets is not None and len(self.targets) != len(images):
            raise MedsslError(f"{len(self.targets)} targets for {len(images)} images")
        self.augment = Augment(augment, seed)
        self._perm: tuple[int, np.ndarray] | None = None  # (epoch, permutation): one epoch cached per worker

    def __len__(self) -> int:
        """Whole global batches per epoch."""
        return len(self.images) // self.batch_size

    def permutation(self, epoch: int) -> np.ndarray:
        """The order of the images in this epoch: the same on every rank and in every worker."""
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, np.random.default_rng([self.seed, epoch]).permutation(len(self.images)))
        return self._perm[1]

    def indices(self, epoch: int, k: int) -> np.ndarray:
        """This rank's image indices in global batch k of the epoch."""
        if not 0 <= k < len(self):
            raise IndexError(f"batch {k} outside 0..{len(self) - 1}")
        lo = k * self.batch_size + self.rank * self.local
        return self.permutation(epoch)[lo : lo + self.local]

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Tensor]:
        """Batch k of the epoch for this rank: a pure function of (seed, epoch, k, rank)."""
        epoch, k = key
        idx = self.indices(epoch, k)
        self.augment.generator.manual_seed(_derive_seed(self.seed, epoch, k, self.rank))
        x = self.images.batch(idx)                                     # (b, 1, S, S)
        out: dict[str, Tensor] = {"index": torch.from_numpy(idx.copy())}
        if self.spec.target:
            out["target"] = self.targets[torch.from_numpy(idx)]  # type: ignore[index]
        sources = [x] * len(self.spec.views)
        if self.spec.partner:
            partner, same = self.pairs.partners(idx, epoch)  # type: ignore[union-attr]
            sources[1] = self.images.batch(partner)
            out["same_image"] = torch.from_numpy(same)
        for key, src in zip(self.spec.views, sources):  # in order: each view draws from the generator in turn
            out[key] = self._channels(self.augment(src))
        return out

    def _channels(self, x: Tensor) -> Tensor:
        return x if self.channels == 1 else x.expand(-1, self.channels, -1, -1).contiguous()


class _EpochSampler(Sampler):
    """Yields the keys (epoch, k) for k = start.. of one epoch; iterated in the main process, so set() takes effect
    even with persistent workers."""

    def __init__(self, n_batches: int):
        self.n_batches, self.epoch, self.start = n_batches, 0, 0

    def set(self, epoch: int, start: int) -> None:
        """Where the next iteration starts."""
        self.epoch, self.start = epoch, start

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter([(self.epoch, k) for k in range(self.start, self.n_batches)])

    def __len__(self) -> int:
        return self.n_batches - self.start


class EpochLoader:
    """Batches of a BatchDataset through a DataLoader (batch_size=None: items already are batches).

    epoch(e, start) iterates batches start.. of epoch e; len() is batches per epoch. The DataLoader has its own
    generator so that making an iterator never draws from the global torch RNG (which the model may use, e.g.
    MAE's masks): a resumed run then consumes random numbers exactly as an uninterrupted one.
    """

    def __init__(self, dataset: BatchDataset, num_workers: int = 0, prefetch_factor: int = 2):
        self.dataset = dataset
        self.sampler = _EpochSampler(len(dataset))
        self.loader = DataLoader(dataset, batch_size=None, sampler=self.sampler, num_workers=num_workers,
                                 persistent_workers=num_workers > 0,
                                 prefetch_factor=prefetch_factor if num_workers > 0 else None,
                                 generator=torch.Generator().manual_seed(dataset.seed))

    def __len__(self) -> int:
        return len(self.dataset)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[dict[str, Tensor]]:
        """Batches start, start + 1, ... of the epoch."""
        self.sampler.set(epoch, start)
        return iter(self.loader)

    def close(self) -> None:
        """Stop the worker processes."""
        it = getattr(self.loader, "_iterator", None)
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()
        self.loader._iterator = None

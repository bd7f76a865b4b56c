"""Datasets for training: decoded images in memory, MICLe pairs, and whole augmented (optionally labelled) batches.

Training batches are made whole in DataLoader workers (`BatchDataset`): item (epoch, k) is batch k of a seeded
permutation for that epoch, augmented with a generator seeded from (seed, epoch, k, rank). A batch is therefore a
pure function of its key, whichever worker makes it, so a resumed run starts mid-epoch at batch k without replaying
the loader and sees exactly the batches an uninterrupted run would have seen.

DDP: `batch_size` is the global batch. Rank r of W takes rows [r * B / W, (r + 1) * B / W) of each global batch,
so the ranks see disjoint slices and together the same images as one process would (their augmentations are drawn
per rank, so pixels differ from a one-process run's). The last incomplete global batch of an epoch is dropped:
every rank must pass the same number of rows to the cross-rank gather in the losses.

Image-report batches (BatchSpec.report, ConVIRT / CLIP / GLoRIA): an item is a STUDY, not an image (StudyReports
groups the images by patient and study). Each epoch a study shows one of its images, drawn from (seed, epoch), so
frontal and lateral views both meet the study's report; its text is a ConVIRT sample of the report's sentences,
drawn from (seed, epoch, k, rank) like the augmentation, so image-report batches keep the same resume guarantee.
"""

from __future__ import annotations

import os
import sys
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from medssl.data.augment import Augment, AugmentConfig
from medssl.data.preprocess import Preprocess
from medssl.data.records import Record
from medssl.errors import MedsslError
from medssl.text.reports import report_sentences, sample_sentences, training_text

AUGMENT_ON = ("loader", "device", "auto")  # data.augment_on: where training views are augmented (BatchDataset)
NO_FINDING_NAMES = frozenset({"no_finding", "no finding", "normal", "none"})  # labels that mean "nothing found"


def _derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers, well mixed (numpy SeedSequence), so nearby keys give unrelated streams."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0] >> np.uint64(1))


class ImageDataset(Dataset):
    """Every record decoded once by the model's Preprocess, as uint8 (N, 1, size, size).

    With `source`, the images come from the decoded-image cache of (source, size) (medssl.data.cache), memory-mapped:
    a later run on the same source decodes nothing, and loader workers and DDP ranks share its pages; cache: the
    cache root (None: the default place, "off": decode into memory every time). Without a source (or with
    cache "off") they are decoded into memory. uint8 is 4x smaller than float32 and its 1/255 steps are below the
    augmentation noise; `rows[i]` is the row of `images` that holds record i.
    """

    def __init__(self, records: Sequence[Record], preprocess: Preprocess, progress: bool = False,
                 source: str | os.PathLike | None = None, cache: str | None = None):
        if not records:
            raise MedsslError("no images to train on: the data source gave no records")
        self.records = list(records)
        self.size = preprocess.size
        from medssl.data.cache import cached_images, enabled

        if source is not None and enabled(cache):
            found = cached_images(self.records, self.size, source, progress=progress, cache=cache)
            self.images, self.rows = found.images, found.rows
            self.mapped: Path | None = found.folder / "images.u8"
            return
        self.mapped = None
        self.images = torch.empty(len(records), 1, self.size, self.size, dtype=torch.uint8)
        self.rows = torch.arange(len(records))
        for i, rec in enumerate(tqdm(self.records, desc="decoding images", unit="img", disable=not progress,
                                     file=sys.stderr, dynamic_ncols=True)):
            self.images[i] = preprocess.decode(rec)

    def __getstate__(self) -> dict[str, Any]:
        """A memory-mapped cache travels to a spawned worker as its file name, not as a copy of its pixels."""
        state = dict(self.__dict__)
        if self.mapped is not None:
            state["images"] = len(self.images)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        if state.get("mapped") is not None:
            from medssl.data.cache import open_images

            state["images"] = open_images(state["mapped"], state["images"], state["size"])
        self.__dict__.update(state)

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
        self.rows = torch.arange(len(x))
        self.mapped = None
        return self

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> Tensor:
        """(1, size, size) float32 in [0, 1]."""
        return self.images[self.rows[i]].float().div_(255)

    def batch(self, idx: np.ndarray | Tensor) -> Tensor:
        """(B, 1, size, size) float32 in [0, 1] for the given indices (only these rows are read)."""
        return self.pixels(idx).float().div_(255)

    def pixels(self, idx: np.ndarray | Tensor) -> Tensor:
        """(B, 1, size, size) uint8 for the given indices, as stored."""
        return self.images[self.rows[torch.as_tensor(idx, dtype=torch.long)]]


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
    min_per_process: the fewest images a process may hold (contrastive negatives, BatchNorm statistics);
    report: items are studies and the batch gains the study's report as "ids" and "mask" (B, L) int64 and its
    findings as "findings" (B, K) float32 multi-hot (StudyReports), plus "study" (B,) int64.
    Later: a mask - a new field here and its few lines in BatchDataset, no method name anywhere.
    """

    views: tuple[str, ...] = ("view1", "view2")
    partner: bool = False
    target: bool = False
    min_per_process: int = 1
    report: bool = False

    def __post_init__(self) -> None:
        if not self.views or len(set(self.views)) != len(self.views) or "index" in self.views:
            raise MedsslError(f"batch views {self.views} must be distinct names other than 'index'")
        if self.partner and len(self.views) != 2:
            raise MedsslError(f"a partner batch has exactly two views, not {self.views}")
        if self.report and self.partner:
            raise MedsslError("an image-report batch pairs a study's image with its report, not with a partner image")
        if self.report and {"ids", "mask", "findings", "study"} & set(self.views):
            raise MedsslError(f"batch views {self.views} clash with the report keys ids, mask, findings, study")


TWO_VIEWS = BatchSpec(("view1", "view2"), min_per_process=2)  # SimCLR, MoCo, BYOL: two augmentations of one image
PATIENT_PAIRS = BatchSpec(("view1", "view2"), partner=True, min_per_process=2)  # MICLe: two images of one patient
ONE_IMAGE = BatchSpec(("image",))  # MAE: one augmented image
LABELLED_IMAGE = BatchSpec(("image",), target=True)  # fine-tuning: one augmented image and its label
IMAGE_REPORT = BatchSpec(("image",), report=True, min_per_process=2)  # ConVIRT, CLIP, GLoRIA: image + report


def finding_names(records: Sequence[Record]) -> list[str]:
    """The finding classes of image-report batches: every label of the records except those meaning "nothing
    found" (no_finding, normal, none), sorted as records.label_names sorts them."""
    from medssl.data.records import label_names

    return [n for n in label_names(records) if n.lower() not in NO_FINDING_NAMES]


def study_groups(records: Sequence[Record]) -> list[list[int]]:
    """Record indices grouped by study, in order of first appearance; a record without a study id is its own study.

    A study id is only unique within its patient, so the key is (patient_id, study_id).
    """
    groups: dict[tuple[str, str] | int, list[int]] = {}
    for i, r in enumerate(records):
        groups.setdefault((r.patient_id, r.study_id) if r.study_id else i, []).append(i)
    return list(groups.values())


class StudyReports:
    """The studies of an ImageDataset's records with their report, findings and tokenizer: what BatchDataset needs
    for image-report batches (BatchSpec.report).

    tokenizer: an object with encode(texts, context=..., pad_to="context") -> {"ids", "mask"} (B, context) int64
    (text.tokenizer.ReportTokenizer, trained on the training split's reports); findings: the K finding names of the
    multi-hot "findings" (finding_names); sentences: ConVIRT's span, a random run of 1..sentences consecutive
    sentences of the cleaned report (1 = ConVIRT's one sentence), 0 = the whole cleaned report; context: the padded
    length L (default the tokenizer's). A study's report is the first non-empty one among its images (the manifest's
    report column is per study); its labels are the union of its images' labels. Records without a usable report
    should be filtered first (text.reports.filter_reports); a study with none is an error naming its first image.
    """

    def __init__(self, records: Sequence[Record], tokenizer, findings: Sequence[str], sentences: int = 1,
                 context: int | None = None):
        if sentences < 0:
            raise MedsslError(f"data.report_sentences={sentences} must be 0 (the whole report) or more")
        self.tokenizer, self.findings, self.span = tokenizer, list(findings), int(sentences)
        self.context = int(context or tokenizer.context)
        self.groups = study_groups(records)
        self.offsets = np.cumsum([0] + [len(g) for g in self.groups]).astype(np.int64)
        self.members = np.asarray([i for g in self.groups for i in g], dtype=np.int64)
        self.sentences: list[list[str]] = []
        column = {n: j for j, n in enumerate(self.findings)}
        self.labels = torch.zeros(len(self.groups), len(self.findings), dtype=torch.float32)
        for s, group in enumerate(self.groups):
            report = next((records[i].report for i in group if (records[i].report or "").strip()), "")
            whole = training_text(report)
            if not whole:
                raise MedsslError(f"{records[group[0]].path}: its study has no usable report (missing, or empty "
                                  "once cleaned); filter the records first")
            self.sentences.append([whole] if self.span == 0 else report_sentences(report) or [whole])
            for i in group:
                for name in records[i].labels:
                    if name in column:
                        self.labels[s, column[name]] = 1.0

    def __len__(self) -> int:
        """Studies."""
        return len(self.groups)

    def images(self, studies: np.ndarray, epoch: int, seed: int) -> np.ndarray:
        """One image index per study, drawn uniformly among the study's images from (seed, epoch): (b,) int64."""
        studies = np.asarray(studies, dtype=np.int64)
        u = np.random.default_rng([seed, epoch, 11]).random(len(self))[studies]  # one draw per study and epoch
        start, count = self.offsets[studies], self.offsets[studies + 1] - self.offsets[studies]
        return self.members[start + np.minimum((u * count).astype(np.int64), count - 1)]

    def texts(self, studies: np.ndarray, generator: np.random.Generator) -> list[str]:
        """The text view of each study: a ConVIRT sample of its sentences (data.report_sentences), or all of it."""
        if self.span == 0:
            return [self.sentences[s][0] for s in studies]
        return [sample_sentences(self.sentences[s], generator, self.span) for s in studies]

    def batch(self, studies: np.ndarray, generator: np.random.Generator) -> dict[str, Tensor]:
        """{"ids", "mask"}: (b, context) int64, 1 = token in mask; "findings": (b, K) float32 multi-hot."""
        enc = self.tokenizer.encode(self.texts(studies, generator), context=self.context, pad_to="context")
        return {"ids": enc["ids"], "mask": enc["mask"], "findings": self.labels[torch.from_numpy(studies)]}


class BatchDataset(Dataset):
    """Map-style dataset of whole augmented batches: item (epoch, k) -> dict of (B / W, C, S, S) tensors + index.

    spec: what the method declared it consumes (BatchSpec); pairs: the patients' partner images (spec.partner);
    targets: labels, one row per image ((N,) or (N, C)), added to each batch as "target" (spec.target);
    reports: the studies, their reports and the tokenizer (spec.report): the items permuted are then the studies.
    augment_on: where the views are augmented (data.augment_on). 'loader': here, in the worker. 'device': a batch
    leaves the worker as uint8 pixels ("pixels", "pixels_partner") and, per view, the random numbers its
    augmentation is made of ("aug.VIEW", "aug_seed.VIEW", drawn exactly as the loader path draws them), and `finish`
    augments it on the training device after the move. 'auto': the trainer times both and keeps the faster
    (medssl.train); a key (epoch, k, on_device) says which one a batch is made for. Either way a batch is a pure
    function of its key; on the CPU both paths give the same pixels, on a GPU the same parameters (the noise is
    drawn by that device's generator from the same seed).
    """

    def __init__(self, images: ImageDataset, batch_size: int, spec: BatchSpec, augment: AugmentConfig,
                 seed: int = 0, rank: int = 0, world_size: int = 1, pairs: MultiInstanceDataset | None = None,
                 channels: int = 1, targets: np.ndarray | Tensor | None = None, reports: StudyReports | None = None,
                 augment_on: str = "loader"):
        if augment_on not in AUGMENT_ON:
            raise MedsslError(f"data.augment_on={augment_on!r} must be one of {', '.join(AUGMENT_ON)}")
        if batch_size % world_size:
            raise MedsslError(f"batch size {batch_size} is not a multiple of the {world_size} processes")
        if spec.report and reports is None:
            raise MedsslError("this method pairs images with reports: give the StudyReports (reports)")
        grouped = int(reports.offsets[-1]) if reports is not None else len(images)
        if spec.report and grouped != len(images):
            raise MedsslError(f"the reports group {grouped} images, the data set has {len(images)}")
        self.n_items = len(reports) if spec.report else len(images)  # type: ignore[arg-type]
        what = "studies" if spec.report else "images"
        if batch_size > self.n_items:
            raise MedsslError(f"batch size {batch_size} is larger than the {self.n_items} {what} of the data set")
        if spec.partner and pairs is None:
            raise MedsslError("this method pairs two images of a patient: give the MultiInstanceDataset (pairs)")
        if spec.target and targets is None:
            raise MedsslError("this method trains on labels: give the targets")
        self.images, self.batch_size, self.spec, self.seed = images, batch_size, spec, seed
        self.rank, self.world_size, self.pairs, self.channels = rank, world_size, pairs, channels
        self.reports = reports if spec.report else None
        self.local = batch_size // world_size
        self.targets = None if targets is None else torch.as_tensor(np.asarray(targets))
        if self.targets is not None and len(self.targets) != len(images):
            raise MedsslError(f"{len(self.targets)} targets for {len(images)} images")
        self.augment = Augment(augment, seed)
        self.augment_on = augment_on
        self._perm: tuple[int, np.ndarray] | None = None  # (epoch, permutation): one epoch cached per worker

    def __len__(self) -> int:
        """Whole global batches per epoch."""
        return self.n_items // self.batch_size

    def permutation(self, epoch: int) -> np.ndarray:
        """The order of the items (images, or studies for report batches) in this epoch: the same on every rank
        and in every worker."""
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, np.random.default_rng([self.seed, epoch]).permutation(self.n_items))
        return self._perm[1]

    def indices(self, epoch: int, k: int) -> np.ndarray:
        """This rank's item indices (images, or studies for report batches) in global batch k of the epoch."""
        if not 0 <= k < len(self):
            raise IndexError(f"batch {k} outside 0..{len(self) - 1}")
        lo = k * self.batch_size + self.rank * self.local
        return self.permutation(epoch)[lo : lo + self.local]

    def __getitem__(self, key: tuple[int, int] | tuple[int, int, bool]) -> dict[str, Tensor]:
        """Batch k of the epoch for this rank: a pure function of (seed, epoch, k, rank); key (epoch, k) or
        (epoch, k, on_device): made for augmentation on the device (see the class), else augmented here."""
        epoch, k = key[0], key[1]
        on_device = bool(key[2]) if len(key) > 2 else self.augment_on == "device"
        idx = self.indices(epoch, k)
        out: dict[str, Tensor] = {}
        if self.reports is not None:  # items are studies: one of each study's images, and its report
            studies, idx = idx, self.reports.images(idx, epoch, self.seed)
            text_rng = np.random.default_rng(_derive_seed(self.seed, epoch, k, self.rank, 1))
            out.update(self.reports.batch(studies, text_rng), study=torch.from_numpy(studies.copy()))
        self.augment.generator.manual_seed(_derive_seed(self.seed, epoch, k, self.rank))
        read = self.images.pixels if on_device else self.images.batch  # uint8 to travel, or float to augment here
        x = read(idx)                                                  # (b, 1, S, S)
        out["index"] = torch.from_numpy(idx.copy())
        if self.spec.target:
            out["target"] = self.targets[torch.from_numpy(idx)]  # type: ignore[index]
        sources = [x] * len(self.spec.views)
        if self.spec.partner:
            partner, same = self.pairs.partners(idx, epoch)  # type: ignore[union-attr]
            sources[1] = read(partner)
            out["same_image"] = torch.from_numpy(same)
        if on_device:
            out["pixels"] = x
            if self.spec.partner:
                out["pixels_partner"] = sources[1]
        for key, src in zip(self.spec.views, sources):  # in order: each view draws from the generator in turn
            if on_device:
                out[f"aug.{key}"], out[f"aug_seed.{key}"] = self.augment.draw(len(src))
            else:
                out[key] = self._channels(self.augment(src))
        return out

    def finish(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """A batch made for the device (see the class) with its views augmented where its tensors are, the
        travelling pixels and random numbers removed; a batch augmented in the loader is returned as it is."""
        if "pixels" not in batch:
            return batch
        batch = dict(batch)
        x = batch.pop("pixels").float().div_(255)  # as ImageDataset.batch does, on the device
        partner = batch.pop("pixels_partner", None)
        sources = [x] * len(self.spec.views)
        if partner is not None:
            sources[1] = partner.float().div_(255)
        for key, src in zip(self.spec.views, sources):
            p = self.augment.derive(batch.pop(f"aug.{key}"), batch.pop(f"aug_seed.{key}"))
            batch[key] = self._channels(self.augment.apply_params(src, p))
        return batch

    def _channels(self, x: Tensor) -> Tensor:
        return x if self.channels == 1 else x.expand(-1, self.channels, -1, -1).contiguous()


class _EpochSampler(Sampler):
    """Yields the keys (epoch, k) for k = start.. of one epoch; iterated in the main process, so set() takes effect
    even with persistent workers."""

    def __init__(self, n_batches: int, on_device: bool = False):
        self.n_batches, self.epoch, self.start = n_batches, 0, 0
        self.on_device = on_device  # read as each key is made: a switch takes effect from the next key requested

    def set(self, epoch: int, start: int) -> None:
        """Where the next iteration starts."""
        self.epoch, self.start = epoch, start

    def __iter__(self) -> Iterator[tuple[int, int, bool]]:
        epoch, start = self.epoch, self.start
        return ((epoch, k, self.on_device) for k in range(start, self.n_batches))

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
        self.sampler = _EpochSampler(len(dataset), on_device=dataset.augment_on == "device")
        self.num_workers, self.prefetch_factor = num_workers, prefetch_factor
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

    @property
    def augment_on(self) -> str:
        """data.augment_on of the batches: 'loader', 'device' or 'auto' (the trainer chooses)."""
        return self.dataset.augment_on

    @property
    def in_flight(self) -> int:
        """Keys requested before the one being made: batches that still come in the old mode after a switch."""
        return self.prefetch_factor * self.num_workers if self.num_workers else 0

    def use_device(self, on: bool) -> None:
        """Make the batches requested from now on for augmentation on the device (True) or in the loader."""
        self.sampler.on_device = bool(on)

    def finish(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """The batch after its move to the training device: augmented there if it was made for it."""
        return self.dataset.finish(batch)

    def close(self) -> None:
        """Stop the worker processes."""
        it = getattr(self.loader, "_iterator", None)
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()
        self.loader._iterator = None

"""The data of `medssl evaluate`: records, splits, targets and label fractions, checked before any image is
decoded (`plan_data`), then the images decoded once (`decode_data`, which --skip-bad lets go on past an
unreadable file)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from medssl.data.preprocess import Preprocess
from medssl.data.records import Record
from medssl.data.splits import assign_splits, by_split
from medssl.data.tasks import Task, make_task, targets
from medssl.errors import MedsslError

from medssl.evaluate.options import EvalOptions


@dataclass
class EvalData:
    """Records split by patient, their decoded images and targets, and what the checks found."""

    splits: dict[str, list[Record]]
    images: dict[str, torch.Tensor]
    y: dict[str, np.ndarray]
    task: Task
    size: int
    source: str = ""
    subsets: dict[tuple[float, int], np.ndarray] = field(default_factory=dict)  # (fraction, seed) -> train rows
    fractions: list[dict[str, Any]] = field(default_factory=list)  # per fraction: asked, images, patients, actual
    notes: list[str] = field(default_factory=list)  # limits of the data, in medssl's words (results, report)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, why) of images --skip-bad left out


def load_records(opts: EvalOptions, source: str | Path) -> tuple[list[Record], list[tuple[str, str]]]:
    """The labelled records of a source (the source's own splits, else a seeded patient-level 70/10/20 split) and
    the files --skip-bad left out; no image is decoded here (a folder without a manifest is indexed)."""
    from medssl.data.sources import load_source

    records, bad = load_source(source, skip_bad=opts.skip_bad, progress=opts.progress)
    records = [r for r in records if r.labels]
    if not records:
        raise MedsslError(f"{source}: no labelled images: evaluation needs labels")
    if not all(r.split for r in records):
        records = assign_splits(records, (0.7, 0.1, 0.2), seed=0)
    return records, list(bad)


def plan_data(opts: EvalOptions, records: Sequence[Record], source: str, size: int,
              skipped: Sequence[tuple[str, str]] = ()) -> EvalData:
    """Splits, task, targets and label-fraction subsets, checked before any image is decoded (images empty)."""
    from medssl.evaluate.checks import (check_classes, check_fractions, check_split_sizes, fraction_stats,
                                        fraction_subsets)

    splits = by_split(records)
    check_split_sizes(splits, source)
    task = make_task(splits["train"], opts.task)
    y = {name: targets(splits[name], task) for name in ("train", "val", "test")}
    notes = check_classes(splits, y, task, source) if opts.classifies else []
    subsets = fraction_subsets(splits["train"], opts.fractions, opts.seeds)
    notes += check_fractions(splits["train"], y["train"], task, subsets, opts.trains)
    if opts.frozen_baseline:
        notes.append("--baseline scratch with frozen-feature protocols only: the baseline is the same probe on a "
                     "randomly initialised, untrained backbone ('random init' rows); for the supervised baseline "
                     "trained from scratch on the same labels, add --protocol finetune")
    return EvalData(splits, {}, y, task, size, source, subsets, fraction_stats(splits["train"], subsets), notes,
                    list(skipped))


def plan_source(opts: EvalOptions, source: str | Path) -> EvalData:
    """plan_data of a source's labelled records (no image decoded; the image size is set when it is known)."""
    records, skipped = load_records(opts, source)
    return plan_data(opts, records, str(source), 0, skipped)


def decode_split(records: Sequence[Record], preprocess: Preprocess, skip_bad: bool, progress: bool,
                 name: str, source: str | Path | None = None) -> tuple[list[Record], torch.Tensor, list[tuple[str, str]]]:
    """Decode each record once: (readable records, their images (N, 1, S, S) uint8, (path, why) of the others).
    Without skip_bad the first unreadable image ends the run, named. With the records' source, they come from
    (and go into) its decoded-image cache (medssl.data.cache); the split's rows are then copied into memory."""
    from medssl.data.cache import cached_images, enabled

    if source and records and enabled():
        found = cached_images(records, preprocess.size, source, skip_bad=skip_bad, progress=progress)
        return found.records, found.images[found.rows], found.bad  # indexing copies the rows out of the map
    good, images, bad = [], [], []
    for r in tqdm(records, desc=f"decoding {name} images", unit="img", disable=not progress, file=sys.stderr,
                  leave=False, dynamic_ncols=True):
        try:
            images.append(preprocess.decode(r))
        except MedsslError as e:
            if not skip_bad:
                raise MedsslError(f"{e} (--skip-bad goes on past unreadable images and lists them)") from None
            bad.append((r.path, str(e)))
            continue
        good.append(r)
    size = preprocess.size
    return good, torch.stack(images) if images else torch.empty(0, 1, size, size, dtype=torch.uint8), bad


def decode_data(opts: EvalOptions, plan: EvalData, preprocess: Preprocess) -> EvalData:
    """The planned data with every split's images; images --skip-bad left out are dropped and the plan redone."""
    kept, images, bad = {}, {}, []
    for name in ("train", "val", "test"):
        kept[name], images[name], more = decode_split(plan.splits[name], preprocess, opts.skip_bad, opts.progress,
                                                      name, plan.source)
        bad += more
    if bad:
        records = [r for name in ("train", "val", "test") for r in kept[name]]
        if not records:
            raise MedsslError(f"{plan.source}: none of its images could be read (first: {bad[0][1]})")
        plan = plan_data(opts, records, plan.source, plan.size, plan.skipped + bad)
    if plan.skipped:
        plan.notes.insert(0, f"--skip-bad left out {len(plan.skipped)} unreadable image(s), listed with the results "
                             "and in report.html")
    plan.images = images
    return plan


def builtin_data(opts: EvalOptions, preprocess: Preprocess, pretrained: dict[str, Any] | None) -> Path:
    """The built-in synthetic set with the pretraining run's own parameters (pretrained: its config's data
    section), so that val / test are the patients its pretraining never saw; returns its manifest."""
    from medssl.synthetic.builtin import BUILTIN_PATIENTS, BUILTIN_SEED, builtin_source

    d = pretrained or {}
    return builtin_source(opts.out / "data", size=preprocess.size, progress=opts.progress,
                          patients=int(d.get("synthetic_patients", BUILTIN_PATIENTS)),
                          seed=int(d.get("synthetic_seed", BUILTIN_SEED)))

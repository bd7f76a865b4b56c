"""`medssl pretrain`: self-supervised pretraining of an image encoder into one run folder.

run_dir/ holds config.yaml (resolved), log.csv, checkpoints/last.pt, metrics.json and, without a data source,
data/ (the built-in synthetic chest radiographs it trained on). Nothing is written elsewhere.
"""

from __future__ import annotations

import functools
import json
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medssl import __version__
from medssl.checkpoint import last_checkpoint
from medssl.config import PretrainConfig, load_config, read_yaml, save_config, to_dict
from medssl.data.augment import preset
from medssl.data.datasets import BatchDataset, EpochLoader, ImageDataset, MultiInstanceDataset
from medssl.data.preprocess import Preprocess
from medssl.data.records import Record
from medssl.errors import MedsslError
from medssl.methods import build_model, method
from medssl.synthetic.builtin import builtin_source
from medssl.runspec import RunSpec
from medssl.train import fit, launch_script, make_fabric

CONFIG = "config.yaml"
METRICS = "metrics.json"
SYNTHETIC_DIR = "data"


def data_source(cfg: PretrainConfig, run_dir: Path) -> Path:
    """The source to read: data.source, or the built-in synthetic manifest inside the run folder."""
    if cfg.data.source is not None:
        return Path(cfg.data.source)
    return Path(run_dir) / SYNTHETIC_DIR / "manifest.csv"


def write_data(cfg: PretrainConfig, run_dir: Path, progress: bool) -> None:
    """Write the built-in synthetic data into run_dir/data when the config names no source (once)."""
    if cfg.data.source is None:
        d = cfg.data
        builtin_source(Path(run_dir) / SYNTHETIC_DIR, size=d.size, patients=d.synthetic_patients,
                       seed=d.synthetic_seed, progress=progress)


def load_records(cfg: PretrainConfig, run_dir: Path, progress: bool = False) -> list[Record]:
    """The training records: the whole source, or its data.split part when the source has splits."""
    from medssl.data.sources import load_source

    source = data_source(cfg, run_dir)
    records, _ = load_source(source, progress=progress)
    split = cfg.data.split
    if split is not None and any(r.split for r in records):
        records = [r for r in records if r.split == split]
        if not records:
            raise MedsslError(f"{source}: no images in split {split!r}; set data.split to another split or null")
    return records


def preprocess_of(cfg: PretrainConfig) -> Preprocess:
    """The model-input function of a run (stored in its checkpoints)."""
    return Preprocess(cfg.data.size, cfg.data.channels)


def make_loader(cfg: PretrainConfig, records: list[Record], progress: bool, rank: int, world_size: int) -> EpochLoader:
    """This rank's batches, as the method declared them: decoded images, partners when it pairs a patient's
    images, whole augmented batches made in worker processes."""
    d, spec = cfg.data, method(cfg.method).batch
    images = ImageDataset(records, preprocess_of(cfg), progress=progress and rank == 0)
    pairs = MultiInstanceDataset(images, d.pair_by, cfg.train.seed) if spec.partner else None
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in d.augment_overrides.items()}
    dataset = BatchDataset(images, d.batch_size, spec, preset(d.augment, d.size, **overrides),
                           seed=cfg.train.seed, rank=rank, world_size=world_size, pairs=pairs, channels=d.channels)
    return EpochLoader(dataset, d.num_workers, d.prefetch_factor)


def run_spec(cfg: PretrainConfig, source: str) -> RunSpec:
    """What fit runs, and what every checkpoint records beside the weights (config, model spec, preprocess)."""
    return RunSpec(cfg.train, cfg.optim, record={"config": to_dict(cfg), "spec": cfg.model_spec().to_dict(),
                                                 "preprocess": preprocess_of(cfg).to_dict(), "trained_on": source})


def check_run_dir(cfg: PretrainConfig, run_dir: Path, resume: bool) -> None:
    """Refuse a non-empty folder that is not this run: never mix two runs' files, never overwrite a finished run."""
    if resume:
        if not run_dir.is_dir():
            raise MedsslError(f"{run_dir}: no such run folder to resume")
        return
    if not run_dir.exists():
        return
    if not run_dir.is_dir():
        raise MedsslError(f"{run_dir}: exists and is not a folder")
    if not any(run_dir.iterdir()):
        return
    # a run of this very config killed before its first checkpoint may start again in place
    same = (run_dir / CONFIG).is_file() and read_yaml(run_dir / CONFIG) == to_dict(cfg)
    if same and not last_checkpoint(run_dir).exists():
        return
    why = "holds a run with checkpoints" if same else "is not empty and holds something else than this run"
    raise MedsslError(f"{run_dir}: folder {why}; continue it with --resume {run_dir} or choose another --out")


def resume_config(run_dir: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()) -> PretrainConfig:
    """The config of the run to resume (RUN_DIR/config.yaml), with overrides such as train.steps=2000."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise MedsslError(f"{run_dir}: not a pretraining run folder (no {CONFIG})")
    return load_config(path, overrides)


def run_pretrain(config: PretrainConfig, run_dir: str | os.PathLike, *, resume: bool = False,
                 init: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Pretrain into run_dir; write config.yaml, log.csv, checkpoints and metrics.json; return the metrics.

    With strategy 'ddp' (or torchrun / SLURM) every process runs this function: they are launched first, rank 0
    alone prepares the folder and the data, and the others wait at a barrier. Spawned strategies (ddp_spawn) run
    only the training loop in their workers.
    """
    run_dir = Path(run_dir)
    fabric = make_fabric(config.train)
    multi = launch_script(fabric)  # with 'ddp', the other processes start here as copies of this command
    rank0 = fabric.global_rank == 0
    if rank0:
        check_run_dir(config, run_dir, resume)
        run_dir.mkdir(parents=True, exist_ok=True)
        if resume and not last_checkpoint(run_dir).is_file():
            print(f"{run_dir}: no checkpoint yet: starting from step 0", flush=True)
        save_config(config, run_dir / CONFIG)
        write_data(config, run_dir, progress)
    if multi:
        fabric.barrier()  # the data exist before any process reads them
    records = load_records(config, run_dir, progress=False)
    if rank0 and method(config.method).batch.partner and len({r.patient_id for r in records}) == len(records):
        print(f"note: every patient has a single image, so {config.method} pairs each image with itself "
              "(plain SimCLR)", flush=True)
    torch.manual_seed(config.train.seed)  # every process builds the same initial weights
    model = build_model(config.model_spec())
    t0 = time.perf_counter()
    loader = functools.partial(make_loader, config, records, progress)
    spec = run_spec(config, str(config.data.source or "built-in synthetic chest radiographs"))
    result = fit(model, loader, spec, run_dir, resume=resume, init=init, progress=progress, fabric=fabric)
    metrics = {"method": config.method, "backbone": config.model.backbone, "images": len(records),
               **result, "wall_seconds": time.perf_counter() - t0, "version": __version__}
    if rank0:
        (run_dir / METRICS).write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics

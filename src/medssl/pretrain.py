"""`medssl pretrain`: self-supervised pretraining of an image encoder into one run folder.

run_dir/ holds config.yaml (resolved), log.csv, checkpoints/last.pt, metrics.json and, without a data source,
data/ (the built-in synthetic chest radiographs it trained on). Nothing is written elsewhere.
config.yaml holds the settings of the run's latest part: a `--resume` that changed some (config.RESUME_SAFE) adds
to resumes.yaml the step from which they hold and their earlier values.

Cheap checks come first: the run folder, --init, what --resume changes, and the batch size against the images the
manifest lists; nothing is written before they pass, and images are decoded only after.

`medssl align` runs the same code for image-text methods (their BatchSpec has report=True: ConVIRT, CLIP, GLoRIA):
the training records keep only those with a usable report (the others are counted), the batch size is checked
against the studies, a ReportTokenizer is trained on the training split's reports (its vocabulary at most
model.options.vocab_size; the size it reached goes into the model spec) and saved, with the finding names, in
every checkpoint ("tokenizer", "findings"); a resumed run takes them back from its checkpoint. The run folder also
gets report.html (align_report.py): the loss curve and an image-text similarity matrix on a test batch.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from medssl import __version__
from medssl.checkpoint import last_checkpoint, load_checkpoint
from medssl.config import (PretrainConfig, changes, check_resume_changes, flat, from_dict, load_config,
                           parse_override, read_yaml, save_config, show, to_dict)
from medssl.data.augment import preset
from medssl.data.cache import enabled as cache_enabled
from medssl.data.datasets import (BatchDataset, EpochLoader, ImageDataset, MultiInstanceDataset, StudyReports,
                                  finding_names, study_groups)
from medssl.data.preprocess import Preprocess
from medssl.data.records import Record
from medssl.errors import MedsslError
from medssl.methods import build_model, method
from medssl.models.factory import ModelSpec
from medssl.synthetic.builtin import builtin_source
from medssl.runspec import RunSpec
from medssl.text.reports import filter_reports, training_text
from medssl.text.tokenizer import ReportTokenizer
from medssl.train import fit, launch_script, make_fabric, release_process_group

CONFIG = "config.yaml"
METRICS = "metrics.json"
RESUMES = "resumes.yaml"
REPORT = "report.html"
TOKENIZER = "tokenizer.json"  # an image-text run's tokenizer and finding names, for the other DDP processes
SYNTHETIC_DIR = "data"
# what a run writes into its folder: a folder holding only these and no last.pt is a run that failed or was killed
# before its first checkpoint, and may start again in place with any config
RUN_FILES = frozenset({CONFIG, f".{CONFIG}.tmp", "log.csv", ".log.csv.tmp", METRICS, RESUMES, SYNTHETIC_DIR,
                       "checkpoints", "tensorboard", REPORT, f"{REPORT}.tmp", "plots", TOKENIZER,
                       f".{TOKENIZER}.tmp"})
MAX_SYNTHETIC_IMAGES = 6  # per built-in patient: at most 3 studies of 2 views
BadFiles = list[tuple[str, str]]


def image_text(cfg: PretrainConfig) -> bool:
    """Whether the config's method learns from image-report pairs (its BatchSpec has report=True)."""
    return bool(method(cfg.method).batch.report)


def check_command(cfg: PretrainConfig, command: str) -> None:
    """`medssl pretrain` trains image-only methods and `medssl align` image-text ones; refuse the other kind."""
    if command == "align" and not image_text(cfg):
        raise MedsslError(f"medssl align trains image-text methods (convirt, clip, gloria); method {cfg.method!r} "
                          "learns from images alone: run it with medssl pretrain")
    if command == "pretrain" and image_text(cfg):
        raise MedsslError(f"method {cfg.method!r} learns from images and their reports: run it with medssl align "
                          "(same options as pretrain)")


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


def _read_records(cfg: PretrainConfig, run_dir: Path, progress: bool) -> tuple[list[Record], BadFiles]:
    from medssl.data.sources import load_source, with_text_column

    source = data_source(cfg, run_dir)
    records, bad = load_source(source, skip_bad=cfg.data.skip_bad, progress=progress)
    if cfg.data.text_column is not None:
        records = with_text_column(records, cfg.data.text_column, source)  # before the split: any source's text
    split = cfg.data.split
    if split is not None and any(r.split for r in records):
        records = [r for r in records if r.split == split]
        if not records:
            raise MedsslError(f"{source}: no images in split {split!r}; set data.split to another split or null")
    return records, bad


def text_origin(cfg: PretrainConfig, run_dir: Path) -> str | None:
    """A note when the texts are not radiology reports: an .npz whose text is its 'clinical_notes' field (the
    COVID chest X-ray collection's case notes), by the file's own field names; None otherwise."""
    from medssl.data import io

    source = data_source(cfg, run_dir)
    column = cfg.data.text_column
    if source.is_file() and io.image_format(str(source)) == "npz":
        fields = io.read_npz(source).fields
        used = column if column is not None else next((k for k in ("report", "clinical_notes", "findings")
                                                       if k in fields), None)
        if used == "clinical_notes":
            return (f"The texts are clinical case notes (the field 'clinical_notes' of {source.name}), not "
                    "radiology reports: they tell the patient's history and course, and only some sentences "
                    "describe the image.")
    return None


def load_records(cfg: PretrainConfig, run_dir: Path, progress: bool = False) -> list[Record]:
    """The training records: the whole source, or its data.split part when the source has splits."""
    return _read_records(cfg, Path(run_dir), progress)[0]


def _check_batch(cfg: PretrainConfig, records: list[Record], source: Path) -> None:
    report = image_text(cfg)  # image-report batches hold studies
    n, b = len(study_groups(records)) if report else len(records), cfg.data.batch_size
    if b > n:
        part = f" (split {cfg.data.split!r})" if cfg.data.split is not None and any(r.split for r in records) else ""
        what = "studies with a report" if report else "images"
        raise MedsslError(f"config: data.batch_size={b} is larger than the {n} training {what}{part} of {source}; "
                          f"set data.batch_size to at most {n} or add images")


def _with_reports(cfg: PretrainConfig, records: list[Record], source: Path, say: bool) -> list[Record]:
    """Image-text methods: the records with a usable report (filter_reports); the others are counted."""
    if not image_text(cfg):
        return records
    kept, skipped = filter_reports(records, source=str(source))
    if skipped and say:
        print(f"skipped {skipped} of {len(records)} training image(s) with a missing or empty report", flush=True)
    return kept


def training_records(cfg: PretrainConfig, run_dir: Path, progress: bool = False,
                     say: bool = True) -> tuple[list[Record], BadFiles]:
    """The training records and the unreadable files skipped (data.skip_bad); the batch size is checked against
    the records before any image is decoded, and again after skipping. Image-text methods keep only records with
    a usable report (say: print how many were skipped)."""
    from medssl.data.sources import check_images

    source = data_source(cfg, run_dir)
    records, bad = _read_records(cfg, run_dir, progress)
    records = _with_reports(cfg, records, source, say)
    _check_batch(cfg, records, source)
    if cfg.data.skip_bad:
        n = len(records)
        if not cache_enabled(cfg.data.cache):
            records, more = check_images(records, skip_bad=True, progress=progress)
        else:  # decoding them into the cache is the check: the loader then reads them from there
            from medssl.data.cache import cached_images

            found = cached_images(records, cfg.data.size, source, skip_bad=True, progress=progress,
                                  cache=cfg.data.cache)
            records, more = found.records, found.bad
        bad = bad + more
        if not records:
            raise MedsslError(f"{source}: none of its {n} training image(s) could be read (first: {more[0][1]})")
        _check_batch(cfg, records, source)
    return records, bad


def warm_cache(cfg: PretrainConfig, records: list[Record], source: Path, progress: bool, fabric: Any) -> None:
    """The decoded-image cache of the training records, built before any loader opens it: under DDP each node's
    local rank 0 builds (or checks) it and the node's other processes wait at a barrier, so that on shared storage
    no two processes decode the same images (the cache's own lock also serialises builders)."""
    from medssl.data.cache import cached_images

    if fabric.local_rank == 0:
        cached_images(records, cfg.data.size, source, skip_bad=cfg.data.skip_bad, progress=progress,
                      cache=cfg.data.cache)
    fabric.barrier()


def _check_synthetic(cfg: PretrainConfig) -> None:
    """Before writing the built-in data: a batch larger than every image those patients can have."""
    d = cfg.data
    most = MAX_SYNTHETIC_IMAGES * d.synthetic_patients
    if d.source is None and d.batch_size > most:
        raise MedsslError(f"config: data.batch_size={d.batch_size} is larger than the at most {most} images of "
                          f"data.synthetic_patients={d.synthetic_patients} built-in patients; lower data.batch_size "
                          "or raise data.synthetic_patients")


def preprocess_of(cfg: PretrainConfig) -> Preprocess:
    """The model-input function of a run (stored in its checkpoints)."""
    return Preprocess(cfg.data.size, cfg.data.channels)


@dataclass
class TextSide:
    """What an image-text run adds to an image-only one: its tokenizer and the finding names of "findings"."""

    tokenizer: ReportTokenizer
    findings: list[str]
    kept: bool = False  # taken from a checkpoint (resume, --init), not trained in this run


def _text_options(cfg: PretrainConfig) -> tuple[int, int]:
    options = cfg.model.options
    vocab, context = getattr(options, "vocab_size", None), getattr(options, "context", None)
    if not isinstance(vocab, int) or not isinstance(context, int):
        raise MedsslError(f"method {cfg.method!r} reads reports, but its options have no vocab_size and context "
                          "(ints): its Options must declare them")
    return vocab, context


def _saved_text(path: str | os.PathLike | None) -> TextSide | None:
    """The tokenizer and findings a checkpoint holds (a resumed run, or --init of an image-text run), else None."""
    if path is None:
        return None
    from medssl.checkpoint import resolve_checkpoint

    try:
        ckpt = load_checkpoint(resolve_checkpoint(path), mmap=True)
    except MedsslError:
        return None
    if not isinstance(ckpt.get("tokenizer"), str):
        return None
    return TextSide(ReportTokenizer.from_json(ckpt["tokenizer"]), [str(n) for n in ckpt.get("findings") or []],
                    kept=True)


def text_side(cfg: PretrainConfig, records: list[Record], run_dir: Path, resume: bool = False,
              init: str | None = None) -> TextSide | None:
    """Image-text methods: the run's tokenizer and finding names; None for image-only methods.

    A resumed run (and a run started --init from an image-text checkpoint) keeps the checkpoint's tokenizer, so
    token ids keep their meaning for the trained embeddings; otherwise a WordPiece tokenizer is trained on the
    cleaned reports of the training studies (one text per study), with at most model.options.vocab_size tokens
    and model.options.context as its context. Rank 0 alone calls this (save_text / load_text share the result):
    two trainings on the same texts may number the tokens differently.
    """
    if not image_text(cfg):
        return None
    vocab, context = _text_options(cfg)
    saved = _saved_text(last_checkpoint(run_dir)) if resume and last_checkpoint(run_dir).is_file() else None
    saved = saved or _saved_text(init)
    if saved is not None:
        return saved
    texts = [training_text(next((records[i].report for i in g if records[i].report.strip()), ""))
             for g in study_groups(records)]
    return TextSide(ReportTokenizer.train(texts, vocab_size=vocab, context=context), finding_names(records))


def save_text(text: TextSide, run_dir: Path) -> Path:
    """Write RUN/tokenizer.json (atomically): what the other processes of a DDP run read instead of training their
    own (WordPiece training is not reproducible from run to run: ties between merges fall either way)."""
    path = run_dir / TOKENIZER
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({"tokenizer": text.tokenizer.to_json(), "findings": text.findings}), encoding="utf-8")
    os.replace(tmp, path)
    return path


def load_text(run_dir: Path) -> TextSide:
    """The TextSide that save_text wrote; MedsslError naming the file."""
    path = run_dir / TOKENIZER
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return TextSide(ReportTokenizer.from_json(data["tokenizer"]), [str(n) for n in data["findings"]])
    except (OSError, ValueError, KeyError, TypeError):
        raise MedsslError(f"{path}: missing or not a saved tokenizer of this run") from None


def model_spec_of(cfg: PretrainConfig, text: TextSide | None) -> ModelSpec:
    """The run's model spec; an image-text run's options carry the vocabulary size its tokenizer reached."""
    spec = cfg.model_spec()
    if text is None:
        return spec
    return dataclasses.replace(spec, options=dataclasses.replace(spec.options, vocab_size=text.tokenizer.vocab_size))


def make_loader(cfg: PretrainConfig, records: list[Record], progress: bool, rank: int, world_size: int,
                text: TextSide | None = None, source: Path | None = None) -> EpochLoader:
    """This rank's batches, as the method declared them: decoded images, partners when it pairs a patient's
    images, studies with their reports (text) when it reads reports, whole augmented batches made in worker
    processes."""
    d, spec = cfg.data, method(cfg.method).batch
    images = ImageDataset(records, preprocess_of(cfg), progress=progress and rank == 0, source=source,
                          cache=d.cache)
    pairs = MultiInstanceDataset(images, d.pair_by, cfg.train.seed) if spec.partner else None
    reports = None
    if spec.report:
        if text is None:
            raise MedsslError(f"method {cfg.method!r} reads reports: make_loader needs the run's tokenizer (text)")
        reports = StudyReports(records, text.tokenizer, text.findings, d.report_sentences, text.tokenizer.context)
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in d.augment_overrides.items()}
    dataset = BatchDataset(images, d.batch_size, spec, preset(d.augment, d.size, **overrides),
                           seed=cfg.train.seed, rank=rank, world_size=world_size, pairs=pairs, channels=d.channels,
                           reports=reports, augment_on=d.augment_on)
    return EpochLoader(dataset, d.num_workers, d.prefetch_factor)


def run_spec(cfg: PretrainConfig, source: str, text: TextSide | None = None) -> RunSpec:
    """What fit runs, and what every checkpoint records beside the weights (config, model spec, preprocess; for
    image-text runs the tokenizer as JSON and the finding names)."""
    record = {"config": to_dict(cfg), "spec": model_spec_of(cfg, text).to_dict(),
              "preprocess": preprocess_of(cfg).to_dict(), "trained_on": source}
    if text is not None:
        record.update(tokenizer=text.tokenizer.to_json(), findings=list(text.findings))
    return RunSpec(cfg.train, cfg.optim, record=record)


def check_run_dir(run_dir: Path, resume: bool) -> None:
    """Refuse a non-empty folder that is not a run: never mix two runs' files, never overwrite a run with
    checkpoints. A folder of a run that ended before its first checkpoint (a bad value, an unreadable image, a
    kill) holds only run files; any config may start again there."""
    if resume:
        if not run_dir.is_dir():
            raise MedsslError(f"{run_dir}: no such run folder to resume")
        return
    if not run_dir.exists():
        return
    if not run_dir.is_dir():
        raise MedsslError(f"{run_dir}: exists and is not a folder")
    names = {p.name for p in run_dir.iterdir()}
    if last_checkpoint(run_dir).exists():
        raise MedsslError(f"{run_dir}: folder holds a run with checkpoints; continue it with --resume {run_dir} "
                          "or choose another --out")
    if names - RUN_FILES:
        raise MedsslError(f"{run_dir}: folder is not empty and holds something else than a pretraining run "
                          f"({sorted(names - RUN_FILES)[0]}); choose another --out")


def resume_baseline(run_dir: Path) -> tuple[dict[str, Any], int, bool]:
    """(config, step, has_checkpoint) of what ran so far: the config in the last checkpoint, else config.yaml."""
    path = last_checkpoint(run_dir)
    if path.is_file():
        ckpt = load_checkpoint(path, mmap=True)
        if isinstance(ckpt.get("config"), dict):
            try:  # as loading gives it today (defaults of newer keys filled in)
                return to_dict(from_dict(ckpt["config"])), int(ckpt["step"]), True
            except MedsslError:
                return ckpt["config"], int(ckpt["step"]), True
    try:
        return to_dict(load_config(run_dir / CONFIG)), 0, path.is_file()
    except MedsslError:
        return read_yaml(run_dir / CONFIG), 0, path.is_file()


def resume_config(run_dir: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()) -> PretrainConfig:
    """The config of the run to resume (RUN_DIR/config.yaml), with overrides such as train.steps=2000.

    A run with checkpoints takes only the overrides of config.RESUME_SAFE that keep its model and method."""
    run_dir = Path(run_dir)
    path = run_dir / CONFIG
    if not path.is_file():
        raise MedsslError(f"{run_dir}: not a pretraining run folder (no {CONFIG})")
    base, _, trained = resume_baseline(run_dir)
    try:
        cfg = load_config(path, overrides)
    except MedsslError:
        if trained:  # e.g. method=byol with SimCLR's options: name the key the user typed, not what broke
            given = flat(base)
            typed = {".".join(k): v for k, v in map(parse_override, overrides)}
            check_resume_changes({k: (given.get(k), v) for k, v in typed.items() if given.get(k) != v})
        raise
    if trained:
        check_resume_changes(changes(base, cfg))
    return cfg


def _record_resume(cfg: PretrainConfig, run_dir: Path, base: dict[str, Any], step: int, trained: bool) -> None:
    """Say what the resume changed and add it to resumes.yaml (config.yaml is then rewritten with it)."""
    changed = changes(base, cfg)
    if not trained:
        print(f"{run_dir}: no checkpoint yet: starting from step 0", flush=True)
    if not changed:
        return
    print("resume: applied " + ", ".join(f"{k}={show(new)} (was {show(old)})" for k, (old, new) in changed.items()),
          flush=True)
    path = run_dir / RESUMES
    history = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None
    entry = {"step": step, "applied": {k: {"was": old, "now": new} for k, (old, new) in changed.items()}}
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump([*(history or []), entry], sort_keys=False), encoding="utf-8")
    os.replace(tmp, path)


def prepare_run(cfg: PretrainConfig, run_dir: Path, resume: bool, progress: bool) -> tuple[list[Record], BadFiles]:
    """Rank 0: the cheap checks, then the folder, config.yaml and the built-in data; the training records."""
    check_run_dir(run_dir, resume)
    resumed = resume_baseline(run_dir) if resume else None
    if resumed is not None and resumed[2]:  # what ran so far had checkpoints: keep their model
        check_resume_changes(changes(resumed[0], cfg))
    found = None
    if cfg.data.source is not None:
        found = training_records(cfg, run_dir, progress)  # a manifest is read, not its images decoded
    else:
        _check_synthetic(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_data(cfg, run_dir, progress)
    if found is None:
        found = training_records(cfg, run_dir, progress)
    if resumed is not None:
        _record_resume(cfg, run_dir, *resumed)
    save_config(cfg, run_dir / CONFIG)
    bad = found[1]
    if bad:
        print(f"skipped {len(bad)} unreadable image(s):", file=sys.stderr)
        for _, msg in bad:
            print(f"  {msg}", file=sys.stderr)
    return found


def run_pretrain(config: PretrainConfig, run_dir: str | os.PathLike, *, resume: bool = False,
                 init: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Pretrain into run_dir; write config.yaml, log.csv, checkpoints and metrics.json; return the metrics.

    With strategy 'ddp' (or torchrun / SLURM) every process runs this function: they are launched first, rank 0
    alone prepares the folder and the data, and the others wait at a barrier. Spawned strategies (ddp_spawn) run
    only the training loop in their workers.
    """
    run_dir = Path(run_dir)
    if init is not None:
        load_checkpoint(init, mmap=True)  # a missing or broken --init is named before any image is decoded
    fabric = make_fabric(config.train)
    multi = launch_script(fabric)  # with 'ddp', the other processes start here as copies of this command
    rank0 = fabric.global_rank == 0
    text = None
    if rank0:
        records, bad = prepare_run(config, run_dir, resume, progress)
        text = text_side(config, records, run_dir, resume, init)
        if text is not None:
            save_text(text, run_dir)
            origin = ("kept from the checkpoint" if text.kept else
                      f"trained on the reports of {len(study_groups(records))} training studies")
            print(f"tokenizer: {text.tokenizer.vocab_size} tokens, context {text.tokenizer.context}, {origin}",
                  flush=True)
    if multi:
        fabric.barrier()  # the data (and an image-text run's tokenizer) exist before any process reads them
        if not rank0:
            records, bad = training_records(config, run_dir, say=False)
            text = load_text(run_dir) if image_text(config) else None
    if rank0 and method(config.method).batch.partner and len({r.patient_id for r in records}) == len(records):
        print(f"note: every patient has a single image, so {config.method} pairs each image with itself "
              "(plain SimCLR)", flush=True)
    torch.manual_seed(config.train.seed)  # every process builds the same initial weights
    model = build_model(model_spec_of(config, text))
    t0 = time.perf_counter()
    source = data_source(config, run_dir)
    if multi and cache_enabled(config.data.cache):  # alone, the loader's own open below builds it
        warm_cache(config, records, source, progress and rank0, fabric)
    loader = functools.partial(make_loader, config, records, progress, text=text, source=source)
    spec = run_spec(config, str(config.data.source or "built-in synthetic chest radiographs"), text)
    result = fit(model, loader, spec, run_dir, resume=resume, init=init, progress=progress, fabric=fabric)
    metrics = {"method": config.method, "backbone": config.model.backbone, "images": len(records),
               "skipped": [{"path": p, "error": e} for p, e in bad], **result,
               "wall_seconds": time.perf_counter() - t0, "version": __version__}
    if text is not None:
        metrics.update(studies=len(study_groups(records)), vocab_size=text.tokenizer.vocab_size)
        note = text_origin(config, run_dir)
        if note is not None:
            metrics["text_note"] = note
    if rank0 and text is not None:
        from medssl.align_report import write_align_report

        metrics["test_batch"] = write_align_report(run_dir, config, model_spec_of(config, text), text,
                                                   data_source(config, run_dir), metrics)
    if rank0:
        (run_dir / METRICS).write_text(json.dumps(metrics, indent=2) + "\n")
    if multi:
        release_process_group()  # this process ends with the command: its group goes while the interpreter is whole
    return metrics

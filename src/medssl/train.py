"""The one training loop, `fit`: Lightning Fabric (devices, DDP, precision), optimiser and schedule, logging,
collapse monitor, NaN guard, and checkpoints that resume exactly.

fit knows nothing of the model beyond the typed contract of `medssl.models.trainable.Trainable`: forward(batch)
returns a dict with "loss" (other 0-d tensors are logged), lr_scales() gives per-prefix learning-rate multipliers,
on_step(step, total_steps) runs after every optimiser step (momentum encoders). What to run is one typed `RunSpec`
(the loop's settings, the optimiser, an optional Validation, what to keep) that pretraining, fine-tuning and
segmentation all fill. Batches come from `make_loader(rank, world_size)`, which returns a BatchSource: len()
batches per epoch and epoch(e, start) iterating batches start.. of epoch e, each a pure function of (epoch,
batch) - that is what lets a resumed run continue at the exact next batch (see medssl.data.datasets).
An optional `Validation` scores the model every few steps, keeps the best weights and stops early (fine-tuning).
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import math
import os
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from lightning_fabric import Fabric
from torch import Tensor, nn
from tqdm import tqdm

from medssl.checkpoint import (BEST, atomic_save, drop_checkpoints, last_checkpoint, load_checkpoint, load_weights,
                               rng_state, save_checkpoint, set_rng_state)
from medssl.errors import MedsslError
from medssl.models.sync_batchnorm import convert_sync_batchnorm
from medssl.models.trainable import Trainable
from medssl.optim import lr_factor, make_optimizer
from medssl.runlog import RunLog
from medssl.runspec import RunSpec, TrainConfig, Validation

class BatchSource(Protocol):
    """What fit iterates: len() batches per epoch; epoch(e, start) yields batches start.. of epoch e."""

    def __len__(self) -> int: ...

    def epoch(self, epoch: int, start: int = 0) -> Iterable[dict[str, Tensor]]: ...


MakeLoader = Callable[[int, int], BatchSource]  # (rank, world_size) -> this rank's batches


def make_fabric(train: TrainConfig) -> Fabric:
    """A Fabric for the config's accelerator, devices, nodes, strategy and precision (not launched yet)."""
    try:
        return Fabric(accelerator=train.accelerator, devices=train.devices, num_nodes=train.num_nodes,
                      strategy=train.strategy, precision=train.precision)  # type: ignore[arg-type]
    except (ValueError, RuntimeError, TypeError) as e:
        raise MedsslError(f"config: train.strategy/devices/precision: {e}") from None


def launched(fabric: Fabric) -> bool:
    """True once the processes exist: launched here, or started by the `fabric run` CLI."""
    return bool(getattr(fabric, "_launched", False))  # Fabric has no public flag for it


def launch_script(fabric: Fabric) -> bool:
    """Start the other processes now when they are copies of this command (strategy 'ddp', torchrun, SLURM);
    return whether processes exist (False for spawned strategies, which fit launches with the loop itself)."""
    from lightning_fabric.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

    if isinstance(fabric.strategy.launcher, _SubprocessScriptLauncher) and not launched(fabric):
        fabric.launch()  # ddp_spawn's launcher needs the function to run: fit gives it the loop
    return launched(fabric)


def release_process_group() -> None:
    """Destroy the default process group while the interpreter is whole, after collecting what may still hold it.

    Seen on a loaded 2-core machine: ranks that had finished their work hung in the interpreter's final garbage
    collection (faulthandler: "Garbage-collecting", no Python frame) or aborted there ("terminate called without an
    active exception", SIGABRT). Whatever torch / gloo object was still being torn down then, collecting and
    destroying the group here, before the interpreter finalises, leaves nothing of it to that last collection.
    """
    gc.collect()
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    gc.collect()


def process_threads(train: TrainConfig, local_processes: int) -> int:
    """Intra-op threads of one process: train.threads, else the machine's cores shared among this machine's
    processes (two DDP processes on two cores get one thread each, not two: oversubscribed threads spin)."""
    if train.threads:
        return train.threads
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // max(1, local_processes))


class _EarlyStop:
    """Validation state of a run: the curve, the best score, its step and weights (a CPU copy), scores since."""

    def __init__(self, validation: Validation):
        self.v = validation
        self.curve: list[tuple[int, float]] = []
        self.best, self.best_step, self.since, self.stopped = -math.inf, 0, 0, False
        self.weights: dict[str, Tensor] | None = None
        self.saved = True  # best.pt holds self.weights

    def due(self, step: int, total: int) -> bool:
        """Whether to score after this step."""
        return step % self.v.every == 0 or step == total

    def update(self, step: int, model: nn.Module) -> None:
        """Score the model; keep its weights when the score is the best so far (NaN never is)."""
        was_training = model.training
        model.eval()
        with torch.random.fork_rng(devices=[]), torch.no_grad():  # scoring leaves the run's random stream as it was
            score = float(self.v.score(model))
        model.train(was_training)
        self.curve.append((step, score))
        if score > self.best:
            self.best, self.best_step, self.since, self.saved = score, step, 0, False
            self.weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        else:
            self.since += 1
        self.stopped = self.v.patience is not None and self.since >= self.v.patience

    def state(self) -> dict[str, Any]:
        """Everything but the weights, as plain data for last.pt."""
        return {"curve": self.curve, "best": self.best, "best_step": self.best_step, "since": self.since,
                "stopped": self.stopped}

    def metrics(self) -> dict[str, Any]:
        """What fit reports."""
        return {"best_step": self.best_step, "best_val": self.best, "val_curve": list(self.curve),
                "stopped_early": self.stopped}


def fit(model: Trainable, make_loader: MakeLoader, run: RunSpec, run_dir: str | Path, *, resume: bool = False,
        init: str | Path | None = None, progress: bool = True, fabric: Fabric | None = None) -> dict[str, Any]:
    """Train `model` on batches from make_loader as `run` says; return metrics (of rank 0).

    resume: continue from run_dir/checkpoints/last.pt (model, optimiser, scheduler, position, RNG states).
    init: a checkpoint (or run folder) whose matching weights are loaded first (Azizi's two-stage pretraining).
    fabric: an already launched Fabric (pretrain launches script-based DDP before preparing data); else one is
    made from run.train and launched here (spawned DDP workers run the loop; their functions must pickle).
    With run.validation, metrics add best_step, best_val, val_curve, stopped_early.
    """
    if not isinstance(model, Trainable):
        raise TypeError(f"fit trains a medssl.models.Trainable, not {type(model).__name__}")
    fabric = fabric or make_fabric(run.train)
    args = (model, make_loader, run, Path(run_dir), resume, init, progress)
    if launched(fabric):
        return _worker(fabric, *args)
    if fabric.world_size > 1:
        return fabric.launch(_spawned_worker, *args)
    return fabric.launch(_worker, *args)


def _spawned_worker(fabric: Fabric, *args: Any) -> dict[str, Any]:
    """The loop in a process fit started: it ends with this function, so its process group goes first."""
    try:
        return _worker(fabric, *args)
    finally:
        release_process_group()


def _worker(fabric: Fabric, model: Trainable, make_loader: MakeLoader, run: RunSpec, run_dir: Path, resume: bool,
            init: str | Path | None, progress: bool) -> dict[str, Any]:
    """The loop in one process (rank)."""
    if run.train.threads or (fabric.world_size > 1 and fabric.device.type == "cpu"):
        torch.set_num_threads(process_threads(run.train, fabric.world_size // max(1, run.train.num_nodes)))
    loader = make_loader(fabric.global_rank, fabric.world_size)
    try:
        result = _Run(fabric, model, loader, run, run_dir, progress).run(resume, init)
    finally:
        close = getattr(loader, "close", None)  # a BatchSource may hold worker processes
        if close is not None:
            close()
    if not run.keep_checkpoints and fabric.global_rank == 0:
        drop_checkpoints(run_dir)
    return result


class _Run:
    """State of one training run in one process: model, optimiser, schedule, position, log."""

    def __init__(self, fabric: Fabric, model: Trainable, loader: BatchSource, spec: RunSpec, run_dir: Path,
                 progress: bool):
        self.fabric, self.loader, self.spec, self.run_dir = fabric, loader, spec, run_dir
        self.early = _EarlyStop(spec.validation) if spec.validation is not None else None
        self.train, self.rank0 = spec.train, fabric.global_rank == 0
        self.steps_per_epoch = len(loader)
        if self.steps_per_epoch < 1:
            raise MedsslError("the data set holds less than one batch: lower data.batch_size or add images")
        self.total = self.train.steps or self.train.epochs * self.steps_per_epoch
        o = spec.optim
        warmup = o.warmup_steps or round(o.warmup_epochs * self.steps_per_epoch)
        self.raw = model
        self.optimizer = make_optimizer(model, o)
        # a partial, not an object: LambdaLR would save an object's fields and, on resume, bring back the old
        # length; a partial keeps this config's schedule, so a run resumed with more steps stretches its cosine
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, functools.partial(
            lr_factor, warmup=warmup, total=self.total, schedule=o.schedule, min_ratio=o.min_lr_ratio))
        self.step, self.epoch, self.batch = 0, 0, 0
        self.progress = progress and self.rank0
        self.log = RunLog(run_dir, enabled=self.rank0)
        self.collapse_warned = False
        self.last_loss = math.nan
        self.chooser = _AugmentChoice(loader) if getattr(loader, "augment_on", None) == "auto" else None

    def _restore(self, resume: bool, init: str | Path | None) -> None:
        """Weights from init, or everything from the run's last checkpoint; else a fresh, seeded start."""
        if init is not None and not resume:
            report = load_weights(self.raw, load_checkpoint(init)["model"])
            self.fabric.print(f"init from {init}: loaded {len(report['loaded'])} tensors; new (not in the checkpoint): "
                              f"{_short(report['missing'])}; ignored: {_short(report['unexpected'] + report['mismatched'])}")
        if self.train.sync_bn and self.fabric.world_size > 1:
            # in place, before DDP wraps the model; parameters keep their identity (the optimiser holds them) and
            # momentum copies (MoCo's key encoder, BYOL's target) are converted alike; state-dict keys unchanged
            convert_sync_batchnorm(self.raw, self.fabric.device)
        if self.train.channels_last:
            self.raw.to(memory_format=torch.channels_last)
        self.compile_pending = self.train.compile
        if self.train.compile:
            self.raw.compile()  # in place: the module's call is compiled, its state-dict keys stay as they are
        self.model, self.optimizer = self.fabric.setup(self.raw, self.optimizer)
        path = last_checkpoint(self.run_dir)
        if resume and path.is_file():
            self._resume(path)
        else:
            if self.early is not None and self.rank0:  # a fresh run: an old run's best weights are not its own
                path.with_name(BEST).unlink(missing_ok=True)
            seed = self.train.seed + self.fabric.global_rank  # ranks draw different masks / dropout
            random.seed(seed)
            np.random.seed(seed % 2**32)
            torch.manual_seed(seed)
        self.log.start(self.step)

    def _resume(self, path: Path) -> None:
        """Model, optimiser, schedule, position and this rank's RNG state from the run's last checkpoint."""
        ckpt = load_checkpoint(path)
        try:
            self.raw.load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise MedsslError(f"{path}: does not fit this model and optimiser (was the config changed?): "
                              f"{str(e).splitlines()[0][:300]}") from None
        self.scheduler.load_state_dict(ckpt["scheduler"])
        for group in self.optimizer.param_groups:  # this config's lr and schedule (a resume may extend the run)
            group["initial_lr"] = self.spec.optim.lr * group.get("lr_scale", 1.0)
            group["lr"] = group["initial_lr"] * self.scheduler.lr_lambdas[0](self.scheduler.last_epoch)
        self.scheduler.base_lrs = [g["initial_lr"] for g in self.optimizer.param_groups]
        self.step, self.epoch, self.batch = ckpt["step"], ckpt["epoch"], ckpt["batch"]
        if self.batch >= self.steps_per_epoch:  # fewer batches per epoch than when it was written
            self.epoch, self.batch = self.epoch + 1, 0
        set_rng_state(ckpt["rng"][self.fabric.global_rank % len(ckpt["rng"])])
        if self.chooser is not None and ckpt.get("augment_on") in ("loader", "device"):
            self.chooser.set(ckpt["augment_on"])
        if self.early is not None and "validation" in ckpt:
            vars(self.early).update(ckpt["validation"])
            best = path.with_name(BEST)
            self.early.weights = load_checkpoint(best)["model"] if best.is_file() else None
        self.fabric.print(f"resumed {self.run_dir} at step {self.step} (epoch {self.epoch}, batch {self.batch})")

    def run(self, resume: bool, init: str | Path | None) -> dict[str, Any]:
        """Train to the configured number of steps; return metrics."""
        self._restore(resume, init)
        first, t0 = self.step, time.perf_counter()
        self.images, self.window = 0, (time.perf_counter(), 0)
        bar = tqdm(total=self.total, initial=self.step, desc=self.spec.label, unit="step", disable=not self.progress,
                   leave=not self.spec.transient, file=sys.stderr, dynamic_ncols=True)
        self.model.train()
        if self.early is not None and self.early.v.at_start and self.step == 0 and not self.early.curve:
            self._validate()
        try:
            while self.step < self.total and not self._stopped():
                before = self.step
                for batch in self.loader.epoch(self.epoch, self.batch):
                    on_device = "pixels" in batch
                    self._train_step(batch, bar)
                    if self.chooser is not None and self.chooser.choice is None:
                        self._choose_augment(on_device)
                    if self.step >= self.total or self._stopped():
                        break
                if self.step == before:
                    raise MedsslError(f"epoch {self.epoch} gave no batch from batch {self.batch} on")
        finally:
            bar.close()
            self.log.close()
        seconds = time.perf_counter() - t0
        return {**self._restore_best(), "steps": self.step, "steps_this_run": self.step - first,
                "epochs": self.step / self.steps_per_epoch, "final_loss": self.last_loss,
                "images_per_s": self.images / seconds if seconds > 0 else 0.0, "seconds": seconds,
                "world_size": self.fabric.world_size, "checkpoint": str(last_checkpoint(self.run_dir))}

    def _train_step(self, batch: dict[str, Tensor], bar: tqdm) -> None:
        """Forward, NaN guard, backward, clip, step, schedule, on_step; then log and checkpoint as due."""
        batch = self._prepare(batch)
        lr = self.optimizer.param_groups[0]["lr"]
        if self.compile_pending:  # the first compiled step compiles; where torch.compile cannot, train eager
            try:
                out, loss = self._forward_backward(batch)
            except MedsslError:
                raise
            except Exception as e:  # noqa: BLE001 (any compiler failure; a real error recurs eagerly below)
                first = (str(e).strip().splitlines() or [""])[0][:160]
                self.fabric.print(f"train.compile: torch.compile failed ({type(e).__name__}: {first}); "
                                  "training eager")
                self.raw._compiled_call_impl = None  # what nn.Module.compile() set: back to the eager call
                torch._dynamo.reset()
                self.optimizer.zero_grad(set_to_none=True)
                out, loss = self._forward_backward(batch)
            self.compile_pending = False
        else:
            out, loss = self._forward_backward(batch)
        if self.spec.optim.grad_clip:
            self.fabric.clip_gradients(self.model, self.optimizer, max_norm=self.spec.optim.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.stepped = time.perf_counter()
        self.step += 1
        self.batch += 1
        if self.batch == self.steps_per_epoch:
            self.epoch, self.batch = self.epoch + 1, 0
        self.raw.on_step(self.step, self.total)
        n = _batch_rows(batch) * self.fabric.world_size
        self.images += n
        self.window = (self.window[0], self.window[1] + n)
        self.last_loss = loss
        bar.update(1)
        if self.early is not None and self.early.due(self.step, self.total):
            self._validate()
        if self.step % self.train.log_every == 0 or self.step == self.total or self._stopped():
            self._log(out, loss, lr, bar)
        if self.step % self.train.checkpoint_every == 0 or self.step == self.total or self._stopped():
            self._checkpoint()

    def _forward_backward(self, batch: dict[str, Tensor]) -> tuple[dict[str, Tensor], float]:
        """The method's outputs and the global loss (NaN guard) after its backward."""
        out = self.model(batch)
        loss = self._global_loss(out["loss"])
        self.fabric.backward(out["loss"])
        return out, loss

    def _choose_augment(self, on_device: bool) -> None:
        """data.augment_on=auto: time this step; once both paths are timed, rank 0 picks and every rank follows."""
        chooser = self.chooser
        assert chooser is not None
        if not chooser.observe(on_device, self.stepped, self.total - self.step):
            return
        choice = chooser.decide()
        if self.fabric.world_size > 1:
            choice = self.fabric.broadcast(choice, src=0)
        chooser.set(choice)
        if self.rank0:
            tqdm.write(f"data.augment_on=auto: {chooser.summary()}", file=sys.stderr)

    def _stopped(self) -> bool:
        return self.early is not None and self.early.stopped

    def _validate(self) -> None:
        """Rank 0 scores the model; every rank learns whether to stop, so all stop at the same step."""
        assert self.early is not None
        if self.rank0:
            self.early.update(self.step, self.raw)
        if self.fabric.world_size > 1:
            self.early.stopped = bool(self.fabric.broadcast(self.early.stopped, src=0))

    def _restore_best(self) -> dict[str, Any]:
        """Load the best-scoring weights into the model (rank 0's, on every rank); the validation metrics."""
        if self.early is None:
            return {}
        weights = self.early.weights
        if self.fabric.world_size > 1:
            weights = self.fabric.broadcast(weights, src=0)
        if weights is not None:
            self.raw.load_state_dict(weights)
        return self.early.metrics()

    def _prepare(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        batch = self.fabric.to_device(batch)
        finish = getattr(self.loader, "finish", None)
        if finish is not None:  # a batch made for augmentation on the device (data.augment_on) is augmented here
            batch = finish(batch)
        if self.train.channels_last:
            batch = {k: v.contiguous(memory_format=torch.channels_last) if v.ndim == 4 else v
                     for k, v in batch.items()}
        return batch

    def _global_loss(self, loss: Tensor) -> float:
        """The loss averaged over ranks (what one process on the joined batch would report); stop on NaN / inf.

        Every rank sees the same reduced value, so every rank stops at the same step.
        """
        value = loss.detach().float()
        if self.fabric.world_size > 1:
            value = self.fabric.all_reduce(value, reduce_op="mean")
        value = float(value)
        if not math.isfinite(value):
            self._stop(f"loss is {value}", self.step + 1)
        return value

    def _stop(self, what: str, step: int | None = None) -> None:
        """Raise the error that ends a diverged run, pointing at the last good checkpoint (left as it was)."""
        path = last_checkpoint(self.run_dir)
        keep = f"the last good checkpoint is {path}" if path.is_file() else "no checkpoint was written before it"
        raise MedsslError(f"step {step or self.step}: {what}; {keep}; lower the learning rate (optim.lr), set "
                          "optim.grad_clip or use train.precision=32-true, then --resume")

    def _log(self, out: dict[str, Any], loss: float, lr: float, bar: tqdm) -> None:
        t, n = self.window
        now = time.perf_counter()
        ips = n / (now - t) if now > t else 0.0
        self.window = (now, 0)
        scalars = {k: float(v) for k, v in out.items()
                   if k != "loss" and isinstance(v, Tensor) and v.numel() == 1}
        if self.early is not None:  # the latest score on every row: the log's columns are fixed by its first row
            scalars["val"] = self.early.curve[-1][1] if self.early.curve else math.nan
        row = {"step": self.step, "epoch": self.epoch, "loss": loss, "lr": lr, "images_per_s": ips, **scalars}
        self.log.write(row)
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", img_s=f"{ips:.0f}", refresh=False)
        z_std = scalars.get("z_std")
        if z_std is not None and z_std < self.train.collapse_threshold and not self.collapse_warned and self.rank0:
            self.collapse_warned = True
            tqdm.write(f"warning: step {self.step}: embedding std z_std={z_std:.2e} is below "
                       f"{self.train.collapse_threshold:g}: the representation may be collapsing", file=sys.stderr)

    def _checkpoint(self) -> None:
        """Every rank hands its RNG state to rank 0, which writes last.pt atomically - never with broken weights.

        A run that keeps no checkpoints (an evaluation's fine-tuning: its numbers are the result) writes none: they
        would be deleted at the end, and each fsynced write costs a quarter of a second."""
        if not all(bool(torch.isfinite(p).all()) for p in self.raw.parameters()):
            self._stop("the weights became nan or inf (a finite loss with infinite gradients)")
        if not self.spec.keep_checkpoints:
            return
        states = [rng_state()]
        if self.fabric.world_size > 1 and dist.is_initialized():
            states = [None] * self.fabric.world_size  # type: ignore[list-item]
            dist.all_gather_object(states, rng_state())
        if not self.rank0:
            return
        extra: dict[str, Any] = {"world_size": self.fabric.world_size}
        if self.chooser is not None and self.chooser.choice is not None:
            extra["augment_on"] = self.chooser.choice  # a resumed auto run keeps the path it chose
        early = self.early
        if early is not None:
            extra["validation"] = early.state()
            if early.weights is not None and not early.saved:  # best.pt first: last.pt may then point at it
                atomic_save({"model": early.weights, "step": early.best_step, "score": early.best,
                             **self.spec.record}, last_checkpoint(self.run_dir).with_name(BEST))
                early.saved = True
        save_checkpoint(last_checkpoint(self.run_dir), model=self.raw, optimizer=self.optimizer,
                        scheduler=self.scheduler, step=self.step, epoch=self.epoch, batch=self.batch,
                        rng=states, extra={**self.spec.record, **extra})


class _AugmentChoice:
    """data.augment_on=auto: train a few steps with the views augmented in the loader, then a few with them
    augmented on the training device, and keep the path whose steps took less wall time (waiting for data
    included: the loader path overlaps augmentation with training in its workers, the device path adds it to the
    step). Batches say which path made them, so the ones still in flight after a switch are not miscounted. A run
    too short to time both stays on the loader path."""

    WARM, TIMED = 2, 3  # untimed first steps (worker start-up, first-step allocations); timed steps per path

    def __init__(self, loader: Any):
        self.loader = loader
        self.choice: str | None = None
        self.times: dict[bool, list[float]] = {False: [], True: []}
        self.last = time.perf_counter()
        self.seen = 0
        self.switched = self.skipped = False
        self.loader.use_device(False)

    def observe(self, on_device: bool, stepped: float, steps_left: int) -> bool:
        """Record the step just taken: its batch made for the device or not, the time its optimiser step ended
        (validation, logging and checkpoints after it are not timed). True when it is time to decide."""
        seconds, self.last = stepped - self.last, time.perf_counter()
        self.seen += 1
        if self.seen > self.WARM:
            if on_device and not self.skipped:
                self.skipped = True  # the first device batch waited on a worker that had just switched
            else:
                self.times[on_device].append(seconds)
        if not self.switched and len(self.times[False]) >= self.TIMED:
            self.loader.use_device(True)
            self.switched = True
        needed = self.TIMED + 1 + self.loader.in_flight  # steps still to come before the device path is timed
        if not self.switched and steps_left < needed + self.TIMED:
            self.set("loader")
            return False
        return len(self.times[True]) >= self.TIMED

    def decide(self) -> str:
        loader, device = (statistics.median(self.times[k]) for k in (False, True))
        return "device" if device < loader else "loader"

    def set(self, choice: str) -> None:
        self.choice = choice
        self.loader.use_device(choice == "device")

    def summary(self) -> str:
        parts = [f"{name} {statistics.median(self.times[k]):.3f} s/step" for name, k in (("loader", False),
                                                                                          ("device", True))
                 if self.times[k]]
        where = "on the training device" if self.choice == "device" else "in the loader workers"
        return f"{', '.join(parts)}: augmenting {where}"


def _batch_rows(batch: dict[str, Any]) -> int:
    """Images in a batch: the leading size of its first tensor."""
    for v in batch.values():
        if isinstance(v, Tensor) and v.ndim > 0:
            return int(v.shape[0])
    return 0


def _short(keys: list[str], n: int = 6) -> str:
    """First module names of a key list, for a one-line report."""
    heads = sorted({k.rsplit(".", 2)[0] for k in keys})
    return "none" if not keys else ", ".join(heads[:n]) + (f" (+{len(heads) - n} more)" if len(heads) > n else "")


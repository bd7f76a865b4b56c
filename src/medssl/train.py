"""The one training loop, `fit`: Lightning Fabric (devices, DDP, precision), optimiser and schedule, logging,
collapse monitor, NaN guard, and checkpoints that resume exactly.

fit knows nothing of the model: a method is an nn.Module whose forward(batch) returns a dict with "loss" (other
0-d tensors are logged), with an optional on_step(step, total_steps) called after every optimiser step (momentum
encoders). Batches come from `make_loader(rank, world_size)`, which returns a BatchSource: len() batches per
epoch and epoch(e, start) iterating batches start.. of epoch e, each a pure function of (epoch, batch) - that is
what lets a resumed run continue at the exact next batch (see medssl.data.datasets).
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from lightning_fabric import Fabric
from torch import Tensor, nn
from tqdm import tqdm

from medssl.checkpoint import last_checkpoint, load_checkpoint, load_weights, rng_state, save_checkpoint, set_rng_state
from medssl.config import OptimConfig, TrainConfig, to_dict
from medssl.errors import MedsslError


class BatchSource(Protocol):
    """What fit iterates: len() batches per epoch; epoch(e, start) yields batches start.. of epoch e."""

    def __len__(self) -> int: ...

    def epoch(self, epoch: int, start: int = 0) -> Iterable[dict[str, Tensor]]: ...


MakeLoader = Callable[[int, int], BatchSource]  # (rank, world_size) -> this rank's batches
LOG = "log.csv"
FIRST_COLUMNS = ["step", "epoch", "loss", "lr", "images_per_s"]


class RunLog:
    """log.csv (one row per logged step, flushed at once) and TensorBoard when it is installed; rank 0 only."""

    def __init__(self, run_dir: Path, enabled: bool):
        self.path, self.enabled = Path(run_dir) / LOG, enabled
        self.file: Any = None
        self.writer: csv.DictWriter | None = None
        self.tb: Any = None

    def start(self, step: int) -> None:
        """Keep the rows up to `step` (the checkpoint resumed from; none on a fresh start) and append after them."""
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        header, rows = _read_log(self.path) if step > 0 else ([], [])
        tmp = self.path.with_name(f".{LOG}.tmp")
        with open(tmp, "w", newline="") as f:  # rewritten whole and renamed: a kill never leaves half a log
            if header:
                csv.DictWriter(f, header).writeheader()
                csv.DictWriter(f, header).writerows(r for r in rows if r["step"].isdigit() and int(r["step"]) <= step)
        os.replace(tmp, self.path)
        self.file = open(self.path, "a", newline="")
        self.writer = csv.DictWriter(self.file, header, extrasaction="ignore", restval="") if header else None
        try:  # optional: only when tensorboard is installed
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.path.parent / "tensorboard"))
        except ImportError:
            self.tb = None

    def write(self, row: dict[str, Any]) -> None:
        """Append one row; the header is fixed by the first row ever written to the file."""
        if not self.enabled or self.file is None:
            return
        if self.writer is None:
            header = FIRST_COLUMNS + sorted(k for k in row if k not in FIRST_COLUMNS)
            self.writer = csv.DictWriter(self.file, header, extrasaction="ignore", restval="")
            self.writer.writeheader()
        self.writer.writerow({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in row.items()})
        self.file.flush()
        for k, v in row.items() if self.tb is not None else ():
            if k not in ("step", "epoch"):
                self.tb.add_scalar(k, v, row["step"])

    def close(self) -> None:
        """Close the files."""
        for f in (self.file, self.tb):
            if f is not None:
                f.close()
        self.file = self.tb = None


def _read_log(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    if not path.is_file():
        return [], []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        rows = [r for r in reader if None not in r and None not in r.values()]  # drops a row cut short by a kill
        return list(reader.fieldnames or []), rows


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
    launcher = fabric.strategy.launcher
    if launcher is not None and not launcher.is_interactive_compatible and not launched(fabric):
        fabric.launch()
    return launched(fabric)


def lr_factor(step: int, warmup: int, total: int, schedule: str = "cosine", min_ratio: float = 0.0) -> float:
    """Multiplier of the base lr at optimiser step `step` (0-based): linear warm-up to 1, then cosine to min_ratio."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise trust ratios (LARS, You et al. 2017; SimCLR's optimiser, Chen et al. 2020).

    update = lr * eta * ||w|| / ||g + wd w|| * (g + wd w), accumulated with momentum. Groups with lars=False
    (biases and normalisation parameters) get plain momentum SGD: no adaptation, no weight decay.
    """

    def __init__(self, params: Iterable[Any], lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 eta: float = 0.001):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, lars=True))

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """One update of every parameter that has a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                d = p.grad
                if group["lars"]:
                    d = d.add(p, alpha=group["weight_decay"])
                    w_norm, d_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(d)
                    trust = torch.where((w_norm > 0) & (d_norm > 0), group["eta"] * w_norm / d_norm, 1.0)
                    d = d.mul(trust)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = d.clone()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(d)
                p.add_(state["momentum_buffer"], alpha=-group["lr"])
        return loss


def make_optimizer(model: nn.Module, optim: OptimConfig) -> torch.optim.Optimizer:
    """AdamW, LARS or SGD; weight decay (and LARS adaptation) skip biases and normalisation parameters (ndim < 2)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    rest = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": optim.weight_decay},
              {"params": rest, "weight_decay": 0.0, "lars": False}]
    if optim.name == "lars":
        return LARS(groups, lr=optim.lr, momentum=optim.momentum, eta=optim.lars_eta)
    for g in groups:
        g.pop("lars", None)
    if optim.name == "sgd":
        return torch.optim.SGD(groups, lr=optim.lr, momentum=optim.momentum)
    return torch.optim.AdamW(groups, lr=optim.lr, betas=tuple(optim.betas))  # type: ignore[arg-type]


def fit(model: nn.Module, make_loader: MakeLoader, cfg: Any, run_dir: str | Path, *, resume: bool = False,
        init: str | Path | None = None, progress: bool = True, fabric: Fabric | None = None) -> dict[str, Any]:
    """Train `model` on batches from make_loader; return metrics (of rank 0).

    cfg: any dataclass with `optim` (OptimConfig) and `train` (TrainConfig), saved whole in checkpoints.
    resume: continue from run_dir/checkpoints/last.pt (model, optimiser, scheduler, position, RNG states).
    init: a checkpoint (or run folder) whose matching weights are loaded first (Azizi's two-stage pretraining).
    fabric: an already launched Fabric (pretrain launches script-based DDP before preparing data); else one is
    made from cfg.train and launched here (spawned DDP workers run the loop; their functions must pickle).
    """
    fabric = fabric or make_fabric(cfg.train)
    args = (model, make_loader, cfg, Path(run_dir), resume, init, progress)
    if launched(fabric):
        return _worker(fabric, *args)
    return fabric.launch(_worker, *args)


def _worker(fabric: Fabric, model: nn.Module, make_loader: MakeLoader, cfg: Any, run_dir: Path, resume: bool,
            init: str | Path | None, progress: bool) -> dict[str, Any]:
    """The loop in one process (rank)."""
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    loader = make_loader(fabric.global_rank, fabric.world_size)
    try:
        return _Run(fabric, model, loader, cfg, run_dir, progress).run(resume, init)
    finally:
        close = getattr(loader, "close", None)
        if close is not None:
            close()


class _Run:
    """State of one training run in one process: model, optimiser, schedule, position, log."""

    def __init__(self, fabric: Fabric, model: nn.Module, loader: BatchSource, cfg: Any, run_dir: Path,
                 progress: bool):
        self.fabric, self.loader, self.cfg, self.run_dir = fabric, loader, cfg, run_dir
        self.train, self.rank0 = cfg.train, fabric.global_rank == 0
        self.steps_per_epoch = len(loader)
        if self.steps_per_epoch < 1:
            raise MedsslError("the data set holds less than one batch: lower data.batch_size or add images")
        self.total = cfg.train.steps or cfg.train.epochs * self.steps_per_epoch
        o = cfg.optim
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

    def _restore(self, resume: bool, init: str | Path | None) -> None:
        """Weights from init, or everything from the run's last checkpoint; else a fresh, seeded start."""
        if init is not None and not resume:
            report = load_weights(self.raw, load_checkpoint(init)["model"])
            self.fabric.print(f"init from {init}: loaded {len(report['loaded'])} tensors; new (not in the checkpoint): "
                              f"{_short(report['missing'])}; ignored: {_short(report['unexpected'] + report['mismatched'])}")
        if self.train.channels_last:
            self.raw.to(memory_format=torch.channels_last)
        self.model, self.optimizer = self.fabric.setup(self.raw, self.optimizer)
        path = last_checkpoint(self.run_dir)
        if resume and path.is_file():
            self._resume(path)
        else:
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
            group["initial_lr"] = self.cfg.optim.lr
            group["lr"] = self.cfg.optim.lr * self.scheduler.lr_lambdas[0](self.scheduler.last_epoch)
        self.scheduler.base_lrs = [self.cfg.optim.lr] * len(self.optimizer.param_groups)
        self.step, self.epoch, self.batch = ckpt["step"], ckpt["epoch"], ckpt["batch"]
        if self.batch >= self.steps_per_epoch:  # fewer batches per epoch than when it was written
            self.epoch, self.batch = self.epoch + 1, 0
        set_rng_state(ckpt["rng"][self.fabric.global_rank % len(ckpt["rng"])])
        self.fabric.print(f"resumed {self.run_dir} at step {self.step} (epoch {self.epoch}, batch {self.batch})")

    def run(self, resume: bool, init: str | Path | None) -> dict[str, Any]:
        """Train to the configured number of steps; return metrics."""
        self._restore(resume, init)
        first, t0 = self.step, time.perf_counter()
        self.images, self.window = 0, (time.perf_counter(), 0)
        bar = tqdm(total=self.total, initial=self.step, desc="pretrain", unit="step", disable=not self.progress,
                   file=sys.stderr, dynamic_ncols=True)
        self.model.train()
        try:
            while self.step < self.total:
                before = self.step
                for batch in self.loader.epoch(self.epoch, self.batch):
                    self._train_step(batch, bar)
                    if self.step >= self.total:
                        break
                if self.step == before:
                    raise MedsslError(f"epoch {self.epoch} gave no batch from batch {self.batch} on")
        finally:
            bar.close()
            self.log.close()
        seconds = time.perf_counter() - t0
        return {"steps": self.step, "steps_this_run": self.step - first, "epochs": self.step / self.steps_per_epoch,
                "final_loss": self.last_loss, "images_per_s": self.images / seconds if seconds > 0 else 0.0,
                "seconds": seconds, "world_size": self.fabric.world_size,
                "checkpoint": str(last_checkpoint(self.run_dir))}

    def _train_step(self, batch: dict[str, Tensor], bar: tqdm) -> None:
        """Forward, NaN guard, backward, clip, step, schedule, on_step; then log and checkpoint as due."""
        batch = self._prepare(batch)
        out = self.model(batch)
        loss = self._global_loss(out["loss"])
        lr = self.optimizer.param_groups[0]["lr"]
        self.fabric.backward(out["loss"])
        if self.cfg.optim.grad_clip:
            self.fabric.clip_gradients(self.model, self.optimizer, max_norm=self.cfg.optim.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step += 1
        self.batch += 1
        if self.batch == self.steps_per_epoch:
            self.epoch, self.batch = self.epoch + 1, 0
        on_step = getattr(self.raw, "on_step", None)
        if on_step is not None:
            on_step(self.step, self.total)
        n = _batch_rows(batch) * self.fabric.world_size
        self.images += n
        self.window = (self.window[0], self.window[1] + n)
        self.last_loss = loss
        bar.update(1)
        if self.step % self.train.log_every == 0 or self.step == self.total:
            self._log(out, loss, lr, bar)
        if self.step % self.train.checkpoint_every == 0 or self.step == self.total:
            self._checkpoint()

    def _prepare(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        batch = self.fabric.to_device(batch)
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
        row = {"step": self.step, "epoch": self.epoch, "loss": loss, "lr": lr, "images_per_s": ips, **scalars}
        self.log.write(row)
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", img_s=f"{ips:.0f}", refresh=False)
        z_std = scalars.get("z_std")
        if z_std is not None and z_std < self.train.collapse_threshold and not self.collapse_warned and self.rank0:
            self.collapse_warned = True
            tqdm.write(f"warning: step {self.step}: embedding std z_std={z_std:.2e} is below "
                       f"{self.train.collapse_threshold:g}: the representation may be collapsing", file=sys.stderr)

    def _checkpoint(self) -> None:
        """Every rank hands its RNG state to rank 0, which writes last.pt atomically - never with broken weights."""
        if not all(bool(torch.isfinite(p).all()) for p in self.raw.parameters()):
            self._stop("the weights became nan or inf (a finite loss with infinite gradients)")
        states = [rng_state()]
        if self.fabric.world_size > 1 and dist.is_initialized():
            states = [None] * self.fabric.world_size  # type: ignore[list-item]
            dist.all_gather_object(states, rng_state())
        if self.rank0:
            save_checkpoint(last_checkpoint(self.run_dir), model=self.raw, optimizer=self.optimizer,
                            scheduler=self.scheduler, step=self.step, epoch=self.epoch, batch=self.batch,
                            rng=states, config=_config_dict(self.cfg),
                            extra={"world_size": self.fabric.world_size})


def _batch_rows(batch: dict[str, Any]) -> int:
    """Images in a batch: the leading size of its first tensor."""
    for v in batch.values():
        if isinstance(v, Tensor) and v.ndim > 0:
            return int(v.shape[0])
    return 0


def _config_dict(cfg: Any) -> dict[str, Any]:
    return to_dict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)


def _short(keys: list[str], n: int = 6) -> str:
    """First module names of a key list, for a one-line report."""
    heads = sorted({k.rsplit(".", 2)[0] for k in keys})
    return "none" if not keys else ", ".join(heads[:n]) + (f" (+{len(heads) - n} more)" if len(heads) > n else "")


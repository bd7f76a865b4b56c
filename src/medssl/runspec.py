"""What the training loop runs: `TrainConfig` (a config's `train:` section), `Validation` and `RunSpec`.

Plain typed data, apart from the loop itself (medssl.train), so that configs can be read and checked without
importing Lightning Fabric.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from medssl.errors import MedsslError
from medssl.optim import OptimConfig
from medssl.schema import check_choice, check_positive

PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")
ACCELERATORS = ("auto", "cpu", "cuda", "gpu", "mps")


@dataclass
class TrainConfig:
    """Length, devices and bookkeeping of a run (a config's `train:` section). Exactly one of steps and epochs."""

    steps: int | None = None
    epochs: int | None = 10
    precision: str = "32-true"
    accelerator: str = "auto"
    devices: int = 1  # processes per node
    num_nodes: int = 1
    strategy: str = "auto"  # auto, ddp (launches a copy of the command per extra process), ddp_spawn, ...
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 500  # steps; also at the end
    collapse_threshold: float = 1e-3  # warn when the method's z_std falls below this
    channels_last: bool = False  # memory format of the model and 4D batch tensors
    threads: int | None = None  # torch intra-op threads; None = torch's default
    sync_bn: bool = False  # under DDP: BatchNorm statistics over every process's batch (SyncBatchNorm)
    compile: bool = False  # the method's forward and backward through torch.compile (eager again, said, if it fails)

    def validate(self) -> "TrainConfig":
        """Raise MedsslError naming the first bad value; return self."""
        if (self.steps is None) == (self.epochs is None):
            raise MedsslError(f"config: set exactly one of train.steps ({self.steps}) and train.epochs "
                              f"({self.epochs}); the other must be null")
        check_positive(self, "train", ("steps", "epochs", "devices", "num_nodes", "log_every", "checkpoint_every",
                                       "threads"))
        check_positive(self, "train", ("seed", "collapse_threshold"), allow_zero=True)
        check_choice("train.precision", self.precision, PRECISIONS)
        check_choice("train.accelerator", self.accelerator, ACCELERATORS)
        return self


@dataclass
class Validation:
    """Early stopping for fit: score(model) (higher is better) every `every` steps and at the end, on rank 0 in
    eval mode without gradients; stop after `patience` scores without improvement (None: never stop early).
    The model ends the run with the weights of the best score (also in run_dir/checkpoints/best.pt).
    at_start: also score the starting weights (step 0) of a fresh run, so that they can be the ones kept: for a
    model that starts from something worth keeping, such as a linear probe's head (LP-FT)."""

    score: Callable[[nn.Module], float]
    every: int
    patience: int | None = None
    at_start: bool = False


@dataclass
class RunSpec:
    """Everything fit needs besides the model and its batches.

    train: length, devices, precision, seed, logging and checkpoint cadence; optim: optimiser and schedule;
    validation: score, keep the best weights, stop early; keep_checkpoints: False writes no last.pt / best.pt (and
    removes any left at the end): an evaluation keeps its numbers and log.csv, a bundle is written separately; record: plain data
    saved in every checkpoint beside the weights (the resolved config, the model spec, the preprocess).
    """

    train: TrainConfig
    optim: OptimConfig
    validation: Validation | None = None
    keep_checkpoints: bool = True
    record: dict[str, Any] = dataclasses.field(default_factory=dict)
    label: str = "pretrain"  # what fit's progress bar (steps, rate, ETA) is called
    transient: bool = False  # the bar goes when the run ends: a run inside a larger command (an evaluation's)

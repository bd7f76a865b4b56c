"""What `medssl evaluate` is asked to run: EvalOptions, checked before any work (the data layer and the run both
read it, so it sits below both)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medssl.errors import MedsslError

PROTOCOLS = ("linear", "knn", "finetune", "segment")
HEADLINE = ("roc_auc_macro", "accuracy", "balanced_accuracy", "f1_macro")


@dataclass
class EvalOptions:
    """What `medssl evaluate` runs."""

    checkpoint: str
    data: str | None = None
    out: Path = Path("runs/evaluate")
    protocols: tuple[str, ...] = ("linear", "knn", "finetune")
    fractions: tuple[float, ...] = (0.01, 0.1, 1.0)
    seeds: int = 3
    baseline: str | None = "scratch"
    finetune_steps: int | None = 300
    finetune_epochs: int | None = None  # instead of finetune_steps
    finetune_batch: int = 64
    finetune_lr: float = 1e-3
    finetune_patience: int | None = 6  # validation scores without improvement before stopping; None = never
    finetune_head: str = "probe"  # pretrained fine-tuning starts from the linear probe's head (LP-FT) or "random"
    finetune_freeze_bn: bool = True  # pretrained fine-tuning keeps the pretrained BatchNorm statistics
    segment_steps: int = 300
    segment_lr: float = 1e-3
    segment_patience: int | None = None  # None: the whole budget, best val-Dice weights kept
    keep_bundles: bool = True  # write the best classifier of each protocol as RUN/evaluate/bundles/PROTOCOL.pt
    mask_encoding: str | None = None  # label, binary or bits; None: the manifest's mask_encoding column, else guessed
    mask_classes: tuple[str, ...] | None = None  # None: the manifest's mask_classes column ("foreground" if binary)
    n_boot: int = 1000
    task: str | None = None
    skip_bad: bool = False  # go on past unreadable images, list them (else the first ends the run, named)
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def classifies(self) -> bool:
        """Whether a classification protocol runs (segmentation alone does not score labels)."""
        return any(p != "segment" for p in self.protocols)

    @property
    def trains(self) -> bool:
        """Whether a protocol trains a network on the label fractions (fine-tuning, segmentation)."""
        return any(p in ("finetune", "segment") for p in self.protocols)

    @property
    def frozen_baseline(self) -> bool:
        """Whether the scratch baseline of classification is a probe on a random backbone: no fine-tuning runs
        (which would carry the supervised baseline) but a linear probe or kNN does."""
        return (self.baseline == "scratch" and "finetune" not in self.protocols
                and any(p in ("linear", "knn") for p in self.protocols))

    def validate(self) -> "EvalOptions":
        """Raise MedsslError naming the first bad value."""
        bad = [p for p in self.protocols if p not in PROTOCOLS]
        if bad or not self.protocols:
            raise MedsslError(f"--protocol {','.join(self.protocols)}: each must be one of {', '.join(PROTOCOLS)}")
        if not self.fractions or any(not 0 < f <= 1 for f in self.fractions):
            raise MedsslError(f"--fractions {list(self.fractions)}: each must be in (0, 1]")
        if self.seeds < 1:
            raise MedsslError(f"--seeds {self.seeds} must be at least 1")
        if self.baseline not in (None, "scratch"):
            raise MedsslError(f"--baseline {self.baseline!r} must be 'scratch' or omitted")
        if self.finetune_head not in ("probe", "random"):
            raise MedsslError(f"--finetune-head {self.finetune_head!r} must be 'probe' or 'random'")
        from medssl.data.masks import ENCODINGS

        if self.mask_encoding is not None and self.mask_encoding not in ENCODINGS:
            raise MedsslError(f"--mask-encoding {self.mask_encoding!r} must be one of {', '.join(ENCODINGS)}")
        if self.mask_classes is not None and (not self.mask_classes or not all(c.strip() for c in self.mask_classes)):
            raise MedsslError(f"--mask-classes {','.join(self.mask_classes)!r}: need one or more non-empty names")
        if (self.finetune_steps is None) == (self.finetune_epochs is None):
            raise MedsslError("give one of --finetune-steps and --finetune-epochs")
        for name in ("finetune_steps", "finetune_epochs", "finetune_batch", "finetune_patience", "segment_steps",
                     "segment_patience", "n_boot"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise MedsslError(f"--{name.replace('_', '-')} {v} must be positive")
        for name in ("finetune_lr", "segment_lr"):
            if not getattr(self, name) > 0:
                raise MedsslError(f"--{name.replace('_', '-')} {getattr(self, name)} must be positive")
        return self

"""What the training loop asks of a model, as a typed contract (`train.fit` takes any `Trainable`).

- forward(batch) -> dict with "loss" (a 0-d tensor); other 0-d tensors are logged;
- lr_scales() -> {parameter-name prefix: lr multiplier}, e.g. {"backbone": 0.1} when fine-tuning (empty: one rate);
- on_step(step, total_steps) after every optimiser step (momentum encoders; a no-op by default).
The base class gives the defaults, so a method only writes what it changes; fit probes nothing with getattr.
"""

from __future__ import annotations

from torch import Tensor, nn


class Trainable(nn.Module):
    """An nn.Module that train.fit can train: forward(batch) -> {"loss": ..., ...}, lr_scales(), on_step()."""

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:  # pragma: no cover - every subclass has one
        """The loss (and 0-d diagnostics) of a batch."""
        raise NotImplementedError

    def lr_scales(self) -> dict[str, float]:
        """Parameter-name prefix -> learning-rate multiplier; parameters under no prefix get the base rate."""
        return {}

    def on_step(self, step: int, total_steps: int) -> None:
        """Called after every optimiser step, with the 1-based step just taken."""

"""MICLe: Multi-Instance Contrastive Learning (Azizi et al. 2021, "Big Self-Supervised Models Advance Medical
Image Classification", ICCV).

The loss is SimCLR's; what differs is the positive pair: view1 and view2 are augmentations of two different
images of the same patient (another view or study of the same anatomy), so the network learns what stays true of
a patient across acquisitions. The data layer builds those pairs (MultiInstanceDataset); a patient with a single
image falls back to two augmentations of it, which is plain SimCLR for that pair.
"""

from __future__ import annotations

from torch import Tensor

from medssl.data.datasets import PATIENT_PAIRS
from medssl.methods.simclr import SimCLR


class MICLe(SimCLR):
    """SimCLR on same-patient image pairs. Batch keys: view1, view2 (B, C, H, W); same_image (B,) bool.

    Options: SimCLR's (SimCLROptions)."""

    batch = PATIENT_PAIRS

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """SimCLR's outputs, plus pair_same_image: the fraction of pairs that fell back to a single image."""
        out = super().forward(batch)
        if "same_image" in batch:
            out["pair_same_image"] = batch["same_image"].float().mean()
        return out

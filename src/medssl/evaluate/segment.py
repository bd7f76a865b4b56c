"""Segmentation transfer: fine-tune a U-Net whose encoder is a (pretrained) ResNet backbone on finding masks, Dice.

The dense-task evaluation reported next to classification (e.g. Chaitanya et al. 2020, Azizi et al. 2021): the same
U-Net, trained with the same budget, once on the pretrained encoder and once from scratch.

- Masks: (N, K, S, S) {0, 1} from medssl.data.masks.read_masks (label, binary or bit-field PNGs, NIfTI labels).
- Loss: soft Dice (MONAI DiceLoss, sums over the batch) + per-pixel binary cross-entropy. Not MONAI's DiceCELoss:
  with K > 1 channels it applies softmax cross-entropy even when sigmoid=True, and findings overlap (multi-label).
- Training goes through `train.fit`: the encoder's lower learning rate is the model's `lr_scales()` ({"backbone": s}),
  which fit's optimiser reads; fit's `Validation` scores val Dice every `val_every` steps and ends the run with the
  best-scoring weights (a fixed budget: no early stop).
- Augmentation is geometric only (rotation, shift, zoom), one affine per sample applied to image and mask alike;
  no flips, because laterality is anatomy on a chest film.
- Metric: Dice per class summed over the test set (pred > 0.5 after the sigmoid), classes absent from both the
  prediction and the truth are NaN and left out of the macro mean.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from torch import Tensor, nn

from medssl.synthetic import FINDINGS
from medssl.data.preprocess import Preprocess
from medssl.errors import MedsslError
from medssl.schema import plain
from medssl.models.backbones import ResNet
from medssl.models.trainable import Trainable
from medssl.optim import OptimConfig
from medssl.runspec import RunSpec, TrainConfig, Validation
from medssl.train import fit


# ---------------------------------------------------------------- the metric

def dice_scores(pred_mask: np.ndarray, true_mask: np.ndarray, classes: Sequence[str] | None = None) -> dict[str, Any]:
    """Dice per class over a whole set, (N, K, H, W) bool each: 2|P & T| / (|P| + |T|) summed over images.

    A class absent from both prediction and truth is NaN and left out of "dice_macro" (NaN when all are).
    """
    pred, true = np.asarray(pred_mask).astype(bool), np.asarray(true_mask).astype(bool)
    if pred.shape != true.shape or pred.ndim != 4:
        raise MedsslError(f"prediction {pred.shape} and truth {true.shape} must both be (N, K, H, W)")
    names = list(classes) if classes is not None else [str(k) for k in range(pred.shape[1])]
    if len(names) != pred.shape[1]:
        raise MedsslError(f"{len(names)} class names for {pred.shape[1]} mask channels")
    inter = (pred & true).sum(axis=(0, 2, 3)).astype(np.float64)                # (K,)
    total = (pred.sum(axis=(0, 2, 3)) + true.sum(axis=(0, 2, 3))).astype(np.float64)
    dice = np.full(len(names), math.nan)
    dice[total > 0] = 2 * inter[total > 0] / total[total > 0]
    macro = float(dice[total > 0].mean()) if (total > 0).any() else math.nan
    return {"dice_macro": macro, "dice_per_class": {n: float(d) for n, d in zip(names, dice)}}


# ---------------------------------------------------------------- the model

def _conv_block(cin: int, cout: int) -> nn.Sequential:
    """Two 3x3 conv - BatchNorm - ReLU layers, as in U-Net's decoder."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class UNet(Trainable):
    """U-Net (Ronneberger et al. 2015) on a ResNet encoder: stem and stages 1-3 are skips, stage 4 the bottleneck.

    Each decoder block upsamples to its skip's size, concatenates and convolves; a last block at the input's
    resolution takes the image itself as skip (the stem may have halved it), then a 1x1 conv gives K logits.
    Batch keys: image (B, C, H, W) in [0, 1], mask (B, K, H, W) in {0, 1}. The encoder trains at
    backbone_lr_scale times the decoder's learning rate.
    """

    def __init__(self, backbone: nn.Module, n_classes: int, decoder_channels: Sequence[int] = (128, 64, 32, 16),
                 backbone_lr_scale: float = 1.0):
        super().__init__()
        if not isinstance(backbone, ResNet):
            raise MedsslError(f"the segmentation U-Net needs a ResNet encoder, got {type(backbone).__name__}")
        if not 1 <= len(decoder_channels) <= 4 or n_classes < 1:
            raise MedsslError(f"decoder_channels {tuple(decoder_channels)}: 1 to 4 widths; n_classes {n_classes} >= 1")
        self.backbone = backbone
        self.backbone_lr_scale = backbone_lr_scale
        *skips, cin = backbone.feature_channels                 # skips: stem, layer1..3; layer4 is the bottleneck
        blocks = []
        for skip, cout in zip(reversed(skips), decoder_channels):
            blocks.append(_conv_block(cin + skip, cout))
            cin = cout
        self.decoder = nn.ModuleList(blocks)
        self.final = _conv_block(cin + backbone.in_channels, cin)
        self.head = nn.Conv2d(cin, n_classes, 1)
        self.dice_loss = DiceLoss(sigmoid=True, batch=True)  # batch=True: a finding absent from one image is fine

    def lr_scales(self) -> dict[str, float]:
        """The encoder learns at backbone_lr_scale times the decoder's rate."""
        return {"backbone": self.backbone_lr_scale}

    @torch.no_grad()
    def set_prior(self, fraction: Tensor) -> None:
        """Head bias = logit of each class's pixel fraction (K,), as RetinaNet's prior init (Lin et al. 2017): training
        starts at the background rate, not at p = 0.5 everywhere, which Adam's small steps take long to undo."""
        self.head.bias.copy_(torch.logit(fraction.to(self.head.bias).clamp(1e-4, 0.5)))

    def logits(self, image: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, K, H, W) logits."""
        feats = self.backbone.feature_maps(image)                             # stem, layer1..4
        x = feats[-1]                                                           # (B, 8 w e, H / s, W / s)
        for block, skip in zip(self.decoder, reversed(feats[:-1])):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        x = F.interpolate(x, size=image.shape[-2:], mode="bilinear", align_corners=False)
        return self.head(self.final(torch.cat([x, image], dim=1)))

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Loss = soft Dice + BCE; also the logits and the batch's soft Dice (1 - Dice loss)."""
        logits = self.logits(batch["image"])                                     # (B, K, H, W)
        mask = batch["mask"].to(logits.dtype)
        dice_loss = self.dice_loss(logits, mask)
        bce = F.binary_cross_entropy_with_logits(logits, mask)
        return {"loss": dice_loss + bce, "logits": logits, "dice": 1 - dice_loss.detach(), "bce": bce.detach()}


# ---------------------------------------------------------------- batches

def random_theta(n: int, generator: torch.Generator, rotation_deg: float, translate: float,
                 scale: tuple[float, float]) -> Tensor:
    """(n, 2, 3) affine_grid matrices: rotation in +-rotation_deg, shift in +-translate of the side, zoom in scale."""
    u = torch.rand(n, 4, generator=generator)
    angle = math.radians(rotation_deg) * (2 * u[:, 0] - 1)
    zoom = scale[0] + (scale[1] - scale[0]) * u[:, 1]
    shift = 2 * translate * (2 * u[:, 2:] - 1)                  # (n, 2); the side spans 2 in grid coordinates
    cos, sin = angle.cos() / zoom, angle.sin() / zoom           # the grid maps output to input: zoom in = divide
    return torch.stack([torch.stack([cos, -sin, -shift[:, 0]], 1), torch.stack([sin, cos, -shift[:, 1]], 1)], 1)


def paired_affine(image: Tensor, mask: Tensor, theta: Tensor) -> tuple[Tensor, Tensor]:
    """The same affine per sample on image (B, C, H, W; bilinear) and mask (B, K, H, W; nearest), zeros outside."""
    grid = F.affine_grid(theta.to(image.dtype), list(image.shape), align_corners=False)  # (B, H, W, 2)
    image = F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    mask = F.grid_sample(mask.to(image.dtype), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return image, mask


@dataclass
class SegmentConfig:
    """Segmentation fine-tuning: fixed budget of steps, AdamW with cosine decay after a 5 % warm-up."""

    steps: int = 300
    batch_size: int = 32  # capped at the number of training images
    lr: float = 1e-3
    backbone_lr_scale: float = 0.1  # encoder lr = lr * this (decoder: lr)
    weight_decay: float = 1e-4
    size: int = 64  # images and masks are resized to this side
    seed: int = 0
    augment: bool = True  # geometric only, identical for image and mask
    rotation_deg: float = 10.0
    translate: float = 0.06
    scale: tuple[float, float] = (0.9, 1.1)
    decoder_channels: tuple[int, ...] = (128, 64, 32, 16)
    val_every: int = 25  # steps between validation scores (and at the end); the best-scoring weights are kept
    patience: int | None = None  # validation scores without improvement before stopping; None = the whole budget
    keep_checkpoints: bool = False  # fit writes run_dir/checkpoints/last.pt; removed after evaluation unless set


class SegmentBatches:
    """fit's BatchSource: batch k of epoch e is a pure function of (seed, e, k); drop-last, one process only."""

    def __init__(self, images: Tensor, masks: Tensor, cfg: SegmentConfig, channels: int, world_size: int = 1):
        if world_size != 1:
            raise MedsslError(f"segmentation transfer runs in one process, not {world_size}")
        self.images, self.masks, self.cfg = images, masks, cfg
        self.pre = Preprocess(int(images.shape[-1]), channels)
        self.batch_size = min(cfg.batch_size, len(images))

    def __len__(self) -> int:
        return len(self.images) // self.batch_size

    def epoch(self, epoch: int, start: int = 0) -> Iterator[dict[str, Tensor]]:
        """Batches start.. of the epoch: {"image": (B, C, S, S) float in [0, 1], "mask": (B, K, S, S) float}."""
        perm = np.random.default_rng([self.cfg.seed, epoch]).permutation(len(self.images))
        for k in range(start, len(self)):
            idx = torch.from_numpy(perm[k * self.batch_size:(k + 1) * self.batch_size])
            x, y = self.pre.to_input(self.images[idx]), self.masks[idx].float()   # (B, C, S, S) in [0, 1]
            if self.cfg.augment:
                seed = int(np.random.SeedSequence([self.cfg.seed, epoch, k]).generate_state(1)[0])
                theta = random_theta(len(idx), torch.Generator().manual_seed(seed), self.cfg.rotation_deg,
                                     self.cfg.translate, self.cfg.scale)
                x, y = paired_affine(x, y, theta)
            yield {"image": x, "mask": y}


def _make_batches(images: Tensor, masks: Tensor, cfg: SegmentConfig, channels: int, rank: int,
                  world_size: int) -> SegmentBatches:
    """fit's make_loader(rank, world_size), bound to the data with functools.partial (picklable)."""
    return SegmentBatches(images, masks, cfg, channels, world_size)


# ---------------------------------------------------------------- the protocol

def _checked(images: Tensor, masks: Tensor, size: int, name: str) -> tuple[Tensor, Tensor]:
    """uint8 images (N, C, S, S) and {0, 1} masks (N, K, S, S), resized to size (masks nearest)."""
    images, masks = torch.as_tensor(images), torch.as_tensor(masks)
    ok = images.dtype == torch.uint8 and images.ndim == masks.ndim == 4 and len(images) == len(masks)
    if not ok or images.shape[-2:] != masks.shape[-2:]:
        raise MedsslError(f"{name}: expected uint8 images (N, C, S, S) and masks (N, K, S, S), got "
                          f"{images.dtype} {tuple(images.shape)} and {tuple(masks.shape)}")
    if tuple(images.shape[-2:]) != (size, size):
        images = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True)
        images = images.round().clamp(0, 255).to(torch.uint8)
        masks = F.interpolate(masks.float(), size=(size, size), mode="nearest-exact")
    return images, (masks > 0).to(torch.uint8)


@torch.no_grad()
def predict_masks(model: UNet, images: Tensor, batch_size: int = 64) -> np.ndarray:
    """(N, K, H, W) bool: sigmoid(logits) > 0.5, i.e. logits > 0, with the model in eval mode."""
    model.eval()
    device = next(model.parameters()).device
    pre = Preprocess(int(images.shape[-1]), model.backbone.in_channels)  # the one stored -> model input step
    out = [np.zeros((0, model.head.out_channels, *images.shape[-2:]), bool)]
    for x in pre.batches(images, batch_size, device):
        out.append((model.logits(x) > 0).cpu().numpy())
    return np.concatenate(out)


def _val_dice(model: nn.Module, images: Tensor, masks: Tensor) -> float:
    """fit's validation score: macro Dice on the validation set (NaN, never kept as best, when it has no finding)."""
    return dice_scores(predict_masks(model, images), masks.numpy())["dice_macro"]  # type: ignore[arg-type]


def _run_spec(cfg: SegmentConfig, validation: Validation | None, label: str) -> RunSpec:
    """fit's RunSpec: one process, a 5 % warm-up then cosine, the best val-Dice weights kept."""
    optim = OptimConfig(lr=cfg.lr, weight_decay=cfg.weight_decay, warmup_steps=cfg.steps // 20)
    train = TrainConfig(steps=cfg.steps, epochs=None, seed=cfg.seed, devices=1, log_every=max(1, cfg.steps // 30),
                        checkpoint_every=cfg.steps)
    return RunSpec(train.validate(), optim.validate(), validation, cfg.keep_checkpoints,
                   record={"segment": plain(cfg)}, label=label, transient=True)


def segment_transfer(backbone: nn.Module, train_images: Tensor, train_masks: Tensor, val_images: Tensor,
                     val_masks: Tensor, test_images: Tensor, test_masks: Tensor, cfg: SegmentConfig,
                     run_dir: str | Path, classes: Sequence[str] = FINDINGS, progress: bool = False,
                     desc: str = "segment") -> dict[str, Any]:
    """Fine-tune UNet(backbone) through train.fit for cfg.steps, keep the best val-Dice weights, Dice on test.

    The backbone is trained IN PLACE (pass a copy to reuse pretrained weights). Images uint8 (N, C, S, S), masks
    (N, K, S, S) in {0, 1}, K = len(classes). Returns dice_macro, dice_per_class (test), val_dice_macro and
    best_step (of the weights kept), steps, seconds. progress: a transient bar of the steps named `desc`.
    """
    t0 = time.perf_counter()
    train_images, train_masks = _checked(train_images, train_masks, cfg.size, "train")
    val_images, val_masks = _checked(val_images, val_masks, cfg.size, "val")
    test_images, test_masks = _checked(test_images, test_masks, cfg.size, "test")
    if not train_masks.shape[1] == val_masks.shape[1] == test_masks.shape[1] == len(classes):
        raise MedsslError(f"masks have {train_masks.shape[1]}, {val_masks.shape[1]} and {test_masks.shape[1]} "
                          f"channels (train, val, test) for {len(classes)} classes")
    if len(train_images) < 2:
        raise MedsslError(f"segmentation needs at least 2 training images (BatchNorm), got {len(train_images)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)  # the decoder's initial weights
        model = UNet(backbone, len(classes), cfg.decoder_channels, cfg.backbone_lr_scale)
    model.set_prior(train_masks.float().mean(dim=(0, 2, 3)))
    make_loader = functools.partial(_make_batches, train_images, train_masks, cfg, backbone.in_channels)
    dice = functools.partial(_val_dice, model, images=val_images, masks=val_masks)
    validation = Validation(lambda _: dice(), every=cfg.val_every, patience=cfg.patience) if len(val_images) else None
    result = fit(model, make_loader, _run_spec(cfg, validation, desc), run_dir, progress=progress)
    test = dice_scores(predict_masks(model, test_images), test_masks.numpy(), classes)
    best = result.get("best_val", math.nan)  # -inf when no score was a number
    return {**test, "val_dice_macro": best if math.isfinite(best) else math.nan, "best_step": result.get("best_step"),
            "steps": result["steps"], "seconds": time.perf_counter() - t0}

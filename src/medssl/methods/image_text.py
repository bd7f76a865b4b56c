"""Image-text methods: ConVIRT (Zhang et al. 2020), CLIP (Radford et al. 2021) and GLoRIA (Huang et al. 2021).

Each pairs an image encoder (the backbone of any other method, kept for evaluation) with a text encoder
(medssl.text.TextEncoder: from scratch, or a local Hugging Face folder) and projects both into one joint space.
The three differ only in their heads and loss:
- ConVIRT: non-linear projections (Linear -> ReLU -> Linear) and the asymmetric InfoNCE with weight lambda;
- CLIP: linear projections and the symmetric InfoNCE with a learned temperature (losses.ClipLoss);
- GLoRIA: linear global projections with the symmetric InfoNCE at tau3, plus the local loss: word-to-region
  attention between the backbone's last feature map (regions projected to the text width) and the report's word
  features (the encoder's per-token features without [CLS], [SEP] and padding).

Batch keys (data.datasets.IMAGE_REPORT): image (B, C, S, S) float, ids (B, L) int64, mask (B, L) int64 (1 = real
token, [CLS] first, [SEP] last), findings (B, K) float multi-hot. `soft_targets` makes pairs whose findings rows
are equal positives of each other (losses' soft targets). `encode_image` and `encode_text` give L2-normalised
(B, proj_dim) joint-space embeddings for zero-shot classification and retrieval.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medssl.data.datasets import IMAGE_REPORT
from medssl.errors import MedsslError
from medssl.losses import ClipLoss, convirt_loss, gloria_local_loss, gloria_loss
from medssl.models.factory import ModelSpec, build_backbone
from medssl.models.heads import ProjectionHead
from medssl.models.trainable import Trainable
from medssl.schema import bad, check_choice, check_positive
from medssl.text.encoder import POOLINGS, TextEncoder, TextSpec


@dataclass
class ImageTextOptions:
    """The options every image-text method shares (`model.options`): the text encoder, the joint space, targets."""

    vocab_size: int = 8000  # the most; the pipeline sets the trained tokenizer's size before building
    context: int = 128  # tokens per report, [CLS] and [SEP] included
    text_width: int = 128
    text_depth: int = 2
    text_heads: int = 4
    text_dropout: float = 0.1
    pooling: str = "mean"  # mean of the real tokens, or "cls" (medssl.text.encoder)
    hf_path: str | None = None  # a local Hugging Face model folder instead of the from-scratch encoder
    proj_dim: int = 128  # joint space (ConVIRT and CLIP used 512, GLoRIA 768, for far larger encoders)
    soft_targets: bool = False  # pairs whose reports state the same findings are positives, not negatives

    def validate(self) -> None:
        """Raise MedsslError naming a bad value."""
        check_positive(self, "model.options", ("vocab_size", "context", "text_width", "text_depth", "text_heads",
                                                "proj_dim"))
        if self.context < 3:
            raise bad("model.options.context", self.context, "must be at least 3 ([CLS], one token, [SEP])")
        if self.text_width % self.text_heads:
            raise bad("model.options.text_width", self.text_width,
                      f"must be a multiple of model.options.text_heads={self.text_heads}")
        if not 0.0 <= self.text_dropout < 1.0:
            raise bad("model.options.text_dropout", self.text_dropout, "must be in [0, 1)")
        check_choice("model.options.pooling", self.pooling, POOLINGS)
        if self.hf_path is not None and not Path(self.hf_path).is_dir():
            raise bad("model.options.hf_path", self.hf_path, "is not a folder (a local Hugging Face model folder)")

    def text_spec(self) -> TextSpec:
        """The TextSpec these options describe."""
        return TextSpec(self.vocab_size, self.text_width, self.text_depth, self.text_heads, self.context,
                        self.pooling, self.text_dropout, self.hf_path)


@dataclass
class ConVIRTOptions(ImageTextOptions):
    """ConVIRT's options: the paper's temperature 0.1 and lambda 0.75 (image -> text weight)."""

    hidden_dim: int | None = None  # the projections' hidden width; None = each encoder's feature width
    temperature: float = 0.1
    weight: float = 0.75

    def validate(self) -> None:
        """Raise MedsslError naming a bad value."""
        super().validate()
        check_positive(self, "model.options", ("hidden_dim", "temperature"))
        if not 0.0 <= self.weight <= 1.0:
            raise bad("model.options.weight", self.weight, "must be in [0, 1]")


@dataclass
class CLIPOptions(ImageTextOptions):
    """CLIP's options: the learned temperature's starting value (CLIP's 0.07)."""

    init_temperature: float = 0.07

    def validate(self) -> None:
        """Raise MedsslError naming a bad value."""
        super().validate()
        if not 0.01 <= self.init_temperature <= 1.0:
            raise bad("model.options.init_temperature", self.init_temperature, "must be in [0.01, 1]")


@dataclass
class GLoRIAOptions(ImageTextOptions):
    """GLoRIA's options: attention sharpness tau1, word aggregation gamma2, InfoNCE temperature tau3, term weights."""

    tau1: float = 0.25
    gamma2: float = 5.0
    tau3: float = 0.1
    local_weight: float = 1.0
    global_weight: float = 1.0

    def validate(self) -> None:
        """Raise MedsslError naming a bad value."""
        super().validate()
        check_positive(self, "model.options", ("tau1", "gamma2", "tau3"))
        check_positive(self, "model.options", ("local_weight", "global_weight"), allow_zero=True)
        if self.local_weight == 0 and self.global_weight == 0:
            raise bad("model.options.local_weight", 0.0, "and model.options.global_weight are both 0: no loss left")


def word_mask(mask: Tensor) -> Tensor:
    """(B, L) token mask (1 = real token) -> (B, L) bool of the words: [CLS] (position 0) and [SEP] (last real) off."""
    words = mask.bool().clone()
    words[:, 0] = False
    last = mask.long().sum(dim=1) - 1                           # (B,) position of [SEP]
    words[torch.arange(mask.shape[0], device=mask.device), last.clamp_min(0)] = False
    return words


def image_regions(backbone: nn.Module, x: Tensor) -> Tensor:
    """(B, C, H, W) -> region features (B, R, D): a ResNet's last feature map flattened (R = h w), a ViT's patches.

    Their mean over R is exactly the backbone's pooled output, so one pass gives both.
    """
    features = backbone.forward_features(x)
    if features.ndim == 4:                                      # ResNet: (B, D, h, w)
        return features.flatten(2).transpose(1, 2)
    return features[:, 1:]                                      # ViT: (B, 1 + N, D), the class token first


class ImageText(Trainable):
    """What ConVIRT, CLIP and GLoRIA share: backbone + text encoder, one projection each into the joint space."""

    Options = ImageTextOptions
    batch = IMAGE_REPORT

    @classmethod
    def build(cls, spec: ModelSpec) -> "ImageText":
        """Fresh backbone, text encoder and heads from the spec and its options."""
        return cls(build_backbone(spec), spec.options or cls.Options())

    def __init__(self, backbone: nn.Module, options: ImageTextOptions):
        super().__init__()
        self.backbone = backbone                                # kept for evaluation; the heads are dropped
        self.text_encoder = TextEncoder(options.text_spec())
        self.options = options
        self.image_proj = self.projection(int(backbone.feature_dim), options)
        self.text_proj = self.projection(int(self.text_encoder.feature_dim), options)

    @staticmethod
    def projection(in_dim: int, options: ImageTextOptions) -> nn.Module:
        """(B, in_dim) -> (B, proj_dim); linear (CLIP, GLoRIA), ConVIRT overrides it with an MLP."""
        return nn.Linear(in_dim, options.proj_dim, bias=False)

    def encode_image(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, proj_dim) L2-normalised joint-space image embeddings."""
        return F.normalize(self.image_proj(self.backbone(x)), dim=1)

    def encode_text(self, ids: Tensor, mask: Tensor) -> Tensor:
        """ids, mask (B, L) -> (B, proj_dim) L2-normalised joint-space report embeddings."""
        return F.normalize(self.text_proj(self.text_encoder(ids, mask)["pooled"]), dim=1)

    def embed(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """The batch's projected image and report embeddings, (B, proj_dim) each, not normalised."""
        img = self.image_proj(self.backbone(batch["image"]))
        txt = self.text_proj(self.text_encoder(batch["ids"], batch["mask"])["pooled"])
        return img, txt

    def findings(self, batch: dict[str, Tensor]) -> Tensor | None:
        """The (B, K) soft-target findings when soft_targets is on, else None; MedsslError if the batch has none."""
        if not self.options.soft_targets:
            return None
        found = batch.get("findings")
        if found is None or found.ndim != 2 or found.shape[1] == 0:
            shape = None if found is None else tuple(found.shape)
            raise MedsslError(f"model.options.soft_targets needs the reports' findings (B, K >= 1); the batch has "
                              f"{shape}: turn soft_targets off for data without finding labels")
        return found

    @staticmethod
    def diagnostics(img: Tensor, txt: Tensor) -> dict[str, Tensor]:
        """pos_cos: mean cosine of the pairs; z_std: std of normalised image embeddings (~0 means collapse)."""
        i, t = F.normalize(img.detach(), dim=1), F.normalize(txt.detach(), dim=1)
        return {"pos_cos": (i * t).sum(dim=1).mean(), "z_std": i.std(dim=0).mean()}


class ConVIRT(ImageText):
    """ConVIRT (Zhang et al. 2020): non-linear projections; lambda * l(image -> text) + (1 - lambda) * l(text -> image),
    each direction InfoNCE over the batch (every rank's under DDP); the paper's lambda 0.75, temperature 0.1."""

    Options = ConVIRTOptions

    @staticmethod
    def projection(in_dim: int, options: ImageTextOptions) -> nn.Module:
        """Linear -> ReLU -> Linear, (B, in_dim) -> (B, proj_dim), as the paper's g_v and g_u."""
        return ProjectionHead(in_dim, options.hidden_dim or in_dim, options.proj_dim, batch_norm=False)

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Loss and diagnostics (temperature, pos_cos, z_std) of a batch of image-report pairs."""
        img, txt = self.embed(batch)                            # (B, proj_dim) each
        o = self.options
        loss = convirt_loss(img, txt, o.temperature, o.weight, findings=self.findings(batch))
        return {"loss": loss, "temperature": torch.tensor(o.temperature), **self.diagnostics(img, txt)}


class CLIP(ImageText):
    """CLIP (Radford et al. 2021): linear projections, symmetric InfoNCE with a learned temperature."""

    Options = CLIPOptions

    def __init__(self, backbone: nn.Module, options: CLIPOptions):
        super().__init__(backbone, options)
        self.loss = ClipLoss(options.init_temperature)          # its logit_scale is trained with the model

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Loss and diagnostics (temperature: the learned one, pos_cos, z_std)."""
        img, txt = self.embed(batch)
        loss = self.loss(img, txt, findings=self.findings(batch))
        return {"loss": loss, "temperature": torch.tensor(self.loss.temperature), **self.diagnostics(img, txt)}


class GLoRIA(ImageText):
    """GLoRIA (Huang et al. 2021): global InfoNCE plus word-to-region attention between image regions and words.

    Regions: the backbone's last feature map (B, R, feature_dim), projected by a 1x1 linear map to the text width;
    words: the text encoder's per-token features (B, L, text width). Departure from the reference: sub-word pieces
    are words of their own (the reference sums a word's pieces), since the model does not hold the tokenizer.
    """

    Options = GLoRIAOptions

    def __init__(self, backbone: nn.Module, options: GLoRIAOptions):
        super().__init__(backbone, options)
        self.region_proj = nn.Linear(int(backbone.feature_dim), int(self.text_encoder.feature_dim), bias=False)

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Loss (global_weight * global + local_weight * local) and diagnostics, both terms among them."""
        regions = image_regions(self.backbone, batch["image"])              # (B, R, feature_dim)
        text = self.text_encoder(batch["ids"], batch["mask"])
        img = self.image_proj(regions.mean(dim=1))                          # the backbone's pooled output
        txt = self.text_proj(text["pooled"])                                # (B, proj_dim)
        o = self.options
        out = gloria_loss(img, txt, self.region_proj(regions), text["tokens"], word_mask(text["mask"]),
                          tau1=o.tau1, gamma2=o.gamma2, tau3=o.tau3, local_weight=o.local_weight,
                          global_weight=o.global_weight, findings=self.findings(batch))
        return {"loss": out.loss, "global_loss": out.global_loss.detach(), "local_loss": out.local_loss.detach(),
                "temperature": torch.tensor(o.tau3), **self.diagnostics(img, txt)}

    @torch.no_grad()
    def attention(self, image: Tensor, ids: Tensor, mask: Tensor) -> Tensor:
        """Word-to-region attention of each image with its own report's words, (B, L, R) detached, for plots.

        Rows at [CLS], [SEP] and padding carry no meaning (word_mask(mask) is False there). Call it in eval mode, so
        that BatchNorm statistics stay as trained.
        """
        regions = self.region_proj(image_regions(self.backbone, image))    # (B, R, text width)
        tokens = self.text_encoder(ids, mask)["tokens"]
        o = self.options
        return gloria_local_loss(regions, tokens, word_mask(mask), tau1=o.tau1, gamma2=o.gamma2, tau3=o.tau3,
                                 gather=False)[1]

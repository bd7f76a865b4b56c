"""A report generator: an image encoder (a pretrained or aligned backbone), the memory projection, a decoder
(LSTM with attention or Transformer) and a finding head, trained as one `Trainable`.

Batches carry either the encoder's cached feature maps ("maps" (B, V, F, h, w), float16, when the encoder is frozen:
computed once, see medssl.report.train) or the images ("images" (B, V, C, S, S) float, when it is fine-tuned at
`encoder_lr_scale` of the rate), with "views" (B, V) bool, the report's token ids "ids" (B, L) and, where the data
has labels, "findings" (B, K) 0/1. The loss is the next-word cross-entropy plus `finding_weight` times the finding
head's binary cross-entropy: the head gives the per-finding probabilities a user sees beside the text.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medssl.errors import MedsslError
from medssl.models.decoders import DecoderSpec, MemoryProjection, build_decoder, masked_mean, token_loss
from medssl.models.trainable import Trainable


class ReportModel(Trainable):
    """Encoder + memory projection + decoder + finding head."""

    def __init__(self, spec: DecoderSpec, encoder: nn.Module, n_findings: int = 0, freeze_encoder: bool = True,
                 encoder_lr_scale: float = 0.1, finding_weight: float = 0.2, label_smoothing: float = 0.0):
        super().__init__()
        self.spec = spec.validate()
        self.encoder = encoder
        self.freeze_encoder = bool(freeze_encoder)
        self.encoder_lr_scale = float(encoder_lr_scale)
        self.finding_weight = float(finding_weight)
        self.label_smoothing = float(label_smoothing)
        self.memory_proj = MemoryProjection(spec)
        self.decoder = build_decoder(spec)
        self.findings = nn.Linear(spec.dim, n_findings) if n_findings else None
        if self.freeze_encoder:
            self.encoder.requires_grad_(False)

    def train(self, mode: bool = True) -> "ReportModel":
        """A frozen encoder stays in eval mode (its BatchNorm statistics are the pretrained ones)."""
        super().train(mode)
        if self.freeze_encoder:
            self.encoder.eval()
        return self

    def lr_scales(self) -> dict[str, float]:
        """The fine-tuned encoder learns at encoder_lr_scale of the decoder's rate."""
        return {} if self.freeze_encoder else {"encoder": self.encoder_lr_scale}

    def feature_maps(self, images: Tensor, views: Tensor) -> Tensor:
        """(B, V, C, S, S) model inputs -> the encoder's last feature maps (B, V, F, h, w); missing views zero."""
        b, v = images.shape[:2]
        have = views.reshape(-1)
        if not bool(have.any()):
            have = torch.ones_like(have)                      # nothing to encode: keep the shapes (all masked)
        present = self.encoder.forward_features(images.flatten(0, 1)[have])  # a missing view costs nothing
        if present.ndim != 4:
            raise MedsslError("report generation needs a convolutional encoder (feature maps); this one gives "
                              f"{present.ndim - 1}-D features")
        maps = present.new_zeros((b * v, *present.shape[1:]))
        maps[have] = present
        maps = maps.reshape(b, v, *present.shape[1:])
        return maps * views[:, :, None, None, None].to(maps.dtype)

    def memory(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """The decoder's memory (B, M, D) and mask from cached maps or from images."""
        views = batch["views"].bool()
        if "maps" in batch:
            maps = batch["maps"]
        else:
            with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_encoder):
                maps = self.feature_maps(batch["images"], views)
        return self.memory_proj(maps.float(), views)

    def finding_logits(self, memory: Tensor, mask: Tensor) -> Tensor | None:
        """(B, K) finding logits from the mean region, or None without a finding head."""
        return None if self.findings is None else self.findings(masked_mean(memory, mask))

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Teacher-forced next-word loss (+ the finding loss); logged: the word loss and the finding loss."""
        memory, mask = self.memory(batch)
        logits = self.decoder(memory, mask, batch["ids"])
        words = token_loss(logits, batch["ids"], self.spec.pad_id, self.label_smoothing)
        out = {"loss": words, "word_loss": words.detach()}
        if self.findings is not None and "findings" in batch and self.finding_weight > 0:
            found = F.binary_cross_entropy_with_logits(self.finding_logits(memory, mask), batch["findings"].float())
            out["loss"] = words + self.finding_weight * found
            out["finding_loss"] = found.detach()
        return out

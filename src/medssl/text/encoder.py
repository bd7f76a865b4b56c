"""The text encoder: a small pre-norm Transformer trained from scratch, or a local Hugging Face model folder.

forward(ids (B, L), mask (B, L)) -> {"pooled": (B, D), "tokens": (B, L, D), "mask": (B, L) bool}. `tokens` are the
per-token features GLoRIA attends over (zero at padding); `pooled` is one embedding per report for ConVIRT / CLIP.
Pooling: "mean" (the default) is the mean of the real tokens' features, [CLS] and [SEP] included, padding left out;
"cls" is the [CLS] position's feature. The mean is the default because a from-scratch encoder trained for a few
epochs has no pretraining task that teaches [CLS] to summarise, while a mean uses every word from the first step.
Padding never changes either: attention ignores padded keys and positions are absolute (padding sits on the right).

`TextSpec` is plain data stored in a checkpoint; `TextEncoder(TextSpec.from_dict(d))` rebuilds the module.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from medssl.errors import MedsslError
from medssl.schema import bad, check_choice, from_mapping, plain

POOLINGS = ("mean", "cls")


@dataclass(frozen=True)
class TextSpec:
    """What builds a text encoder. With hf_path, the folder's config gives vocabulary, width, depth and heads."""

    vocab_size: int = 8000
    width: int = 128
    depth: int = 2
    heads: int = 4
    context: int = 128
    pooling: str = "mean"
    dropout: float = 0.1
    hf_path: str | None = None

    def validate(self) -> TextSpec:
        """Raise MedsslError naming the first bad value; returns self."""
        for name in ("vocab_size", "width", "depth", "heads", "context"):
            if getattr(self, name) < 1:
                raise bad(f"text.{name}", getattr(self, name), "must be at least 1")
        if self.width % self.heads:
            raise bad("text.width", self.width, f"must be a multiple of text.heads={self.heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise bad("text.dropout", self.dropout, "must be in [0, 1)")
        check_choice("text.pooling", self.pooling, POOLINGS)
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain data for a checkpoint."""
        return plain(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TextSpec:
        """The spec that to_dict wrote (keys and types checked)."""
        return from_mapping(cls, data, "text.").validate()


def _load_hf(folder: str) -> nn.Module:
    """AutoModel of a local folder, no network; transformers is imported only here."""
    path = Path(folder)
    if not path.is_dir():
        raise MedsslError(f"text.hf_path={folder!r}: no such folder (a local Hugging Face model folder is needed)")
    try:
        from transformers import AutoModel
    except ImportError as e:
        raise MedsslError(f"text.hf_path={folder!r} needs `transformers` (pip install transformers)") from e
    try:
        return AutoModel.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as e:
        raise MedsslError(f"text.hf_path={folder!r}: cannot load a model ({str(e).splitlines()[0]})") from e


class TextEncoder(nn.Module):
    """Token + learned position embeddings -> depth pre-norm Transformer layers -> LayerNorm; or a HF model."""

    def __init__(self, spec: TextSpec):
        super().__init__()
        self.spec = spec.validate()
        self.hf: nn.Module | None = None
        if spec.hf_path:
            self.hf = _load_hf(spec.hf_path)
            self.feature_dim = int(self.hf.config.hidden_size)
            limit = getattr(self.hf.config, "max_position_embeddings", spec.context)
            if spec.context > limit:
                raise bad("text.context", spec.context, f"exceeds the model's max_position_embeddings={limit}")
            return
        self.feature_dim = spec.width
        self.token_embed = nn.Embedding(spec.vocab_size, spec.width)
        self.pos_embed = nn.Parameter(torch.zeros(1, spec.context, spec.width))
        layer = nn.TransformerEncoderLayer(spec.width, spec.heads, 4 * spec.width, spec.dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, spec.depth, norm=nn.LayerNorm(spec.width),
                                            enable_nested_tensor=False)
        nn.init.normal_(self.token_embed.weight, std=0.02)
        nn.init.normal_(self.pos_embed, std=0.02)

    def _check(self, ids: Tensor, mask: Tensor) -> Tensor:
        """mask as bool (B, L); MedsslError for shapes, lengths over the context, or rows with no token."""
        if ids.ndim != 2 or mask.shape != ids.shape:
            raise MedsslError(f"text encoder: ids {tuple(ids.shape)} and mask {tuple(mask.shape)} must both be (B, L)")
        if ids.shape[1] > self.spec.context:
            raise MedsslError(f"text encoder: {ids.shape[1]} tokens exceed the context of {self.spec.context}")
        mask = mask.bool()
        if not mask.any(dim=1).all():
            raise MedsslError("text encoder: a row of the batch has no token (its mask is all zero)")
        return mask

    def forward(self, ids: Tensor, mask: Tensor) -> dict[str, Tensor]:
        """ids (B, L) int64, mask (B, L) 1 = token -> pooled (B, D), tokens (B, L, D) zero at padding, mask (B, L)."""
        mask = self._check(ids, mask)
        if self.hf is not None:
            x = self.hf(input_ids=ids, attention_mask=mask.long()).last_hidden_state       # (B, L, D)
        else:
            x = self.token_embed(ids) + self.pos_embed[:, : ids.shape[1]]                  # (B, L, D)
            x = self.blocks(x, src_key_padding_mask=~mask)                                 # True = ignored key
        m = mask.unsqueeze(-1).to(x.dtype)                                                 # (B, L, 1)
        tokens = x * m
        if self.spec.pooling == "cls":
            pooled = x[:, 0]
        else:
            pooled = tokens.sum(1) / m.sum(1)                                              # (B, D)
        return {"pooled": pooled, "tokens": tokens, "mask": mask}


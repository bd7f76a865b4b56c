"""Report decoders over an image encoder's feature maps: an LSTM with soft attention (Show, Attend and Tell; Xu et
al. 2015) and a Transformer decoder with cross-attention, both behind one step-wise interface for generation.

What both see, `memory` (B, M, D) with `memory_mask` (B, M) (True = a real region): the regions of a study's
feature maps (a ResNet's last map, h x w regions per view), every view's regions joined (frontal then lateral, as
the IU X-ray papers do), projected to the decoder's width D with a learned view and region-position embedding
(`MemoryProjection`). A study with fewer views than the model takes has its missing views' regions masked out.

Token ids are the report tokenizer's: [CLS] starts a report (BOS), [SEP] ends it (EOS), [PAD] pads. Training is
teacher-forced: `forward(memory, memory_mask, ids)` gives the logits (B, L - 1, V) of ids[:, 1:] from ids[:, :-1].
Generation (medssl.report.generate) asks `start(memory, memory_mask) -> state` and `step(state, tokens (N,)) ->
(logits (N, V), state)`; a state is a dict of tensors whose first dimension is the row, so a beam search reorders
it with `index_select`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medssl.errors import MedsslError
from medssl.schema import from_mapping, plain

KINDS = ("lstm", "transformer")


@dataclass(frozen=True)
class DecoderSpec:
    """Everything that builds a decoder; stored as plain data in a report checkpoint."""

    kind: str = "lstm"
    vocab_size: int = 2000  # the tokenizer's (special tokens included): checked against it when a run is loaded
    feature_dim: int = 512  # channels of the encoder's feature map
    regions: int = 16  # regions (h x w) of one view's feature map
    views: int = 2  # views per study the memory holds (frontal + lateral)
    dim: int = 256  # decoder width (embedding, LSTM hidden, Transformer d_model)
    layers: int = 2  # Transformer decoder layers (the LSTM has one)
    heads: int = 4
    dropout: float = 0.1
    max_len: int = 100  # longest report in tokens, [CLS] and [SEP] included (Transformer positions)
    bos_id: int = 2
    eos_id: int = 3
    pad_id: int = 0

    def validate(self) -> "DecoderSpec":
        """Raise MedsslError naming the first bad value; return self."""
        if self.kind not in KINDS:
            raise MedsslError(f"report.decoder {self.kind!r}: choose one of {', '.join(KINDS)}")
        for name in ("vocab_size", "feature_dim", "regions", "views", "dim", "layers", "heads", "max_len"):
            if int(getattr(self, name)) < 1:
                raise MedsslError(f"report.{name}={getattr(self, name)} must be at least 1")
        if self.kind == "transformer" and self.dim % self.heads:
            raise MedsslError(f"report.dim={self.dim} must be divisible by report.heads={self.heads}")
        if not 0 <= self.dropout < 1:
            raise MedsslError(f"report.dropout={self.dropout} must lie in [0, 1)")
        if self.max_len < 3:
            raise MedsslError(f"report.max_len={self.max_len} must be at least 3 ([CLS], a token, [SEP])")
        return self

    def to_dict(self) -> dict:
        """Plain data (for checkpoints)."""
        return plain(self)

    @classmethod
    def from_dict(cls, data: dict) -> "DecoderSpec":
        """The spec of to_dict's output."""
        return from_mapping(cls, data, "decoder.")


class MemoryProjection(nn.Module):
    """Feature maps of V views (B, V, F, h, w) -> memory (B, V * h * w, D) and its mask; masked mean (B, D)."""

    def __init__(self, spec: DecoderSpec):
        super().__init__()
        self.spec = spec
        self.proj = nn.Linear(spec.feature_dim, spec.dim)
        self.norm = nn.LayerNorm(spec.dim)
        self.view = nn.Parameter(torch.zeros(spec.views, 1, spec.dim))
        self.position = nn.Parameter(torch.zeros(1, spec.regions, spec.dim))
        nn.init.normal_(self.view, std=0.02)
        nn.init.normal_(self.position, std=0.02)

    def forward(self, maps: Tensor, views: Tensor) -> tuple[Tensor, Tensor]:
        """maps (B, V, F, h, w) float, views (B, V) bool (True = the view exists) -> (memory, mask (B, V h w))."""
        b, v, f, h, w = maps.shape
        if v != self.spec.views or h * w != self.spec.regions or f != self.spec.feature_dim:
            raise MedsslError(f"feature maps {tuple(maps.shape[1:])} do not fit the decoder (views {self.spec.views}, "
                              f"{self.spec.feature_dim} channels, {self.spec.regions} regions): was the encoder or "
                              "the image size changed?")
        x = maps.flatten(3).transpose(2, 3)                             # (B, V, R, F)
        x = self.norm(self.proj(x.float())) + self.view + self.position  # (B, V, R, D)
        mask = views[:, :, None].expand(b, v, h * w)
        return x.reshape(b, v * h * w, -1), mask.reshape(b, v * h * w)


def masked_mean(memory: Tensor, mask: Tensor) -> Tensor:
    """(B, M, D), (B, M) bool -> (B, D): the mean over real regions."""
    m = mask.to(memory.dtype)[..., None]
    return (memory * m).sum(1) / m.sum(1).clamp_min(1.0)


class LSTMDecoder(nn.Module):
    """Show, Attend and Tell: an LSTM whose input at every step is the previous word and an attention-weighted
    context of the regions (additive attention, gated by the hidden state), initialised from the mean region."""

    def __init__(self, spec: DecoderSpec):
        super().__init__()
        d = spec.dim
        self.spec = spec
        self.embed = nn.Embedding(spec.vocab_size, d, padding_idx=spec.pad_id)
        self.init_h, self.init_c = nn.Linear(d, d), nn.Linear(d, d)
        self.att_memory, self.att_hidden = nn.Linear(d, d), nn.Linear(d, d)
        self.att_score = nn.Linear(d, 1)
        self.gate = nn.Linear(d, d)
        self.cell = nn.LSTMCell(2 * d, d)
        self.drop = nn.Dropout(spec.dropout)
        self.out_hidden, self.out_context = nn.Linear(d, d), nn.Linear(d, d)
        self.out = nn.Linear(d, spec.vocab_size)

    @staticmethod
    def static_state(key: str) -> bool:
        """State entries that depend on the study only (the same for all its beams: a beam search need not reorder
        them, since it reorders hypotheses within a study)."""
        return key in ("memory", "keys", "mask")

    def start(self, memory: Tensor, mask: Tensor) -> dict[str, Tensor]:
        """The state before the first word: h, c from the mean region; the memory and its attention keys."""
        mean = masked_mean(memory, mask)
        return {"h": torch.tanh(self.init_h(mean)), "c": torch.tanh(self.init_c(mean)), "memory": memory,
                "keys": self.att_memory(memory), "mask": mask}

    def _attend(self, state: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(context (N, D), attention weights (N, M)) for the current hidden state."""
        e = self.att_score(torch.tanh(state["keys"] + self.att_hidden(state["h"])[:, None])).squeeze(-1)
        alpha = e.masked_fill(~state["mask"], float("-inf")).softmax(dim=1)
        context = torch.bmm(alpha[:, None], state["memory"]).squeeze(1)
        return torch.sigmoid(self.gate(state["h"])) * context, alpha

    def step(self, state: dict[str, Tensor], tokens: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """One word in (N,) -> logits of the next (N, V) and the new state."""
        context, _ = self._attend(state)
        w = self.embed(tokens)
        h, c = self.cell(torch.cat([w, context], dim=1), (state["h"], state["c"]))
        logits = self.out(self.drop(w + self.out_hidden(h) + self.out_context(context)))  # the paper's deep output
        return logits, {**state, "h": h, "c": c}

    def forward(self, memory: Tensor, mask: Tensor, ids: Tensor) -> Tensor:
        """Teacher forcing: (B, L) ids -> logits (B, L - 1, V) of ids[:, 1:]."""
        state = self.start(memory, mask)
        out = []
        for t in range(ids.shape[1] - 1):
            logits, state = self.step(state, ids[:, t])
            out.append(logits)
        return torch.stack(out, dim=1)


def sinusoids(length: int, dim: int) -> Tensor:
    """(length, dim) sinusoidal positions of Vaswani et al. 2017: sin and cos of pos / 10000 ** (2i / dim)."""
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    out = torch.zeros(length, dim)
    out[:, 0::2] = torch.sin(pos * freq)
    out[:, 1::2] = torch.cos(pos * freq)[:, : dim // 2]
    return out


class TransformerDecoder(nn.Module):
    """Pre-norm Transformer decoder: causal self-attention over the words, cross-attention to the regions; the
    output projection shares the word embedding's weights."""

    def __init__(self, spec: DecoderSpec):
        super().__init__()
        d = spec.dim
        self.spec = spec
        self.embed = nn.Embedding(spec.vocab_size, d, padding_idx=spec.pad_id)
        # fairseq's initialisation: N(0, 1 / d) words scaled by sqrt(d) are unit-size inputs, and the tied output's
        # initial logits are unit-size too (with nn.Embedding's N(0, 1) they were sqrt(d) wide: a peaked start)
        nn.init.normal_(self.embed.weight, std=d ** -0.5)
        with torch.no_grad():
            self.embed.weight[spec.pad_id].zero_()
        self.position = nn.Parameter(sinusoids(spec.max_len, d)[None])  # learned from the sinusoids (unit size)
        layer = nn.TransformerDecoderLayer(d, spec.heads, 4 * d, spec.dropout, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.layers = nn.TransformerDecoder(layer, spec.layers, norm=nn.LayerNorm(d))
        self.drop = nn.Dropout(spec.dropout)

    def _logits(self, prefix: Tensor, memory: Tensor, mask: Tensor) -> Tensor:
        """(N, t) words -> (N, t, V) logits of each next word."""
        t = prefix.shape[1]
        if t > self.spec.max_len:
            raise MedsslError(f"a report of {t} tokens is longer than the decoder's max_len {self.spec.max_len}")
        x = self.drop(self.embed(prefix) * math.sqrt(self.spec.dim) + self.position[:, :t])
        causal = torch.ones(t, t, dtype=torch.bool, device=prefix.device).triu(1)  # True = may not attend
        pad = prefix == self.spec.pad_id
        pad[:, 0] = False  # the first word is [CLS]; never let a row be all padding
        h = self.layers(x, memory, tgt_mask=causal, tgt_key_padding_mask=pad, memory_key_padding_mask=~mask,
                        tgt_is_causal=True)
        return h @ self.embed.weight.t()

    def _heads(self, x: Tensor) -> Tensor:
        """(N, t, D) -> (N, H, t, D / H)."""
        n, t, d = x.shape
        return x.view(n, t, self.spec.heads, d // self.spec.heads).transpose(1, 2)

    def _attend(self, attn: nn.MultiheadAttention, q: Tensor, k: Tensor, v: Tensor,
                mask: Tensor | None = None) -> Tensor:
        """nn.MultiheadAttention's output for one query position (N, 1, D) over projected heads k, v."""
        q = F.linear(q, *_in_proj(attn, 0))
        a = F.scaled_dot_product_attention(self._heads(q), k, v, attn_mask=mask)
        return attn.out_proj(a.transpose(1, 2).reshape(q.shape))

    @staticmethod
    def static_state(key: str) -> bool:
        """The regions' keys and values and their mask depend on the study only (see LSTMDecoder.static_state)."""
        return key == "mask" or key.startswith(("mk", "mv"))

    def start(self, memory: Tensor, mask: Tensor) -> dict[str, Tensor]:
        """The state before the first word: every layer's projected keys and values of the regions (computed once)
        and of the words so far (none yet), so each step runs the new word only: a key-value cache."""
        n = memory.shape[0]
        state = {"mask": mask[:, None, None, :]}
        for i, layer in enumerate(self.layers.layers):
            state[f"mk{i}"] = self._heads(F.linear(memory, *_in_proj(layer.multihead_attn, 1)))
            state[f"mv{i}"] = self._heads(F.linear(memory, *_in_proj(layer.multihead_attn, 2)))
            empty = memory.new_zeros((n, self.spec.heads, 0, self.spec.dim // self.spec.heads))
            state[f"k{i}"], state[f"v{i}"] = empty, empty
        return state

    def step(self, state: dict[str, Tensor], tokens: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """One word in (N,) -> logits of the next (N, V); the same function as the last position of `forward` on
        the whole prefix (tested), at the cost of one position per step."""
        t = state["k0"].shape[2]
        if t + 1 > self.spec.max_len:
            raise MedsslError(f"a report of {t + 1} tokens is longer than the decoder's max_len {self.spec.max_len}")
        x = self.drop(self.embed(tokens)[:, None] * math.sqrt(self.spec.dim) + self.position[:, t: t + 1])
        new = dict(state)
        for i, layer in enumerate(self.layers.layers):           # nn.TransformerDecoderLayer, norm_first
            h = layer.norm1(x)
            new[f"k{i}"] = torch.cat([state[f"k{i}"], self._heads(F.linear(h, *_in_proj(layer.self_attn, 1)))], 2)
            new[f"v{i}"] = torch.cat([state[f"v{i}"], self._heads(F.linear(h, *_in_proj(layer.self_attn, 2)))], 2)
            x = x + layer.dropout1(self._attend(layer.self_attn, h, new[f"k{i}"], new[f"v{i}"]))
            x = x + layer.dropout2(self._attend(layer.multihead_attn, layer.norm2(x), state[f"mk{i}"],
                                                state[f"mv{i}"], state["mask"]))
            h = layer.norm3(x)
            x = x + layer.dropout3(layer.linear2(layer.dropout(layer.activation(layer.linear1(h)))))
        return self.layers.norm(x)[:, 0] @ self.embed.weight.t(), new

    def forward(self, memory: Tensor, mask: Tensor, ids: Tensor) -> Tensor:
        """Teacher forcing: (B, L) ids -> logits (B, L - 1, V) of ids[:, 1:]."""
        return self._logits(ids[:, :-1], memory, mask)


def _in_proj(attn: nn.MultiheadAttention, which: int) -> tuple[Tensor, Tensor | None]:
    """The query (0), key (1) or value (2) slice of nn.MultiheadAttention's packed input projection."""
    d = attn.embed_dim
    w = attn.in_proj_weight[which * d: (which + 1) * d]
    return w, None if attn.in_proj_bias is None else attn.in_proj_bias[which * d: (which + 1) * d]


def build_decoder(spec: DecoderSpec) -> nn.Module:
    """The decoder a spec names (freshly initialised from the global torch RNG)."""
    spec.validate()
    return LSTMDecoder(spec) if spec.kind == "lstm" else TransformerDecoder(spec)


def token_loss(logits: Tensor, ids: Tensor, pad_id: int, label_smoothing: float = 0.0) -> Tensor:
    """Mean cross-entropy of the next words ids[:, 1:] over real (non-padding) positions."""
    target = ids[:, 1:]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=pad_id,
                           label_smoothing=label_smoothing)

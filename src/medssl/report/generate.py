"""Decoding a report from a decoder's step-wise interface: greedy and beam search, with a maximum length, a length
penalty and repeated-trigram blocking.

Both work on a batch of studies at once. `decoder.start(memory, mask)` gives a state (a dict of tensors, one row
per hypothesis) and `decoder.step(state, tokens)` the next-word logits; beam search keeps `beam` rows per study and
reorders the state with index_select. Scores are summed log-probabilities; a finished hypothesis (it chose [SEP])
is ranked by score / lp(length), GNMT's length penalty lp(n) = ((5 + n) / 6) ** alpha (Wu et al. 2016; alpha 0
ranks by the raw sum, which favours short reports). Trigram blocking (Paulus et al. 2018) forbids a word that would
repeat a trigram already in the hypothesis, the usual cure for a decoder that loops ("no effusion. no effusion.").
With beam 1 the search is exactly greedy decoding: the same words, tested.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from medssl.errors import MedsslError


@dataclass(frozen=True)
class GenerateConfig:
    """How reports are decoded (a config's `generate:` section)."""

    beam: int = 3
    max_len: int = 100  # tokens after [CLS], [SEP] included; also capped by the decoder's own max_len
    length_penalty: float = 1.0  # alpha of GNMT's lp; 0 = none
    block_trigrams: bool = True

    def validate(self) -> "GenerateConfig":
        """Raise MedsslError naming a bad value; return self."""
        if self.beam < 1:
            raise MedsslError(f"generate.beam={self.beam} must be at least 1 (1 = greedy)")
        if self.max_len < 1:
            raise MedsslError(f"generate.max_len={self.max_len} must be at least 1")
        if self.length_penalty < 0:
            raise MedsslError(f"generate.length_penalty={self.length_penalty} must be at least 0")
        return self


def length_penalty(n: int, alpha: float) -> float:
    """GNMT's lp(n) = ((5 + n) / 6) ** alpha."""
    return ((5.0 + n) / 6.0) ** alpha


class _Trigrams:
    """Per hypothesis: the words seen after each bigram, so the words that would repeat a trigram are known in
    O(1) per step."""

    def __init__(self, rows: int):
        self.seen: list[dict[tuple[int, int], set[int]]] = [{} for _ in range(rows)]

    def add(self, row: int, words: list[int]) -> None:
        """Record the trigram ending at the last word of `words` (the hypothesis so far)."""
        if len(words) >= 3:
            self.seen[row].setdefault((words[-3], words[-2]), set()).add(words[-1])

    def banned(self, row: int, words: list[int]) -> set[int]:
        """Words that would complete a trigram already in the hypothesis."""
        return self.seen[row].get((words[-2], words[-1]), set()) if len(words) >= 2 else set()

    def reorder(self, rows: list[int]) -> None:
        """Follow the beams: row i of the new state continues old row rows[i]."""
        self.seen = [{k: set(v) for k, v in self.seen[r].items()} for r in rows]


def _mask_logprobs(logp: Tensor, words: list[list[int]], trigrams: _Trigrams | None, never: list[int]) -> Tensor:
    """log-probabilities with [CLS] / [PAD] and trigram-repeating words set to -inf (in place)."""
    logp[:, never] = float("-inf")
    if trigrams is not None:
        for row, hyp in enumerate(words):
            banned = trigrams.banned(row, hyp)
            if banned:
                logp[row, list(banned)] = float("-inf")
    return logp


def _limit(decoder: nn.Module, cfg: GenerateConfig) -> int:
    """Steps to run: the config's max_len, within the decoder's positions ([CLS] takes one)."""
    spec = getattr(decoder, "spec", None)
    return min(cfg.max_len, int(spec.max_len) - 1) if spec is not None else cfg.max_len


@torch.no_grad()
def greedy(decoder: nn.Module, memory: Tensor, mask: Tensor, cfg: GenerateConfig = GenerateConfig()
           ) -> list[list[int]]:
    """The most probable next word at every step until [SEP] or max_len; token ids without [CLS] / [SEP]."""
    spec = decoder.spec
    n = memory.shape[0]
    state = decoder.start(memory, mask)
    words: list[list[int]] = [[spec.bos_id] for _ in range(n)]
    done = [False] * n
    trigrams = _Trigrams(n) if cfg.block_trigrams else None
    tokens = torch.full((n,), spec.bos_id, dtype=torch.long, device=memory.device)
    for _ in range(_limit(decoder, cfg)):
        logits, state = decoder.step(state, tokens)
        logp = _mask_logprobs(logits.float().log_softmax(-1), words, trigrams, [spec.bos_id, spec.pad_id])
        tokens = logp.argmax(-1)
        for i, t in enumerate(tokens.tolist()):
            if done[i]:
                continue
            if t == spec.eos_id:
                done[i] = True
                continue
            words[i].append(t)
            if trigrams is not None:
                trigrams.add(i, words[i])
        if all(done):
            break
    return [w[1:] for w in words]


def _settled(finished: list[tuple[float, list[int]]], alive: list[tuple[int, int, float]], k: int, length: int,
             alpha: float) -> bool:
    """A study is settled when it holds k finished hypotheses and no live one, ending at the next step, would rank
    above the k-th best of them (Hugging Face's heuristic; with log-probabilities only falling, later endings are
    assumed no better)."""
    if len(finished) < k:
        return False
    if not alive:
        return True
    kth = sorted((f[0] for f in finished), reverse=True)[k - 1]
    return max(s for _, _, s in alive) / length_penalty(length, alpha) <= kth


@torch.no_grad()
def beam_search(decoder: nn.Module, memory: Tensor, mask: Tensor, cfg: GenerateConfig = GenerateConfig()
                ) -> list[list[int]]:
    """The best hypothesis per study under score / lp(length); token ids without [CLS] / [SEP].

    Candidates are the 2 * beam best extensions; one ending in [SEP] finishes a hypothesis only when it ranks
    among the beam best (as in fairseq), the others continue. A study is done when it holds `beam` finished
    hypotheses and no live one could still rank above them (`_settled`, Hugging Face's heuristic); at max_len the
    unfinished ones compete with the finished ones under the same penalty. With beam 1 and no length penalty this
    is exactly greedy decoding (tested); `generate` decodes beam 1 greedily whatever the penalty, as Hugging Face
    does.
    """
    cfg.validate()
    spec, k = decoder.spec, cfg.beam
    n = memory.shape[0]
    rows = torch.arange(n, device=memory.device).repeat_interleave(k)
    state = decoder.start(memory[rows], mask[rows])
    words: list[list[int]] = [[spec.bos_id] for _ in range(n * k)]
    scores = torch.zeros(n, k, device=memory.device)
    scores[:, 1:] = float("-inf")                             # all beams start equal: keep one until the first step
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(n)]
    done = [False] * n
    trigrams = _Trigrams(n * k) if cfg.block_trigrams else None
    tokens = torch.full((n * k,), spec.bos_id, dtype=torch.long, device=memory.device)
    steps = _limit(decoder, cfg)
    static = getattr(decoder, "static_state", lambda key: False)  # the same for every beam of a study: not reordered
    for step in range(steps):
        logits, state = decoder.step(state, tokens)
        logp = _mask_logprobs(logits.float().log_softmax(-1), words, trigrams, [spec.bos_id, spec.pad_id])
        vocab = logp.shape[1]
        total = (scores.reshape(-1, 1) + logp).reshape(n, k * vocab)
        top_scores, top_ids = total.topk(2 * k, dim=1)
        keep_rows, keep_words, keep_scores = [], [], []
        for b in range(n):
            chosen: list[tuple[int, int, float]] = []
            if not done[b]:
                for rank, (s, idx) in enumerate(zip(top_scores[b].tolist(), top_ids[b].tolist())):
                    if s == float("-inf"):
                        break
                    row, word = b * k + idx // vocab, idx % vocab
                    if word == spec.eos_id:
                        if rank >= k:                         # an ending outside the beam's k best is not taken
                            continue
                        hyp = words[row][1:]
                        finished[b].append((s / length_penalty(len(hyp) + 1, cfg.length_penalty), hyp))
                        continue
                    chosen.append((row, word, s))
                    if len(chosen) == k:
                        break
                done[b] = _settled(finished[b], chosen, k, step + 2, cfg.length_penalty)
            while len(chosen) < k:                            # a done study (or one short of words) keeps rows
                chosen.append((b * k, spec.eos_id, float("-inf")))
            for row, word, s in chosen:
                keep_rows.append(row)
                keep_words.append(word)
                keep_scores.append(s)
        if all(done):
            break
        order = torch.tensor(keep_rows, device=memory.device)
        state = {key: v if static(key) else v.index_select(0, order) for key, v in state.items()}
        words = [words[r] + [w] for r, w in zip(keep_rows, keep_words)]
        if trigrams is not None:
            trigrams.reorder(keep_rows)
            for row, hyp in enumerate(words):
                trigrams.add(row, hyp)
        scores = torch.tensor(keep_scores, device=memory.device).reshape(n, k)
        tokens = torch.tensor(keep_words, device=memory.device)
    best: list[list[int]] = []
    for b in range(n):
        pool = list(finished[b])
        if len(pool) < k:                                     # max_len reached: the unfinished ones compete too
            for j in range(k):
                s = float(scores[b, j])
                if s > float("-inf"):
                    hyp = words[b * k + j][1:]
                    pool.append((s / length_penalty(len(hyp), cfg.length_penalty), hyp))
        best.append(max(pool, key=lambda p: p[0])[1] if pool else [])
    return best


def generate(decoder: nn.Module, memory: Tensor, mask: Tensor, cfg: GenerateConfig = GenerateConfig()
             ) -> list[list[int]]:
    """Greedy for beam 1, else beam search (the decoder in eval mode, no gradients)."""
    cfg.validate()
    was = decoder.training
    decoder.eval()
    try:
        return greedy(decoder, memory, mask, cfg) if cfg.beam == 1 else beam_search(decoder, memory, mask, cfg)
    finally:
        decoder.train(was)

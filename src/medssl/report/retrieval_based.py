"""Retrieval-based reports (CXR-RePaiR; Endo et al. 2021): an image-text model scores every sentence of the
training reports against the image; the report is the top k sentences, best first, skipping any sentence that
nearly repeats one already chosen.

Near-duplicate: the Jaccard overlap of the two sentences' word sets is at least `dup_jaccard` ("small left
pleural effusion." and "small left pleural effusion is present." overlap 4/6). Without the check the top k of a
templated corpus is the same statement k times, which costs precision and says nothing more. A contradiction (a
sentence that states as negative a finding a chosen one states as positive or uncertain, or the reverse, by the
finding labeller) is skipped too, as CXR-ReDonE (Ramesh et al. 2022) does.

Hubs: a sentence that scores high against every image ("there is consolidation in the right middle lobe" for
most images of a run whose text embeddings crowd) would be chosen for all. `bias` (one per sentence, its mean
score over the training images) is subtracted when given: the sentence is then ranked by how much more it fits
this image than images in general (the centring of CSLS, Conneau et al. 2018). Whether to centre, and k, are
chosen on the validation split (medssl.report.retrieval_train): the trade is recall (more sentences state more
findings) against precision.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from medssl.errors import MedsslError

_WORD = re.compile(r"[a-z0-9]+")
CANDIDATES = 64  # per chosen sentence, the best-scored sentences looked at (near-duplicates are skipped)


def word_set(sentence: str) -> frozenset[str]:
    """The lower-case words and numbers of a sentence."""
    return frozenset(_WORD.findall(sentence.lower()))


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    """|a & b| / |a | b| (1.0 for two empty sets)."""
    return len(a & b) / len(a | b) if a or b else 1.0


def contradicts(a: dict[str, str], b: dict[str, str]) -> bool:
    """Whether two sentences' finding statuses disagree on a finding (negative against positive or uncertain)."""
    return any((a[o] == "negative") != (b[o] == "negative") for o in a.keys() & b.keys() if o != "no_finding")


def select(scores: np.ndarray, words: Sequence[frozenset[str]], k: int, dup_jaccard: float,
           statuses: Sequence[dict[str, str]] | None = None) -> list[int]:
    """Indices of the k best-scored sentences, best first, none a near-duplicate of an earlier one nor (with
    statuses: the labeller's per sentence) contradicting one."""
    if k < 1:
        raise MedsslError(f"retrieval: k={k} must be at least 1")
    n = len(scores)
    depth = min(n, CANDIDATES * k)
    top = np.argpartition(-scores, depth - 1)[:depth] if depth < n else np.arange(n)
    top = top[np.argsort(-scores[top], kind="stable")]
    chosen: list[int] = []
    for i in top.tolist():
        if all(jaccard(words[i], words[j]) < dup_jaccard
               and (statuses is None or not contradicts(statuses[i], statuses[j])) for j in chosen):
            chosen.append(i)
            if len(chosen) == k:
                break
    return chosen


def compose(sentences: Sequence[str]) -> str:
    """Sentences joined as one report, each ending with its period."""
    return " ".join(s if s.rstrip().endswith((".", "!", "?")) else s.rstrip() + "." for s in sentences)


def retrieve_reports(queries: np.ndarray, bank: np.ndarray, texts: Sequence[str], k: int, dup_jaccard: float,
                     words: Sequence[frozenset[str]] | None = None, statuses: Sequence[dict[str, str]] | None = None,
                     bias: np.ndarray | None = None) -> list[tuple[str, list[tuple[str, float]]]]:
    """Per query embedding (N, D) (unit rows, as the bank's (M, D)): (report, [(sentence, cosine), ...]); ranked
    by cosine - bias when bias (M,) is given, the cosine reported either way."""
    if bank.ndim != 2 or queries.ndim != 2 or queries.shape[1] != bank.shape[1]:
        raise MedsslError(f"retrieval: query embeddings {queries.shape} do not match the sentence bank {bank.shape}")
    if len(texts) != len(bank) or not len(texts):
        raise MedsslError(f"retrieval: {len(texts)} sentences for {len(bank)} embeddings")
    words = list(words) if words is not None else [word_set(t) for t in texts]
    out = []
    scores = queries.astype(np.float32) @ bank.astype(np.float32).T        # (N, M) cosines
    for row in scores:
        chosen = select(row - bias if bias is not None else row, words, k, dup_jaccard, statuses)
        out.append((compose([texts[i] for i in chosen]), [(texts[i], float(row[i])) for i in chosen]))
    return out

"""Retrieval scores where a hit shares a finding label with the query: Precision@K, Recall@K, mean average precision
and the chance level of a random ranking. Generic over the direction (image-to-image, text-to-image, image-to-text):
each takes the queries' labels, the gallery's labels and a ranking of gallery positions.

The rules:
- Labels are sets of finding names. An item with no finding carries the label `NO_FINDING` (`label_set` and
  `label_sets` add it), so two normal studies match each other and a normal study never matches an abnormal one;
  an item whose label set is empty (unlabelled) matches nothing.
- Multi-label: a gallery item is a hit when it shares at least one label with the query.
- The query's own patient is excluded: when patients are given, gallery items of the query's patient are dropped
  from the ranking (the rest move up) and from the relevant count and the chance level.
- Rankings are (Q, L) gallery positions best first; -1 marks an empty slot (an index with too few items), a miss.
- Precision@K = hits in the top K / K. Recall@K = hits in the top K / relevant items in the gallery.
  AP = sum of Precision@i over the hit positions i <= L, divided by min(relevant, L): the usual average precision
  when the ranking covers the whole gallery, and 1 for a truncated ranking that is all hits. Recall and AP average
  over the queries that have at least one relevant item (the rest have none to find); precision averages over all.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from medssl.errors import MedsslError

NO_FINDING = "no finding"
CHUNK = 256  # queries per block of the (queries, gallery) label-overlap matrix: 256 x 100,000 booleans = 25 MB


def label_set(findings: Iterable[str]) -> frozenset[str]:
    """The label set of an item with these findings: {NO_FINDING} when there are none."""
    s = frozenset(str(f) for f in findings)
    return s if s else frozenset([NO_FINDING])


def label_sets(targets: np.ndarray, names: Sequence[str]) -> list[frozenset[str]]:
    """Label sets from multi-hot targets (N, C) with class names (C,); a row with no positive gets {NO_FINDING}."""
    y = np.asarray(targets)
    if y.ndim != 2 or y.shape[1] != len(names):
        raise MedsslError(f"retrieval labels: expected targets (N, {len(names)}), got shape {y.shape}")
    return [label_set(names[j] for j in np.flatnonzero(row > 0.5)) for row in y]


def _multi_hot(query_labels: Sequence[Iterable[str]], gallery_labels: Sequence[Iterable[str]]):
    """(Q, C) and (G, C) float32 indicator matrices over the union of the labels."""
    qs, gs = [frozenset(ls) for ls in query_labels], [frozenset(ls) for ls in gallery_labels]
    vocab = {name: j for j, name in enumerate(sorted(set().union(*qs, *gs)))}

    def encode(sets):
        m = np.zeros((len(sets), max(1, len(vocab))), dtype=np.float32)
        for i, s in enumerate(sets):
            m[i, [vocab[x] for x in s]] = 1.0
        return m

    return encode(qs), encode(gs)


def _patients(query_patients, gallery_patients, n_q: int, n_g: int):
    """Integer patient codes (Q,), (G,) shared by both sides, or (None, None) when patients are not given."""
    if (query_patients is None) != (gallery_patients is None):
        raise MedsslError("retrieval: give both query_patients and gallery_patients, or neither")
    if query_patients is None:
        return None, None
    if len(query_patients) != n_q or len(gallery_patients) != n_g:
        raise MedsslError(f"retrieval: {len(query_patients)} query patients for {n_q} queries, "
                          f"{len(gallery_patients)} gallery patients for {n_g} gallery items")
    codes: dict[str, int] = {}
    qp = np.array([codes.setdefault(str(p), len(codes)) for p in query_patients])
    gp = np.array([codes.setdefault(str(p), len(codes)) for p in gallery_patients])
    return qp, gp


def relevance(ranked: np.ndarray, query_labels: Sequence[Iterable[str]], gallery_labels: Sequence[Iterable[str]],
              query_patients: Sequence[str] | None = None, gallery_patients: Sequence[str] | None = None):
    """(hits (Q, L) bool, n_relevant (Q,) int, eligible (Q,) int): whether each ranked item shares a label with its
    query after the query's own patient is dropped from the ranking (later items move up, empty slots at the end),
    how many gallery items of other patients share a label, and how many gallery items are of other patients."""
    ranked = np.asarray(ranked)
    n_q, n_g = len(query_labels), len(gallery_labels)
    if ranked.ndim != 2 or ranked.shape[0] != n_q:
        raise MedsslError(f"retrieval: ranking of shape {ranked.shape} for {n_q} queries (expected ({n_q}, L))")
    if not np.issubdtype(ranked.dtype, np.integer) or (ranked.size and (ranked.max() >= n_g or ranked.min() < -1)):
        raise MedsslError(f"retrieval: ranking must hold gallery positions in [0, {n_g}) or -1 for an empty slot")
    qm, gm = _multi_hot(query_labels, gallery_labels)
    qp, gp = _patients(query_patients, gallery_patients, n_q, n_g)
    hits = np.zeros(ranked.shape, dtype=bool)
    n_rel, eligible = np.zeros(n_q, dtype=np.int64), np.full(n_q, n_g, dtype=np.int64)
    for lo in range(0, n_q, CHUNK):
        sl = slice(lo, lo + CHUNK)
        shares = (qm[sl] @ gm.T) > 0                                       # (chunk, G)
        if qp is not None:
            other = qp[sl, None] != gp[None, :]                            # (chunk, G)
            shares &= other
            eligible[sl] = other.sum(1)
        n_rel[sl] = shares.sum(1)
        for i in range(sl.start, min(sl.stop, n_q)):
            row = ranked[i]
            if qp is not None:
                row = row[(row < 0) | (gp[np.maximum(row, 0)] != qp[i])]  # the query's own patient is dropped
            h = (row >= 0) & shares[i - lo, np.maximum(row, 0)]
            hits[i, :len(h)] = h
    return hits, n_rel, eligible


def _check_k(k: int, hits: np.ndarray) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise MedsslError(f"retrieval: K must be a whole number >= 1, got {k!r}")
    if k > hits.shape[1]:
        raise MedsslError(f"retrieval: K={k} but the ranking holds only {hits.shape[1]} items per query")
    return int(k)


def precision_at_k(hits: np.ndarray, k: int) -> float:
    """Mean over queries of (hits in the top k) / k. hits: (Q, L) bool, best first."""
    k = _check_k(k, hits)
    return float(hits[:, :k].sum(1).mean() / k)


def recall_at_k(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> float:
    """Mean over queries with a relevant item of (hits in the top k) / (relevant items); NaN if no query has one."""
    k = _check_k(k, hits)
    has = n_relevant > 0
    return float((hits[has, :k].sum(1) / n_relevant[has]).mean()) if has.any() else float("nan")


def average_precision(hits: np.ndarray, n_relevant: np.ndarray) -> np.ndarray:
    """AP per query (Q,): sum of precision@i at each hit i, / min(relevant, L); NaN where nothing is relevant."""
    ranks = np.arange(1, hits.shape[1] + 1)
    prec = np.cumsum(hits, axis=1) / ranks                                   # (Q, L) precision@i
    denom = np.minimum(n_relevant, hits.shape[1]).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = (prec * hits).sum(1) / denom
    return np.where(n_relevant > 0, ap, np.nan)


def chance_precision(n_relevant: np.ndarray, eligible: np.ndarray) -> float:
    """Expected Precision@K (any K) of a random ranking of the eligible gallery: the fraction of other-patient
    gallery items that share a label with the query, averaged over queries that have any eligible item."""
    ok = eligible > 0
    return float((n_relevant[ok] / eligible[ok]).mean()) if ok.any() else float("nan")


def retrieval_scores(ranked: np.ndarray, query_labels: Sequence[Iterable[str]],
                     gallery_labels: Sequence[Iterable[str]], ks: Sequence[int] = (1, 5, 10),
                     query_patients: Sequence[str] | None = None,
                     gallery_patients: Sequence[str] | None = None) -> dict[str, float | int]:
    """Precision@K and Recall@K for each K in ks, mAP over the ranking, the chance precision beside them, and the
    query counts. ranked: (Q, L) gallery positions best first (L >= max(ks))."""
    hits, n_rel, eligible = relevance(ranked, query_labels, gallery_labels, query_patients, gallery_patients)
    out: dict[str, float | int] = {}
    for k in ks:
        out[f"precision@{k}"] = precision_at_k(hits, k)
        out[f"recall@{k}"] = recall_at_k(hits, n_rel, k)
    ap = average_precision(hits, n_rel)
    out["map"] = float(np.nanmean(ap)) if np.isfinite(ap).any() else float("nan")
    out["chance_precision"] = chance_precision(n_rel, eligible)
    out["n_queries"], out["n_queries_with_relevant"] = len(hits), int((n_rel > 0).sum())
    return out

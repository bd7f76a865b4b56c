"""A faiss nearest-neighbour index over L2-normalised embeddings, with ids and per-item metadata.

Inner product on unit vectors is cosine similarity. Below `ivf_from` items the index is exact (`IndexFlatIP`);
from `rerank_from` items on, an exact search scans a float16 copy first (`IndexScalarQuantizer` QT_fp16: half the
memory traffic of a float32 scan, which is what bounds a single query) and re-scores its candidates in float32,
widening the candidate set until the float16 error bound proves that no item outside it can be in the top k: the
answer is the exact one, in about two thirds of the time. From `ivf_from` on it is an inverted file
(`IndexIVFFlat`, k-means coarse quantiser trained on the data itself), which scans `nprobe` of its `nlist` cells
per query: exact again when nprobe = nlist. A search can leave out the query's own patient (retrieval is scored
on other patients: a patient's second image is not a finding) and still returns exactly k hits whenever the index
holds k items of other patients.

Threads: faiss's OpenMP pool is process-wide, so every build and search sets it to the index's `threads`
(default 1: tests and DDP ranks must not oversubscribe the cores).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from medssl.files import atomic_file
from medssl.errors import MedsslError

INDEX_FILE, ITEMS_FILE = "index.faiss", "items.json"
FORMAT = 1
MIN_POINTS_PER_CELL = 39  # faiss warns below 39 training points per k-means centroid
# Exact search up to here. bench/retrieval_latency.py, one thread, 100,000 x 128-d: a float32 flat scan took ~2.4 ms
# on a 2-core EPYC with AVX-512 and 5.7-7.1 ms on one with AVX2 only (memory-bound); the float16 scan + exact
# re-scoring took 4.0 ms there, so exact stays under the 5 ms target to about this size.
IVF_FROM = 200_000
RERANK_FROM = 20_000  # below this a float32 scan is already under a millisecond
RESCORE_BLOCK = 32  # queries re-scored together: their candidates' float32 rows (32 x c x D) stay in cache-size memory
FP16_EPS = 2.0 ** -11  # float16's relative rounding error: |q.x - q.fp16(x)| <= FP16_EPS |q| |x|


@dataclass(frozen=True)
class Hits:
    """A search's answer, rows best first. rows: (Q, k) int64 positions in the index (-1 where the index holds
    fewer than k eligible items); ids: (Q, k) the items' ids ("" where rows is -1); scores: (Q, k) float32
    inner products (-inf where rows is -1)."""

    rows: np.ndarray
    ids: np.ndarray
    scores: np.ndarray


def check_embeddings(x: np.ndarray, what: str, dim: int | None = None) -> np.ndarray:
    """x as a C-contiguous float32 (N, D) array of finite unit vectors; MedsslError naming `what` otherwise."""
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise MedsslError(f"{what}: expected a non-empty (N, D) array of embeddings, got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise MedsslError(f"{what}: embeddings must be floating point, got {x.dtype}")
    if dim is not None and x.shape[1] != dim:
        raise MedsslError(f"{what}: embeddings have {x.shape[1]} dimensions, the index has {dim}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        raise MedsslError(f"{what}: row {int(np.flatnonzero(bad)[0])} holds NaN or infinite values "
                          f"({int(bad.sum())} such rows)")
    norms = np.linalg.norm(x, axis=1)
    off = np.abs(norms - 1.0) > 1e-3
    if off.any():
        i = int(np.flatnonzero(off)[0])
        raise MedsslError(f"{what}: row {i} has L2 norm {norms[i]:.4g}; embeddings must be L2-normalised "
                          "(x / ||x||) so that inner product is cosine similarity")
    return x


def default_nlist(n: int) -> int:
    """IVF cells for n items: 4 sqrt(n) (the faiss guideline), at most n / 39 so k-means has enough points."""
    return max(1, min(int(round(4 * math.sqrt(n))), n // MIN_POINTS_PER_CELL))


class Index:
    """Embeddings (N, D) of images or sentences with ids, patients, finding labels and optional texts, searchable
    by inner product. Build with `Index.build`, reopen with `Index.load`."""

    def __init__(self, faiss_index: faiss.Index, ids: Sequence[str], patients: Sequence[str],
                 labels: Sequence[Iterable[str]], texts: Sequence[str] | None, nprobe: int, threads: int,
                 rerank_from: int = RERANK_FROM):
        n = faiss_index.ntotal
        for name, seq in (("ids", ids), ("patients", patients), ("labels", labels), ("texts", texts)):
            if seq is not None and len(seq) != n:
                raise MedsslError(f"index: {len(seq)} {name} for {n} embeddings")
        self.ids = [str(i) for i in ids]
        if len(set(self.ids)) != n:
            dup = next(i for i, c in Counter(self.ids).items() if c > 1)
            raise MedsslError(f"index: id {dup!r} appears more than once")
        self.patients = [str(p) for p in patients]
        self.labels = [frozenset(str(x) for x in ls) for ls in labels]
        self.texts = None if texts is None else [None if t is None else str(t) for t in texts]
        self._index = faiss_index
        self._per_patient = Counter(self.patients)
        self.threads = _check_threads(threads)
        self.nprobe = nprobe
        if self.is_ivf:
            self.nprobe = _check_int(nprobe, "nprobe", 1)
        self.rerank_from = _check_int(rerank_from, "rerank_from", 1)
        self._vectors: np.ndarray | None = None      # the float32 rows (a view of the flat index's own storage)
        self._coarse: faiss.Index | None = None      # their float16 copy, scanned first
        if not self.is_ivf and n >= self.rerank_from:
            self._vectors = faiss.rev_swig_ptr(faiss_index.get_xb(), n * faiss_index.d).reshape(n, faiss_index.d)
            self._coarse = faiss.IndexScalarQuantizer(faiss_index.d, faiss.ScalarQuantizer.QT_fp16,
                                                      faiss.METRIC_INNER_PRODUCT)
            self._coarse.train(self._vectors)
            self._coarse.add(self._vectors)
            self._max_norm = float(np.linalg.norm(self._vectors, axis=1).max())

    @classmethod
    def build(cls, embeddings: np.ndarray, ids: Sequence[str], patients: Sequence[str],
              labels: Sequence[Iterable[str]], texts: Sequence[str] | None = None, *, ivf_from: int = IVF_FROM,
              nlist: int | None = None, nprobe: int = 32, threads: int = 1, rerank_from: int = RERANK_FROM) -> Index:
        """An index of `embeddings` (N, D), unit rows: exact below `ivf_from` items (a float16 scan with exact
        float32 re-scoring from `rerank_from` items), IVF (nlist cells, default `default_nlist(N)`, nprobe of them
        scanned per query) from there on."""
        x = check_embeddings(embeddings, "index embeddings")
        n, d = x.shape
        faiss.omp_set_num_threads(_check_threads(threads))
        if n < _check_int(ivf_from, "ivf_from", 1):
            index: faiss.Index = faiss.IndexFlatIP(d)
        else:
            nlist = default_nlist(n) if nlist is None else _check_int(nlist, "nlist", 1)
            if nlist > n:
                raise MedsslError(f"index: nlist={nlist} cells for only {n} embeddings")
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
            index.train(x)
        index.add(x)
        return cls(index, ids, patients, labels, texts, nprobe, threads, rerank_from)

    @property
    def is_ivf(self) -> bool:
        """True for an inverted-file index, False for the exact flat one."""
        return isinstance(self._index, faiss.IndexIVF)

    @property
    def nlist(self) -> int:
        """IVF cells (1 for a flat index, which is one cell scanned whole)."""
        return self._index.nlist if self.is_ivf else 1

    @property
    def dim(self) -> int:
        """Embedding dimension D."""
        return self._index.d

    def __len__(self) -> int:
        return self._index.ntotal

    def search(self, queries: np.ndarray, k: int, exclude_patient: Sequence[str | None] | None = None) -> Hits:
        """The k best items for each query (Q, D), best first. exclude_patient: one patient per query (None: keep
        all) whose items are never returned. Exactly k hits per query whenever the index holds k eligible items
        (rows -1 only beyond them). Searches k + that patient's item count, then, if an IVF scan came up short,
        again with more candidates and cells until the scan is exhaustive."""
        q = check_embeddings(queries, "queries", self.dim)
        k = _check_int(k, "k", 1)
        excl = [None] * len(q) if exclude_patient is None else [None if p is None else str(p) for p in exclude_patient]
        if len(excl) != len(q):
            raise MedsslError(f"search: {len(excl)} exclude_patient entries for {len(q)} queries")
        n = len(self)
        rows = np.full((len(q), k), -1, dtype=np.int64)
        scores = np.full((len(q), k), -np.inf, dtype=np.float32)
        wanted = np.array([min(k, n - self._per_patient.get(p, 0)) for p in excl])  # eligible items, capped at k
        todo = np.arange(len(q))
        fetch = min(n, k + max((self._per_patient.get(p, 0) for p in excl), default=0))
        nprobe = min(self.nprobe, self.nlist) if self.is_ivf else 1
        faiss.omp_set_num_threads(self.threads)
        while len(todo):
            found_s, found_r = self._raw_search(q[todo], fetch, nprobe)
            short = []
            for j, qi in enumerate(todo):
                keep = found_r[j] >= 0
                if excl[qi] is not None:
                    keep &= np.array([r < 0 or self.patients[r] != excl[qi] for r in found_r[j]])
                r, s = found_r[j][keep][:k], found_s[j][keep][:k]
                rows[qi, :len(r)], scores[qi, :len(r)] = r, s
                if len(r) < wanted[qi]:
                    short.append(qi)
            exhaustive = fetch == n and nprobe == self.nlist
            if not short or exhaustive:
                break
            todo, fetch, nprobe = np.array(short), min(n, 2 * fetch), min(self.nlist, 2 * nprobe)
        return Hits(rows, np.array([[self.ids[r] if r >= 0 else "" for r in row] for row in rows], dtype=object),
                    scores)

    def _raw_search(self, q: np.ndarray, k: int, nprobe: int) -> tuple[np.ndarray, np.ndarray]:
        """faiss search: (scores (Q, k), rows (Q, k)), with nprobe cells for an IVF index."""
        if self.is_ivf:
            return self._index.search(q, k, params=faiss.SearchParametersIVF(nprobe=nprobe))
        if self._coarse is None:
            return self._index.search(q, k)
        parts = [self._rescored_search(q[i:i + RESCORE_BLOCK], k) for i in range(0, len(q), RESCORE_BLOCK)]
        return np.concatenate([s for s, _ in parts]), np.concatenate([r for _, r in parts])

    def _rescored_search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The exact top k by a float16 scan and float32 re-scoring. Every item outside the c float16 candidates
        scores at most (c-th float16 score) + FP16_EPS |q| max|x| exactly (plus float32 summation slack), so when
        the k-th exact score among the candidates is above that, the candidates hold the true top k; otherwise c
        doubles, up to all N items (then the answer is a plain exact scan)."""
        n, x = len(self), self._vectors
        out_s = np.full((len(q), k), -np.inf, dtype=np.float32)
        out_r = np.full((len(q), k), -1, dtype=np.int64)
        slack = FP16_EPS * self._max_norm * np.linalg.norm(q, axis=1) + 1e-5      # (Q,)
        todo, fetch = np.arange(len(q)), min(n, 2 * k + 16)
        while len(todo):
            coarse_s, rows = self._coarse.search(q[todo], fetch)                     # (T, c) float16 scores
            exact = np.einsum("tcd,td->tc", x[np.maximum(rows, 0)], q[todo], dtype=np.float32)
            exact[rows < 0] = -np.inf
            order = np.argsort(-exact, axis=1, kind="stable")[:, :k]
            top_s, top_r = np.take_along_axis(exact, order, 1), np.take_along_axis(rows, order, 1)
            top_r[~np.isfinite(top_s)] = -1
            kth = top_s[:, -1] if top_s.shape[1] == k else np.full(len(todo), -np.inf)
            proven = (fetch >= n) | (kth > coarse_s[:, -1] + slack[todo])
            out_s[todo[proven], : top_s.shape[1]], out_r[todo[proven], : top_r.shape[1]] = top_s[proven], top_r[proven]
            todo, fetch = todo[~proven], min(n, 2 * fetch)
        return out_s, out_r

    def save(self, folder: str | os.PathLike) -> Path:
        """index.faiss and items.json in `folder`, each written to a temporary name and renamed over the old one;
        items.json carries the index file's SHA-256, so a save interrupted between the two renames is caught by
        `load`."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        blob = faiss.serialize_index(self._index).tobytes()
        items = {"format": FORMAT, "dim": self.dim, "count": len(self), "ivf": self.is_ivf, "nlist": self.nlist,
                 "nprobe": self.nprobe, "rerank_from": self.rerank_from,
                 "index_sha256": hashlib.sha256(blob).hexdigest(), "ids": self.ids,
                 "patients": self.patients, "labels": [sorted(ls) for ls in self.labels], "texts": self.texts}
        for name, data in ((INDEX_FILE, blob), (ITEMS_FILE, json.dumps(items).encode())):
            with atomic_file(folder / name) as f:
                f.write(data)
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike, threads: int = 1, nprobe: int | None = None) -> Index:
        """The index `save` wrote in `folder` (nprobe: override the saved one); MedsslError naming the file when it
        is missing, unreadable, or does not match its partner."""
        folder = Path(folder)
        index_path, items_path = folder / INDEX_FILE, folder / ITEMS_FILE
        for path in (index_path, items_path):
            if not path.is_file():
                raise MedsslError(f"{path}: no such file (not a saved retrieval index)")
        try:
            items = json.loads(items_path.read_text())
            ids, patients, labels = items["ids"], items["patients"], items["labels"]
        except (ValueError, KeyError, TypeError) as e:
            raise MedsslError(f"{items_path}: not a retrieval index item list ({e})") from None
        if items.get("format") != FORMAT:
            raise MedsslError(f"{items_path}: format {items.get('format')!r}, this medssl reads format {FORMAT}")
        blob = index_path.read_bytes()
        if hashlib.sha256(blob).hexdigest() != items.get("index_sha256"):
            raise MedsslError(f"{index_path}: does not match {items_path.name} (an interrupted save?); rebuild it")
        try:
            index = faiss.deserialize_index(np.frombuffer(blob, dtype=np.uint8))
        except RuntimeError as e:
            raise MedsslError(f"{index_path}: faiss cannot read it ({str(e).splitlines()[0]})") from None
        return cls(index, ids, patients, labels, items.get("texts"),
                   items.get("nprobe", 1) if nprobe is None else nprobe, threads,
                   items.get("rerank_from", RERANK_FROM))


def _check_int(value: int, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise MedsslError(f"index: {name} must be a whole number >= {low}, got {value!r}")
    return int(value)


def _check_threads(threads: int) -> int:
    return _check_int(threads, "threads", 1)

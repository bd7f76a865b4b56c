"""Retrieval latency: build time and per-query search time of medssl.retrieval.Index over 100,000 seeded random
L2-normalised 128-d embeddings, exact (faiss IndexFlatIP scanned in float32, and medssl's default exact search: a
float16 scan whose candidates are re-scored in float32 until the float16 error bound proves the top k) and IVF
(IndexIVFFlat, nlist = 4 sqrt(N)), with one thread and with every core.

Each query is one indexed item searched alone (k=5) with its own patient excluded (two items per patient), as
retrieval evaluation does; latency is the wall time of one Index.search call (median and p95). The IVF rows also
give recall@k against the exact search: random vectors have no cluster structure, the hardest case for an IVF.
Prints one JSON object (and writes it with --json PATH), then a table.
Target (issue 11): under 5 ms per query on this CPU.

Example: python bench/retrieval_latency.py
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data_throughput import machine  # noqa: E402

from medssl.retrieval import Index, default_nlist  # noqa: E402

TARGET_MS = 5.0


def embeddings(n: int, d: int, seed: int) -> np.ndarray:
    """n seeded random unit vectors (n, d), float32."""
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def build(x: np.ndarray, kind: str, nprobe: int, threads: int) -> tuple[Index, float]:
    """(index, build seconds) for kind 'flat32' (a float32 scan), 'flat' (medssl's exact default at this size) or
    'ivf'; two items per patient."""
    n = len(x)
    ids, patients, labels = [str(i) for i in range(n)], [f"p{i // 2}" for i in range(n)], [["x"]] * n
    t0 = time.perf_counter()
    index = Index.build(x, ids, patients, labels, ivf_from=1 if kind == "ivf" else n + 1, nprobe=nprobe,
                        threads=threads, rerank_from=n + 1 if kind == "flat32" else 1)
    return index, time.perf_counter() - t0


def latency(index: Index, queries: np.ndarray, patients: list[str], k: int) -> dict:
    """Median and p95 milliseconds of single-query searches, and queries/s of one batched search."""
    index.search(queries[:10], k, exclude_patient=patients[:10])  # warm-up
    times = []
    for i in range(len(queries)):
        t0 = time.perf_counter()
        index.search(queries[i:i + 1], k, exclude_patient=patients[i:i + 1])
        times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    index.search(queries, k, exclude_patient=patients)
    batch = time.perf_counter() - t0
    ms = np.array(times) * 1e3
    return {"median_ms": round(float(np.median(ms)), 3), "p95_ms": round(float(np.percentile(ms, 95)), 3),
            "batched_queries_per_s": round(len(queries) / batch, 1)}


def measure(n: int = 100_000, dim: int = 128, n_queries: int = 1000, k: int = 5,
            nprobes: tuple[int, ...] = (16, 64), thread_counts: tuple[int, ...] | None = None) -> dict:
    """Every figure as one dict: exact and IVF indexes over n seeded unit vectors (n, dim), built and searched with
    each thread count (default: 1 and every core); n_queries indexed items searched alone, own patient excluded."""
    x = embeddings(n, dim, seed=0)
    qi = np.random.default_rng(1).choice(n, n_queries, replace=False)
    queries, patients = x[qi], [f"p{i // 2}" for i in qi]
    result = {"benchmark": "retrieval_latency", "machine": {**machine(), "faiss": faiss.__version__},
              "n": n, "dim": dim, "k": k, "queries": n_queries,
              "ivf_nlist": default_nlist(n), "target_ms_per_query": TARGET_MS, "runs": []}
    for threads in thread_counts or sorted({1, os.cpu_count() or 1}):
        flat32, seconds = build(x, "flat32", 1, threads)
        exact = flat32.search(queries, k, exclude_patient=patients).rows
        result["runs"].append({"index": "flat float32 scan", "threads": threads, "build_s": round(seconds, 3),
                               **latency(flat32, queries, patients, k), "recall_vs_exact": 1.0})
        flat, seconds = build(x, "flat", 1, threads)
        same = flat.search(queries, k, exclude_patient=patients).rows
        result["runs"].append({"index": "flat float16 scan + exact re-scoring (default)", "threads": threads,
                               "build_s": round(seconds, 3), **latency(flat, queries, patients, k),
                               "recall_vs_exact": round(float(np.mean(same == exact)), 4)})
        ivf, seconds = build(x, "ivf", nprobes[0], threads)
        for nprobe in nprobes:
            ivf.nprobe = nprobe
            found = ivf.search(queries, k, exclude_patient=patients).rows
            recall = np.mean([len(set(a) & set(b)) / k for a, b in zip(found, exact)])
            result["runs"].append({"index": f"ivf nprobe={nprobe}", "threads": threads, "build_s": round(seconds, 3),
                                   **latency(ivf, queries, patients, k),
                                   "recall_vs_exact": round(float(recall), 4)})
    result["meets_target"] = {f"{r['index']}, {r['threads']} thread(s)": r["median_ms"] < TARGET_MS
                              for r in result["runs"]}
    return result


def main() -> None:
    """Run every figure, print one JSON object and a table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", help="also write the JSON here")
    ap.add_argument("--n", type=int, default=100_000, help="indexed embeddings")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--queries", type=int, default=1000, help="single queries timed")
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--nprobe", type=int, nargs="+", default=[16, 64], help="IVF cells scanned per query")
    args = ap.parse_args()
    result = measure(args.n, args.dim, args.queries, args.k, tuple(args.nprobe))
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text)
    print(f"\n{args.n:,} x {args.dim}-d embeddings, k={args.k}, own patient excluded, "
          f"{args.queries} single queries (IVF nlist={result['ivf_nlist']}; build_s of IVF includes k-means)")
    print(f"| index | threads | build s | median ms | p95 ms | batched q/s | recall@{args.k} vs exact |")
    print("|---|---|---|---|---|---|---|")
    for r in result["runs"]:
        print(f"| {r['index']} | {r['threads']} | {r['build_s']} | {r['median_ms']} | {r['p95_ms']} | "
              f"{r['batched_queries_per_s']} | {r['recall_vs_exact']} |")


if __name__ == "__main__":
    main()

"""The faiss index against brute-force numpy search, patient exclusion, save/load, and the retrieval metrics against
hand computations on tiny cases."""

from __future__ import annotations

import itertools
import json

import faiss
import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from medssl.errors import MedsslError
from medssl.retrieval import (
    NO_FINDING,
    Index,
    average_precision,
    chance_precision,
    default_nlist,
    label_set,
    label_sets,
    precision_at_k,
    recall_at_k,
    relevance,
    retrieval_scores,
)


def unit(n: int, d: int = 8, seed: int = 0) -> np.ndarray:
    """n seeded random unit vectors (n, d), float32 (no ties between their inner products, in practice)."""
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def build(x: np.ndarray, per_patient: int = 5, **kw) -> Index:
    n = len(x)
    return Index.build(x, [f"id{i}" for i in range(n)], [f"p{i // per_patient}" for i in range(n)],
                       [["a"] if i % 2 else ["b"] for i in range(n)], [f"text {i}" for i in range(n)], **kw)


def brute_force(x: np.ndarray, q: np.ndarray, k: int, allowed: np.ndarray | None = None) -> np.ndarray:
    """The k best rows of x (N, D) for each query (Q, D) by inner product, only rows where allowed (Q, N)."""
    s = q @ x.T                                                   # (Q, N)
    if allowed is not None:
        s = np.where(allowed, s, -np.inf)
    return np.argsort(-s, axis=1, kind="stable")[:, :k]


# ---- the index ----

def test_flat_index_returns_the_brute_force_neighbours():
    x, q = unit(300), unit(20, seed=1)
    index = build(x)
    hits = index.search(q, 7)
    assert not index.is_ivf
    np.testing.assert_array_equal(hits.rows, brute_force(x, q, 7))
    np.testing.assert_allclose(hits.scores, np.take_along_axis(q @ x.T, hits.rows, 1), rtol=1e-5, atol=1e-6)
    assert hits.ids[0, 0] == f"id{hits.rows[0, 0]}"


@pytest.mark.parametrize("d", [8, 128])
def test_float16_scan_with_float32_rescoring_is_exact(d):
    x, q = unit(3000, d), unit(40, d, seed=1)
    index = build(x, rerank_from=1000)
    assert index._coarse is not None and not index.is_ivf
    for k in (1, 10, 200):
        hits = index.search(q, k)
        np.testing.assert_array_equal(hits.rows, brute_force(x, q, k))
        np.testing.assert_allclose(hits.scores, np.take_along_axis(q @ x.T, hits.rows, 1), rtol=1e-5, atol=1e-6)
    patients = np.array([f"p{i // 5}" for i in range(len(x))])
    excl = [f"p{i}" for i in range(len(q))]
    allowed = patients[None, :] != np.array(excl)[:, None]
    np.testing.assert_array_equal(index.search(q, 12, exclude_patient=excl).rows, brute_force(x, q, 12, allowed))


def test_near_ties_below_float16_resolution_widen_the_scan_until_it_is_exact(monkeypatch):
    # 100 items whose scores against the query lie 2e-6 apart (float32 resolves them; float16's rounding, up to
    # ~5e-4 here, does not): only the bound check keeps the answer exact, by widening the float16 scan
    rng = np.random.default_rng(3)
    base = unit(1, 16)[0]
    perp = rng.standard_normal(16).astype(np.float32)
    perp -= (perp @ base) * base
    perp /= np.linalg.norm(perp)
    target = 0.6 + 2e-6 * np.arange(100)                      # cosines with base
    near = target[:, None] * base + np.sqrt(1 - target**2)[:, None] * perp
    x = np.concatenate([unit(1500, 16, seed=4), near.astype(np.float32)])
    x[:1500] *= np.where((x[:1500] @ base)[:, None] > 0.55, -1, 1)                # the rest stay below 0.55
    index = build(x, rerank_from=100)
    scans = []
    search = index._coarse.search
    monkeypatch.setattr(index._coarse, "search", lambda q, c: scans.append(c) or search(q, c))
    q = base[None].astype(np.float32)
    hits = index.search(q, 20)
    np.testing.assert_array_equal(hits.rows, brute_force(x, q, 20))
    assert list(hits.rows[0]) == list(range(1599, 1579, -1))   # the near set, best first
    assert len(scans) > 1                                      # the first candidate set could not prove it


def test_ivf_index_with_every_cell_probed_is_exact():
    x, q = unit(400), unit(20, seed=1)
    index = build(x, ivf_from=100, nlist=8, nprobe=8)
    assert index.is_ivf and index.nlist == 8
    np.testing.assert_array_equal(index.search(q, 6).rows, brute_force(x, q, 6))


def test_default_nlist_is_four_sqrt_n_with_enough_training_points():
    assert default_nlist(100_000) == 1265          # 4 * sqrt(100,000) = 1264.9
    assert default_nlist(1_000) == 25              # 4 * sqrt(1000) = 126, but 1000 // 39 = 25 points per cell
    assert default_nlist(10) == 1


@pytest.mark.parametrize("kind", ["flat", "ivf_one_cell"])
def test_search_never_returns_the_query_patient_and_still_returns_k(kind, monkeypatch):
    # 40 items, patient p0 owns 30 of them: k=8 needs the fallback past the first k + 30 candidates in an IVF scan
    # of one cell, and the flat search must still equal brute force over the other patients.
    x = unit(40, d=4)
    patients = ["p0"] * 30 + [f"q{i}" for i in range(10)]
    kw = {"ivf_from": 10, "nlist": 4, "nprobe": 1} if kind == "ivf_one_cell" else {}
    index = Index.build(x, [str(i) for i in range(40)], patients, [["a"]] * 40, **kw)
    scans, raw = [], index._raw_search
    monkeypatch.setattr(index, "_raw_search", lambda q, k, nprobe: scans.append((k, nprobe)) or raw(q, k, nprobe))
    q = x[:5]                                                    # queries are p0's own images
    hits = index.search(q, 8, exclude_patient=["p0"] * 5)
    assert scans[0] == (8 + 30, 1)                               # first pass: k + the patient's 30 items
    if kind == "flat":
        assert len(scans) == 1                                   # exact: 38 candidates always hold 8 others
    else:
        assert len(scans) > 1 and scans[-1][1] > 1               # one cell came up short: more candidates, cells
    assert (hits.rows >= 0).all() and hits.rows.shape == (5, 8)
    assert all(patients[r] != "p0" for r in hits.rows.ravel())
    assert len(set(hits.rows[0])) == 8
    if kind == "flat":
        allowed = np.array([[p != "p0" for p in patients]] * 5)
        np.testing.assert_array_equal(hits.rows, brute_force(x, q, 8, allowed))


def test_search_pads_with_minus_one_only_when_too_few_other_patient_items():
    x = unit(12, d=4)
    index = Index.build(x, [str(i) for i in range(12)], ["p0"] * 9 + ["p1"] * 3, [["a"]] * 12)
    hits = index.search(x[:2], 5, exclude_patient=["p0", None])
    assert sorted(hits.rows[0, :3]) == [9, 10, 11]               # all 3 other-patient items, then empty slots
    assert (hits.rows[0, 3:] == -1).all() and np.isneginf(hits.scores[0, 3:]).all()
    assert list(hits.ids[0, 3:]) == ["", ""]
    assert (hits.rows[1] >= 0).all() and hits.rows[1, 0] == 1    # no exclusion: the query itself comes first


@pytest.mark.parametrize("kw", [{}, {"ivf_from": 50, "nlist": 5, "nprobe": 2}, {"rerank_from": 100}])
def test_save_load_round_trip_gives_identical_results(tmp_path, kw):
    x, q = unit(200), unit(10, seed=2)
    index = build(x, **kw)
    before = index.search(q, 5, exclude_patient=[f"p{i}" for i in range(10)])
    index.save(tmp_path / "retrieval")
    assert not list((tmp_path / "retrieval").glob(".*.tmp"))    # temporary files renamed away
    again = Index.load(tmp_path / "retrieval")
    after = again.search(q, 5, exclude_patient=[f"p{i}" for i in range(10)])
    np.testing.assert_array_equal(before.rows, after.rows)
    np.testing.assert_array_equal(before.scores, after.scores)
    np.testing.assert_array_equal(before.ids, after.ids)
    assert (again.ids, again.patients, again.labels, again.texts) == (index.ids, index.patients, index.labels,
                                                                      index.texts)
    assert (again.is_ivf, again.nlist, again.nprobe) == (index.is_ivf, index.nlist, index.nprobe)
    assert again.rerank_from == index.rerank_from


def test_load_refuses_missing_and_mismatched_files(tmp_path):
    with pytest.raises(MedsslError, match="items.json|index.faiss"):
        Index.load(tmp_path)
    build(unit(20)).save(tmp_path / "a")
    build(unit(30)).save(tmp_path / "b")
    (tmp_path / "a" / "index.faiss").write_bytes((tmp_path / "b" / "index.faiss").read_bytes())
    with pytest.raises(MedsslError, match="does not match"):
        Index.load(tmp_path / "a")
    (tmp_path / "b" / "items.json").write_text("{not json")
    with pytest.raises(MedsslError, match="items.json"):
        Index.load(tmp_path / "b")
    items = json.loads((tmp_path / "a" / "items.json").read_text())
    assert items["count"] == 20 and items["labels"][1] == ["a"]


def test_threads_are_set_per_call_and_do_not_change_results():
    x, q = unit(300), unit(10, seed=3)
    two = build(x, threads=2).search(q, 5)
    assert faiss.omp_get_max_threads() == 2
    one = build(x, threads=1).search(q, 5)
    assert faiss.omp_get_max_threads() == 1
    np.testing.assert_array_equal(one.rows, two.rows)


@pytest.mark.parametrize("bad, match", [
    (np.zeros((0, 8), np.float32), "non-empty"),
    (np.full((3, 8), np.nan, np.float32), "row 0 holds NaN"),
    (np.ones((3, 8), np.float32), "L2-normalised"),
    (np.ones(8, np.float32), "shape"),
    (np.eye(3, dtype=np.int64), "floating point"),
])
def test_bad_embeddings_are_refused_in_one_line(bad, match):
    with pytest.raises(MedsslError, match=match) as e:
        Index.build(bad, [str(i) for i in range(len(bad))], ["p"] * len(bad), [["a"]] * len(bad))
    assert "\n" not in str(e.value)


def test_bad_queries_k_and_metadata_are_refused():
    index = build(unit(20))
    with pytest.raises(MedsslError, match="6 dimensions, the index has 8"):
        index.search(unit(2, d=6), 3)
    with pytest.raises(MedsslError, match="k must be a whole number >= 1"):
        index.search(unit(2), 0)
    with pytest.raises(MedsslError, match="row 1 holds NaN"):
        index.search(np.vstack([unit(1), np.full((1, 8), np.nan, np.float32)]), 3)
    with pytest.raises(MedsslError, match="3 exclude_patient entries for 2 queries"):
        index.search(unit(2), 3, exclude_patient=["a", "b", "c"])
    with pytest.raises(MedsslError, match="id 'x' appears more than once"):
        Index.build(unit(2), ["x", "x"], ["p", "q"], [["a"], ["a"]])
    with pytest.raises(MedsslError, match="1 patients for 2 embeddings"):
        Index.build(unit(2), ["x", "y"], ["p"], [["a"], ["a"]])
    with pytest.raises(MedsslError, match="nlist=50 cells for only 20"):
        build(unit(20), ivf_from=1, nlist=50)


# ---- the metrics ----
# Gallery: g0 {a} of P0, g1 {b} of P1, g2 {a, b} of P2, g3 {no finding} of P3, g4 {a} of the first query's own
# patient Q. Query 0: {a} of patient Q; query 1: {no finding} of patient X (not in the gallery).
GALLERY = [{"a"}, {"b"}, {"a", "b"}, {NO_FINDING}, {"a"}]
GALLERY_PATIENTS = ["P0", "P1", "P2", "P3", "Q"]
QUERIES, QUERY_PATIENTS = [{"a"}, {NO_FINDING}], ["Q", "X"]
RANKED = np.array([[4, 1, 0, 2, 3],       # g4 dropped (own patient) -> g1 g0 g2 g3: miss hit hit miss
                   [3, 0, 1, 2, 4]])      # hit miss miss miss miss


def test_relevance_drops_the_query_patient_and_counts_relevant_items():
    hits, n_rel, eligible = relevance(RANKED, QUERIES, GALLERY, QUERY_PATIENTS, GALLERY_PATIENTS)
    np.testing.assert_array_equal(hits, [[False, True, True, False, False], [True, False, False, False, False]])
    np.testing.assert_array_equal(n_rel, [2, 1])        # query 0: g0, g2 (g4 is its own patient); query 1: g3
    np.testing.assert_array_equal(eligible, [4, 5])


def test_metrics_match_a_hand_computation():
    s = retrieval_scores(RANKED, QUERIES, GALLERY, ks=(1, 2, 3), query_patients=QUERY_PATIENTS,
                         gallery_patients=GALLERY_PATIENTS)
    assert s["precision@1"] == pytest.approx((0 + 1) / 2)
    assert s["precision@2"] == pytest.approx((1 / 2 + 1 / 2) / 2)
    assert s["precision@3"] == pytest.approx((2 / 3 + 1 / 3) / 2)
    assert s["recall@1"] == pytest.approx((0 / 2 + 1 / 1) / 2)
    assert s["recall@2"] == pytest.approx((1 / 2 + 1 / 1) / 2)
    assert s["recall@3"] == pytest.approx((2 / 2 + 1 / 1) / 2)
    # AP query 0: hits at ranks 2 and 3 -> (1/2 + 2/3) / min(2 relevant, 5) = 7/12; query 1: 1/1 at rank 1 -> 1
    assert s["map"] == pytest.approx((7 / 12 + 1) / 2)
    # chance: query 0, 2 of its 4 other-patient items share {a}; query 1, 1 of 5 is {no finding}
    assert s["chance_precision"] == pytest.approx((2 / 4 + 1 / 5) / 2)
    assert (s["n_queries"], s["n_queries_with_relevant"]) == (2, 2)


def test_without_patients_nothing_is_excluded():
    hits, n_rel, eligible = relevance(RANKED[:1], QUERIES[:1], GALLERY)
    np.testing.assert_array_equal(hits, [[True, False, True, True, False]])   # g4 counts now: hit miss hit hit miss
    assert n_rel[0] == 3 and eligible[0] == 5
    assert precision_at_k(hits, 2) == pytest.approx(0.5)


def test_a_ranking_of_hit_then_miss_and_empty_slots():
    hits, n_rel, _ = relevance(np.array([[0, 1], [0, -1]]), [{"a"}, {"a"}], [{"a"}, {"b"}])
    np.testing.assert_array_equal(hits, [[True, False], [True, False]])       # an empty slot (-1) is a miss
    assert precision_at_k(hits, 2) == pytest.approx(0.5)
    assert recall_at_k(hits, n_rel, 1) == pytest.approx(1.0)
    np.testing.assert_allclose(average_precision(hits, n_rel), [1.0, 1.0])


def test_queries_with_nothing_relevant_are_left_out_of_recall_and_map():
    # the second query is unlabelled (empty set: matches nothing)
    s = retrieval_scores(np.array([[0, 1], [0, 1]]), [{"a"}, set()], [{"b"}, {"a"}], ks=(1, 2))
    assert s["precision@1"] == pytest.approx(0.0) and s["precision@2"] == pytest.approx(0.25)
    assert s["recall@1"] == pytest.approx(0.0) and s["recall@2"] == pytest.approx(1.0)
    assert s["map"] == pytest.approx(0.5)                  # one hit at rank 2 of one relevant item
    assert s["n_queries_with_relevant"] == 1


def test_average_precision_over_a_full_ranking_equals_sklearn():
    rng = np.random.default_rng(0)
    gallery = [{"a"} if rng.random() < 0.3 else {"b"} for _ in range(40)]
    scores = rng.random((3, 40))
    ranked = np.argsort(-scores, axis=1)
    hits, n_rel, _ = relevance(ranked, [{"a"}, {"b"}, {"a", "b"}], gallery)
    ap = average_precision(hits, n_rel)
    for i, q in enumerate([{"a"}, {"b"}, {"a", "b"}]):
        truth = [bool(q & g) for g in gallery]
        if all(truth):
            assert ap[i] == pytest.approx(1.0)
        else:
            assert ap[i] == pytest.approx(average_precision_score(truth, scores[i]))


def test_chance_precision_is_the_mean_precision_over_every_random_ranking():
    # one query {a}; gallery of 4 other-patient items, 1 of them {a} -> chance 1/4; g4 is the query's own patient
    gallery, patients = [{"a"}, {"b"}, {"b"}, {NO_FINDING}, {"a"}], ["A", "B", "C", "D", "Q"]
    hits, n_rel, eligible = relevance(np.array([[0, 1, 2, 3]]), [{"a"}], gallery, ["Q"], patients)
    assert chance_precision(n_rel, eligible) == pytest.approx(1 / 4)
    for k in (1, 2, 3):
        p = [precision_at_k(relevance(np.array([perm]), [{"a"}], gallery, ["Q"], patients)[0], k)
             for perm in itertools.permutations(range(4))]
        assert np.mean(p) == pytest.approx(1 / 4)


def test_label_sets_give_no_finding_a_label():
    assert label_sets(np.array([[0, 1], [0, 0], [1, 1]]), ["a", "b"]) == [{"b"}, {NO_FINDING}, {"a", "b"}]
    assert label_set([]) == {NO_FINDING}


def test_bad_metric_inputs_are_refused():
    with pytest.raises(MedsslError, match="K=3 but the ranking holds only 2"):
        retrieval_scores(np.array([[0, 1]]), [{"a"}], [{"a"}, {"b"}], ks=(3,))
    with pytest.raises(MedsslError, match="gallery positions"):
        relevance(np.array([[0, 5]]), [{"a"}], [{"a"}, {"b"}])
    with pytest.raises(MedsslError, match="for 2 queries"):
        relevance(np.array([[0, 1]]), [{"a"}, {"b"}], [{"a"}, {"b"}])
    with pytest.raises(MedsslError, match="both query_patients and gallery_patients"):
        relevance(np.array([[0, 1]]), [{"a"}], [{"a"}, {"b"}], query_patients=["p"])
    with pytest.raises(MedsslError, match="K must be a whole number"):
        precision_at_k(np.zeros((1, 2), bool), 0)
    with pytest.raises(MedsslError, match=r"targets \(N, 2\)"):
        label_sets(np.zeros((3, 3)), ["a", "b"])

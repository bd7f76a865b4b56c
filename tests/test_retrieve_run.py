"""`medssl retrieve` end to end on a tiny CLIP run of the built-in synthetic data: a text or image query answers with
k images and k report sentences best first, indexes are saved once and reused, --evaluate scores three directions
without the query's own patient, and bad input ends in one line (exit 2)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medssl.errors import MedsslError

@pytest.fixture(scope="module")
def first(clip_run):
    """The first query of the module: it builds the indexes."""
    from medssl.retrieve_run import run_retrieve

    return run_retrieve(clip_run, text="moderate right pleural effusion", k=3, progress=False)


def _sorted_desc(entries):
    scores = [e["score"] for e in entries]
    return scores == sorted(scores, reverse=True)


def test_text_query_returns_k_images_and_k_sentences_best_first(first, clip_run, cli):
    assert first["index"]["built"] and len(first["images"]) == 3 and len(first["sentences"]) == 3
    assert _sorted_desc(first["images"]) and _sorted_desc(first["sentences"])
    assert all(e["patient"].startswith("p-") and e["study"].startswith("s-") for e in first["images"])
    assert all(e["sentence"] and e["labels"] for e in first["sentences"])
    code, out, err = cli("retrieve", clip_run, "--text", "the heart is enlarged", "--k", "2", "--quiet")
    assert code == 0, err
    assert "images:" in out and "sentences:" in out and "index reused" in out
    assert len([line for line in out.splitlines() if line.strip().startswith(("1 ", "2 "))]) == 4


def test_indexes_are_saved_and_reused_not_rebuilt(first, clip_run, cli):
    folder = clip_run / "retrieval" / "builtin"
    files = [folder / "images" / "index.faiss", folder / "sentences" / "index.faiss", folder / "gallery.json"]
    before = [f.stat().st_mtime_ns for f in files]
    code, out, err = cli("retrieve", clip_run, "--text", "no acute findings", "--json", "--quiet")
    assert code == 0, err
    result = json.loads(out)
    assert result["index"]["built"] is False and len(result["images"]) == 5
    assert [f.stat().st_mtime_ns for f in files] == before
    code, out, err = cli("retrieve", clip_run, "--text", "no acute findings", "--json", "--rebuild", "--quiet")
    assert code == 0 and json.loads(out)["index"]["built"] is True


def test_a_gallery_image_finds_itself_first(first, clip_run, cli):
    path = first["images"][0]["path"]
    assert path.endswith(".png")
    code, out, err = cli("retrieve", clip_run, "--image", path, "--k", "4", "--json", "--quiet")
    assert code == 0, err
    result = json.loads(out)
    top = result["images"][0]
    assert top["path"] == path and top["score"] == pytest.approx(1.0, abs=1e-4)
    assert _sorted_desc(result["images"]) and len(result["sentences"]) == 4


def test_evaluate_writes_scores_in_range_beside_chance(first, clip_run, cli):
    code, out, err = cli("retrieve", clip_run, "--evaluate", "--k", "1,3", "--quiet")
    assert code == 0, err
    metrics = json.loads((clip_run / "retrieval" / "evaluate.json").read_text())
    assert set(metrics["directions"]) == {"image_to_image", "text_to_image", "image_to_text"}
    assert metrics["gallery"]["splits"] == ["train", "val"] and metrics["queries"]["images"] >= 2
    for m in metrics["directions"].values():
        for key in ("precision@1", "precision@3", "recall@1", "recall@3", "map", "chance_precision"):
            assert 0.0 <= m[key] <= 1.0, key
    assert "image->text" in out and "chance P@K" in out


def test_ranking_never_counts_the_query_own_patient():
    from medssl.retrieval import Index
    from medssl.retrieve_run import rank, score_direction

    # gallery: patient A's copy of the query (cosine 1, a hit), then B (miss, 0.8), C (hit, 0.6), D (miss, 0.0)
    def unit(a):
        return np.array([a, np.sqrt(1 - a * a)], dtype=np.float32)

    gallery = np.stack([unit(1.0), unit(0.8), unit(0.6), unit(0.0)])
    index = Index.build(gallery, ["a", "b", "c", "d"], ["A", "B", "C", "D"],
                        [{"effusion"}, {"nodule"}, {"effusion"}, {"nodule"}])
    query = unit(1.0)[None]
    assert rank(index, query, ["A"], 3).tolist() == [[1, 2, 3]]  # A's own item never ranked
    m = score_direction(index, query, [frozenset({"effusion"})], ["A"], ks=(1, 2), depth=10)
    # by hand without A: ranking B, C, D -> hits 0, 1, 0; one relevant item (C); three eligible
    assert m["precision@1"] == 0.0 and m["precision@2"] == 0.5 and m["recall@2"] == 1.0
    assert m["map"] == pytest.approx(0.5) and m["chance_precision"] == pytest.approx(1 / 3)


def test_patients_are_digests_of_the_ids_never_the_ids():
    from medssl.data.records import Record
    from medssl.retrieve_run import patient_of, study_of

    r = Record(path="x.dcm", patient_id="DOE^JOHN-12345", study_id="1.2.3")
    assert "12345" not in patient_of(r) and patient_of(r) == patient_of(Record(path="y.dcm", patient_id=r.patient_id))
    assert "1.2.3" not in study_of(r)


@pytest.mark.parametrize("args, words", [
    (["--text", "effusion", "--image", "x.png"], "exactly one query"),
    ([], "exactly one query"),
    (["--text", "   "], "--text"),
    (["--text", "effusion", "--k", "0"], "--k 0"),
    (["--text", "effusion", "--k", "two"], "--k two"),
    (["--image", "missing.png"], "missing.png"),
])
def test_bad_input_ends_in_one_line(clip_run, cli, args, words):
    code, _, err = cli("retrieve", clip_run, *args, "--quiet")
    assert code == 2 and words in err and len(err.strip().splitlines()) == 1


def test_unreadable_image_and_non_run_are_refused_in_one_line(clip_run, cli, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png at all")
    code, _, err = cli("retrieve", clip_run, "--image", bad, "--quiet")
    assert code == 2 and "broken.png" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli("retrieve", tmp_path, "--text", "effusion", "--quiet")
    assert code == 2 and len(err.strip().splitlines()) == 1


def test_library_checks_k_before_any_work(tmp_path):
    from medssl.retrieve_run import run_evaluate_retrieval, run_retrieve

    with pytest.raises(MedsslError, match="--k"):
        run_retrieve(tmp_path, text="effusion", k=-1)
    with pytest.raises(MedsslError, match="--k"):
        run_evaluate_retrieval(tmp_path, ks=(0,))


def _dicom_manifest(folder, reports: bool = True):
    """Four copies of a pydicom test file in a manifest whose patient_id is the raw PatientID tag (as a DICOM
    folder index gives it) and whose study_id is the StudyInstanceUID."""
    import shutil

    from pydicom import dcmread
    from pydicom.data import get_testdata_file

    dcm = get_testdata_file("CT_small.dcm")
    ds = dcmread(dcm)
    rows = ["path,patient_id,study_id,labels,report,split"]
    for i, (split, label) in enumerate((("train", "nodule"), ("train", "no_finding"), ("val", "no_finding"),
                                        ("test", "nodule"))):
        shutil.copy(dcm, folder / f"scan{i}.dcm")
        report = f"FINDINGS: a small {label.replace('_', ' ')}. IMPRESSION: follow up." if reports else ""
        rows.append(f"scan{i}.dcm,{ds.PatientID}-{i},{ds.StudyInstanceUID}.{i},{label},{report},{split}")
    (folder / "manifest.csv").write_text("\n".join(rows) + "\n")
    return folder / "manifest.csv", ds


def test_a_dicom_source_never_shows_or_stores_the_patient_name_or_id(clip_run, cli, tmp_path):
    manifest, ds = _dicom_manifest(tmp_path)
    code, out, err = cli("retrieve", clip_run, "--image", tmp_path / "scan1.dcm", "--data", manifest, "--k", "2",
                         "--json", "--quiet")
    assert code == 0, err
    result = json.loads(out)
    assert result["images"][0]["score"] == pytest.approx(1.0, abs=1e-4) and len(result["sentences"]) == 2
    saved = "".join(p.read_text() for p in (clip_run / "retrieval").glob("manifest-*/**/*.json"))
    assert saved
    for secret in (str(ds.PatientName), str(ds.PatientID), str(ds.StudyInstanceUID)):
        assert secret and secret not in out and secret not in err and secret not in saved


def test_a_source_without_reports_still_retrieves_images(clip_run, cli, tmp_path):
    manifest, _ = _dicom_manifest(tmp_path, reports=False)
    code, out, err = cli("retrieve", clip_run, "--text", "nodule", "--data", manifest, "--json", "--quiet")
    assert code == 0, err
    result = json.loads(out)
    assert len(result["images"]) == 4 and result["sentences"] == []
    code, out, err = cli("retrieve", clip_run, "--evaluate", "--k", "1", "--data", manifest, "--quiet")
    assert code == 0, err
    metrics = json.loads((clip_run / "retrieval" / "evaluate.json").read_text())
    assert list(metrics["directions"]) == ["image_to_image"] and "image->text is not scored" in out

"""Synthetic chest radiographs: determinism, study structure, visible findings, masks, reports and written files."""

import re
from collections import defaultdict

import numpy as np
import pytest
from PIL import Image

from medssl.data.records import read_manifest
from medssl.synthetic import (
    FINDINGS, NO_FINDING, generate, render_study, sample_patient, write_synthetic,
)
from medssl.synthetic.reports import KEYWORDS, NEGATION_CUES, make_report
from medssl.errors import MedsslError

# Direction a finding moves the pixels inside its mask: +1 brighter (fluid, tissue), -1 darker (air).
DIRECTION = {"cardiomegaly": 1, "pleural_effusion": 1, "consolidation": 1, "nodule": 1, "pneumothorax": -1,
             "atelectasis": 1}


@pytest.fixture(scope="module")
def data64():
    return generate(30, 64, seed=3)


def _sentences(report: str) -> list[str]:
    body = re.sub(r"\b(FINDINGS|IMPRESSION):", " ", report)
    return [s.strip().lower() for s in re.split(r"(?<=[.;])\s+", body) if s.strip()]


def _negated(sentence: str) -> bool:
    return any(re.search(rf"\b{cue}\b", sentence) for cue in NEGATION_CUES)


def _mentions(sentence: str, finding: str) -> bool:
    return any(k in sentence for k in KEYWORDS[finding])


def _ctr(img: np.ndarray, dome_y: float) -> float:
    """Cardiothoracic ratio read off a frontal film: widest heart gap between the lungs / widest lung extent."""
    n = img.shape[0]
    smooth = img.copy()
    smooth[1:-1] = (img[:-2] + img[1:-1] + img[2:]) / 3  # ribs and vessels would break single rows
    lo, hi = np.percentile(img[img > 0.1], [20, 90])  # lung level, heart / abdomen level
    thr = lo + 0.45 * (hi - lo)
    rows = {}
    for r in range(int((dome_y - 0.1 + 1) / 2 * n)):  # above the right hemidiaphragm
        bright, dark = np.flatnonzero(smooth[r] > thr), np.flatnonzero(smooth[r] < thr)
        dark = dark[(dark > bright[0]) & (dark < bright[-1])]  # inside the chest wall
        left, right = dark[dark < n // 2], dark[dark >= n // 2]
        if len(left) and len(right):
            rows[r] = (dark[-1] - dark[0] + 1, right[0] - left[-1] - 1)
    lower = [h for r, (_, h) in rows.items() if r >= (min(rows) + max(rows)) / 2]  # apices are far apart too
    return max(lower) / max(t for t, _ in rows.values())


def test_same_seed_gives_identical_data_and_another_seed_differs():
    a, b, c = generate(4, 32, seed=7), generate(4, 32, seed=7), generate(4, 32, seed=8)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.masks, b.masks)
    assert a.report == b.report and a.labels == b.labels and a.view == b.view and a.study_id == b.study_id
    assert a.images.shape != c.images.shape or not np.array_equal(a.images, c.images)
    assert a.report != c.report


def test_a_patient_does_not_depend_on_how_many_patients_are_drawn():
    few, more = generate(2, 32, seed=1), generate(5, 32, seed=1)
    n = len(few)
    assert np.array_equal(few.images, more.images[:n]) and few.report == more.report[:n]


def test_arrays_have_the_promised_types_and_ranges(data64):
    n = len(data64)
    assert data64.images.shape == (n, 64, 64) and data64.images.dtype == np.float32
    assert data64.masks.shape == (n, 64, 64) and data64.masks.dtype == np.uint8
    assert 0.0 <= data64.images.min() and data64.images.max() <= 1.0
    assert data64.masks.max() < 2 ** len(FINDINGS)
    assert len(data64.patient_id) == len(data64.study_id) == len(data64.view) == len(data64.labels) == n


def test_patients_have_one_to_three_studies_each_with_a_frontal_and_a_lateral(data64):
    studies = defaultdict(list)
    for pid, sid, view in zip(data64.patient_id, data64.study_id, data64.view):
        assert re.fullmatch(r"P\d{4}", pid) and re.fullmatch(rf"{pid}-S[123]", sid)
        studies[(pid, sid)].append(view)
    for views in studies.values():
        assert sorted(views) in (["LATERAL", "PA"], ["AP", "LATERAL"])
    per_patient = defaultdict(set)
    for pid, sid in studies:
        per_patient[pid].add(sid)
    assert len(per_patient) == 30
    assert all(1 <= len(s) <= 3 for s in per_patient.values())
    assert any(len(s) >= 2 for s in per_patient.values())


def test_about_forty_percent_of_studies_have_no_finding():
    studies = generate(150, 16, seed=4, lateral=False).studies()
    normal = sum(1 for s in studies if not s.findings)
    assert 0.28 < normal / len(studies) < 0.55
    assert all(1 <= len(s.findings) <= 3 for s in studies if s.findings)
    assert {f for s in studies for f in s.findings} == set(FINDINGS)


def test_films_of_one_patient_look_more_alike_than_films_of_two_patients():
    d = generate(25, 32, seed=2, lateral=False)
    pid, x = np.array(d.patient_id), d.images.reshape(len(d), -1)
    dist = np.abs(x[:, None] - x[None]).mean(-1)
    same = pid[:, None] == pid[None]
    off_diag = ~np.eye(len(d), dtype=bool)
    assert dist[same & off_diag].mean() < 0.8 * dist[~same].mean()


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("view", ["PA", "LATERAL"])
@pytest.mark.parametrize("finding", FINDINGS)
def test_finding_changes_the_pixels_inside_its_mask_in_its_direction(finding, view, size):
    k = FINDINGS.index(finding)
    for seed in range(6):
        patient = sample_patient(np.random.default_rng(seed))
        img, mask = render_study(patient, (finding,), view, size, np.random.default_rng(seed))
        ref, ref_mask = render_study(patient, (), view, size, np.random.default_rng(seed))  # same film without it
        inside = (mask >> k) & 1 == 1
        assert inside.any() and not ref_mask.any()
        assert np.all(mask[inside] == 1 << k)  # a single finding sets only its own bit
        change = DIRECTION[finding] * (img[inside].mean() - ref[inside].mean())
        assert change > 0.03, (finding, seed, change)
        assert np.abs(img[~inside] - ref[~inside]).mean() < 0.1 * change  # the mask covers what changed


def test_mask_bits_match_the_labels(data64):
    for i in range(len(data64)):
        bits = {FINDINGS[k] for k in range(len(FINDINGS)) if ((data64.masks[i] >> k) & 1).any()}
        labels = set(data64.labels[i]) - {NO_FINDING}
        if data64.labels[i] == (NO_FINDING,):
            assert not data64.masks[i].any()
        if data64.view[i] == "LATERAL":
            assert bits <= labels
        else:
            assert bits == labels, (data64.study_id[i], labels, bits)


@pytest.mark.parametrize("view", ["PA", "AP"])
def test_cardiothoracic_ratio_exceeds_one_half_exactly_with_cardiomegaly(view):
    for seed in range(12):
        patient = sample_patient(np.random.default_rng(seed))
        normal = render_study(patient, (), view, 64, np.random.default_rng(seed))[0]
        large = render_study(patient, ("cardiomegaly",), view, 64, np.random.default_rng(seed))[0]
        assert _ctr(normal, patient.dome[0]) < 0.5 < _ctr(large, patient.dome[0]), seed


def test_heart_bulges_to_the_image_right_on_frontal_films(data64):
    rows = slice(int(0.5 * 64), int(0.68 * 64))  # heart level
    for i in np.flatnonzero(np.array(data64.view) != "LATERAL"):
        img = data64.images[i]
        assert img[rows, 33:50].mean() > img[rows, 14:31].mean() + 0.03, data64.study_id[i]


def test_reports_agree_with_the_labels(data64):
    for study in generate(60, 16, seed=9, lateral=False).studies() + data64.studies():
        sentences = _sentences(study.report)
        assert study.report.startswith("FINDINGS: ") and " IMPRESSION: " in study.report
        for f in FINDINGS:
            mentioned = [s for s in sentences if _mentions(s, f)]
            if f in study.findings:
                assert any(not _negated(s) for s in mentioned), (f, study.report)
                assert not any(_negated(s) for s in mentioned), (f, study.report)
            else:
                assert all(_negated(s) for s in mentioned), (f, study.report)


def test_report_sides_match_the_image():
    d = generate(80, 32, seed=6, lateral=False)
    checked = 0
    for i in range(len(d)):
        labels, text = d.labels[i], d.report[i].lower()
        if len(labels) != 1 or labels[0] in (NO_FINDING, "cardiomegaly") or "bilateral" in text:
            continue
        cols = np.nonzero(d.masks[i])[1]
        on_image_left = cols.mean() < 16  # the patient's right on a frontal film
        assert ("right" in text) == on_image_left and ("left" in text or "lingula" in text) != on_image_left, text
        checked += 1
    assert checked >= 10


def test_normal_reports_vary():
    rng = np.random.default_rng(0)
    normal = {make_report((), rng) for _ in range(40)}
    assert len(normal) >= 5
    assert all(not any(_mentions(s, f) and not _negated(s) for s in _sentences(r) for f in FINDINGS) for r in normal)
    studies = [s for s in generate(120, 16, seed=5, lateral=False).studies() if not s.findings][:40]
    assert len({s.report for s in studies}) >= 5


def test_make_report_rejects_unknown_findings():
    with pytest.raises(ValueError, match="pneumonia"):
        make_report(("pneumonia",), np.random.default_rng(0))


def test_write_synthetic_writes_pngs_and_a_manifest_that_reads_back(tmp_path):
    out = tmp_path / "synth"
    manifest = write_synthetic(out, 3, size=32, seed=2, progress=False)
    data = generate(3, 32, seed=2)
    records = read_manifest(manifest)
    assert len(records) == len(data)
    for i, r in enumerate(records):
        assert (r.patient_id, r.study_id, r.view, r.labels, r.report) == (
            data.patient_id[i], data.study_id[i], data.view[i], data.labels[i], data.report[i])
        assert r.split == "" and r.path.endswith(f"images/{data.study_id[i]}_{data.view[i]}.png")
        pixels = np.asarray(Image.open(r.path))
        assert pixels.dtype == np.uint8 and np.abs(pixels / 255.0 - data.images[i]).max() <= 0.5 / 255 + 1e-6
        assert np.array_equal(np.asarray(Image.open(r.mask)), data.masks[i])
    again = write_synthetic(out, 2, size=32, seed=2, progress=False)  # an earlier output may be overwritten
    assert len(read_manifest(again)) == len(generate(2, 32, seed=2))
    assert len(list((out / "images").glob("*.png"))) == len(generate(2, 32, seed=2))


def test_write_synthetic_refuses_a_foreign_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(MedsslError, match="not empty"):
        write_synthetic(tmp_path, 2, size=32, progress=False)
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("kwargs, word", [({"n_patients": 0}, "n_patients.*0"),
                                          ({"n_patients": 2, "size": 8}, "size.*8"),
                                          ({"n_patients": 2, "seed": -1}, "seed.*-1")])
def test_bad_values_are_refused_by_name(tmp_path, kwargs, word):
    with pytest.raises(MedsslError, match=word):
        generate(**kwargs)
    with pytest.raises(MedsslError, match=word):
        write_synthetic(tmp_path / "x", **kwargs, progress=False)
    assert not (tmp_path / "x").exists()

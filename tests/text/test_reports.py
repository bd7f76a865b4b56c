"""Report cleaning, sections, sentences, ConVIRT sampling, truncation and missing reports (medssl.text.reports)."""

from __future__ import annotations

import csv
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from medssl.errors import MedsslError
from medssl.text.reports import (
    BODY, DEID, clean_text, filter_reports, join_sections, report_sentences, sample_sentences, split_sections,
    split_sentences, training_text, truncate_sentences,
)
from conftest import shared_file

# IU-X-ray-like reports written for these tests (not taken from the corpus).
IU_LIKE = ("COMPARISON: None. INDICATION: XXXX-year-old XXXX with chest pain. "
           "FINDINGS: The heart is normal in size.There are no XXXX of a pleural effusion. "
           "Calcified granuloma, e.g. old infection, 2.5 cm in the right upper lobe. "
           "IMPRESSION: 1. No acute cardiopulmonary process. 2. Normal chest x-XXXX.")


def test_sections_are_split_by_header_with_aliases_and_body():
    s = split_sections("Portable film. Findings: Clear lungs. IMPRESSIONS: Normal. Conclusion: Nothing acute.")
    assert s == {BODY: "Portable film.", "findings": "Clear lungs.", "impression": "Normal. Nothing acute."}
    iu = split_sections(IU_LIKE)
    assert list(iu) == ["comparison", "indication", "findings", "impression"]
    assert iu["comparison"] == "None."
    assert iu["impression"] == "1. No acute cardiopulmonary process. 2. Normal chest x-XXXX."


def test_join_sections_round_trips_through_split_sections():
    row = {"findings": " Clear lungs. ", "impression": "Normal.", "comparison": ""}
    joined = join_sections(row)
    assert joined == "FINDINGS: Clear lungs. IMPRESSION: Normal."
    assert split_sections(joined) == {"findings": "Clear lungs.", "impression": "Normal."}


def test_clean_text_deid_whitespace_case_and_glued_sentences():
    assert clean_text("No  XXXX XXXX XXXX\n of  effusion at XXXXPM, x-XXXX and 4XXXX.") == (
        f"no {DEID} of effusion at {DEID}, x-{DEID} and {DEID}.")
    assert clean_text("Lung apex.There is scarring.") == "lung apex. there is scarring."
    assert clean_text("No XXXX of effusion.", deid="") == "no of effusion."
    assert clean_text("Keep Case XXXX.", lower=False) == f"Keep Case {DEID}."
    assert clean_text("No fractures visualized. . 1. Normal.") == "no fractures visualized. 1. normal."
    assert clean_text("Clear.<BR>[<Heart normal.&gt;] &lt; 1 cm nodule, <2 mm.") == (
        "clear. heart normal. < 1 cm nodule, <2 mm.")
    assert clean_text("") == ""
    once = clean_text(IU_LIKE)
    assert clean_text(once) == once and once.count(DEID) == 4  # idempotent: cleaned text keeps its placeholders


def test_training_text_is_findings_then_impression_or_the_whole_unheaded_report():
    text = training_text(IU_LIKE)
    assert text.startswith("the heart is normal in size. there are no [DEID] of a pleural effusion.")
    assert text.endswith("1. no acute cardiopulmonary process. 2. normal chest x-[DEID].")
    assert "chest pain" not in text and "XXXX" not in text  # the indication is not training text
    assert training_text("IMPRESSION: Normal. FINDINGS: Clear.") == "clear. normal."  # order of `sections`
    assert training_text(IU_LIKE, sections=("indication",)) == f"{DEID}-year-old {DEID} with chest pain."
    assert training_text("Fever and cough.   Bilateral opacities.") == "fever and cough. bilateral opacities."
    assert training_text("COMPARISON: None. INDICATION: Cough.") == ""


def test_sentences_of_the_iu_like_report():
    assert report_sentences(IU_LIKE) == [
        "the heart is normal in size.",
        f"there are no {DEID} of a pleural effusion.",
        "calcified granuloma, e.g. old infection, 2.5 cm in the right upper lobe.",
        "no acute cardiopulmonary process.",
        f"normal chest x-{DEID}.",
    ]


@pytest.mark.parametrize("text, expected", [
    ("Seen by Dr. Smith today. Lungs clear.", ["Seen by Dr. Smith today.", "Lungs clear."]),
    ("Opacity, i.e. edema, is seen. Mild.", ["Opacity, i.e. edema, is seen.", "Mild."]),
    ("A 2.5 cm nodule. A 1.9 x 1.8 cm mass.", ["A 2.5 cm nodule.", "A 1.9 x 1.8 cm mass."]),
    ("1. No effusion. 2. Small nodule. 3) Clear.", ["No effusion.", "Small nodule.", "Clear."]),
    ("Called at 5 p.m. by the nurse! Is it new? Yes", ["Called at 5 p.m. by the nurse!", "Is it new?", "Yes"]),
    ("Clear. . , Normal.", ["Clear.", "Normal."]),  # stray punctuation does not open a sentence
    (f"Clear lungs. {DEID}. [DEID] {DEID}. ", ["Clear lungs."]),  # placeholder-only sentences carry nothing
    ("", []),
])
def test_sentence_splitting_edge_cases(text, expected):
    assert split_sentences(text) == expected


SENTENCES = [f"sentence {i}." for i in range(10)]


@pytest.mark.parametrize("make", [lambda s: torch.Generator().manual_seed(s), np.random.default_rng])
def test_sentence_sampling_is_deterministic_given_the_seed_and_varies_across_seeds(make):
    first = [sample_sentences(SENTENCES, make(7), max_span=3) for _ in range(3)]
    assert first[0] == first[1] == first[2]
    g = make(0)
    draws = [sample_sentences(SENTENCES, g) for _ in range(200)]
    assert set(draws) == set(SENTENCES)  # one sentence (ConVIRT), every one reachable
    g = make(1)
    spans = [sample_sentences(SENTENCES, g, max_span=3) for _ in range(300)]
    for span in spans:  # a span is 1-3 consecutive sentences
        idx = [int(w.rstrip(".")) for w in span.split() if w.rstrip(".").isdigit()]
        assert 1 <= len(idx) <= 3 and idx == list(range(idx[0], idx[0] + len(idx)))
    assert {len(s.split()) // 2 for s in spans} == {1, 2, 3}


def test_sentence_sampling_errors():
    with pytest.raises(MedsslError, match="no sentence"):
        sample_sentences([], np.random.default_rng(0))
    with pytest.raises(MedsslError, match="max_span=0"):
        sample_sentences(SENTENCES, np.random.default_rng(0), max_span=0)
    with pytest.raises(MedsslError, match="generator"):
        sample_sentences(SENTENCES, 3)


def test_truncation_keeps_whole_leading_sentences_within_the_budget():
    sents = ["a b c.", "d e.", "f g h i.", "j."]  # 3, 2, 4, 1 words
    assert truncate_sentences(sents, 5) == (["a b c.", "d e."], 2)
    assert truncate_sentences(sents, 9) == (["a b c.", "d e.", "f g h i."], 1)  # "j." fits but comes after a cut
    assert truncate_sentences(sents, 100) == (sents, 0)
    assert truncate_sentences(sents, 2) == (["a b c."], 3)  # the first sentence always stays
    assert truncate_sentences(sents, 4, count=len) == (["a b c."], 3)  # a custom count: characters
    with pytest.raises(MedsslError, match="budget 0"):
        truncate_sentences(sents, 0)


def test_filter_reports_skips_missing_and_empty_reports_with_a_count():
    records = [SimpleNamespace(report=IU_LIKE), SimpleNamespace(report=""), SimpleNamespace(report=None),
               SimpleNamespace(report="   "), SimpleNamespace(report="COMPARISON: XXXX. INDICATION: Cough."),
               SimpleNamespace(report="Bilateral opacities.")]
    kept, skipped = filter_reports(records)
    assert kept == [records[0], records[5]] and skipped == 4
    rows = [{"text": "FINDINGS: Clear."}, {"text": ""}]
    assert filter_reports(rows, text_of=lambda r: r["text"]) == ([rows[0]], 1)


def test_filter_reports_raises_when_no_report_is_left():
    with pytest.raises(MedsslError, match=r"manifest.csv: no report left: 2 of 2 records"):
        filter_reports([SimpleNamespace(report=""), SimpleNamespace(report=None)], source="manifest.csv")
    with pytest.raises(MedsslError, match="no report left: 0 of 0"):
        filter_reports([])


def test_cleaning_over_the_real_iu_xray_corpus():
    path = shared_file("iu_xray_reports.csv")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3955 and {"findings", "impression", "indication", "comparison"} <= set(rows[0])
    texts = [training_text(join_sections({"findings": r["findings"], "impression": r["impression"]})) for r in rows]
    assert not any("xxxx" in t.lower() for t in texts)  # every de-identification placeholder normalised
    non_empty = sum(bool(t) for t in texts)
    assert non_empty >= 0.99 * len(rows)  # 28 rows of the corpus have neither findings nor impression
    kept, skipped = filter_reports(texts, text_of=lambda t: t, source=str(path))
    assert len(kept) == non_empty and skipped == len(rows) - non_empty
    sentences = [s for t in texts for s in split_sentences(t)]
    assert len(sentences) > 5 * len(rows)
    assert not any(s in {"1.", "2.", "dr.", "e.g."} for s in sentences)  # no marker or abbreviation left alone
    assert all(s[0].isalnum() or s.startswith(DEID) or s[0] in "(-\"'" for s in sentences), \
        [s for s in sentences if not (s[0].isalnum() or s.startswith(DEID))][:5]

"""The rule-based finding labeller (medssl.report.labeler) and `medssl report label`'s work (label_run.label_lines).

Sentences here are written for these tests in IU X-ray / MIMIC style, not taken from a corpus.
"""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest

from medssl.errors import MedsslError
from medssl.report.label_run import label_lines
from medssl.report.labeler import (
    NEGATIVE, OBSERVATIONS, PATHOLOGIES, POSITIVE, SYNTHETIC_TO_CHEXPERT, UNCERTAIN, label_matrix, label_report,
    label_reports,
)
from medssl.synthetic.reports import FINDINGS, make_report

P, N, U = POSITIVE, NEGATIVE, UNCERTAIN


def labels(text: str) -> dict[str, str]:
    """label_report without no_finding, to compare the mentioned observations exactly."""
    return {k: v for k, v in label_report(text).items() if k != "no_finding"}


@pytest.mark.parametrize("text, expected", [
    ("No pleural effusion.", {"pleural_effusion": N}),
    ("There is no pneumothorax.", {"pneumothorax": N}),
    ("Lungs are clear without focal consolidation, effusion, or pneumothorax.",
     {"consolidation": N, "pleural_effusion": N, "pneumothorax": N}),
    ("Negative for pneumothorax or pleural effusion.", {"pneumothorax": N, "pleural_effusion": N}),
    ("The lungs are free of focal airspace disease.", {"lung_opacity": N}),
    ("No evidence of pneumonia.", {"pneumonia": N}),
    ("The previously seen left effusion has resolved.", {"pleural_effusion": N}),
    ("Pneumothorax is not seen.", {"pneumothorax": N}),
    ("There is no focal air space opacity to suggest a pneumonia.", {"lung_opacity": N, "pneumonia": N}),
    ("The endotracheal tube has been removed.", {"support_devices": N}),
])
def test_negation(text, expected):
    assert labels(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("Left basilar opacity may represent atelectasis.", {"lung_opacity": P, "atelectasis": U}),
    ("Cannot exclude pneumonia.", {"pneumonia": U}),
    ("Possible small right pleural effusion.", {"pleural_effusion": U}),
    ("Right lower lobe consolidation, concerning for pneumonia.", {"consolidation": P, "pneumonia": U}),
    ("Findings are suspicious for a right upper lobe mass.", {"lung_lesion": U}),
    ("Questionable left apical pneumothorax.", {"pneumothorax": U}),
    ("Bibasilar opacities, atelectasis versus pneumonia.", {"lung_opacity": P, "atelectasis": U, "pneumonia": U}),
    ("Minimal left basilar atelectasis or scarring.", {"atelectasis": U, "lung_opacity": U}),
    ("Linear opacity at the right base, likely subsegmental atelectasis.", {"lung_opacity": P, "atelectasis": P}),
    ("Borderline cardiomegaly.", {"cardiomegaly": U}),
    ("Mild pulmonary vascular congestion.", {"edema": U}),  # congestion precedes edema (CheXpert)
])
def test_uncertainty(text, expected):
    assert labels(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("Pneumothorax cannot be ruled out.", {"pneumothorax": U}),
    ("A small left effusion is not excluded.", {"pleural_effusion": U}),
    ("Early pneumonia cannot be excluded.", {"pneumonia": U}),
    ("Cannot rule out a small pneumothorax.", {"pneumothorax": U}),
    ("No new consolidation.", {"consolidation": U}),  # the old one may persist (CheXpert)
])
def test_double_negation_is_uncertain(text, expected):
    assert labels(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("No change in the moderate right pleural effusion.", {"pleural_effusion": P}),
    ("Stable cardiomegaly.", {"cardiomegaly": P}),
    ("Unchanged left lower lobe atelectasis.", {"atelectasis": P}),
    ("No significant interval change in the right upper lobe nodule.", {"lung_lesion": P}),
    ("Left pneumothorax, without interval change.", {"pneumothorax": P}),
])
def test_no_change_keeps_the_finding_positive(text, expected):
    assert labels(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("No pneumothorax, but there is a small left effusion.", {"pneumothorax": N, "pleural_effusion": P}),
    ("No pneumothorax; small left pleural effusion.", {"pneumothorax": N, "pleural_effusion": P}),
    ("No focal consolidation, however there is mild left basilar atelectasis.", {"consolidation": N, "atelectasis": P}),
    ("No effusion, although there is a small right pneumothorax.", {"pleural_effusion": N, "pneumothorax": P}),
    ("Right basilar opacity which may represent pneumonia.", {"lung_opacity": P, "pneumonia": U}),
    ("Small effusion without pneumothorax.", {"pleural_effusion": P, "pneumothorax": N}),
    ("No pneumothorax and the heart is enlarged.", {"pneumothorax": N, "cardiomegaly": P}),
    ("No pleural effusion and pneumothorax.", {"pleural_effusion": N, "pneumothorax": N}),
])
def test_scope_stops_at_but_however_although_semicolon_which(text, expected):
    assert labels(text) == expected


def test_deid_placeholders_keep_the_sentence_readable():
    assert labels("There are no XXXX of a pleural effusion.") == {"pleural_effusion": N}
    assert labels("There are no [DEID] of a pleural effusion.") == {"pleural_effusion": N}
    assert labels("Right chest XXXX tip in the mid SVC.") == {"support_devices": P}  # the line's name redacted
    assert labels("The heart size XXXX normal.") == {"cardiomegaly": N}


@pytest.mark.parametrize("text, expected", [
    ("Heart size is normal.", {"cardiomegaly": N}),
    ("The heart is normal in size.", {"cardiomegaly": N}),
    ("Cardiomediastinal silhouette is within normal limits.", {"cardiomegaly": N, "enlarged_cardiomediastinum": N}),
    ("The cardiomediastinal silhouette is unremarkable.", {"cardiomegaly": N, "enlarged_cardiomediastinum": N}),
    ("The heart is not significantly enlarged.", {"cardiomegaly": N}),
    ("The heart is mildly enlarged.", {"cardiomegaly": P}),
    ("There is moderate enlargement of the cardiac silhouette.", {"cardiomegaly": P}),
    ("Heart size is upper limits of normal or mildly enlarged.", {"cardiomegaly": U}),
    ("Normal heart size and mediastinal contours.", {"cardiomegaly": N, "enlarged_cardiomediastinum": N}),
    ("Enlarged cardiomediastinal silhouette.", {"enlarged_cardiomediastinum": P, "cardiomegaly": U}),
    ("Stable heart size, moderately enlarged tortuous aorta.", {}),  # the aorta is enlarged, not the heart
    ("The costophrenic angles are sharp.", {"pleural_effusion": N}),
    ("Blunting of the left costophrenic angle.", {"pleural_effusion": U}),
    ("Increased interstitial markings.", {"lung_opacity": P}),
    ("Stable cardiomediastinal silhouette.", {}),  # a place without a qualifier says nothing
    ("The lungs are clear.", {}),
])
def test_places_take_their_status_from_a_qualifier(text, expected):
    assert labels(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("Calcified granuloma in the right upper lobe.", {}),
    ("Calcified right hilar nodules.", {}),
    ("8 mm nodule in the left lower lobe, likely a calcified granuloma.", {}),
    ("9 mm nodule, not definitively calcified.", {"lung_lesion": P}),
    ("There is no obvious lytic or destructive lesion.", {}),
    ("Large right upper lobe mass.", {"lung_lesion": P}),
    ("Healing fracture of the left 6th rib.", {"fracture": P}),
    ("Soft tissue edema of the chest wall.", {}),
    ("Pericardial effusion.", {}),
    ("Left hydropneumothorax.", {"pneumothorax": P, "pleural_effusion": P}),
    ("Apical pleural thickening.", {"pleural_other": P}),
    ("Plate-like atelectasis at the left base.", {"atelectasis": P}),
    ("A visceral pleural line is seen at the left apex, consistent with a small pneumothorax.", {"pneumothorax": P}),
    ("Left-sided pacemaker with leads in the right atrium and ventricle.", {"support_devices": P}),
    ("Patchy airspace opacity in the right lower lobe, consistent with consolidation.",
     {"lung_opacity": P, "consolidation": P}),
])
def test_mention_phrases(text, expected):
    assert labels(text) == expected


def test_only_findings_and_impression_are_labelled():
    report = "INDICATION: Fever, rule out pneumonia. FINDINGS: The lungs are clear. IMPRESSION: Normal chest."
    assert label_report(report) == {"no_finding": P}
    assert label_report("Cardiomegaly.") == {"cardiomegaly": P}  # no header: the whole text


def test_no_finding_follows_the_chexpert_rule():
    assert label_report("No acute cardiopulmonary process.") == {"no_finding": P}
    assert label_report("Heart size is normal. No pleural effusion.") == {
        "no_finding": P, "cardiomegaly": N, "pleural_effusion": N}
    assert label_report("Right PICC tip in the SVC. Lungs are clear.") == {"no_finding": P, "support_devices": P}
    assert "no_finding" not in label_report("Possible small left effusion.")  # uncertain is a finding
    assert "no_finding" not in label_report("Healing rib fracture.")
    assert label_report("") == {} and label_report("FINDINGS: XXXX.") == {}  # nothing to label
    assert list(label_report("Cardiomegaly. Small left effusion. No pneumothorax.")) == [
        "cardiomegaly", "pneumothorax", "pleural_effusion"]  # keys in OBSERVATIONS order


def test_statuses_combine_positive_over_uncertain_over_negative():
    assert label_report("No pleural effusion. Possible small left pleural effusion.")["pleural_effusion"] == U
    assert label_report("Possible left effusion. IMPRESSION: Small left pleural effusion.")["pleural_effusion"] == P
    assert label_report("Heart size is normal. IMPRESSION: Mild cardiomegaly.")["cardiomegaly"] == P


def test_label_matrix_columns_and_uncertain_policy():
    texts = ["Mild cardiomegaly. No effusion.", "Possible left lower lobe pneumonia.", "No acute process.", ""]
    loose, strict = label_matrix(texts), label_matrix(texts, uncertain="negative")
    assert loose.shape == strict.shape == (4, 14) and loose.dtype == np.float32
    col = {o: i for i, o in enumerate(OBSERVATIONS)}
    assert loose[0].nonzero()[0].tolist() == [col["cardiomegaly"]]  # negative effusion is 0
    assert loose[1, col["pneumonia"]] == 1 and strict[1, col["pneumonia"]] == 0
    assert loose[2].tolist() == strict[2].tolist() == [1.0] + [0.0] * 13  # no_finding only
    assert loose[3].sum() == 0
    assert label_matrix([]).shape == (0, 14)
    with pytest.raises(MedsslError, match="uncertain='ignore'"):
        label_matrix(texts, uncertain="ignore")


def test_label_reports_is_label_report_of_each():
    texts = ["No pneumothorax.", "Cardiomegaly."]
    assert label_reports(texts) == [label_report(t) for t in texts]


def test_synthetic_mapping_covers_the_generator_names():
    assert set(SYNTHETIC_TO_CHEXPERT) == set(FINDINGS) | {"no_finding"}
    assert set(SYNTHETIC_TO_CHEXPERT.values()) <= set(OBSERVATIONS)
    assert set(PATHOLOGIES) == set(OBSERVATIONS) - {"no_finding", "support_devices"}


def test_synthetic_reports_are_read_back_exactly():
    """300 random finding subsets: positive exactly for the mapped findings, nothing uncertain among the six."""
    mapped = {SYNTHETIC_TO_CHEXPERT[f] for f in FINDINGS}
    rng = np.random.default_rng(0)
    sizes = []
    for i in range(300):
        findings = [f for f in FINDINGS if rng.random() < 0.3]
        got = label_report(make_report(findings, np.random.default_rng(1000 + i)))
        want = {SYNTHETIC_TO_CHEXPERT[f] for f in findings}
        assert {o for o in mapped if got.get(o) == P} == want, (findings, got)
        assert not {o for o in mapped if got.get(o) == U}, (findings, got)
        assert (got.get("no_finding") == P) == (not findings), (findings, got)
        sizes.append(len(findings))
    assert min(sizes) == 0 and max(sizes) >= 4  # normal reports and multi-finding reports were both drawn


# label_lines: the work of `medssl report label`

def test_label_lines_text_file_one_line_per_report(tmp_path):
    path = tmp_path / "reports.txt"
    path.write_text("Mild cardiomegaly. Possible left basilar atelectasis. No pneumothorax.\n\nNo acute process.\n")
    assert label_lines(str(path), None, False) == [
        "positive: cardiomegaly; uncertain: atelectasis; negative: pneumothorax",
        "no findings mentioned",  # a blank line keeps its place
        "positive: no_finding",
    ]


def test_label_lines_json_has_every_observation(tmp_path):
    path = tmp_path / "reports.txt"
    path.write_text("Small right pleural effusion.\n")
    [line] = label_lines(str(path), None, True)
    obj = json.loads(line)
    assert list(obj) == list(OBSERVATIONS)
    assert obj["pleural_effusion"] == P and obj["no_finding"] is None and obj["cardiomegaly"] is None


def _write_csv(path, rows):
    with path.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    return str(path)


def test_label_lines_csv_column_report_column_and_sections(tmp_path):
    named = _write_csv(tmp_path / "a.csv", [["id", "text"], ["1", "No pleural effusion."], ["2", "Cardiomegaly."]])
    assert label_lines(named, "text", False) == ["positive: no_finding; negative: pleural_effusion",
                                                 "positive: cardiomegaly"]
    default = _write_csv(tmp_path / "b.CSV", [["report", "x"], ["Large left pneumothorax.", "1"]])
    assert label_lines(default, None, False) == ["positive: pneumothorax"]
    sections = _write_csv(tmp_path / "c.csv", [["uid", "indication", "findings", "impression"],
                                               ["1", "Pneumonia?", "The lungs are clear.", "No acute disease."],
                                               ["2", "", "", "Right lower lobe pneumonia."]])
    assert label_lines(sections, None, False) == ["positive: no_finding", "positive: pneumonia"]


def test_label_lines_reads_standard_input():
    stdin = io.StringIO("No pneumothorax.\nStable cardiomegaly.\n")
    assert label_lines("-", None, False, stdin=stdin) == ["positive: no_finding; negative: pneumothorax",
                                                          "positive: cardiomegaly"]
    raw = io.TextIOWrapper(io.BytesIO(b"Small effusion.\n"), encoding="utf-8")
    assert label_lines("-", None, True, stdin=raw)[0].startswith('{"no_finding": null')


def test_label_lines_refuses_bad_input(tmp_path):
    with pytest.raises(MedsslError, match=r"missing\.txt: no such file"):
        label_lines(str(tmp_path / "missing.txt"), None, False)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    with pytest.raises(MedsslError, match=r"empty\.txt: empty"):
        label_lines(str(empty), None, False)
    with pytest.raises(MedsslError, match="standard input: empty"):
        label_lines("-", None, False, stdin=io.StringIO(""))
    no_col = _write_csv(tmp_path / "nocol.csv", [["id", "text"], ["1", "Cardiomegaly."]])
    with pytest.raises(MedsslError, match=r"nocol\.csv: no column 'report' .*\(columns: id, text\)"):
        label_lines(no_col, None, False)
    with pytest.raises(MedsslError, match=r"nocol\.csv: no column 'findings' \(columns: id, text\)"):
        label_lines(no_col, "findings", False)
    header_only = _write_csv(tmp_path / "header.csv", [["report"]])
    with pytest.raises(MedsslError, match=r"header\.csv: a header and no rows"):
        label_lines(header_only, None, False)
    latin = tmp_path / "latin.txt"
    latin.write_bytes("Pleural effusion, r\xe9sum\xe9.\n".encode("latin-1"))
    with pytest.raises(MedsslError, match=r"latin\.txt: not UTF-8 text \(byte 0xe9 at offset 19\)"):
        label_lines(str(latin), None, False)
    raw = io.TextIOWrapper(io.BytesIO(b"\xff\xfe bad"), encoding="utf-8")
    with pytest.raises(MedsslError, match="standard input: not UTF-8"):
        label_lines("-", None, False, stdin=raw)
    text = tmp_path / "r.txt"
    text.write_text("Cardiomegaly.\n")
    with pytest.raises(MedsslError, match=r"--column report needs a \.csv file"):
        label_lines(str(text), "report", False)

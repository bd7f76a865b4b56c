"""Manifest reading and writing, and every way a manifest can be wrong."""

from pathlib import Path

import pytest

from medssl.data.records import Record, label_names, parse_labels, read_manifest, write_manifest
from medssl.errors import ManifestError


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_round_trip_keeps_every_field_and_relative_paths(tmp_path):
    recs = [
        Record(str(tmp_path / "img" / "a.png"), "P1", "P1-S1", "PA", ("cardiomegaly", "nodule"),
               "Heart is enlarged.", "train", None, str(tmp_path / "masks" / "a.png"), {"age": "61"}),
        Record(str(tmp_path / "vol.nii.gz"), "P2", "", "", (), "", "", 7),
        Record("/elsewhere/b.dcm", "P3", labels=("0",)),
    ]
    out = write_manifest(recs, tmp_path / "manifest.csv")
    text = out.read_text()
    assert "img/a.png" in text and str(tmp_path) not in text  # stored relative to the manifest
    back = read_manifest(out)
    assert back == recs
    assert back[0].extra == {"age": "61"}


def test_labels_parse_and_reject_floats():
    assert parse_labels("cardiomegaly| nodule ") == ("cardiomegaly", "nodule")
    assert parse_labels("") == ()
    assert parse_labels("3") == ("3",)  # integer class ids are fine
    for bad in ("0.5", "nan", "1e3", "inf"):
        with pytest.raises(ManifestError, match="number"):
            parse_labels(bad)
    with pytest.raises(ManifestError, match="twice"):
        parse_labels("a|a")


def test_label_names_sort_integers_numerically():
    recs = [Record("a", "1", labels=("10",)), Record("b", "2", labels=("2",)), Record("c", "3", labels=("x",))]
    assert label_names(recs) == ["2", "10", "x"]


@pytest.mark.parametrize(
    "text, match",
    [
        ("path,labels\na.png,x\n", "missing column.*'patient_id'"),
        ("path,patientid\na.png,P1\n", "'patientid' looks like a misspelling of 'patient_id'"),
        ("path,patient_id,lables\na.png,P1,x\n", "'lables' looks like a misspelling of 'labels'"),
        ("path,patient_id\na.png,P1\na.png,P2\n", "duplicate path .*a.png"),
        ("path,patient_id,labels\na.png,P1,0.5\n", "line 2 column 'labels'.*'0.5'"),
        ("path,patient_id,split\na.png,P1,training\n", "line 2: split 'training'"),
        ("path,patient_id,index\na.png,P1,-1\n", "line 2: index '-1'"),
        ("path,patient_id\na.png,\n", "line 2: empty 'patient_id'"),
        ("path,patient_id\n", "no rows"),
        ("", "empty manifest"),
        ("path,patient_id\na.png,P1,extra\n", "line 2: more fields"),
    ],
)
def test_bad_manifests_name_the_file_and_problem(tmp_path, text, match):
    path = _write(tmp_path / "m.csv", text)
    with pytest.raises(ManifestError, match=match) as err:
        read_manifest(path)
    assert "m.csv" in str(err.value)


def test_non_utf8_and_missing_manifest(tmp_path):
    bad = tmp_path / "bin.csv"
    bad.write_bytes(b"path,patient_id\n\xff\xfe\x00a,b\n")
    with pytest.raises(ManifestError, match="bin.csv: not a UTF-8"):
        read_manifest(bad)
    with pytest.raises(ManifestError, match="nope.csv: no such manifest"):
        read_manifest(tmp_path / "nope.csv")


def test_extra_columns_that_are_not_misspellings_are_kept(tmp_path):
    path = _write(tmp_path / "m.csv", "path,patient_id,age,sex\na.png,P1,61,F\n")
    (rec,) = read_manifest(path)
    assert rec.extra == {"age": "61", "sex": "F"} and rec.path == str(tmp_path / "a.png")

"""The parts of `medssl pacs` that need no server: pseudonymisation, derived UIDs, credentials, URLs, SOP classes,
the SR's content and what it is built from."""

from __future__ import annotations

import pydicom
import pytest
from pydicom.data import get_testdata_file

from medssl.data.dicom import pseudonym
from medssl.errors import MedsslError
from medssl.pacs.client import check_url, read_credentials
from medssl.pacs.pull import deidentify, is_image_class, parse_query, shown
from medssl.pacs.sr import FINDING_CODES, derived_uid, draft_uids, report_sr
from medssl.report.labeler import OBSERVATIONS


def test_deidentify_pseudonymises_and_leaves_no_copy_of_the_identity():
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    pid, name = str(ds.PatientID), str(ds.PatientName)
    ds.ImageComments = f"patient {pid} seen"  # an id copied into free text
    ds.OtherPatientIDs = "X-1"
    deidentify(ds)
    assert ds.PatientID == pseudonym(pid) and str(ds.PatientName) == "" and ds.PatientBirthDate == ""
    assert ds.StudyID == "" and "OtherPatientIDs" not in ds and ds.ImageComments == ""
    for elem in ds.iterall():
        if isinstance(elem.value, str) and elem.keyword != "PatientID":
            assert pid not in elem.value and name not in elem.value, elem
    assert ds.SOPInstanceUID and ds.StudyInstanceUID and ds.pixel_array.shape == (128, 128)


def test_derived_uids_are_valid_and_a_pure_function_of_their_parts():
    a = draft_uids("1.2.3", "lstm:abc", "No acute findings.", ["1.2.3.4", "1.2.3.5"])
    assert a == draft_uids("1.2.3", "lstm:abc", "No acute findings.", ["1.2.3.5", "1.2.3.4"])
    assert a[1] != draft_uids("1.2.3", "lstm:abc", "Small effusion.", ["1.2.3.4", "1.2.3.5"])[1]
    assert a[0] == draft_uids("1.2.3", "lstm:abc", "other text", ["9"])[0]  # one series per study and model
    for uid in (*a, derived_uid("x")):
        assert uid.startswith("2.25.") and len(uid) <= 64 and pydicom.uid.UID(uid).is_valid


def test_credentials_come_from_a_file_or_the_environment_never_shown(tmp_path, monkeypatch):
    for k in ("MEDSSL_PACS_USER", "MEDSSL_PACS_PASSWORD", "MEDSSL_PACS_TOKEN", "MEDSSL_PACS_AUTH_FILE"):
        monkeypatch.delenv(k, raising=False)
    assert read_credentials() == ("none", None)
    f = tmp_path / "auth"
    f.write_text("Bearer s3cr3t-token\n")
    kind, auth = read_credentials(str(f))
    assert kind == "bearer" and "s3cr3t" not in repr(auth)
    f.write_text("alice:pw:with:colons\n")
    kind, auth = read_credentials(str(f))
    assert kind == "basic" and (auth.username, auth.password) == ("alice", "pw:with:colons")
    f.write_text("just-a-word\n")
    with pytest.raises(MedsslError, match="first line must be"):
        read_credentials(str(f))
    monkeypatch.setenv("MEDSSL_PACS_USER", "bob")
    with pytest.raises(MedsslError, match="without MEDSSL_PACS_PASSWORD"):
        read_credentials()
    monkeypatch.setenv("MEDSSL_PACS_TOKEN", "t")
    with pytest.raises(MedsslError, match="both"):
        read_credentials()


def test_urls_queries_and_sop_classes():
    assert check_url("http://127.0.0.1:8042/dicom-web/") == "http://127.0.0.1:8042/dicom-web"
    with pytest.raises(MedsslError, match="credentials in the URL") as e:
        check_url("https://bob:hunter2@pacs.example.org/dicom-web")
    assert "hunter2" not in str(e.value) and "bob" not in str(e.value)
    with pytest.raises(MedsslError, match="http:// or https://"):
        check_url("ftp://pacs")
    assert parse_query(["ModalitiesInStudy=CR", "00080020=20240101-"]) == {"ModalitiesInStudy": "CR",
                                                                           "00080020": "20240101-"}
    with pytest.raises(MedsslError, match="not a DICOM keyword"):
        parse_query(["Modalty=CR"])
    assert shown({"PatientName": "Doe^J", "00100020": "123", "StudyDate": "2024"}) == {
        "PatientName": "***", "00100020": "***", "StudyDate": "2024"}
    assert is_image_class("1.2.840.10008.5.1.4.1.1.1")  # CR
    assert is_image_class("1.2.840.10008.5.1.4.1.1.1.1")  # DX for presentation
    assert not is_image_class("1.2.840.10008.5.1.4.1.1.88.22")  # Enhanced SR
    assert not is_image_class("1.2.840.10008.5.1.4.1.1.481.5")  # RT plan
    assert not is_image_class("1.2.840.10008.5.1.4.1.1.11.1")  # grayscale softcopy presentation state


def test_the_sr_codes_the_findings_it_states_and_keeps_the_study():
    assert set(FINDING_CODES) <= set(OBSERVATIONS)
    src = pydicom.dcmread(get_testdata_file("CT_small.dcm"), stop_before_pixels=True)
    model = {"id": "lstm:0123", "name": "medssl lstm report generator 0123", "version": "medssl 0.1.0"}
    sr = report_sr("Small left pleural effusion. No pneumothorax.", ["pleural_effusion", "support_devices"], [src],
                   model)
    assert sr.StudyInstanceUID == src.StudyInstanceUID and sr.PatientID == src.PatientID
    assert (sr.VerificationFlag, sr.CompletionFlag, sr.PreliminaryFlag) == ("UNVERIFIED", "PARTIAL", "PRELIMINARY")
    findings = next(c for c in sr.ContentSequence if c.ConceptNameCodeSequence[0].CodeValue == "121070")
    codes = [c.ConceptCodeSequence[0].CodeValue for c in findings.ContentSequence if c.ValueType == "CODE"]
    assert codes == ["60046008"]  # effusion coded; support devices has no code here, stays in the text
    assert sr.SOPInstanceUID == draft_uids(src.StudyInstanceUID, model["id"], findings.ContentSequence[0].TextValue,
                                           [src.SOPInstanceUID])[1]


def test_searches_page_on_only_when_the_answer_may_be_cut_and_stop_when_nothing_new_comes():
    import logging

    from medssl.pacs.client import Pacs
    from medssl.pacs.pull import STUDY, search_all

    items = [{STUDY: {"Value": [f"1.2.{i}"]}} for i in range(250)]
    pacs = Pacs(client=None, url="http://127.0.0.1:1/dicom-web", timeout=1.0)
    calls = []

    def whole(limit=None, offset=0, **kw):  # answers everything at once; past the end, nothing
        calls.append((limit, offset))
        return items[offset:offset + limit] if limit else items

    assert len(search_all(pacs, "x", whole, STUDY)) == 250 and len(calls) == 2

    def ignores_offset(limit=None, offset=0, **kw):  # the same first page whatever the offset
        return items[:120]

    assert len(search_all(pacs, "x", ignores_offset, STUDY)) == 120

    def capped(limit=None, offset=0, **kw):  # 50 at a time, with the standard's Warning header
        if offset + 50 < len(items):
            logging.getLogger("dicomweb_client").warning("299 remaining results")
        return items[offset:offset + 50]

    assert len(search_all(pacs, "x", capped, STUDY)) == 250
    assert len(search_all(pacs, "x", lambda **kw: items[:3], STUDY)) == 3

"""`medssl pacs pull / push` and `medssl serve --pacs` against a real Orthanc on loopback: the round trip pull ->
generate -> push -> read back (references, text, flags, idempotence, dciodvfy), resumable pulls, what is kept on
disk (no patient name, id or birth date), and the error cases as one line and exit 2 with nothing half-written
(server down, authentication refused, a study with no images, non-image instances, a timeout mid-transfer)."""

from __future__ import annotations

import http.server
import json
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pydicom
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serve"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from orthanc import PASSWORD, USER, orthanc, orthanc_password, pydicom_data_file, pydicom_file  # noqa: E402,F401
from serving import Server, free_port, serve_run  # noqa: E402,F401

CHEST, CT, MR, PLAN = "RG1_J2KI.dcm", "CT_small.dcm", "MR_small.dcm", "rtplan.dcm"


def _identity(path: Path) -> tuple[str, str, str]:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return str(ds.PatientName), str(ds.PatientID), str(ds.get("PatientBirthDate", ""))


def _plan_in_study(study_of: Path) -> bytes:
    """pydicom's RT plan (a non-image SOP class) moved into the study of another file, with a new UID."""
    from io import BytesIO

    from pydicom.uid import generate_uid

    img = pydicom.dcmread(study_of, stop_before_pixels=True)
    ds = pydicom.dcmread(pydicom_file(PLAN))
    for key in ("StudyInstanceUID", "PatientID", "PatientName", "PatientBirthDate"):
        setattr(ds, key, img.get(key, ""))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["medssl-test-plan"])
    buf = BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


@pytest.fixture(scope="module")
def loaded(orthanc):
    """Orthanc holding a chest radiograph (pydicom-data), pydicom's CT with an RT plan in its study, and an RT plan
    alone in its own study."""
    chest, ct = pydicom_data_file(CHEST), pydicom_file(CT)
    for f in (chest, ct):
        orthanc.upload(f)
    orthanc.upload(_plan_in_study(ct))
    orthanc.upload(pydicom_file(PLAN))
    uid = {name: str(pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID)
           for name, p in (("chest", chest), ("ct", ct), ("plan", pydicom_file(PLAN)))}
    return orthanc, uid


def _secrets() -> list[str]:
    out = []
    for p in (pydicom_data_file(CHEST), pydicom_file(CT)):
        name, pid, birth = _identity(p)
        out += [s for s in (name, name.replace("^", " "), pid, birth) if len(s) >= 4]
    return out


def _no_secrets(folder: Path, *texts: str) -> None:
    secrets = _secrets()
    for f in [p for p in folder.rglob("*") if p.is_file()]:
        data = f.read_bytes()
        for s in secrets:
            assert s.encode() not in data, (s, f)
    for t in texts:
        for s in secrets:
            assert s not in t, s


def test_round_trip_pull_generate_push_read_back(loaded, serve_run, cli, tmp_path):
    server, uid = loaded
    out = tmp_path / "pulled"
    code, o, e = cli("pacs", "pull", "--url", server.url, "--study", uid["chest"], "--out", out, "--quiet")
    assert code == 0, e
    code, o2, e2 = cli("pacs", "pull", "--url", server.url, "--query", "ModalitiesInStudy=CT", "--out", out, "--quiet",
                       "--jobs", "1")
    assert code == 0, e2
    pull = json.loads((out / "pull.json").read_text())
    assert sorted(pull["studies"]) == sorted([uid["chest"], uid["ct"]])
    assert [s["sop_class"] for s in pull["skipped_non_image"]] == ["1.2.840.10008.5.1.4.1.1.481.5"]  # RT plan
    from medssl.data.records import read_manifest

    rows = read_manifest(out / "manifest.csv")
    assert sorted(r.study_id for r in rows) == sorted([uid["chest"], uid["ct"]])
    assert {r.view for r in rows} == {"PA", ""}
    assert all(r.patient_id.startswith("p-") for r in rows)
    for r in rows:  # the file keeps its pixels and UIDs, the patient's identity is gone
        ds = pydicom.dcmread(r.path)
        assert ds.pixel_array.size > 0 and str(ds.PatientName) == "" and ds.PatientID == r.patient_id
        assert ds.SOPInstanceUID == r.extra["sop_instance_uid"]
    _no_secrets(out, o, e, o2, e2)

    # resumable: only what is missing is fetched again
    missing = sorted(out.glob("*/*.dcm"))[0]
    missing.unlink()
    code, o, e = cli("pacs", "pull", "--url", server.url, "--study", missing.parent.name, "--out", out, "--quiet")
    assert code == 0, e
    again = json.loads((out / "pull.json").read_text())["this_pull"]
    assert (again["fetched"], again["already_here"]) == (1, 0) and missing.is_file()
    code, o, e = cli("pacs", "pull", "--url", server.url, "--study", uid["chest"], "--out", out, "--quiet")
    assert code == 0 and json.loads((out / "pull.json").read_text())["this_pull"]["fetched"] == 0

    # generate from the pulled folder: one draft per study
    drafts = tmp_path / "drafts"
    code, o, e = cli("report", "generate", serve_run / "report" / "lstm", out, "--out", drafts)
    assert code == 0, e
    doc = json.loads((drafts / "reports.json").read_text())
    assert len(doc["results"]) == 2 and doc["model"]["id"].startswith("lstm:")
    _no_secrets(drafts, o, e)

    before = set(server.instances())
    code, o, e = cli("pacs", "push", drafts, "--url", server.url, "--quiet")
    assert code == 0, e
    pushed = json.loads((drafts / "pushed.json").read_text())
    assert pushed["stored"] == 2 and pushed["already_there"] == 0
    new = set(server.instances()) - before
    assert len(new) == 2
    studies_before = len(server.get("/studies"))

    # read back through DICOMweb: the SR is in the study of its images and says what the draft says
    from medssl.pacs.client import connect

    client = connect(server.url).client
    for row, draft in zip(pushed["reports"], doc["results"]):
        sr = client.retrieve_instance(row["study"], row["series_instance_uid"], row["sop_instance_uid"])
        assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.22"  # Enhanced SR
        assert sr.StudyInstanceUID == row["study"]
        assert (sr.VerificationFlag, sr.CompletionFlag, sr.PreliminaryFlag) == ("UNVERIFIED", "PARTIAL", "PRELIMINARY")
        src = pydicom.dcmread(draft["views"][0], stop_before_pixels=True)
        original = pydicom_data_file(CHEST) if src.StudyInstanceUID == uid["chest"] else pydicom_file(CT)
        assert (str(sr.PatientName), sr.PatientID) == _identity(original)[:2]  # filed under the PACS's patient
        evidence = [i.ReferencedSOPInstanceUID for s in sr.CurrentRequestedProcedureEvidenceSequence
                    for se in s.ReferencedSeriesSequence for i in se.ReferencedSOPSequence]
        assert evidence == row["sources"] == [src.SOPInstanceUID]
        items = {c.ConceptNameCodeSequence[0].CodeMeaning: c for c in sr.ContentSequence}
        findings = items["Findings"].ContentSequence
        assert findings[0].TextValue == draft["report"]
        library = items["Image Library"].ContentSequence
        assert [i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for i in library] == row["sources"]
        assert any(getattr(c, "TextValue", "") == doc["model"]["name"] for c in sr.ContentSequence)  # algorithm
        assert "not verified by a radiologist" in items["Comment"].TextValue
        if shutil.which("dciodvfy"):
            f = tmp_path / "sr.dcm"
            sr.save_as(f, enforce_file_format=True)
            check = subprocess.run(["dciodvfy", str(f)], capture_output=True, text=True)
            errors = [ln for ln in (check.stdout + check.stderr).splitlines() if ln.startswith("Error")]
            assert not errors, errors

    # idempotent: a second push stores nothing
    code, o, e = cli("pacs", "push", drafts, "--url", server.url, "--quiet")
    assert code == 0, e
    again = json.loads((drafts / "pushed.json").read_text())
    assert (again["stored"], again["already_there"]) == (0, 2)
    assert set(server.instances()) - before == new and len(server.get("/studies")) == studies_before


def test_error_cases_are_one_line_and_exit_2(loaded, cli, tmp_path):
    server, uid = loaded
    out = tmp_path / "p"

    def fails(*args: str) -> str:
        code, o, e = cli(*args)
        assert code == 2, (code, o, e)
        lines = [ln for ln in e.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("medssl: error:"), e
        assert not out.exists() or not any(out.rglob("*.dcm")), "nothing may be written"
        return lines[0]

    down = f"http://127.0.0.1:{free_port()}/dicom-web"
    assert "connection refused" in fails("pacs", "pull", "--url", down, "--study", uid["chest"], "--out", out)
    assert "holds no images" in fails("pacs", "pull", "--url", server.url, "--study", uid["plan"], "--out", out)
    assert "RT Plan Storage" in fails("pacs", "pull", "--url", server.url, "--study", uid["plan"], "--out", out)
    assert "not found" in fails("pacs", "pull", "--url", server.url, "--study", "1.2.3.4", "--out", out)
    assert "not a DICOM UID" in fails("pacs", "pull", "--url", server.url, "--study", "abc", "--out", out)
    assert "no study matches" in fails("pacs", "pull", "--url", server.url, "--query", "ModalitiesInStudy=XA",
                                       "--out", out)
    msg = fails("pacs", "pull", "--url", server.url, "--query", "PatientName=Doe^Secret", "--out", out)
    assert "Doe" not in msg and "***" in msg  # a patient's name typed into a query is never echoed
    assert "must lie in 1..32" in fails("pacs", "pull", "--url", server.url, "--study", uid["chest"], "--out", out,
                                        "--jobs", "0")
    assert "KEY=VALUE" in fails("pacs", "pull", "--url", server.url, "--query", "nonsense", "--out", out)
    msg = fails("pacs", "pull", "--url", "http://bob:hunter2@127.0.0.1:1/dicom-web", "--study", "1.2", "--out", out)
    assert "credentials in the URL" in msg and "hunter2" not in msg
    assert "no such folder" in fails("pacs", "push", tmp_path / "nowhere", "--url", server.url)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    code, o, e = cli("pacs", "pull", "--url", server.url, "--study", uid["chest"], "--out", other)
    assert code == 2 and "holds other files" in e and sorted(p.name for p in other.iterdir()) == ["notes.txt"]
    drafts = tmp_path / "d"
    drafts.mkdir()
    assert "no reports.json" in fails("pacs", "push", drafts, "--url", server.url)
    png = tmp_path / "x.png"
    from PIL import Image

    Image.new("L", (8, 8)).save(png)
    (drafts / "reports.json").write_text(json.dumps({"model": {"id": "m", "name": "n", "version": "v"},
                                                      "results": [{"study": "s", "views": [str(png)], "report": "r"}]}))
    assert "only drafts of DICOM images" in fails("pacs", "push", drafts, "--url", server.url)


def test_authentication_refused_and_accepted(orthanc_password, cli, tmp_path, monkeypatch):
    server = orthanc_password
    server.upload(pydicom_file(CT))
    study = str(pydicom.dcmread(pydicom_file(CT), stop_before_pixels=True).StudyInstanceUID)
    for k in ("MEDSSL_PACS_USER", "MEDSSL_PACS_PASSWORD", "MEDSSL_PACS_TOKEN", "MEDSSL_PACS_AUTH_FILE"):
        monkeypatch.delenv(k, raising=False)
    out = tmp_path / "p"
    args = ("pacs", "pull", "--url", server.url, "--study", study, "--out", out, "--quiet")
    code, o, e = cli(*args)
    assert code == 2 and "authentication refused (HTTP 401)" in e and "no credentials" in e, e
    monkeypatch.setenv("MEDSSL_PACS_USER", USER)
    monkeypatch.setenv("MEDSSL_PACS_PASSWORD", "wrong-password")
    code, o, e = cli(*args)
    assert code == 2 and "check the user name and password" in e and "wrong-password" not in o + e, e
    assert not out.exists() or not any(out.rglob("*.dcm"))
    monkeypatch.setenv("MEDSSL_PACS_PASSWORD", PASSWORD)
    code, o, e = cli(*args)
    assert code == 0 and PASSWORD not in o + e, e
    monkeypatch.delenv("MEDSSL_PACS_USER")
    monkeypatch.delenv("MEDSSL_PACS_PASSWORD")
    auth = tmp_path / "pacs.auth"
    auth.write_text(f"{USER}:{PASSWORD}\n")
    code, o, e = cli(*args[:-1], "--auth-file", auth, "--quiet")
    assert code == 0, e
    auth.write_text("Bearer not-a-token-orthanc-knows\n")
    code, o, e = cli(*args[:-1], "--auth-file", auth, "--quiet")
    assert code == 2 and "check the token" in e and "not-a-token" not in e


class _Proxy(http.server.BaseHTTPRequestHandler):
    """A proxy to Orthanc for GET requests. With `stall`, it forwards searches and metadata whole but stops halfway
    through every image it sends (headers and half the body, then silence): a transfer that breaks off mid-way."""

    upstream = ""
    stall = True

    def do_GET(self):  # noqa: N802
        req = urllib.request.Request(self.upstream + self.path,
                                     headers={k: v for k, v in self.headers.items() if k.lower() == "accept"})
        with urllib.request.urlopen(req, timeout=30) as r:
            body, ctype = r.read(), r.headers.get("Content-Type", "")
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.stall and "/instances/" in self.path and not self.path.endswith("/metadata"):
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            time.sleep(6)
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_a_timeout_mid_transfer_leaves_nothing_half_written(loaded, cli, tmp_path):
    server, uid = loaded
    handler = type("Stall", (_Proxy,), {"upstream": server.base})
    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        out = tmp_path / "p"
        t0 = time.perf_counter()
        code, o, e = cli("pacs", "pull", "--url", f"http://127.0.0.1:{proxy.server_port}/dicom-web", "--study",
                         uid["ct"], "--out", out, "--timeout", "1", "--quiet")
        assert code == 2 and "no answer within 1 s" in e and len(e.strip().splitlines()) == 1, e
        assert time.perf_counter() - t0 < 5
        assert not any(p.is_file() for p in out.rglob("*")), sorted(out.rglob("*"))  # no part file, no manifest
    finally:
        proxy.shutdown()


def test_https_verifies_the_server_against_public_cas_or_a_ca_bundle(loaded, cli, tmp_path):
    """Orthanc 1.10.1 of Debian 12 crashes (SIGSEGV) on its first HTTPS request with its SslEnabled option, so the
    TLS end here is a Python proxy in front of it, with a self-signed certificate for 127.0.0.1 (openssl)."""
    import ssl

    server, uid = loaded
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    ca, key = tmp_path / "ca.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(ca),
                    "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    handler = type("Forward", (_Proxy,), {"upstream": server.base, "stall": False})
    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(ca, key)
    proxy.socket = context.wrap_socket(proxy.socket, server_side=True)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        out = tmp_path / "p"
        args = ("pacs", "pull", "--url", f"https://127.0.0.1:{proxy.server_port}/dicom-web", "--study", uid["ct"],
                "--out", out, "--quiet")
        code, o, e = cli(*args)
        assert code == 2 and "TLS certificate is not trusted" in e and "--ca-bundle" in e, e
        assert not out.exists() or not any(out.rglob("*.dcm"))
        code, o, e = cli(*args, "--ca-bundle", ca)
        assert code == 0, e
        assert len(list(out.glob("*/*.dcm"))) == 1
        code, o, e = cli(*args, "--ca-bundle", tmp_path / "missing.pem")
        assert code == 2 and "no such file" in e
    finally:
        proxy.shutdown()


def test_serve_analyses_a_study_of_the_pacs_by_uid(loaded, serve_run, tmp_path):
    server, uid = loaded
    srv = Server(serve_run, tmp_path / "serve.log", "--pacs", server.url)
    try:
        def post(path: str) -> tuple[int, dict]:
            req = urllib.request.Request(srv.url + path, data=b"", method="POST")
            try:
                with urllib.request.urlopen(req, timeout=120) as r:
                    return r.status, json.loads(r.read())
            except urllib.error.HTTPError as err:
                return err.code, json.loads(err.read())

        import urllib.error

        status, body = post(f"/v1/studies/{uid['chest']}/analyze")
        assert status == 200, body
        assert body["study"]["uid"] == uid["chest"] and body["study"]["views_used"] == ["PA"]
        assert body["findings"] and body["report"]["text"] and body["draft"] is True
        status, body = post("/v1/studies/1.2.3.4/analyze")
        assert status == 404 and "not found" in body["error"]["message"]
        status, body = post(f"/v1/studies/{uid['plan']}/analyze")
        assert status == 422 and "no images" in body["error"]["message"]
        with urllib.request.urlopen(srv.url + "/v1/model", timeout=30) as r:
            assert json.loads(r.read())["pacs"]["url"] == server.url
        if shutil.which("chromium") and shutil.which("chromedriver"):  # the page's way in: a study UID
            from selenium.webdriver.common.by import By
            from selenium.webdriver.support.ui import WebDriverWait
            from test_page_browser import _driver

            browser = _driver(tmp_path)
            try:
                browser.get(srv.url + "/")
                browser.find_element(By.ID, "uid").send_keys(uid["chest"])
                browser.find_element(By.CSS_SELECTOR, "#pacs button").click()
                WebDriverWait(browser, 120).until(
                    lambda b: b.execute_script("return document.body.dataset.state") == "done"
                    or "Error" in b.find_element(By.ID, "status").text)
                assert browser.find_element(By.ID, "status").text == ""
                assert browser.find_element(By.ID, "report").text.strip() not in ("", "(none)")
                assert browser.execute_script("return document.getElementById('image').naturalWidth") > 0
                browser.save_screenshot(str(tmp_path / "page_pacs.png"))
            finally:
                browser.quit()
    finally:
        srv.stop()
    text = json.dumps(body) + (tmp_path / "serve.log").read_text()
    for s in _secrets():
        assert s not in text

"""`medssl serve` against a real server on loopback: the page and the API, bad uploads as JSON 4xx, a DICOM's
patient identity in no answer and no log line, token access, concurrent requests that do not interfere."""

from __future__ import annotations

import io
import json
import threading
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.data import get_testdata_file
from serving import TOKEN, serve_run, server, token_server  # noqa: F401  (fixtures)

NAME, PID, BIRTH = "Doe^Jane^Secretname", "PID-98765-SECRET", "19230405"


def call(url: str, path: str, data: bytes | None = None, headers: dict[str, str] | None = None,
         method: str | None = None) -> tuple[int, dict | str, dict[str, str]]:
    req = urllib.request.Request(url + path, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            body, status, hdrs = r.read(), r.status, {k.lower(): v for k, v in r.headers.items()}
    except urllib.error.HTTPError as e:
        body, status, hdrs = e.read(), e.code, {k.lower(): v for k, v in e.headers.items()}
    text = body.decode()
    try:
        return status, json.loads(text), hdrs
    except ValueError:
        return status, text, hdrs


def upload(url: str, content: bytes, content_type: str = "application/octet-stream", field: str = "file",
           headers: dict[str, str] | None = None, query: str = "") -> tuple[int, dict | str, dict[str, str]]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"x\"\r\n"
            f"Content-Type: {content_type}\r\n\r\n").encode() + content + f"\r\n--{boundary}--\r\n".encode()
    return call(url, "/v1/analyze" + query, body, {"Content-Type": f"multipart/form-data; boundary={boundary}",
                                                   **(headers or {})})


def png(seed: int, size: int = 48) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def dicom_with_identity(tmp_path: Path) -> bytes:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = NAME, PID, BIRTH
    path = tmp_path / "id.dcm"
    ds.save_as(path)
    return path.read_bytes()


def test_health_model_page_and_openapi(server):
    assert call(server.url, "/healthz")[:2] == (200, {"status": "ok"})
    status, model, _ = call(server.url, "/v1/model")
    assert status == 200 and model["classifier"]["task"]["kind"] == "multilabel"
    assert model["generator"]["method"] == "lstm" and model["generator"]["folder"] == "report/lstm"
    status, page, _ = call(server.url, "/")
    assert status == 200 and "Drop a chest radiograph" in page and "DRAFT" in page and "http" not in page.split(
        "<script>")[1].split("fetch(")[0]                  # the page loads nothing from elsewhere
    status, spec, _ = call(server.url, "/openapi.json")
    assert status == 200 and "/v1/analyze" in spec["paths"]


def test_analyze_gives_findings_reports_and_a_heat_map(server):
    status, r, headers = upload(server.url, png(0), "image/png")
    assert status == 200, r
    assert r["draft"] is True and "radiologist" in r["notice"]
    classes = call(server.url, "/v1/model")[1]["classifier"]["task"]["classes"]
    assert sorted(f["finding"] for f in r["findings"]) == sorted(classes)
    assert all(0 <= f["probability"] <= 1 for f in r["findings"]) and len(r["findings"]) >= 2
    assert r["report"]["method"] == "lstm" and isinstance(r["report"]["text"], str)
    assert r["heatmap"]["png"].startswith("data:image/png;base64,")
    assert r["image"]["png"].startswith("data:image/png;base64,") and r["image"]["format"] == "png"
    assert headers["x-request-id"] == r["request_id"]


def test_bad_uploads_get_json_4xx(server, tmp_path):
    cases = [(upload(server.url, b"plain text, not an image" * 10, "application/octet-stream"), 415, "not a DICOM"),
             (upload(server.url, b"hello", "text/plain"), 415, "unsupported upload type"),
             (upload(server.url, b"", "image/png"), 400, "empty"),
             (upload(server.url, b"\x89PNG\r\n\x1a\n" + b"\0" * (1024 * 1024 + 10), "image/png"), 413, "larger"),
             (upload(server.url, png(1), "image/png", field="image"), 422, "file"),
             (upload(server.url, png(1), "image/png", query="?k=0"), 422, "k=0"),
             (upload(server.url, png(1)[:60], "image/png"), 415, "upload")]
    for (status, body, headers), want, words in cases:
        assert status == want and words in body["error"]["message"], (want, body)
        assert body["request_id"] == headers["x-request-id"]
    truncated = dicom_with_identity(tmp_path)[:2000]
    status, body, _ = upload(server.url, truncated, "application/dicom")
    assert status == 415 and body["error"]["message"].startswith("upload:")


def test_a_dicoms_patient_identity_is_never_returned_logged_or_written(server, serve_run, tmp_path):
    data = dicom_with_identity(tmp_path)
    status, r, _ = upload(server.url, data, "application/dicom")
    assert status == 200 and r["image"]["format"] == "dicom" and r["image"]["modality"] == "CT"
    status, bad, _ = upload(server.url, data[:4000], "application/dicom")   # an error path too
    assert status == 415
    seen = json.dumps(r) + json.dumps(bad) + server.log.read_text()
    written = [p for p in serve_run.rglob("*") if p.is_file() and p.stat().st_size < 50_000_000]
    for secret in (NAME, "Secretname", PID, BIRTH, "Doe^Jane"):
        assert secret not in seen, secret
        for p in written:
            assert secret.encode() not in p.read_bytes(), (secret, p)
    assert "rid=" in server.log.read_text() and "POST /v1/analyze status=200" in server.log.read_text()


def test_concurrent_requests_do_not_interfere(server):
    images = [png(i) for i in range(6)]
    alone = [upload(server.url, x, "image/png")[1] for x in images]
    results: dict[int, dict] = {}

    def go(i: int) -> None:
        results[i] = upload(server.url, images[i % 6], "image/png")[1]

    threads = [threading.Thread(target=go, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, r in results.items():
        want = alone[i % 6]
        assert r["findings"] == want["findings"] and r["report"]["text"] == want["report"]["text"]
        assert r["heatmap"]["png"] == want["heatmap"]["png"]
    assert len({r["request_id"] for r in results.values()}) == 12


def test_a_token_guards_every_route_but_health(token_server):
    token = TOKEN
    url = token_server.url
    assert call(url, "/healthz")[0] == 200
    for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}, {"Authorization": token},
                    {"Authorization": "Basic " + token}):
        status, body, _ = call(url, "/v1/model", headers=headers)
        assert status == 401 and body["error"]["message"] == "unauthorized", headers
        assert upload(url, png(0), "image/png", headers=headers)[0] == 401
    assert call(url, "/openapi.json")[0] == 401
    good = {"Authorization": f"Bearer {token}"}
    assert call(url, "/v1/model", headers=good)[0] == 200
    assert upload(url, png(0), "image/png", headers=good)[0] == 200
    status, page, _ = call(url, "/")
    assert status == 200 and "const AUTH = true" in page and token not in page
    log = token_server.log.read_text()
    assert token not in log and "status=401" in log and "wrong-token" not in log


def test_serve_refuses_a_public_host_without_a_token_and_bad_values(cli, serve_run, tmp_path, monkeypatch):
    monkeypatch.delenv("MEDSSL_TOKEN", raising=False)
    short = tmp_path / "short"
    short.write_text("abc\n")
    for args, words in [(("--host", "0.0.0.0"), "needs an API token"), (("--port", "70000"), "--port"),
                        (("--token-file", str(tmp_path / "none")), "cannot be read"),
                        (("--token-file", str(short)), "at least 16"), (("--workers", "0"), "--workers")]:
        code, _, err = cli("serve", str(serve_run), *args)
        assert code == 2 and words in err and len(err.strip().splitlines()) == 1, (args, err)
    code, _, err = cli("serve", str(tmp_path / "missing"))
    assert code == 2 and "no such run" in err
    try:
        code, _, err = cli("serve", str(serve_run), "--token", "x" * 20)   # a token never goes on the command line
    except SystemExit as e:
        code = e.code
    assert code == 2

"""A real PACS for the tests: Debian's Orthanc with its DICOMweb plugin, started on a free loopback port with a
temporary storage folder and stopped after (a plain module of fixtures, like tests/serve/serving.py). `.ci/run`
installs orthanc and orthanc-dicomweb when they are missing; elsewhere the tests skip with the reason.

Test images are real DICOMs shipped with packages: pydicom's test files (CT_small, MR_small, rtplan) and
pydicom-data's (RG1_J2KI: a computed radiograph of a chest, PA, JPEG 2000)."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serve"))
from serving import free_port, stop_process  # noqa: E402

PLUGIN_DIRS = ("/usr/share/orthanc/plugins", "/usr/lib/orthanc")
USER, PASSWORD = "radiology", "correct-horse-battery"


def pydicom_file(name: str) -> Path:
    import pydicom

    p = Path(pydicom.__file__).parent / "data" / "test_files" / name
    assert p.is_file(), p
    return p


def pydicom_data_file(name: str) -> Path:
    import importlib.util

    spec = importlib.util.find_spec("data_store")  # the package pydicom-data installs
    if spec is None or not spec.origin:
        pytest.skip("pydicom-data is not installed (pip install -e '.[dev]')")
    p = Path(spec.origin).parent / "data" / name
    assert p.is_file(), p
    return p


def _plugin() -> str | None:
    for d in PLUGIN_DIRS:
        for p in sorted(Path(d).glob("libOrthancDicomWeb.so*")) if Path(d).is_dir() else []:
            return str(p)
    return None


class Orthanc:
    """Orthanc on 127.0.0.1:PORT (DICOM protocol off, DICOMweb at /dicom-web), optionally with a password."""

    def __init__(self, root: Path, password: bool = False):
        exe, plugin = shutil.which("Orthanc"), _plugin()
        if exe is None or plugin is None:
            pytest.skip("Orthanc with its DICOMweb plugin is not installed (apt-get install orthanc "
                        "orthanc-dicomweb; .ci/run does)")
        self.root = root
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.url = self.base + "/dicom-web"
        self.password = password
        root.mkdir(parents=True, exist_ok=True)
        config = {"Name": "medssl-test", "HttpPort": self.port, "DicomServerEnabled": False,
                  "RemoteAccessAllowed": False, "StorageDirectory": str(root / "db"), "IndexDirectory": str(root / "db"),
                  "Plugins": [plugin], "HttpThreadsCount": 4, "StableAge": 1, "ConcurrentJobs": 1,
                  "AuthenticationEnabled": password, "RegisteredUsers": {USER: PASSWORD} if password else {},
                  "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "Host": f"127.0.0.1:{self.port}"}}
        (root / "orthanc.json").write_text(json.dumps(config))
        self._log = open(root / "orthanc.log", "wb")
        self.proc = subprocess.Popen([exe, str(root / "orthanc.json")], stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited {self.proc.returncode}: {(root / 'orthanc.log').read_text()[-2000:]}")
            try:
                self.get("/system")
                return
            except (OSError, urllib.error.URLError):
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("Orthanc did not answer within 60 s")

    def _headers(self) -> dict[str, str]:
        if not self.password:
            return {}
        return {"Authorization": "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}

    def get(self, path: str) -> object:
        req = urllib.request.Request(self.base + path, headers=self._headers())
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())

    def upload(self, data: bytes | Path) -> dict:
        """Store one DICOM through Orthanc's REST API (POST /instances)."""
        body = data.read_bytes() if isinstance(data, Path) else data
        req = urllib.request.Request(self.base + "/instances", data=body, method="POST",
                                     headers={"Content-Type": "application/dicom", **self._headers()})
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.loads(r.read())

    def instances(self) -> list[str]:
        return list(self.get("/instances"))

    def stop(self) -> None:
        stop_process(self.proc)
        self._log.close()


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    server = Orthanc(tmp_path_factory.mktemp("orthanc"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def orthanc_password(tmp_path_factory):
    server = Orthanc(tmp_path_factory.mktemp("orthanc-auth"), password=True)
    yield server
    server.stop()

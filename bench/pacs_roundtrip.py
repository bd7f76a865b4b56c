"""PACS round trip timings: `medssl pacs pull` of N images, `medssl report generate` of their studies and
`medssl pacs push` of the drafts, against a real Orthanc (Debian's orthanc + orthanc-dicomweb) on loopback.

The images are copies of pydicom-data's RG1_J2KI.dcm (a computed radiograph of a chest, PA, 1955 x 1841, JPEG 2000,
660 KB), each given its own patient, study, series and SOP instance UIDs: N studies of one image. Orthanc stores
them through its REST API first (not timed). Each command runs as its own process, as a user runs it, and its wall
time includes the interpreter's start. The report model is a tiny LSTM run trained for a few steps on built-in
data: generation cost is the model's, the pull and push costs are what this measures.

Prints one JSON object: per N the pull's seconds and images/s (and a second pull of the same studies: only the
check that all is there), the generation's seconds, the push's seconds and reports/s, and a second push (finds
every SR already there: stores nothing).

Example: python bench/pacs_roundtrip.py --n 100,1000 --push-n 100 --json /tmp/pacs.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from io import BytesIO
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_orthanc(root: Path) -> tuple[subprocess.Popen, str]:
    plugin = next(iter(sorted(Path("/usr/share/orthanc/plugins").glob("libOrthancDicomWeb.so*"))), None)
    if shutil.which("Orthanc") is None or plugin is None:
        sys.exit("error: Orthanc with its DICOMweb plugin is not installed (apt-get install orthanc orthanc-dicomweb)")
    port = _free_port()
    cfg = {"Name": "medssl-bench", "HttpPort": port, "DicomServerEnabled": False, "RemoteAccessAllowed": False,
           "StorageDirectory": str(root / "db"), "IndexDirectory": str(root / "db"), "Plugins": [str(plugin)],
           "HttpThreadsCount": 8, "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}}
    (root / "orthanc.json").write_text(json.dumps(cfg))
    proc = subprocess.Popen(["Orthanc", str(root / "orthanc.json")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(base + "/system", timeout=2).close()
            return proc, base
        except OSError:
            time.sleep(0.2)
    proc.kill()
    sys.exit("error: Orthanc did not start")


def upload_copies(base: str, n: int, offset: int) -> list[str]:
    """n copies of the chest radiograph, each its own patient / study; their study UIDs."""
    import pydicom
    from pydicom.uid import generate_uid

    spec = importlib.util.find_spec("data_store")
    src = pydicom.dcmread(Path(spec.origin).parent / "data" / "RG1_J2KI.dcm")
    studies = []
    for i in range(offset, offset + n):
        ds = src.copy()
        ds.PatientID, ds.PatientName = f"BENCH{i:06d}", f"Bench^Patient{i}"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        buf = BytesIO()
        ds.save_as(buf)
        req = urllib.request.Request(base + "/instances", data=buf.getvalue(), method="POST",
                                     headers={"Content-Type": "application/dicom"})
        urllib.request.urlopen(req, timeout=60).close()
        studies.append(str(ds.StudyInstanceUID))
    return studies


def medssl(*args: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "medssl.cli", *args], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def tiny_report_run(root: Path) -> Path:
    run = root / "report"
    medssl("report", "train", "--config", str(HERE.parent / "configs" / "report_lstm.yaml"), "--out", str(run),
           "--quiet", *[a for kv in ["data.size=32", "encoder.width=8", "train.steps=4", "train.val_every=2",
                                      "decoder.dim=16", "decoder.context=40", "generate.max_len=20",
                                      "evaluate.meteor=false", "evaluate.n_boot=10", "evaluate.gallery=2",
                                      "train.batch_size=8", "data.synthetic_patients=30"] for a in ("--set", kv)])
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", default="100,1000", help="images to pull, comma-separated")
    ap.add_argument("--push-n", type=int, default=100, help="studies to generate and push drafts for")
    ap.add_argument("--json")
    args = ap.parse_args()
    sizes = [int(x) for x in args.n.split(",")]
    root = Path(tempfile.mkdtemp(prefix="pacs-bench-"))
    proc, base = start_orthanc(root)
    url = base + "/dicom-web"
    out: dict = {"image": "RG1_J2KI.dcm (CR chest PA, 1955x1841, JPEG 2000, 660 KB)", "cpu": os.cpu_count(),
                 "pull": [], "push": None}
    try:
        report = tiny_report_run(root)
        uploaded: list[str] = []
        for n in sizes:
            uploaded += upload_copies(base, n - len(uploaded), len(uploaded))
            folder = root / f"pulled-{n}"
            query = ["--query", "ModalitiesInStudy=CR"]
            first = medssl("pacs", "pull", "--url", url, *query, "--out", str(folder), "--quiet")
            second = medssl("pacs", "pull", "--url", url, *query, "--out", str(folder), "--quiet")
            info = json.loads((folder / "pull.json").read_text())
            row = {"images": n, "seconds": round(first, 2), "images_per_s": round(n / first, 1),
                   "second_pull_seconds": round(second, 2), "fetched_second": info["this_pull"]["fetched"],
                   "megabytes": round(sum(f.stat().st_size for f in folder.glob("*/*.dcm")) / 2 ** 20, 1)}
            out["pull"].append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
        folder = root / f"pulled-{sizes[-1]}"
        some = sorted(p for p in folder.iterdir() if p.is_dir())[: args.push_n]
        drafts = root / "drafts"
        gen = medssl("report", "generate", str(report), *map(str, some), "--out", str(drafts))
        push = medssl("pacs", "push", str(drafts), "--url", url, "--quiet")
        again = medssl("pacs", "push", str(drafts), "--url", url, "--quiet")
        pushed = json.loads((drafts / "pushed.json").read_text())
        out["push"] = {"reports": len(some), "generate_seconds": round(gen, 2), "push_seconds": round(push, 2),
                       "reports_per_s": round(len(some) / push, 2), "second_push_seconds": round(again, 2),
                       "stored_second": pushed["stored"]}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(root, ignore_errors=True)
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()

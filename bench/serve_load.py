"""Load on `medssl serve` (issue 13): start the service on a free loopback port over a run folder, send N concurrent
clients (N = 1, 4, 16 by default) POSTing images to /v1/analyze for --seconds each, and print one JSON object:
requests/s, p50 / p95 / p99 latency, errors (must be 0; a 503 "busy" counts as an error), and the server's resident
memory (VmRSS) at start, after each level and at the end, to show it does not grow without bound.

The images are the run's own synthetic test PNGs when it has them (RUN/data/images), else random 64 px PNGs.

Example: python bench/serve_load.py --run runs/demo --seconds 30 --json /tmp/serve_load.json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data_throughput import machine  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def _images(run: Path, n: int = 32) -> list[bytes]:
    found = sorted((run / "data" / "images").glob("*.png"))[:n]
    if found:
        return [p.read_bytes() for p in found]
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def _post(url: str, content: bytes) -> int:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode() + content + f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(url + "/v1/analyze", data=body,
                                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return -1


def level(url: str, images: list[bytes], clients: int, seconds: float) -> dict:
    latencies: list[float] = []
    errors: dict[str, int] = {}
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def client(c: int) -> None:
        i = c
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            status = _post(url, images[i % len(images)])
            dt = time.perf_counter() - t0
            with lock:
                if status == 200:
                    latencies.append(dt)
                else:
                    errors[str(status)] = errors.get(str(status), 0) + 1
            i += clients

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ms = sorted(1000 * x for x in latencies)

    def pct(p: float) -> float:
        return round(ms[min(len(ms) - 1, int(p / 100 * len(ms)))], 1) if ms else float("nan")

    return {"clients": clients, "requests": len(ms), "errors": sum(errors.values()), "error_codes": errors,
            "requests_per_s": round(len(ms) / wall, 2), "p50_ms": pct(50), "p95_ms": pct(95), "p99_ms": pct(99),
            "mean_ms": round(statistics.fmean(ms), 1) if ms else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, default=Path("runs/demo"), help="run folder to serve (default runs/demo)")
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--seconds", type=float, default=30.0, help="per level")
    ap.add_argument("--workers", type=int, default=2, help="the service's inference threads")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per inference")
    ap.add_argument("--json", help="also write the JSON here")
    args = ap.parse_args()
    if not args.run.exists():
        sys.exit(f"{args.run}: no such run folder (make demo writes runs/demo)")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(os.devnull, "wb")
    proc = subprocess.Popen([sys.executable, "-m", "medssl.cli", "serve", str(args.run), "--port", str(port),
                             "--workers", str(args.workers), "--threads", str(args.threads)],
                            stdout=log, stderr=log)
    try:
        t0 = time.perf_counter()
        while True:
            try:
                with urllib.request.urlopen(url + "/healthz", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.perf_counter() - t0 > 180:
                    sys.exit("medssl serve did not start")
                time.sleep(0.3)
        startup = time.perf_counter() - t0
        images = _images(args.run)
        _post(url, images[0])                                   # first request: lazy imports, warm caches
        result = {"machine": machine(), "run": str(args.run), "workers": args.workers, "torch_threads": args.threads,
                  "startup_s": round(startup, 1), "rss_mb_start": _rss_mb(proc.pid), "levels": []}
        for n in (int(c) for c in args.clients.split(",")):
            row = level(url, images, n, args.seconds)
            row["rss_mb_after"] = _rss_mb(proc.pid)
            result["levels"].append(row)
            print(f"[serve load] {n:>2} clients: {row['requests_per_s']} req/s, p50 {row['p50_ms']} ms, "
                  f"p95 {row['p95_ms']} ms, p99 {row['p99_ms']} ms, errors {row['errors']}, "
                  f"RSS {row['rss_mb_after']} MB", file=sys.stderr, flush=True)
        result["rss_mb_end"] = _rss_mb(proc.pid)
        result["requests_total"] = sum(r["requests"] for r in result["levels"])
        result["errors_total"] = sum(r["errors"] for r in result["levels"])
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()

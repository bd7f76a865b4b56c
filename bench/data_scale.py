"""Data at scale: the decoded-image cache against decoding every run (issue 14, parts 1-3).

For N synthetic 64 px PNG images (default 1,000, 10,000 and 100,000) and a DICOM subset, prints one JSON object:
- the time to build the cache (`medssl data cache`, every core) and images/s per core;
- a short `medssl pretrain` (SimCLR, ResNet-18 width 32 at 64 px, batch 64, one loader worker) three times: with
  the cache cold (it is built at start), warm (a second run on the same source), and without it (data.cache=off,
  the in-memory path of before): start-up seconds (process wall time minus the training loop's), steady training
  images/s, and the peak memory of the training process and of its loader worker, split into anonymous memory
  (private: what a copy of the images would grow) and file-backed memory (the cache's pages, shared through the page
  cache by every process that maps them).
Also, in this process, opening the built cache (every file stat-ed, nothing decoded) against decoding every image into
memory, one process, as a run without the cache does. Targets (issue 14): a warm start under 5 % of the cold one
(the data part: the process start-up, about 9 s of imports, model and Fabric, is the same for both); anonymous memory
flat in N; training images/s within 5 % of the in-memory path.
Augmentation (data.augment_on, part 5), at 64, 128 and 224 px, SimCLR's two views of a batch of --aug-batch:
images/s of ONE loader worker (one thread, as a DataLoader worker runs) on the loader path (it augments) and on the
device path (it only slices uint8 rows and draws the random numbers), and images/s of the device path's augmentation
on the training device (here the CPU with every thread; on a GPU it is a few batched tensor ops).
Compiled steps (part 6): with --compile, bench/compile_steps.py's eager and compiled images/s are included.

    python bench/data_scale.py --sizes 1000,10000,100000 --compile --json /tmp/data_scale.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data_throughput import machine, write_dicoms  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def make_pngs(folder: Path, n: int, side: int = 64) -> Path:
    """n random-texture PNGs (blobs on noise, so that PNG compression is realistic) and a manifest.csv."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:side, :side]
    with open(folder / "manifest.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "patient_id", "split"])
        for i in range(n):
            cx, cy, r = rng.uniform(8, side - 8, 2).tolist() + [rng.uniform(4, side / 3)]
            img = 60 + 120 * ((xx - cx) ** 2 + (yy - cy) ** 2 < r * r) + rng.normal(0, 20, (side, side))
            name = f"{i // 1000:03d}/img{i:06d}.png"
            (folder / name).parent.mkdir(exist_ok=True)
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / name, compress_level=1)
            w.writerow([name, f"p{i}", "train"])
    return folder


def _mem(pid: int) -> dict[str, int]:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("RssAnon", "RssFile", "VmRSS")):
                key, value = line.split(":", 1)
                out[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return out


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def run_measured(cmd: list[str], env: dict[str, str]) -> tuple[float, dict[str, dict[str, int]]]:
    """(wall seconds, peak memory of the process and of its children: {'main': {...}, 'worker': {...}})."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak: dict[str, dict[str, int]] = {"main": {}, "worker": {}}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            for role, pids in (("main", [proc.pid]), ("worker", _children(proc.pid))):
                for pid in pids:
                    for k, v in _mem(pid).items():
                        peak[role][k] = max(peak[role].get(k, 0), v)
            time.sleep(0.1)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    _, err = proc.communicate()
    done.set()
    thread.join()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {err.strip().splitlines()[-1] if err.strip() else proc.returncode}")
    return time.perf_counter() - t0, peak


def warm_open(source: Path, cache: Path) -> dict:
    """In this process: reading the records and opening the built cache (every file stat-ed, nothing decoded),
    against decoding every image into memory as a run without the cache does."""
    sys.path.insert(0, str(ROOT / "src"))
    from medssl.data.cache import cached_images
    from medssl.data.preprocess import Preprocess
    from medssl.data.sources import load_source

    t0 = time.perf_counter()
    records, _ = load_source(source, progress=False)
    t1 = time.perf_counter()
    found = cached_images(records, 64, source, progress=False, cache=cache)
    t2 = time.perf_counter()
    assert found.decoded == 0
    pre, k = Preprocess(64), min(2000, len(records))
    t3 = time.perf_counter()
    for r in records[:k]:
        pre.decode(r)
    per_image = (time.perf_counter() - t3) / k
    return {"read_records_s": round(t1 - t0, 2), "open_warm_s": round(t2 - t1, 3),
            "decode_in_memory_s": round(per_image * len(records), 1),
            "warm_open_share_of_decoding": round((t2 - t1) / (per_image * len(records)), 4)}


def pretrain(source: Path, out: Path, cache: str, steps: int, env: dict[str, str]) -> dict:
    medssl = str(Path(sys.executable).parent / "medssl")
    cmd = [medssl, "pretrain", "--config", str(ROOT / "configs" / "simclr.yaml"), "--data", str(source),
           "--out", str(out), "--quiet", "--set", "data.size=64", "--set", "data.batch_size=64",
           "--set", f"train.steps={steps}", "--set", "model.width=32", "--set", "model.stem=small",
           "--set", "data.num_workers=1", "--set", f"data.cache={cache}", "--set", "train.log_every=5"]
    wall, peak = run_measured(cmd, env)
    m = json.loads((out / "metrics.json").read_text())
    mb = {role: {k: round(v / 2**20, 1) for k, v in p.items()} for role, p in peak.items()}
    return {"wall_s": round(wall, 2), "start_s": round(wall - m["seconds"], 2),
            "train_images_per_s": round(m["images_per_s"], 1), "peak_mb": mb}


def augment_rates(sizes: list[int], batch: int, batches: int = 8) -> list[dict]:
    """Images/s per loader worker on each path, and of the device path's augmentation on this process's device."""
    import torch

    from medssl.data.augment import preset
    from medssl.data.datasets import TWO_VIEWS, BatchDataset, ImageDataset

    rows = []
    threads = torch.get_num_threads()
    for size in sizes:
        x = np.random.default_rng(size).random((batch * batches, size, size), dtype=np.float32)
        ds = BatchDataset(ImageDataset.from_array(x), batch, TWO_VIEWS, preset("chest_xray", size), seed=0)
        keys = [(0, k) for k in range(batches)]
        rate = {}
        torch.set_num_threads(1)  # what one DataLoader worker runs with
        for name, on_device in (("loader", False), ("device", True)):
            ds[(*keys[0], on_device)]  # warm-up
            t0 = time.perf_counter()
            made = [ds[(*key, on_device)] for key in keys]
            rate[name] = batch * batches / (time.perf_counter() - t0)
        torch.set_num_threads(threads)
        ds.finish(made[0])
        t0 = time.perf_counter()
        for b in made:
            ds.finish(b)
        rate["device_augment"] = batch * batches / (time.perf_counter() - t0)
        rows.append({"size": size, "batch": batch, "loader_path_images_per_s_per_worker": round(rate["loader"], 1),
                     "device_path_images_per_s_per_worker": round(rate["device"], 1),
                     "device_augment_images_per_s": round(rate["device_augment"], 1),
                     "device_threads": threads, "device": "cpu"})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--dicoms", type=int, default=2000)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--workdir", help="where the images go (default: a temporary folder, removed after)")
    ap.add_argument("--aug-sizes", default="64,128,224")
    ap.add_argument("--aug-batch", type=int, default=64)
    ap.add_argument("--compile", action="store_true", help="also run bench/compile_steps.py (about 5 minutes)")
    ap.add_argument("--json")
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="medssl-scale-"))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    cores = len(os.sched_getaffinity(0))
    result: dict = {"machine": machine(), "cores": cores, "steps": args.steps, "rows": []}
    medssl = str(Path(sys.executable).parent / "medssl")
    try:
        for n in [int(s) for s in args.sizes.split(",")]:
            src = work / f"png{n}"
            t0 = time.perf_counter()
            make_pngs(src, n)
            print(f"[{n}] wrote {n} PNGs in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
            cache = work / f"cache{n}"
            wall, _ = run_measured([medssl, "data", "cache", str(src), "--size", "64", "--cache", str(cache),
                                    "--quiet"], env)
            built = json.loads(next(cache.glob("*/manifest.json")).read_text())
            row = {"images": n, "cache_build_s": round(wall, 2), "decode_s": built["seconds"],
                   "images_per_s_per_core": round(n / built["seconds"] / built["workers"], 1),
                   "cache_mb": round(n * 64 * 64 / 2**20, 1), **warm_open(src, cache)}
            shutil.rmtree(cache)
            row["cold"] = pretrain(src, work / f"r{n}a", str(cache), args.steps, env)   # builds the cache at start
            row["warm"] = pretrain(src, work / f"r{n}b", str(cache), args.steps, env)   # a second run: reads it
            row["memory"] = pretrain(src, work / f"r{n}c", "off", args.steps, env)      # decode into memory
            row["warm_start_share_of_cold"] = round(row["warm"]["start_s"] / row["cold"]["start_s"], 3)
            row["warm_vs_memory_images_per_s"] = round(row["warm"]["train_images_per_s"]
                                                       / row["memory"]["train_images_per_s"], 3)
            print(json.dumps(row), file=sys.stderr, flush=True)
            result["rows"].append(row)
            shutil.rmtree(src)
            for p in work.glob(f"r{n}*"):
                shutil.rmtree(p)
            shutil.rmtree(cache, ignore_errors=True)
        if args.dicoms:
            sys.path.insert(0, str(ROOT / "bench"))
            folder = work / "dicom"
            folder.mkdir(parents=True, exist_ok=True)
            rng = np.random.default_rng(0)
            write_dicoms(folder, rng.random((args.dicoms, 64, 64)).astype(np.float32))
            wall, _ = run_measured([medssl, "data", "index", str(folder), "--no-verify", "--quiet"], env)
            cache = work / "cache_dicom"
            wall, _ = run_measured([medssl, "data", "cache", str(folder), "--size", "64", "--cache", str(cache),
                                    "--quiet"], env)
            built = json.loads(next(cache.glob("*/manifest.json")).read_text())
            result["dicom"] = {"images": args.dicoms, "cache_build_s": round(wall, 2), "decode_s": built["seconds"],
                               "images_per_s_per_core": round(args.dicoms / built["seconds"] / built["workers"], 1)}
        result["augment"] = augment_rates([int(v) for v in args.aug_sizes.split(",") if v], args.aug_batch)
        if args.compile:
            out = subprocess.run([sys.executable, str(ROOT / "bench" / "compile_steps.py"), "--steps", "30",
                                  "--settings", "28:256,64:64"], env=env, stdout=subprocess.PIPE, text=True,
                                 check=True).stdout
            result["compile"] = json.loads(out)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text)


if __name__ == "__main__":
    main()

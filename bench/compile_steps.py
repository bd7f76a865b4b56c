"""Eager against compiled training steps (train.compile, issue 14 part 6): SimCLR, ResNet-18 (small stem, the papers'
width) on the built-in synthetic images at 28 and 64 px.

Each setting runs `medssl pretrain` twice, eager and with train.compile=true, and reports the steady images/s (the
median of the log windows after the first, so the compiler's own time is left out), the compiler's cost (the
compiled run's wall time minus what its steps took at the steady rate, against the eager run's) and the step count
at which compiling pays for itself. Prints one JSON object.

    python bench/compile_steps.py --steps 60 --json /tmp/compile.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data_throughput import machine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def run(out: Path, size: int, batch: int, steps: int, compiled: bool) -> dict:
    medssl = str(Path(sys.executable).parent / "medssl")
    cmd = [medssl, "pretrain", "--config", str(ROOT / "configs" / "simclr.yaml"), "--out", str(out), "--quiet",
           "--set", f"data.size={size}", "--set", f"data.batch_size={batch}", "--set", f"train.steps={steps}",
           "--set", "model.stem=small", "--set", "data.num_workers=1", "--set", "train.log_every=5",
           "--set", f"train.compile={'true' if compiled else 'false'}", "--set", "data.synthetic_patients=400"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(proc.stderr.strip().splitlines()[-1])
    rows = list(csv.DictReader((out / "log.csv").open()))
    steady = statistics.median(float(r["images_per_s"]) for r in rows[1:])
    m = json.loads((out / "metrics.json").read_text())
    fell_back = "torch.compile failed" in proc.stdout + proc.stderr
    return {"wall_s": round(wall, 1), "loop_s": round(m["seconds"], 1), "steady_images_per_s": round(steady, 1),
            "final_loss": round(m["final_loss"], 4), "fell_back_to_eager": fell_back}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--settings", default="28:256,64:128", help="size:batch,...")
    ap.add_argument("--json")
    args = ap.parse_args()
    result = {"machine": machine(), "steps": args.steps, "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        for item in args.settings.split(","):
            size, batch = (int(v) for v in item.split(":"))
            eager = run(Path(tmp) / f"e{size}", size, batch, args.steps, False)
            compiled = run(Path(tmp) / f"c{size}", size, batch, args.steps, True)
            speedup = compiled["steady_images_per_s"] / eager["steady_images_per_s"]
            step_e = batch / eager["steady_images_per_s"]
            step_c = batch / compiled["steady_images_per_s"]
            overhead = compiled["loop_s"] - args.steps * step_c - (eager["loop_s"] - args.steps * step_e)
            row = {"size": size, "batch": batch, "eager": eager, "compiled": compiled,
                   "steady_speedup": round(speedup, 3), "compile_overhead_s": round(overhead, 1),
                   "pays_off_after_steps": round(overhead / (step_e - step_c)) if step_e > step_c else None}
            print(json.dumps(row), file=sys.stderr, flush=True)
            result["rows"].append(row)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text)


if __name__ == "__main__":
    main()

"""Pretraining throughput: images/s through fit() against a bare PyTorch loop on the same model, loss and batches.

Prints one JSON object (and writes it with --json PATH):
  fit_images_per_s, bare_images_per_s, overhead = 1 - fit / bare, loader_images_per_s (augmented batches alone),
  peak memory, model GFLOPs per training image (forward + backward, counted by torch's FlopCounterMode),
  achieved GFLOP/s, and this machine's fp32 matmul GFLOP/s.
Targets on a 2-core CPU (issue 3): overhead <= 5 %, loader >= 2x training, achieved >= 30 % of the matmul peak.

Example: python bench/pretrain_throughput.py --method simclr --backbone resnet18 --size 64 --batch 256
"""

from __future__ import annotations

import argparse
import csv
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data_throughput import machine  # noqa: E402

from medssl.config import load_config  # noqa: E402
from medssl.methods import build_model  # noqa: E402
from medssl.optim import make_optimizer  # noqa: E402
from medssl.pretrain import load_records, make_loader, run_spec, write_data  # noqa: E402
from medssl.train import fit  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def matmul_gflops(n: int = 2048, seconds: float = 2.0) -> float:
    """fp32 GFLOP/s of torch.mm on n x n matrices with every intra-op thread."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        torch.mm(a, b)
        done += 1
    return 2 * n**3 * done / (time.perf_counter() - t0) / 1e9


def to_device_format(batch: dict, channels_last: bool) -> dict:
    """The batch as fit() feeds it to the model."""
    if not channels_last:
        return batch
    return {k: v.contiguous(memory_format=torch.channels_last) if torch.is_tensor(v) and v.ndim == 4 else v
            for k, v in batch.items()}


def train_flops_per_image(model: torch.nn.Module, batch: dict, batch_size: int) -> float:
    """GFLOPs of one forward + backward per training image (each image counted once, whatever its views)."""
    with FlopCounterMode(display=False) as counter:
        model(batch)["loss"].backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / batch_size / 1e9


def bare_loop(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batches: list[dict], steps: int,
              channels_last: bool, grad_clip: float | None = None) -> float:
    """Images/s of the plainest loop doing the same work: forward, backward, clip (when the config clips), step."""
    model.train()
    n, t0 = 0, time.perf_counter()
    for i in range(steps):
        batch = to_device_format(batches[i % len(batches)], channels_last)
        loss = model(batch)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        model.on_step(i + 1, steps)                             # as fit: after the step, 1-based
        n += len(batch["index"])
    return n / (time.perf_counter() - t0)


def loader_rate(loader, batches_wanted: int) -> tuple[float, list[dict]]:
    """Augmented images/s of the loader alone (after its first batch), and the batches it made."""
    batches, it = [], iter(loader.epoch(0))
    batches.append(next(it))  # worker start-up is not throughput
    n, t0 = 0, time.perf_counter()
    for _ in range(batches_wanted - 1):
        try:
            b = next(it)
        except StopIteration:
            it = iter(loader.epoch(len(batches)))
            b = next(it)
        batches.append(b)
        n += len(b["index"])
    return n / (time.perf_counter() - t0), batches


def main() -> None:
    """Measure and print one JSON object."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", default="simclr")
    ap.add_argument("--backbone", default=None, help="default: the method's config")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=8, help="timed steps for each of fit and the bare loop")
    ap.add_argument("--patients", type=int, default=400,
                    help="built-in synthetic patients (about 3 images each; pretraining reads the 70 %% train split)")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--set", action="append", default=[], help="extra config overrides")
    ap.add_argument("--json", help="also write the JSON here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = [f"data.size={args.size}", f"data.batch_size={args.batch}", f"data.num_workers={args.workers}",
                 f"train.steps={args.steps + 1}", "train.log_every=1", f"train.checkpoint_every={10**6}",
                 f"train.channels_last={str(args.channels_last).lower()}", f"data.synthetic_patients={args.patients}",
                 *args.set]
    if args.backbone:
        overrides.append(f"model.backbone={args.backbone}")
    cfg = load_config(CONFIGS / f"{args.method}.yaml", overrides)
    peak_before = matmul_gflops()
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        write_data(cfg, run, progress=False)                   # the built-in source, as `medssl pretrain` writes it
        records = load_records(cfg, run)
        loader = make_loader(cfg, records, False, 0, 1)
        loader_ips, batches = loader_rate(loader, min(args.steps, len(loader) * 2, 6))
        loader.close()

        torch.manual_seed(0)
        model = build_model(cfg.model_spec())
        if args.channels_last:
            model = model.to(memory_format=torch.channels_last)
        gflops_img = train_flops_per_image(model, to_device_format(batches[0], args.channels_last), args.batch)
        optimizer = make_optimizer(model, cfg.optim)
        clip = cfg.optim.grad_clip
        bare_loop(model, optimizer, batches, 1, args.channels_last, clip)  # warm-up (allocator, oneDNN kernels)
        bare_before = bare_loop(model, optimizer, batches, args.steps, args.channels_last, clip)

        torch.manual_seed(0)
        fit_model = build_model(cfg.model_spec())
        t0 = time.perf_counter()
        result = fit(fit_model, lambda rank, world: make_loader(cfg, records, False, rank, world),
                     run_spec(cfg, "built-in synthetic chest radiographs"), run, progress=False)
        wall = time.perf_counter() - t0
        # fit's own clock starts at its first batch; step 1 (worker start-up, warm-up) is left out as for bare
        rows = list(csv.DictReader((run / "log.csv").open()))
        fit_ips = _steady_rate(rows, args.batch) or result["images_per_s"]
        # bare again after fit: load from other processes that drifts during the run hits both sides alike
        bare_after = bare_loop(model, optimizer, batches, args.steps, args.channels_last, clip)
    bare_ips = (bare_before + bare_after) / 2
    peak = max(peak_before, matmul_gflops())
    achieved = gflops_img * fit_ips
    out = {
        "benchmark": "pretrain_throughput", "method": args.method, "backbone": cfg.model.backbone,
        "size": args.size, "batch": args.batch, "steps": args.steps, "workers": args.workers,
        "channels_last": args.channels_last, "threads": torch.get_num_threads(),
        "fit_images_per_s": round(fit_ips, 2), "bare_images_per_s": round(bare_ips, 2),
        "bare_before_after": [round(bare_before, 2), round(bare_after, 2)],
        "overhead": round(1 - fit_ips / bare_ips, 4),
        "loader_images_per_s": round(loader_ips, 1), "loader_over_training": round(loader_ips / fit_ips, 1),
        "fit_wall_seconds_incl_startup": round(wall, 1),
        "peak_rss_mb_main": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_rss_mb_workers": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
        "train_gflops_per_image": round(gflops_img, 3), "achieved_gflops_per_s": round(achieved, 1),
        "matmul_fp32_gflops_per_s": round(peak, 1), "fraction_of_matmul_peak": round(achieved / peak, 3),
        "final_loss": result["final_loss"], "machine": machine(),
        "targets": {"overhead_max": 0.05, "loader_over_training_min": 2.0, "fraction_of_peak_min": 0.30},
    }
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text)


def _steady_rate(rows: list[dict], batch: int) -> float | None:
    """Images/s from log.csv (logged every step) over steps 2..N: the first step carries loader start-up."""
    rates = [float(r["images_per_s"]) for r in rows[1:]]
    if not rates or min(rates) <= 0:
        return None
    return len(rates) / sum(1 / r for r in rates)  # total images / total time: the harmonic mean


if __name__ == "__main__":
    main()

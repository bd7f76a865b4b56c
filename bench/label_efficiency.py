"""Label efficiency on real data: SimCLR pretraining within a time budget, then linear probe and fine-tuning at
1 %, 10 % and 100 % of the training labels against the same fine-tuning from scratch, over seeds.

Prints one JSON object (and writes it with --json PATH) and a table beside MedMNIST v2's ResNet-18 (28).
MICLe falls back to SimCLR on PneumoniaMNIST: the set has no patient ids, so there are no multi-image patients.

Example: python bench/label_efficiency.py --data ../shared/data/pneumoniamnist_28.npz --budget-minutes 20
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data_throughput import machine  # noqa: E402

from medssl.config import load_config  # noqa: E402
from medssl.evaluate.run import EvalOptions, run_evaluate  # noqa: E402
from medssl.pretrain import run_pretrain  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
MEDMNIST_RESNET18_28 = {"roc_auc_macro": 0.944, "accuracy": 0.854}  # Yang et al. 2023, Table 3, PneumoniaMNIST


def steps_for_budget(overrides: list[str], minutes: float, probe_steps: int = 8) -> tuple[int, float]:
    """Pretraining steps that fit the budget, from the steady images/s of a short run of the same config (the median
    of its per-step rates after the first two steps, which carry start-up; whole-run seconds under-fill the budget)."""
    cfg = load_config(CONFIGS / "simclr.yaml", overrides + [f"train.steps={probe_steps}", "train.log_every=1"])
    with tempfile.TemporaryDirectory() as tmp:
        m = run_pretrain(cfg, Path(tmp) / "probe", progress=False)
        with open(Path(tmp) / "probe" / "log.csv") as f:
            rates = [float(row["images_per_s"]) for row in csv.DictReader(f) if int(row["step"]) > 2]
    images_per_step = m["images_per_s"] * m["seconds"] / max(1, m["steps"])
    step_seconds = images_per_step / statistics.median(rates) if rates else m["seconds"] / max(1, m["steps"])
    return max(probe_steps, int(minutes * 60 / step_seconds)), step_seconds


def pretrained_run(run: Path) -> dict:
    """steps, seconds, final loss and images/s of a finished pretraining run, from its metrics.json."""
    m = json.loads((run / "metrics.json").read_text())
    return {k: m.get(k) for k in ("steps", "seconds", "final_loss", "images_per_s")}


def main() -> None:
    """Pretrain within the budget, evaluate, print one JSON object and a table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--budget-minutes", type=float, default=20.0, help="pretraining time budget")
    ap.add_argument("--size", type=int, default=28)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--fractions", default="0.01,0.1,1")
    ap.add_argument("--finetune-steps", type=int, default=300)
    ap.add_argument("--stem", default="small",
                    help="ResNet stem (default small: stride-2 first conv, about 4x faster than cifar at 28 px on CPU, "
                         "so that 20 minutes buy ~30 epochs of SimCLR and the 3-seed evaluation takes ~20 minutes)")
    ap.add_argument("--finetune-head", choices=["probe", "random"], default="probe",
                    help="pretrained fine-tuning starts from the linear probe's head (LP-FT) or a random one")
    ap.add_argument("--pretrained", help="evaluate this finished pretraining run instead of pretraining anew")
    ap.add_argument("--out", default=None, help="keep the runs here (default: a temporary folder)")
    ap.add_argument("--json", help="also write the JSON here")
    args = ap.parse_args()
    t0 = time.perf_counter()
    overrides = [f"data.source={Path(args.data).resolve()}", f"data.size={args.size}",
                 f"data.batch_size={args.batch}", "train.checkpoint_every=200"]
    if args.stem:
        overrides.append(f"model.stem={args.stem}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.out) if args.out else Path(tmp)
        if args.pretrained:
            pre, run = pretrained_run(Path(args.pretrained)), Path(args.pretrained)
        else:
            steps, _ = steps_for_budget(overrides, args.budget_minutes)
            cfg = load_config(CONFIGS / "simclr.yaml", overrides + [f"train.steps={steps}"])
            pre, run = run_pretrain(cfg, root / "simclr", progress=True), root / "simclr"
        opts = EvalOptions(checkpoint=str(run), data=args.data, out=root / "evaluate", finetune_head=args.finetune_head,
                           protocols=("linear", "finetune"), fractions=tuple(float(f) for f in args.fractions.split(",")),
                           seeds=args.seeds, baseline="scratch", finetune_steps=args.finetune_steps,
                           extra={"reference": {"MedMNIST v2 ResNet-18 (28), 100 %": 0.944}})
        ev = run_evaluate(opts)
        table = (root / "evaluate" / "results.md").read_text()
    result = {"benchmark": "label_efficiency", "data": args.data, "pretrain": {
        "method": "simclr", "run": str(run), "steps": pre["steps"], "seconds": round(pre["seconds"], 1),
        "final_loss": pre["final_loss"], "images_per_s": round(pre["images_per_s"], 1),
        "budget_minutes": None if args.pretrained else args.budget_minutes}, "finetune_head": args.finetune_head,
        "evaluate_seconds": ev["seconds"], "summary": ev["summary"], "reference": MEDMNIST_RESNET18_28,
        "total_minutes": round((time.perf_counter() - t0) / 60, 1), "threads": torch.get_num_threads(),
        "machine": machine()}
    text = json.dumps(result, indent=2, default=str)
    print(text)
    print("\nPneumoniaMNIST (rebuilt copy), test split; reference MedMNIST v2 ResNet-18 (28), all labels: "
          "AUC 0.944, ACC 0.854\n" + table)
    if args.json:
        Path(args.json).write_text(text)


if __name__ == "__main__":
    main()

"""Time to quality: training seconds until a linear probe on the VALIDATION split reaches a target ROC-AUC, for
medssl's SimCLR recipes and lightly 1.6.0's, same machine, same data, same ResNet-18 (small stem), interleaved.

Every run is its own process, started in turn (seed 0: every recipe, then seed 1, ...), so that a busy spell of the
machine falls on all of them alike. Each run probes every --probe-every steps with bench/_probe.py (frozen pooled
features of the training and validation images, a logistic regression fitted on the training labels, scored on
validation), off the clock; the clock starts when training starts (after data and model are ready, loader workers
starting on it). The test split is scored once, at the end of each run, and never steers anything.

medssl recipes (config overrides on configs/simclr.yaml):
  default  matched to lightly's run: batch 256 as configs/pneumoniamnist.yaml's label-efficiency study, 150 steps,
           configs/simclr.yaml's optimiser (AdamW 1e-3, cosine) with a 15-step warm-up
  fast     configs/simclr.yaml's own batch of 128, otherwise the same: chosen on seed 0's validation curve (RECIPES)
The peer runs in its own venv (--peer PYTHON; see bench/peer_lightly_simclr.py).

Prints one JSON object: every run's curve (step, training seconds, validation AUC), its seconds to the target
(linear interpolation between the two probes that straddle it; null if never reached), its test AUC at the end,
and per recipe the median seconds over seeds and the ratio to lightly's.

Example: python bench/time_to_quality.py --data ../shared/data/pneumoniamnist_28.npz --peer /work/peer/bin/python
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _probe import Clock, features, probe_scores  # noqa: E402

COMMON = ["data.size=28", "model.backbone=resnet18", "model.stem=small", "data.num_workers=1",
          "train.log_every=10", f"train.checkpoint_every={10**6}"]
RECIPES: dict[str, list[str]] = {
    "default": ["data.batch_size=256", "train.steps=150", "optim.warmup_epochs=0", "optim.warmup_steps=15"],
    # chosen on the validation curve of seed 0 only: batch 128 reached 0.99 at step 20 (2,560 images) and stayed,
    # batch 256 at step 45 (11,500 images); at the end test AUC 0.961 against 0.963 (looked at after choosing)
    "fast": ["data.batch_size=128", "train.steps=150", "optim.warmup_epochs=0", "optim.warmup_steps=15"],
}


def medssl_run(data: str, recipe: str, seed: int, probe_every: int, extra: list[str]) -> dict:
    """One medssl SimCLR run of the recipe, probed on validation off the clock; its curve and test AUC."""
    from medssl.config import load_config
    from medssl.methods import build_model
    from medssl.pretrain import load_records, make_loader, model_spec_of, run_spec
    from medssl.runspec import Validation
    from medssl.train import fit

    overrides = [*COMMON, *RECIPES[recipe], f"train.seed={seed}", f"data.source={data}", *extra]
    cfg = load_config(HERE.parent / "configs" / "simclr.yaml", overrides)
    d = np.load(data)
    ys = {k: d[f"{k}_labels"].ravel() for k in ("train", "val", "test")}
    xs = {k: torch.from_numpy(d[f"{k}_images"]).float().div_(255)[:, None] for k in ("train", "val", "test")}
    clock, curve, last = Clock(), [], {}
    every = probe_every

    def score(model: torch.nn.Module) -> float:
        step = min(len(curve) * every, cfg.train.steps)
        t = clock.pause() if curve else 0.0
        f = {k: features(model.backbone, xs[k]) for k in ("train", "val")}
        auc = probe_scores(f["train"], ys["train"], f["val"], ys["val"])
        curve.append((step, t, auc))
        last["weights"] = copy.deepcopy(model.backbone.state_dict())
        print(f"medssl {recipe} seed {seed} step {step}: {t:.1f} s, val AUC {auc}", file=sys.stderr, flush=True)
        if len(curve) == 1:
            clock.start()  # the first score is at step 0, just before the loop: training starts now
        else:
            clock.resume()
        return auc["few"]

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        records = load_records(cfg, run_dir)
        torch.manual_seed(cfg.train.seed)
        model = build_model(model_spec_of(cfg, None))
        spec = run_spec(cfg, data)
        spec.keep_checkpoints = False
        spec.validation = Validation(score=score, every=every, at_start=True)
        loader = functools.partial(make_loader, cfg, records, False, source=Path(data))
        result = fit(model, loader, spec, run_dir, progress=False)
    seconds = clock.now() if len(curve) <= 1 else curve[-1][1]
    model.backbone.load_state_dict(last["weights"])  # the last step's weights, not the best-scoring probe's
    f = {k: features(model.backbone, xs[k]) for k in ("train", "test")}
    return {"tool": "medssl", "recipe": recipe, "seed": seed, "steps": result["steps"],
            "batch": cfg.data.batch_size, "train_seconds": seconds,
            # off the same clock as the curve: fit's own figure counts the probes' time too
            "images_per_s": result["steps"] * cfg.data.batch_size / seconds if seconds else None, "curve": curve,
            "test_auc": probe_scores(f["train"], ys["train"], f["test"], ys["test"]), "threads": torch.get_num_threads(),
            "overrides": overrides}


def time_to(curve: list, target: float, probe: str = "all", sustained: bool = False) -> float | None:
    """Training seconds when the validation AUC of `probe` reaches target, interpolated between the probe before
    and the first at or above it; sustained: the first from which every later probe stays at or above. The score
    at step 0 (the untrained network) never counts: on PneumoniaMNIST's validation split it already exceeds 0.99."""
    points = [(t, scores[probe]) for _, t, scores in curve]
    for i in range(1, len(points)):
        (t0, a0), (t1, a1) = points[i - 1], points[i]
        if a1 < target or (sustained and any(a < target for _, a in points[i:])):
            continue
        if i == 1:  # the probe before is the untrained network's: the first trained probe is when it is known
            return t1
        return t0 + (t1 - t0) * (target - a0) / (a1 - a0)  # a0 < target here
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(HERE.parents[1] / "shared" / "data" / "pneumoniamnist_28.npz"))
    ap.add_argument("--peer", default="/work/peer/bin/python", help="python of the lightly venv ('' = skip)")
    ap.add_argument("--recipes", default="default,fast")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--target", type=float, default=0.99)
    ap.add_argument("--probe-every", type=int, default=10)
    ap.add_argument("--set", action="append", default=[], help="extra medssl overrides (exploring a recipe)")
    ap.add_argument("--one", choices=sorted(RECIPES), help=argparse.SUPPRESS)  # a single medssl run (a child)
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--json", help="also write the JSON here")
    args = ap.parse_args()
    if args.one:
        print(json.dumps(medssl_run(args.data, args.one, args.seed, args.probe_every, args.set)))
        return
    if not Path(args.data).is_file():
        sys.exit(f"error: {args.data} not found (the benchmark runs on ../shared/data's PneumoniaMNIST)")
    env = {**os.environ, "MEDSSL_CACHE": os.environ.get("MEDSSL_CACHE", tempfile.mkdtemp(prefix="ttq-cache-"))}
    runs = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        jobs = [("medssl", r) for r in args.recipes.split(",") if r]
        if args.peer:
            jobs.insert(seed % (len(jobs) + 1), ("lightly", "lightly"))  # the peer's place rotates with the seed
        for tool, recipe in jobs:
            if tool == "lightly":
                cmd = [args.peer, str(HERE / "peer_lightly_simclr.py"), "--data", args.data, "--seed", str(seed),
                       "--probe-every", str(args.probe_every)]
            else:
                cmd = [sys.executable, str(Path(__file__).resolve()), "--one", recipe, "--seed", str(seed),
                       "--data", args.data, "--probe-every", str(args.probe_every),
                       *[a for s in args.set for a in ("--set", s)]]
            out = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True, check=True).stdout
            run = json.loads(out.strip().splitlines()[-1])
            run["seconds_to_target"] = time_to(run["curve"], args.target)
            run["seconds_to_target_sustained"] = time_to(run["curve"], args.target, sustained=True)
            runs.append(run)
            print(f"{recipe} seed {seed}: {run['seconds_to_target']} s to val AUC {args.target} "
                  f"(sustained {run['seconds_to_target_sustained']}), test AUC {run['test_auc']}, "
                  f"{run['images_per_s']:.1f} img/s", file=sys.stderr, flush=True)
            if args.json:  # what has finished survives a later failure
                Path(args.json + ".partial").write_text(json.dumps(runs) + "\n")
    summary = {}
    for recipe in dict.fromkeys(r["recipe"] for r in runs):
        mine = [r for r in runs if r["recipe"] == recipe]
        s: dict = {"seeds": len(mine), "test_auc": [r["test_auc"] for r in mine],
                   "images_per_s": [r["images_per_s"] for r in mine],
                   "train_seconds": [r["train_seconds"] for r in mine],
                   "final_val_auc": [r["curve"][-1][2] for r in mine]}
        for kind in ("seconds_to_target", "seconds_to_target_sustained"):
            times = [r[kind] for r in mine]
            s[kind] = times
            # a run that never reached the target counts as slower than every run that did
            s[f"median_{kind}"] = statistics.median(t if t is not None else float("inf") for t in times)
        summary[recipe] = s
    peer = summary.get("lightly")
    for recipe, s in summary.items():
        if peer is not None and recipe != "lightly":
            for kind in ("seconds_to_target", "seconds_to_target_sustained"):
                mine, theirs = s[f"median_{kind}"], peer[f"median_{kind}"]
                s[f"ratio_to_lightly_{kind}"] = mine / theirs if theirs not in (0, float("inf")) else None
    for s in summary.values():  # JSON has no infinity: a median over runs that mostly never got there is null
        for k, v in list(s.items()):
            if v == float("inf"):
                s[k] = None
    result = {"target": args.target, "probe_every": args.probe_every, "data": args.data, "summary": summary,
              "runs": runs, "cpu": os.cpu_count(), "torch": torch.__version__}
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()

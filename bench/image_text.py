"""Image-text benchmark (issue 11): training throughput and peak memory of ConVIRT, CLIP and GLoRIA; retrieval
latency over 100,000 indexed 128-d embeddings; and on the real COVID-19 chest X-ray collection, zero-shot AUC per
finding, image-to-text / text-to-image P@5 by finding beside chance, and the label-efficiency table (linear probe
AUC at 1 %, 10 %, 100 % of the training labels over seeds) of image-text (ConVIRT, GLoRIA) against image-only
(SimCLR, MICLe) pretraining on the same images, against scratch.

Part 1 runs each method in its own subprocess (so each peak RSS is its own, resource.getrusage ru_maxrss of the
main process, and of the loader worker separately) on the built-in synthetic image-report data: `--warmup` steps,
then `--steps` timed steps through fit(); pairs/s is the total over the timed steps (the harmonic mean of
log.csv's per-step rates), one pair being one image with its report.
Part 2 is bench/retrieval_latency.py's measure() with one thread (exact and IVF).
Part 3 (skipped with --skip-real) uses --data (default ../shared/data/covid_cxr_224.npz), whose texts are CASE
NOTES ('clinical_notes': history and course), not radiology reports. The patient-level 70/10/20 split is
`medssl evaluate`'s seeded one; every pretraining sees only the train split's patients (the evaluation's val and
test patients are dropped from the records pretraining reads), so test images and notes are never trained on.
Labels are the collection's 'finding' field. Each pretraining gets --budget-minutes of training steps (estimated
from a short probe run of the same config). The script then states, from the numbers, which arm is best at the
smallest label fraction and whether its seed spread / CI overlaps the best image-only arm.

Example: python bench/image_text.py --json /tmp/image_text.json
         python bench/image_text.py --budget-minutes 2 --methods convirt,simclr --seeds 1
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data_throughput import machine  # noqa: E402
from retrieval_latency import measure as retrieval_measure  # noqa: E402

import medssl.pretrain as pretrain_mod  # noqa: E402
from medssl.config import load_config  # noqa: E402
from medssl.evaluate.data import decode_split, plan_source  # noqa: E402
from medssl.evaluate.options import EvalOptions  # noqa: E402
from medssl.evaluate.run import run_evaluate  # noqa: E402
from medssl.evaluate.zeroshot import encode_images, encode_prompts  # noqa: E402
from medssl.pretrain import run_pretrain  # noqa: E402
from medssl.retrieval import Index  # noqa: E402
from medssl.retrieval.metrics import chance_precision, precision_at_k, relevance  # noqa: E402
from medssl.zeroshot_run import load_image_text, run_zeroshot  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "covid_cxr_224.npz"
ALIGN = ("convirt", "clip", "gloria")
IMAGE_ONLY = ("simclr", "micle", "moco", "byol", "mae")
NOTE = ("The texts are the collection's 'clinical_notes': clinical CASE NOTES (history, course, treatment), not "
        "radiology reports; only some sentences describe the image.")


# ----------------------------------------------------------------------------------------------- part 1: throughput

def _steady(log: Path, warmup: int) -> dict:
    """Pairs/s over the steps after `warmup` in a log.csv logged every step: the total (total pairs / total time,
    the harmonic mean of the per-step rates) and the per-step median, slowest and fastest rate (on a shared
    machine the fastest step is the least disturbed by other processes)."""
    rates = [float(r["images_per_s"]) for r in csv.DictReader(log.open()) if int(r["step"]) > warmup]
    if not rates or min(rates) <= 0:
        raise SystemExit(f"{log}: no timed steps after warm-up {warmup}")
    return {"pairs_per_s": round(len(rates) / sum(1 / r for r in rates), 2),
            "per_step_median": round(statistics.median(rates), 2), "per_step_min": round(min(rates), 2),
            "per_step_max": round(max(rates), 2)}


def throughput_child(method: str, size: int, batch: int, warmup: int, steps: int, patients: int) -> dict:
    """One method's training rate and peak memory, measured in this (fresh) process."""
    rss_start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    cfg = load_config(CONFIGS / f"{method}.yaml", [
        f"data.size={size}", f"data.batch_size={batch}", f"data.synthetic_patients={patients}",
        "model.stem=small", f"train.steps={warmup + steps}", "train.log_every=1",
        f"train.checkpoint_every={10**6}"])
    with tempfile.TemporaryDirectory() as tmp:
        m = run_pretrain(cfg, Path(tmp) / "run", progress=False)
        rate = _steady(Path(tmp) / "run" / "log.csv", warmup)
        load = os.getloadavg()[0]
    return {"method": method, **rate, "step_ms": round(batch / rate["pairs_per_s"] * 1e3, 1), "load_avg_1min": load,
            "final_loss": m["final_loss"], "training_studies": m.get("studies"),
            "peak_rss_mb_main": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "rss_mb_after_imports": round(rss_start, 1),
            "peak_rss_mb_loader_worker": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)}


def throughput(args: argparse.Namespace) -> list[dict]:
    """Part 1: each image-text method in its own subprocess (its own peak RSS)."""
    rows = []
    for method in ALIGN:
        cmd = [sys.executable, __file__, "--_child", method, "--size", str(args.size), "--batch",
               str(args.train_batch), "--warmup", str(args.warmup), "--steps", str(args.steps),
               "--threads", str(args.threads), "--patients", str(args.patients)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"throughput of {method} failed:\n{done.stderr[-2000:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"[part 1] {method}: {rows[-1]['pairs_per_s']} pairs/s", file=sys.stderr, flush=True)
    return rows


# ------------------------------------------------------------------------------------------------ part 3: real data

@contextlib.contextmanager
def train_patients_only(patients: set[str]):
    """Pretraining reads only the records of these patients (the evaluation split's train part): wraps
    medssl.pretrain._read_records for the duration, so the val and test patients are never pretrained on."""
    original = pretrain_mod._read_records

    def read(cfg, run_dir, progress):
        records, bad = original(cfg, run_dir, progress)
        return [r for r in records if r.patient_id in patients], bad

    pretrain_mod._read_records = read
    try:
        yield
    finally:
        pretrain_mod._read_records = original


def real_overrides(data: Path, size: int, batch: int) -> list[str]:
    """Config overrides shared by every real-data pretraining."""
    return [f"data.source={data}", f"data.size={size}", f"data.batch_size={batch}", "model.stem=small",
            f"train.checkpoint_every={10**6}", "train.log_every=1"]


def step_seconds(method: str, overrides: list[str], root: Path, probe_steps: int = 6) -> float:
    """Seconds per training step of this config, from a short probe run (median per-step rate after step 2)."""
    cfg = load_config(CONFIGS / f"{method}.yaml", overrides + [f"train.steps={probe_steps}"])
    m = run_pretrain(cfg, root / f"probe-{method}", progress=False)
    rows = list(csv.DictReader((root / f"probe-{method}" / "log.csv").open()))
    rates = [float(r["images_per_s"]) for r in rows if int(r["step"]) > 2]
    per_step = m["images_per_s"] * m["seconds"] / max(1, m["steps"])
    return per_step / statistics.median(rates) if rates else m["seconds"] / max(1, m["steps"])


def pretrain_real(method: str, args: argparse.Namespace, root: Path) -> dict:
    """Pretrain `method` on the train patients within the budget; its metrics and run folder."""
    overrides = real_overrides(args.data, args.size, args.batch)
    t0 = time.perf_counter()
    sec = step_seconds(method, overrides, root)
    steps = max(10, int(args.budget_minutes * 60 / sec))
    cfg = load_config(CONFIGS / f"{method}.yaml", overrides + [f"train.steps={steps}"])
    m = run_pretrain(cfg, root / method, progress=False)
    print(f"[part 3] {method}: {steps} steps in {m['seconds']:.0f} s, loss {m['final_loss']:.3f}", file=sys.stderr,
          flush=True)
    return {"method": method, "run": str(root / method), "steps": steps, "seconds": round(m["seconds"], 1),
            "probe_step_s": round(sec, 3), "images": m["images"], "final_loss": m["final_loss"],
            "epochs": round(steps * args.batch / max(1, m.get("studies") or m["images"]), 1),
            "wall_minutes_incl_probe": round((time.perf_counter() - t0) / 60, 2)}


def retrieval_real(run: Path, plan, k: int = 5) -> dict:
    """Image-to-text and text-to-image P@k on the test split's image-note pairs (notes non-empty), relevant = the
    gallery item shares a finding with the query, the query's own patient excluded (its own note would be a
    trivial hit); per finding, beside chance (the fraction of other-patient gallery items that share a finding)."""
    aligned = load_image_text(run)
    test = [r for r in plan.splits["test"] if r.report.strip()]
    kept, images, _ = decode_split(test, aligned.preprocess, False, False, "test")
    with torch.no_grad():
        img = encode_images(aligned.model, images, aligned.preprocess, 64, False).numpy().astype(np.float32)
        txt = encode_prompts(aligned.model, aligned.tokenizer, [r.report for r in kept]).numpy().astype(np.float32)
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    ids, patients, labels = [str(r.index) for r in kept], [r.patient_id for r in kept], [r.labels for r in kept]
    out = {"test_pairs": len(kept), "test_patients": len(set(patients)), "k": k}
    for name, queries, gallery in (("image_to_text", img, txt), ("text_to_image", txt, img)):
        index = Index.build(gallery, ids, patients, labels)
        rows = index.search(queries, k, exclude_patient=patients).rows
        hits, n_rel, eligible = relevance(rows, labels, labels, patients, patients)
        by = {}
        for finding in sorted({f for ls in labels for f in ls}):
            q = np.array([finding in ls for ls in labels])
            by[finding] = {"queries": int(q.sum()), f"p_at_{k}": round(precision_at_k(hits[q], k), 3),
                           "chance": round(chance_precision(n_rel[q], eligible[q]), 3)}
        out[name] = {f"p_at_{k}": round(precision_at_k(hits, k), 3),
                     "chance": round(chance_precision(n_rel, eligible), 3), "by_finding": by}
    return out


def probe_table(evaluations: dict[str, dict]) -> dict[str, dict[str, dict]]:
    """arm -> fraction -> {mean, std, n, values, ci95} of the linear probe's macro AUC over seeds, from each
    evaluation's runs; ci95 is the patient-bootstrap CI of a single seed, else the mean of the seeds' CI ends.
    The arm "scratch" is the linear probe on a randomly initialised backbone ("linear_scratch")."""
    table: dict[str, dict[str, dict]] = {}
    for method, ev in evaluations.items():
        cells: dict[tuple[str, str], list[dict]] = {}
        for r in ev["runs"]:
            arm = "scratch" if r["protocol"] == "linear_scratch" else method
            cells.setdefault((arm, f"{r['fraction']:g}"), []).append(r)
        for (arm, fraction), runs in cells.items():
            vals = [r["roc_auc_macro"] for r in runs if r.get("roc_auc_macro") is not None
                    and r["roc_auc_macro"] == r["roc_auc_macro"]]
            cis = [r["ci95"]["roc_auc_macro"] for r in runs if r.get("ci95", {}).get("roc_auc_macro")
                   and None not in r["ci95"]["roc_auc_macro"]]
            table.setdefault(arm, {})[fraction] = {
                "mean": _r(statistics.fmean(vals)) if vals else None,
                "std": _r(statistics.stdev(vals)) if len(vals) > 1 else None, "n": len(vals),
                "values": [_r(v) for v in vals],
                "ci95": [_r(statistics.fmean(c[0] for c in cis)), _r(statistics.fmean(c[1] for c in cis))]
                if cis else None}
    return table


def _r(v):
    return None if v is None or v != v else round(float(v), 3)


def interval(cell: dict) -> tuple[float, float]:
    """The cell's uncertainty band: its CI when known, else mean +- std over seeds, else the mean alone."""
    if cell.get("ci95") and None not in cell["ci95"]:
        return tuple(cell["ci95"])
    s = cell.get("std") or 0.0
    return cell["mean"] - s, cell["mean"] + s


def answer(table: dict[str, dict[str, dict]], fraction: str) -> str:
    """The question, answered from the numbers at the smallest label fraction."""
    cells = {arm: row[fraction] for arm, row in table.items() if fraction in row and row[fraction]["mean"] is not None}
    if not cells:
        return f"no linear-probe AUC at {fraction} of the labels: no answer"
    best = max(cells, key=lambda a: cells[a]["mean"])
    text_arms = [a for a in cells if a in ALIGN]
    image_arms = [a for a in cells if a in IMAGE_ONLY]
    parts = [f"At {float(fraction) * 100:g} % of the labels the best arm is {best} "
             f"(AUC {cells[best]['mean']:.3f})."]
    if text_arms and image_arms:
        bt = max(text_arms, key=lambda a: cells[a]["mean"])
        bi = max(image_arms, key=lambda a: cells[a]["mean"])
        (lt, ht), (li, hi) = interval(cells[bt]), interval(cells[bi])
        overlap = lt <= hi and li <= ht
        verdict = ("reports (case notes here) buy more than images alone" if cells[bt]["mean"] > cells[bi]["mean"]
                   else "reports (case notes here) do NOT buy more than images alone")
        parts.append(f"Best image-text {bt} {cells[bt]['mean']:.3f} [{lt:.3f}, {ht:.3f}] vs best image-only {bi} "
                     f"{cells[bi]['mean']:.3f} [{li:.3f}, {hi:.3f}]: by the means {verdict}, but the bands "
                     f"{'overlap, so the difference is not resolved' if overlap else 'do not overlap'}.")
    else:
        parts.append("Image-text and image-only arms were not both run: the question is not answered.")
    scratch = [a for a in cells if a.startswith("scratch")]
    if scratch and best not in scratch:
        s, (ls, hs), (lb, hb) = cells[scratch[0]], interval(cells[scratch[0]]), interval(cells[best])
        parts.append(f"Scratch (the same probe on a random-init encoder): {s['mean']:.3f} [{ls:.3f}, {hs:.3f}]; "
                     f"{best} is {cells[best]['mean'] - s['mean']:+.3f} from it, bands "
                     f"{'overlapping' if lb <= hs and ls <= hb else 'apart'}.")
    elif scratch:
        parts.append("Scratch (the same probe on a random-init encoder) is the best arm: no pretraining helps here.")
    parts.append("Bands: the patient-bootstrap 95 % CI (mean of the seeds' CI ends), else mean +- seed std.")
    return " ".join(parts)


def real(args: argparse.Namespace, root: Path) -> dict:
    """Part 3 on the real collection."""
    t0 = time.perf_counter()
    opts = EvalOptions(checkpoint="unused", data=str(args.data), out=root / "plan", protocols=("linear",),
                       fractions=(1.0,), seeds=1, baseline=None, progress=False).validate()
    plan = plan_source(opts, args.data)
    split = {name: {"images": len(rs), "patients": len({r.patient_id for r in rs}),
                    "with_notes": sum(bool(r.report.strip()) for r in rs)} for name, rs in plan.splits.items()}
    train = {r.patient_id for r in plan.splits["train"]}
    out: dict = {"data": str(args.data), "text_note": NOTE, "split": split, "task": plan.task.to_dict(),
                 "pretrain": {}, "zeroshot": {}, "retrieval": {}, "label_efficiency": {}}
    evaluations = {}
    with train_patients_only(train):
        for i, method in enumerate(args.methods):
            pre = pretrain_real(method, args, root)
            out["pretrain"][method] = pre
            run = Path(pre["run"])
            if method in ALIGN:
                z = run_zeroshot(run, data=str(args.data), out=root / method / "zeroshot", n_boot=args.n_boot,
                                 progress=False)
                out["zeroshot"][method] = {
                    "roc_auc_macro": _r(z.get("roc_auc_macro")), "ci95": z.get("ci95", {}), "chance": 0.5,
                    "per_class": z.get("per_class"), "test_images": z["test_images"],
                    "test_patients": z["test_patients"], "notes": z.get("notes")}
                out["retrieval"][method] = retrieval_real(run, plan)
            ev = run_evaluate(EvalOptions(
                checkpoint=str(run), data=str(args.data), out=root / method / "evaluate", protocols=("linear",),
                fractions=tuple(args.fractions), seeds=args.seeds, baseline="scratch" if i == 0 else None,
                n_boot=args.n_boot, keep_bundles=False, progress=False))
            evaluations[method] = ev
            out.setdefault("label_images", ev.get("label_fractions"))
            print(f"[part 3] {method}: evaluated in {ev['seconds']:.0f} s", file=sys.stderr, flush=True)
    out["label_efficiency"] = probe_table(evaluations)
    out["answer"] = answer(out["label_efficiency"], f"{min(args.fractions):g}")
    out["minutes"] = round((time.perf_counter() - t0) / 60, 1)
    return out


# ------------------------------------------------------------------------------------------------------ the report

def _print_synthetic(result: dict) -> None:
    """Tables of parts 1 and 2."""
    t = result["throughput"]
    print(f"\n## 1. Training throughput, built-in synthetic image-report pairs, {t['size']} px, batch {t['batch']}, "
          f"small stem, {t['threads']} torch thread(s), {t['steps']} timed steps after {t['warmup']} warm-up")
    print("| method | pairs/s | ms/step | per-step pairs/s median [min, max] | peak RSS MB (whole run, main process) "
          "| RSS after imports MB | load avg |")
    print("|---|---|---|---|---|---|---|")
    for r in t["runs"]:
        print(f"| {r['method']} | {r['pairs_per_s']} | {r['step_ms']} | {r['per_step_median']} [{r['per_step_min']}, "
              f"{r['per_step_max']}] | {r['peak_rss_mb_main']} | {r['rss_mb_after_imports']} | "
              f"{r['load_avg_1min']:.2f} |")
    rl = result["retrieval_latency"]
    print(f"\n## 2. Retrieval latency, {rl['n']:,} x {rl['dim']}-d, k={rl['k']}, own patient excluded, "
          f"{rl['queries']} single queries (target < {rl['target_ms_per_query']} ms)")
    print("| index | threads | build s | median ms | p95 ms | recall vs exact |")
    print("|---|---|---|---|---|---|")
    for r in rl["runs"]:
        print(f"| {r['index']} | {r['threads']} | {r['build_s']} | {r['median_ms']} | {r['p95_ms']} | "
              f"{r['recall_vs_exact']} |")


def print_tables(result: dict) -> None:
    """The table form of the JSON."""
    if result.get("throughput"):
        _print_synthetic(result)
    else:
        print("\n## 1-2. Throughput and retrieval latency: skipped (--only-real)")
    re = result.get("real")
    if not re:
        print("\n## 3. Real data: skipped (--skip-real)")
        return
    print(f"\n## 3. Real data: {re['data']}, patient-level test split "
          f"({re['split']['test']['images']} images, {re['split']['test']['patients']} patients)")
    print(f"NOTE: {re['text_note']}")
    print(f"budget: {result['args']['budget_minutes']} min of pretraining per method, batch {result['args']['batch']},"
          f" {result['args']['size']} px")
    print("| method | steps | epochs | seconds | final loss |")
    print("|---|---|---|---|---|")
    for m, p in re["pretrain"].items():
        print(f"| {m} | {p['steps']} | {p['epochs']} | {p['seconds']} | {p['final_loss']:.3f} |")
    for m, z in re["zeroshot"].items():
        ci = [_r(v) for v in (z.get("ci95") or {}).get("roc_auc_macro") or []]
        print(f"\nzero-shot {m}: macro AUC {z['roc_auc_macro']} (95 % CI {ci}), chance 0.5")
        print("| finding | AUC | 95 % CI | chance |")
        print("|---|---|---|---|")
        for name, c in (z.get("per_class") or {}).items():
            print(f"| {name} | {_r(c.get('roc_auc'))} | {[_r(v) for v in c.get('roc_auc_ci95') or []]} | 0.5 |")
    for m, r in re["retrieval"].items():
        print(f"\nretrieval {m}: {r['test_pairs']} test image-note pairs, P@{r['k']} (own patient excluded)")
        print("| finding | queries | image->text P@5 | chance | text->image P@5 | chance |")
        print("|---|---|---|---|---|---|")
        a, b = r["image_to_text"], r["text_to_image"]
        print(f"| all | {r['test_pairs']} | {a['p_at_5']} | {a['chance']} | {b['p_at_5']} | {b['chance']} |")
        for f, c in a["by_finding"].items():
            d = b["by_finding"][f]
            print(f"| {f} | {c['queries']} | {c['p_at_5']} | {c['chance']} | {d['p_at_5']} | {d['chance']} |")
    le = re["label_efficiency"]
    fracs = sorted({f for row in le.values() for f in row}, key=float)
    print(f"\nlinear probe macro AUC (mean +- std over {result['args']['seeds']} seed(s); "
          "[mean of the seeds' 95 % patient-bootstrap CIs])")
    print("| arm | " + " | ".join(f"{float(f) * 100:g} %" for f in fracs) + " |")
    print("|---|" + "---|" * len(fracs))
    for arm, row in le.items():
        cells = []
        for f in fracs:
            c = row.get(f)
            spread = f" +- {c['std']:.3f}" if c and c.get("std") is not None else " (1 seed)"
            cells.append("-" if not c or c["mean"] is None else f"{c['mean']:.3f}{spread} {c['ci95'] or ''}")
        print(f"| {arm} | " + " | ".join(cells) + " |")
    for f in re.get("label_images") or []:
        print(f"labels asked {f['asked'] * 100:g} %: {f['images']} images of {f['patients']} patients "
              f"({f['actual'] * 100:.1f} % of {f['train_images']}; every class keeps at least one patient)")
    print(f"\nANSWER: {re['answer']}")


def main() -> None:
    """Run the parts, print one JSON object and the tables."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    ap.add_argument("--train-batch", type=int, default=32, help="part 1 image-report pairs per step")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10, help="part 1 timed steps")
    ap.add_argument("--patients", type=int, default=100, help="part 1 built-in synthetic patients")
    ap.add_argument("--retrieval-n", type=int, default=100_000)
    ap.add_argument("--skip-real", action="store_true", help="run only parts 1 and 2")
    ap.add_argument("--only-real", action="store_true", help="run only part 3")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--methods", default="convirt,gloria,simclr,micle")
    ap.add_argument("--budget-minutes", type=float, default=6.0,
                    help="pretraining per method (default 6: four methods plus their evaluations ~ an hour)")
    ap.add_argument("--batch", type=int, default=32, help="part 3 pretraining batch (every method)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--fractions", default="0.01,0.1,1")
    ap.add_argument("--n-boot", type=int, default=500)
    ap.add_argument("--out", type=Path, default=None, help="keep the runs here (default: a temporary folder)")
    ap.add_argument("--json", help="also write the JSON here")
    ap.add_argument("--_child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args._child:
        print(json.dumps(throughput_child(args._child, args.size, args.train_batch, args.warmup, args.steps,
                                          args.patients)))
        return
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    args.fractions = [float(f) for f in args.fractions.split(",")]
    args.data = args.data.resolve()
    unknown = [m for m in args.methods if m not in ALIGN + IMAGE_ONLY]
    if unknown:
        raise SystemExit(f"--methods: unknown {', '.join(unknown)} (choose from {', '.join(ALIGN + IMAGE_ONLY)})")
    if not args.skip_real and not args.data.is_file():
        raise SystemExit(f"{args.data}: no such file (part 3 needs the real collection; --skip-real skips it)")
    t0 = time.perf_counter()
    result: dict = {"benchmark": "image_text", "machine": machine(), "threads": args.threads,
                    "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                             if k != "_child"},
                    "memory_note": "peak RSS = resource.getrusage(RUSAGE_SELF).ru_maxrss of the method's own "
                                   "subprocess "
                                   "(all memory of the main process, Python and torch included, over the whole run:"
                                   " data writing, tokenizer, training, the align report); the loader worker's "
                                   "figure (RUSAGE_CHILDREN) counts the pages it shares with the main process "
                                   "since the fork, so it is not additional memory"}
    if not args.only_real:
        result["throughput"] = {"size": args.size, "batch": args.train_batch, "warmup": args.warmup,
                                "steps": args.steps, "threads": args.threads, "data": "built-in synthetic",
                                "runs": throughput(args)}
        rl = retrieval_measure(args.retrieval_n, 128, 1000, 5, (16, 64), (1,))
        result["retrieval_latency"] = {k: rl[k] for k in ("n", "dim", "k", "queries", "ivf_nlist",
                                                          "target_ms_per_query", "runs", "meets_target")}
        print("[part 2] retrieval latency done", file=sys.stderr, flush=True)
    if not args.skip_real:
        with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
            root = args.out or Path(tmp)
            root.mkdir(parents=True, exist_ok=True)
            result["real"] = real(args, root)
    result["total_minutes"] = round((time.perf_counter() - t0) / 60, 1)
    text = json.dumps(result, indent=2, default=str)
    print(text)
    if args.json:
        Path(args.json).write_text(text)
    print_tables(result)


if __name__ == "__main__":
    main()

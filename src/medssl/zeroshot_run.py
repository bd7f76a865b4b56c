"""`medssl zeroshot RUN`: classify a source's test split from prompts alone, with an image-text run.

The run is one that `medssl align` wrote (ConVIRT, CLIP, GLoRIA): its checkpoint holds the model spec, the
weights, the preprocess and the report tokenizer. Without --data the test split is the built-in synthetic set
with the run's own parameters (the patients its pretraining never saw, as `medssl evaluate` takes them); with
--data, that source's split column, else the same seeded patient-level 70/10/20 split as `medssl evaluate`. The
numbers are the evaluation's metrics with patient-level bootstrap CIs, beside chance (AUC 0.5).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from medssl.aligned import ImageTextRun, load_image_text  # noqa: F401  (re-exported: the commands' API)
from medssl.data.splits import by_split
from medssl.data.tasks import Task, targets
from medssl.errors import MedsslError
from medssl.evaluate.checks import check_split_sizes
from medssl.evaluate.data import EvalData, builtin_data, decode_split, load_records, plan_source
from medssl.evaluate.options import EvalOptions
from medssl.evaluate.zeroshot import evaluate_zeroshot

RESULTS = "zeroshot.json"


def load_run_source(run: str | Path, data: str | None, out: Path, n_boot: int = 1000, skip_bad: bool = False,
                    progress: bool = True, classify: bool = True) -> tuple[ImageTextRun, EvalData]:
    """An align run's model and the planned data it is used on (records split by patient, nothing decoded): --data
    (its split column, else the seeded patient-level 70/10/20 split of `medssl evaluate`), or without it the
    built-in synthetic set with the run's own parameters, written to OUT/data (so its val / test patients are the
    ones the run's pretraining never saw). The cheap checks of --data run before the model loads; OUT is created.
    classify=False (retrieval) skips the classification checks (a task with two classes, each class both present
    and absent in the test split): only non-empty splits are asked, and the plan's task lists every label, y is
    empty. Shared by `medssl zeroshot` and `medssl retrieve`."""
    opts = EvalOptions(checkpoint=str(run), data=data, out=Path(out), protocols=("linear",), fractions=(1.0,),
                       seeds=1, baseline=None, n_boot=n_boot, skip_bad=skip_bad, progress=progress).validate()
    plan_of = plan_source if classify else _split_source
    plan = plan_of(opts, data) if data is not None else None  # cheap checks before the model loads
    aligned = load_image_text(run)
    Path(out).mkdir(parents=True, exist_ok=True)
    if plan is None:
        plan = plan_of(opts, builtin_data(opts, aligned.preprocess, aligned.meta.get("config", {}).get("data")))
    return aligned, plan


def _split_source(opts: EvalOptions, source: str | Path) -> EvalData:
    """A source's labelled records split by patient, each split non-empty; no classification checks."""
    records, skipped = load_records(opts, source)
    splits = by_split(records)
    check_split_sizes(splits, str(source))
    task = Task("multilabel", tuple(sorted({x for r in records for x in r.labels})))
    return EvalData(splits, {}, {}, task, 0, str(source), skipped=list(skipped))


def _subset_task(task: Task, y: np.ndarray, classes: tuple[str, ...] | None) -> tuple[Task, np.ndarray]:
    """The findings asked for (--classes) of a multi-label task; other tasks are scored over all their classes."""
    if not classes:
        return task, y
    unknown = [c for c in classes if c not in task.classes]
    if unknown:
        raise MedsslError(f"--classes {','.join(unknown)}: not a class of the data ({', '.join(task.classes)})")
    if task.kind != "multilabel":
        if set(classes) != set(task.classes):
            raise MedsslError(f"--classes: a {task.kind} task is scored over all its classes "
                              f"({', '.join(task.classes)}); --classes picks findings of multi-label data")
        return task, y
    cols = [task.classes.index(c) for c in classes]
    return Task("multilabel", tuple(classes)), y[:, cols]


def run_zeroshot(run: str | Path, data: str | None = None, out: Path | None = None,
                 classes: tuple[str, ...] | None = None, prompt_file: str | None = None, n_boot: int = 1000,
                 skip_bad: bool = False, progress: bool = True) -> dict[str, Any]:
    """Zero-shot metrics of the run on a test split; written to OUT/zeroshot.json and returned."""
    t0 = time.perf_counter()
    out = Path(out) if out is not None else Path(run) / "zeroshot"
    aligned, plan = load_run_source(run, data, out, n_boot=n_boot, skip_bad=skip_bad, progress=progress)
    # only the test split is decoded: nothing is trained
    kept, images, bad = decode_split(plan.splits["test"], aligned.preprocess, skip_bad, progress, "test",
                                     plan.source)
    if not kept:
        raise MedsslError(f"{plan.source}: none of the test split's images could be read")
    task, y = _subset_task(plan.task, targets(kept, plan.task), classes)
    groups = [r.patient_id for r in kept]
    result = evaluate_zeroshot(aligned.model, aligned.tokenizer, images, y, task, groups,
                               prompt_file=prompt_file, preprocess=aligned.preprocess, n_boot=n_boot,
                               progress=progress)
    metrics = {"run": str(run), "method": aligned.spec.method, "source": plan.source, "task": task.to_dict(),
               "test_images": len(groups), "test_patients": len(set(groups)), "notes": plan.notes,
               "skipped": [{"path": p, "error": e} for p, e in plan.skipped + bad], **result,
               "seconds": time.perf_counter() - t0}
    (out / RESULTS).write_text(json.dumps(metrics, indent=2, default=float) + "\n")
    return metrics


def summary_lines(metrics: dict[str, Any]) -> list[str]:
    """What the command prints: the headline with its CI, per-class AUCs, chance."""
    ci = metrics.get("ci95", {}).get("roc_auc_macro")
    ci_text = f" (95 % CI {ci[0]:.3f}-{ci[1]:.3f}, patient bootstrap)" if ci else ""
    lines = [f"zero-shot {metrics['method']} on {metrics['test_images']} test images of "
             f"{metrics['test_patients']} patients ({metrics['source']})",
             f"  macro ROC-AUC {metrics.get('roc_auc_macro', float('nan')):.3f}{ci_text}; chance 0.500"]
    for name, m in (metrics.get("per_class") or {}).items():
        auc = m.get("roc_auc", float("nan"))
        lines.append(f"  {name:<24} AUC {auc:.3f}" if auc == auc else f"  {name:<24} AUC undefined (one class)")
    lines += [f"note: {n}" for n in metrics.get("notes", [])]
    return lines


def print_summary(metrics: dict[str, Any]) -> None:
    """summary_lines to stdout."""
    for line in summary_lines(metrics):
        print(line, file=sys.stdout)

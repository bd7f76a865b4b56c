"""`medssl evaluate`: how much does pretraining buy when labels are scarce?

For every seed and label fraction (patient-level, stratified, nested subsets of the training split, identical for
every protocol), each protocol fits on the subset, picks what it picks on the validation split and is scored on
the test split: linear probe and kNN on frozen features, fine-tuning end to end, and the same fine-tuning from
random initialisation (the supervised baseline, same fractions and budget; without fine-tuning, the baseline of
the probe and kNN is the same protocol on a randomly initialised backbone). Every number is reported as mean and
standard deviation over seeds, with a 95 % patient-level bootstrap CI for each run.
"""

from __future__ import annotations

import copy
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from medssl.data.tasks import Task, task_probabilities
from medssl.errors import MedsslError
from medssl.evaluate.checks import percent
from medssl.evaluate.data import EvalData, builtin_data, decode_data, plan_source
from medssl.evaluate.options import HEADLINE, PROTOCOLS, EvalOptions  # noqa: F401  (EvalOptions: the run's API)
from medssl.inference import Bundle, load_bundle, predict_logits, save_bundle
from medssl.models.classifier import Classifier
from medssl.models.factory import ModelSpec, build_backbone

def fresh_backbone(spec: ModelSpec, seed: int) -> nn.Module:
    """The same architecture as the pretrained backbone, randomly initialised (the supervised baseline)."""
    torch.manual_seed(seed)
    return build_backbone(spec.bare())


def score_run(y: np.ndarray, scores: np.ndarray, task: Task, groups: Sequence[str], n_boot: int,
              seed: int) -> dict[str, Any]:
    """Metrics of one run with patient-level bootstrap CIs of the headline metrics."""
    from medssl.evaluate.metrics import bootstrap_intervals, classification_metrics

    m = classification_metrics(y, scores, task)
    ci = bootstrap_intervals(y, scores, task, groups, metrics=("roc_auc_macro", "accuracy"), n_boot=n_boot,
                             seed=seed)
    m["ci95"] = {k: [iv.low, iv.high] for k, iv in ci.items()}
    # resamples where the metric was defined (an AUC needs both classes drawn): "CI from 61 of 100 resamples"
    m["bootstrap"] = {"n_boot": n_boot, "resamples": {k: iv.resamples for k, iv in ci.items()}}
    return m


class Evaluation:
    """Runs every protocol x fraction x seed and keeps the per-run metrics and a few artefacts for plots."""

    def __init__(self, opts: EvalOptions, pretrained: Bundle, data: EvalData):
        self.opts, self.pretrained, self.data = opts, pretrained, data
        self.backbone, self.spec, self.preprocess = pretrained.model, pretrained.spec, pretrained.preprocess
        self.config: dict[str, Any] = pretrained.meta.get("config", {})
        self.runs: list[dict[str, Any]] = []  # one row per (protocol, fraction, seed)
        self.artefacts: dict[str, Any] = {}
        self.best: dict[str, tuple[float, Classifier, dict[str, Any]]] = {}  # protocol -> best on validation
        self.features: dict[str, np.ndarray] = {}
        self.random_features: dict[int, dict[str, np.ndarray]] = {}  # seed -> features of a random backbone
        self.probes: dict[tuple[float, int, bool], Any] = {}  # (fraction, seed, random) -> ProbeResult

    def frozen_features(self, random_seed: int | None = None) -> dict[str, np.ndarray]:
        """Features of every split from the frozen pretrained backbone or (random_seed given) from a randomly
        initialised one, the frozen-feature baseline; each checked to leave its backbone untouched."""
        if random_seed is None:
            if not self.features:
                self.features = self._features(self.backbone, "pretrained")
            return self.features
        if random_seed not in self.random_features:  # jobs run seed by seed: keep one seed's features only
            self.random_features = {random_seed: self._features(fresh_backbone(self.spec, random_seed),
                                                                f"random init s{random_seed}")}
        return self.random_features[random_seed]

    def _features(self, backbone: nn.Module, name: str) -> dict[str, np.ndarray]:
        from medssl.evaluate.features import extract_features, feature_bar
        from medssl.evaluate.probe import backbone_fingerprint, sanity_check

        images = self.data.images
        before = backbone_fingerprint(backbone)
        with feature_bar(sum(len(v) for v in images.values()), f"features ({name})", self.opts.progress) as bar:
            out = {k: extract_features(backbone, v, self.preprocess, bar=bar) for k, v in images.items()}
        sanity_check(backbone, before)
        return out

    def _record(self, protocol: str, fraction: float, seed: int, scores: np.ndarray, extra: dict) -> None:
        d = self.data
        groups = [r.patient_id for r in d.splits["test"]]
        m = score_run(d.y["test"], scores, d.task, groups, self.opts.n_boot, seed)
        self.runs.append({"protocol": protocol, "fraction": fraction, "seed": seed, **m, **extra})
        key = (protocol, fraction)
        if seed == 0:
            self.artefacts.setdefault("scores", {})[key] = scores

    def probe(self, fraction: float, seed: int, idx: np.ndarray, random: bool = False) -> Any:
        """The linear probe (ProbeResult) of a fraction and seed, fitted once: logistic regression on frozen
        features (random: of the seed's randomly initialised backbone), C chosen on the validation split."""
        from medssl.evaluate.probe import linear_probe

        key = (fraction, seed, random)
        if key not in self.probes:
            f, d = self.frozen_features(seed if random else None), self.data
            self.probes[key] = linear_probe(f["train"][idx], d.y["train"][idx], f["val"], d.y["val"], f["test"],
                                            d.task, seed=seed)
        return self.probes[key]

    def run_linear(self, fraction: float, seed: int, idx: np.ndarray, random: bool = False) -> None:
        """Logistic regression on frozen features; C chosen on the validation split. random: the baseline on a
        randomly initialised backbone ("linear_scratch"), kept as no bundle."""
        res = self.probe(fraction, seed, idx, random)
        self._record("linear_scratch" if random else "linear", fraction, seed, res.scores, {"C": res.C})
        if random:
            return
        if seed == 0 and fraction == max(self.opts.fractions):
            self.artefacts["probe"] = res
        if self.opts.keep_bundles:
            self._keep("linear", res.val_score, lambda: self._probe_classifier(res), fraction, seed)

    def _probe_classifier(self, res: Any) -> Classifier:
        """The probe as a torch classifier: the frozen backbone (copied) + a LinearHead holding its weights."""
        from medssl.evaluate.probe import probe_module

        return probe_module(copy.deepcopy(self.backbone), res, self.data.task)

    def _keep(self, protocol: str, val: float, model: Classifier | Callable[[], Classifier], fraction: float,
              seed: int) -> None:
        """Keep the protocol's classifier with the best validation score so far (ties: the later, larger run)."""
        val = float(val) if val is not None and np.isfinite(val) else -np.inf
        if protocol in self.best and val < self.best[protocol][0]:
            return
        run = self.runs[-1]
        meta = {"protocol": protocol, "fraction": fraction, "seed": seed, "val_score": val,
                "test_metrics": {k: run.get(k) for k in HEADLINE}}
        self.best[protocol] = (val, model if isinstance(model, Classifier) else model(), meta)

    def run_knn(self, fraction: float, seed: int, idx: np.ndarray, random: bool = False) -> None:
        """Cosine kNN on frozen features (random: of a randomly initialised backbone, "knn_scratch")."""
        from medssl.evaluate.probe import knn_scores

        f, d = self.frozen_features(seed if random else None), self.data
        self._record("knn_scratch" if random else "knn", fraction, seed,
                     knn_scores(f["train"][idx], d.y["train"][idx], f["test"], d.task), {})

    def run_finetune(self, fraction: float, seed: int, idx: np.ndarray, scratch: bool) -> None:
        """End-to-end fine-tuning (through train.fit, early stopping on validation AUC); scratch = baseline."""
        from medssl.evaluate.finetune import FinetuneConfig, finetune

        d, o = self.data, self.opts
        backbone = fresh_backbone(self.spec, seed) if scratch else copy.deepcopy(self.backbone)
        name = "scratch" if scratch else "finetune"
        # a random backbone learns at the head's rate, and its BatchNorm statistics have nothing worth keeping; a
        # pretrained one learns at a tenth of the rate (the default) and may keep its statistics
        arm = {"backbone_lr_scale": 1.0} if scratch else {"freeze_bn": o.finetune_freeze_bn}
        cfg = FinetuneConfig(steps=o.finetune_steps, epochs=o.finetune_epochs, lr=o.finetune_lr,
                             patience=o.finetune_patience, batch_size=min(o.finetune_batch, len(idx)), seed=seed,
                             augment=self.config.get("data", {}).get("augment", "chest_xray"), **arm)
        run_dir = o.out / "finetune" / f"{name}_f{fraction:g}_s{seed}"
        head = None
        if not scratch and o.finetune_head == "probe":
            res = self.probe(fraction, seed, idx)
            head = (res.weight, res.bias)
        model, history = finetune(backbone, d.images["train"][idx], d.y["train"][idx], d.images["val"], d.y["val"],
                                  d.task, cfg, run_dir, progress=o.progress, head=head, preprocess=self.preprocess,
                                  desc=f"{name} {percent(fraction)} s{seed}")
        scores = task_probabilities(predict_logits(model, d.images["test"], self.preprocess), d.task)
        self._record(name, fraction, seed, scores,
                     {"best_step": history.get("best_step"), "best_val_auc": history.get("best_val_auc")})
        if seed == 0 and fraction == max(o.fractions):
            self.artefacts[f"model_{name}"] = model
        if o.keep_bundles:
            self._keep(name, history["best_val"], model, fraction, seed)

    def masks(self) -> tuple[Any, dict[str, torch.Tensor]]:
        """The mask encoding (decided once, from every split's records) and every split's masks, read once."""
        from medssl.data.masks import mask_spec, read_masks

        d, o = self.data, self.opts
        if "mask_spec" not in self.artefacts:
            records = [r for split in ("train", "val", "test") for r in d.splits[split]]
            self.artefacts["mask_spec"] = mask_spec(records, o.mask_encoding, o.mask_classes)
        spec = self.artefacts["mask_spec"]
        masks = self.artefacts.setdefault("masks", {})
        for split in ("train", "val", "test"):
            if split not in masks:
                masks[split] = read_masks(d.splits[split], spec, d.size)
        return spec, masks

    def run_segment(self, fraction: float, seed: int, idx: np.ndarray, scratch: bool) -> None:
        """U-Net with the pretrained (or a fresh) encoder on the records' masks; Dice on the test split."""
        from medssl.evaluate.segment import SegmentConfig, segment_transfer

        d, o = self.data, self.opts
        spec, masks = self.masks()
        backbone = fresh_backbone(self.spec, seed) if scratch else copy.deepcopy(self.backbone)
        name = "segment_scratch" if scratch else "segment"
        cfg = SegmentConfig(steps=o.segment_steps, lr=o.segment_lr, patience=o.segment_patience, size=d.size,
                            seed=seed, backbone_lr_scale=1.0 if scratch else 0.1)
        run_dir = o.out / "segment" / f"{name}_f{fraction:g}_s{seed}"
        res = segment_transfer(backbone, d.images["train"][idx], masks["train"][idx], d.images["val"], masks["val"],
                               d.images["test"], masks["test"], cfg, run_dir, classes=spec.classes,
                               progress=o.progress, desc=f"{name} {percent(fraction)} s{seed}")
        self.runs.append({"protocol": name, "fraction": fraction, "seed": seed, "classes": list(spec.classes),
                          "mask_encoding": spec.encoding, **res})

    def run(self) -> None:
        """Every protocol x fraction x seed, with a progress bar."""
        o = self.opts
        if "segment" in o.protocols:  # cheap checks first: read every mask before any training
            self.masks()
        jobs = [(p, f, s) for s in range(o.seeds) for f in o.fractions for p in o.protocols]
        bar = tqdm(jobs, desc="evaluate", unit="run", disable=not o.progress, file=sys.stderr, dynamic_ncols=True)
        for p, f, s in bar:
            bar.set_postfix_str(f"{p} {percent(f)} seed {s}")
            idx = self.data.subsets[(f, s)]
            if p in ("linear", "knn"):
                run_frozen = self.run_linear if p == "linear" else self.run_knn
                run_frozen(f, s, idx)
                if o.frozen_baseline:
                    run_frozen(f, s, idx, random=True)
            elif p in ("finetune", "segment"):
                run = self.run_finetune if p == "finetune" else self.run_segment
                run(f, s, idx, scratch=False)
                if o.baseline == "scratch":
                    run(f, s, idx, scratch=True)


def summarise_runs(runs: Sequence[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """protocol -> fraction -> metric -> {mean, std, n, values} over seeds."""
    from medssl.evaluate.metrics import aggregate_runs

    out: dict[str, dict[str, dict[str, Any]]] = {}
    for protocol in dict.fromkeys(r["protocol"] for r in runs):
        out[protocol] = {}
        for fraction in sorted({r["fraction"] for r in runs if r["protocol"] == protocol}):
            same = [{k: v for k, v in r.items() if isinstance(v, (int, float)) and k not in ("seed", "fraction")}
                    for r in runs if r["protocol"] == protocol and r["fraction"] == fraction]
            out[protocol][f"{fraction:g}"] = aggregate_runs(same)
    return out


def run_evaluate(opts: EvalOptions) -> dict[str, Any]:
    """Check, load, run every protocol, write metrics.json, results.md, plots and report.html into opts.out.

    Cheap things first: the options, then (for --data) the records, splits, classes and label fractions, then
    the checkpoint, and only then are images decoded and anything trained. Notes on the data are said once here
    (stderr), before any training, and kept for the results."""
    from medssl.evaluate.outputs import write_outputs

    opts.validate()
    t0 = time.perf_counter()
    plan = plan_source(opts, opts.data) if opts.data is not None else None
    pretrained = load_bundle(opts.checkpoint)
    if pretrained.is_classifier:
        raise MedsslError(f"{opts.checkpoint}: is a classifier bundle; evaluate takes a pretraining run or checkpoint")
    opts.out.mkdir(parents=True, exist_ok=True)
    if plan is None:
        source = builtin_data(opts, pretrained.preprocess, pretrained.meta.get("config", {}).get("data"))
        plan = plan_source(opts, source)
    plan.size = pretrained.preprocess.size
    data = decode_data(opts, plan, pretrained.preprocess)
    for note in data.notes:
        tqdm.write(f"note: {note}", file=sys.stderr)
    ev = Evaluation(opts, pretrained, data)
    ev.run()
    summary = summarise_runs(ev.runs)
    metrics = write_outputs(ev, summary, time.perf_counter() - t0)
    metrics["bundles"] = write_bundles(ev)
    return metrics


def write_bundles(ev: Evaluation) -> dict[str, str]:
    """The best classifier of each protocol (on validation) as out/bundles/PROTOCOL.pt; protocol -> path."""
    out = {}
    for protocol, (_, model, meta) in ev.best.items():
        path = ev.opts.out / "bundles" / f"{protocol}.pt"
        save_bundle(path, model, ev.spec, ev.preprocess, {**meta, "trained_on": ev.data.source,
                                                          "pretrained_from": str(ev.opts.checkpoint)})
        out[protocol] = str(path)
    return out

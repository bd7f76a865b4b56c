"""`medssl run CONFIG` (and `medssl demo`, the same on the built-in config): a whole study in stages that skip when
done.

data (synthetic, or a source split by patient) -> pretraining of each image arm (SimCLR, MICLe, MoCo, BYOL, MAE)
and alignment of each image-text arm (ConVIRT, CLIP, GLoRIA, from a pretrained image arm) -> each arm evaluated by
the protocols at every label fraction and seed (and, once, the scratch baseline) -> zero-shot classification and
retrieval per image-text arm -> draft reports of the test studies on one image-text encoder -> `predict` with the
kept classifier -> one report.html (medssl.pipeline_html).

Every stage writes into the run folder and records itself in stages.json with its seconds and a fingerprint of
the settings it ran with. A later run skips a stage whose fingerprint matches, runs one it has not seen (an arm
added to the config) and refuses, naming the stage, to mix a stage run with other settings into the report: `--from
STAGE` reruns that stage and every one after it. A killed stage resumes from its last checkpoint (pretraining,
decoder training).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medssl.errors import MedsslError
from medssl.pipeline_config import Arm, RunConfig, key, to_dict

DONE = "stages.json"
MARKER = "run.json"  # the resolved config of the run folder
KINDS = ("data", "pretrain", "align", "evaluate", "zeroshot", "retrieval", "report", "predict")
# what every pipeline pretraining run sets beside the config's steps, batch and model (a config's `set` wins)
BASE_PRETRAIN = ("data.num_workers=1", "train.log_every=5", "train.checkpoint_every=50", "train.channels_last=true",
                 "optim.warmup_steps=10", "optim.grad_clip=5.0")


def _say(msg: str) -> None:
    print(f"[run] {msg}", flush=True)


@dataclass
class Stage:
    name: str
    kind: str
    key: str
    outputs: tuple[Path, ...]  # removed before a rerun (--from)
    work: Callable[[], None]
    units: dict[str, Any] = field(default_factory=dict)  # what the dry-run's estimate counts (arms' stages)


def _sets(overrides: dict[str, Any], options: set[str] | None) -> list[str]:
    """`key=value` overrides from a config's set: mapping (values as JSON, which YAML reads back); model.options.X
    only where the method has option X (options None: all)."""
    out = []
    for k, v in overrides.items():
        if options is not None and k.startswith("model.options.") and k.split(".", 2)[2] not in options:
            continue
        out.append(f"{k}={json.dumps(v)}")
    return out


class Pipeline:
    """The stages of one run folder under one RunConfig."""

    def __init__(self, cfg: RunConfig, out: Path, progress: bool = True):
        self.cfg, self.out, self.progress = cfg, Path(out), progress
        path = self.out / DONE
        self.done: dict[str, dict[str, Any]] = json.loads(path.read_text()) if path.is_file() else {}

    # ---- where things are
    @property
    def source(self) -> str:
        """What every stage reads: the synthetic (or split) manifest the data stage wrote, or the source itself."""
        written = self.out / "data" / "manifest.csv"
        return str(written) if written.is_file() or self.cfg.synthetic else self.cfg.data.source

    def run_dir(self, arm: Arm) -> Path:
        return self.out / ("align" if self.cfg.is_align(arm) else "pretrain") / arm.name

    def in_run(self, path: str) -> str:
        """A path (as the data source gave it, relative to the working directory) relative to the run folder."""
        return os.path.relpath(Path(path).resolve(), self.out.resolve())

    # ---- configs of the stages (built and checked before any work)
    def pretrain_config(self, arm: Arm) -> Any:
        from medssl.config import load_config
        from medssl.methods import method

        c = self.cfg
        section = c.align if c.is_align(arm) else c.pretrain
        options = {f.name for f in dataclasses.fields(method(arm.method).Options)}
        overrides = [f"method={arm.method}", f"data.source={self.source}", f"data.size={c.data.size}",
                     f"data.batch_size={section.batch}", f"model.backbone={c.model.backbone}",
                     f"model.stem={json.dumps(c.model.stem)}", f"model.width={json.dumps(c.model.width)}",
                     f"train.steps={section.steps}", f"train.seed={c.data.seed}", f"data.skip_bad={json.dumps(c.data.skip_bad)}",
                     *BASE_PRETRAIN, *_sets(section.set, options), *_sets(arm.set, None)]
        try:
            return load_config(None, overrides)
        except MedsslError as e:
            raise MedsslError(f"{arm.name}: {e}") from None

    def report_config(self, method: str) -> Any:
        from medssl.report.config import load_report_config

        c = self.cfg
        sets = [f"method={method}", f"encoder.run={self.run_dir(c.arm(c.report_encoder))}",
                f"data.source={self.source}", f"data.size={c.data.size}", f"evaluate.n_boot={c.evaluate.n_boot}",
                "evaluate.gallery=6", f"train.seed={c.data.seed}", f"train.steps={c.report.steps}",
                f"data.skip_bad={json.dumps(c.data.skip_bad)}", *_sets(c.report.set, None)]
        try:
            return load_report_config(None, sets)
        except MedsslError as e:
            raise MedsslError(f"report.methods {method}: {e}") from None

    def check(self) -> None:
        """Every arm's and report method's own config, checked before the first stage runs."""
        for arm in self.cfg.arms:
            self.pretrain_config(arm)
        if self.cfg.report_encoder:
            for m in self.cfg.report.methods:
                self.report_config(m)

    # ---- the plan
    def stages(self) -> list[Stage]:
        c, out = self.cfg, self.out
        data_key = key(c.data)
        stages = [Stage("data", "data", data_key, (out / "data", out / "data_summary.json"), self.data)]
        keys: dict[str, str] = {}
        for arm in c.pretrain.methods:
            keys[arm.name] = key(data_key, c.model, c.pretrain.steps, c.pretrain.batch, c.pretrain.set, arm)
            stages.append(Stage(f"pretrain_{arm.name}", "pretrain", keys[arm.name], (self.run_dir(arm),),
                                lambda a=arm: self.pretrain(a), {"arm": arm, "steps": c.pretrain.steps}))
        for arm in c.align.methods:
            keys[arm.name] = key(data_key, c.model, c.align.steps, c.align.batch, c.align.set, arm,
                                 keys.get(c.align.init or ""))
            stages.append(Stage(f"align_{arm.name}", "align", keys[arm.name], (self.run_dir(arm),),
                                lambda a=arm: self.pretrain(a), {"arm": arm, "steps": c.align.steps}))
        e = c.evaluate
        settings = {k: v for k, v in to_dict(e).items() if k != "reference"}
        for i, arm in enumerate(c.arms):
            baseline = e.baseline if i == 0 else None
            stages.append(Stage(f"evaluate_{arm.name}", "evaluate", key(keys[arm.name], settings, baseline),
                                (out / "evaluate" / arm.name,), lambda a=arm, b=baseline: self.evaluate(a, b),
                                {"arm": arm, "baseline": baseline is not None}))
        for arm in c.align.methods:
            stages.append(Stage(f"zeroshot_{arm.name}", "zeroshot", key(keys[arm.name], c.zeroshot.classes, e.n_boot),
                                (out / "zeroshot" / arm.name,), lambda a=arm: self.zeroshot(a)))
        for arm in c.align.methods:
            stages.append(Stage(f"retrieval_{arm.name}", "retrieval", key(keys[arm.name], c.zeroshot.queries),
                                (self.run_dir(arm) / "retrieval", out / "retrieval" / arm.name),
                                lambda a=arm: self.retrieval(a)))
        if c.report_encoder:
            stages.append(Stage("report", "report", key(keys[c.report_encoder], c.report, e.n_boot),
                                (out / "report", out / "report_generation.json"), self.report))
        if c.predict_images:
            first = next(s.key for s in stages if s.name == f"evaluate_{c.arms[0].name}")
            stages.append(Stage("predict", "predict", key(first, c.predict_images),
                                (out / "predictions.json",), self.predict))
        return stages

    def status(self, stages: list[Stage], rerun: set[str]) -> dict[str, str]:
        """Per stage: run (never finished), rerun (--from), done (skipped) or changed (finished with other settings)."""
        out = {}
        for s in stages:
            rec = self.done.get(s.name)
            out[s.name] = ("rerun" if rec else "run") if s.name in rerun or not rec else (
                "done" if rec.get("key") == s.key else "changed")
        return out

    def run(self, stages: list[Stage], rerun: set[str]) -> None:
        for s in stages:
            rec = self.done.get(s.name)
            if rec and s.name not in rerun and rec.get("key") == s.key:
                _say(f"{s.name}: done in an earlier run ({rec['seconds']:.0f} s), skipped")
                continue
            if s.name in rerun:
                for path in s.outputs:  # a clean start: nothing of the earlier run is mixed in or resumed
                    if path.is_dir():
                        shutil.rmtree(path)
                    elif path.exists():
                        path.unlink()
                self.done.pop(s.name, None)
                self._save()
            _say(f"{s.name} ...")
            t0 = time.perf_counter()
            s.work()
            seconds = round(time.perf_counter() - t0, 1)
            self.done[s.name] = {"seconds": seconds, "key": s.key}
            self._save()
            _say(f"{s.name}: {seconds:.0f} s")

    def _save(self) -> None:
        path = self.out / DONE
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(self.done, indent=2))
        os.replace(tmp, path)

    # ---- the stages' work
    def data(self) -> None:
        """The built-in synthetic set, or the source's records (split by patient, into data/manifest.csv, when it
        has no splits); summary, sample montage and label balance."""
        from medssl.data import plots
        from medssl.data.records import read_manifest, write_manifest
        from medssl.data.sources import load_source
        from medssl.data.splits import assign_splits
        from medssl.data.summary import format_summary, summarize
        from medssl.synthetic.builtin import builtin_source, describe

        c = self.cfg
        if c.synthetic:
            manifest = builtin_source(self.out / "data", size=c.data.size, patients=c.data.patients, seed=c.data.seed,
                                      progress=self.progress)
            records, name = read_manifest(manifest), describe(c.data.patients, c.data.size, c.data.seed)
        else:
            records, bad = load_source(c.data.source, skip_bad=c.data.skip_bad, progress=self.progress)
            name = c.data.name or c.data.source
            if not all(r.split for r in records):
                records = assign_splits(records, (0.7, 0.1, 0.2), c.data.seed)
                write_manifest(records, self.out / "data" / "manifest.csv")
                _say(f"{c.data.source}: no splits of its own; split 70/10/20 by patient (seed {c.data.seed}) into "
                     f"{self.out / 'data' / 'manifest.csv'}")
            for path, error in bad:
                _say(f"skipped {path}: {error}")
        if (c.align.methods or c.report_encoder) and not any(r.report.strip() for r in records):
            raise MedsslError(f"{c.data.source}: no record has a report, but align.methods / report.methods need "
                              "image-report pairs; empty them in the config for an image-only study")
        summary = summarize(records, progress=False)
        print(format_summary(summary, name))
        (self.out / "plots").mkdir(parents=True, exist_ok=True)
        plots.montage(records, self.out / "plots" / "samples.png", n=16)
        plots.label_balance(summary, self.out / "plots" / "label_balance.png")
        (self.out / "data_summary.json").write_text(json.dumps({**summary, "name": name}, indent=2, default=str))

    def pretrain(self, arm: Arm) -> None:
        """Pretraining on the train split (resumed when a killed run left a checkpoint): self-supervised on the
        images, or aligned with the reports (from the align.init arm's encoder)."""
        from medssl.checkpoint import last_checkpoint
        from medssl.data.records import Record
        from medssl.pretrain import image_text, load_records, run_pretrain

        cfg, run = self.pretrain_config(arm), self.run_dir(arm)
        records: list[Record] = load_records(cfg, run, progress=False)
        units = len({r.study_id for r in records}) if image_text(cfg) else len(records)
        if cfg.data.batch_size > units:  # a small set holds fewer training images (studies) than one batch
            cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, batch_size=units))
        resume = last_checkpoint(run).is_file()
        init = self.cfg.align.init if self.cfg.is_align(arm) else None
        # ConVIRT starts from the SimCLR encoder (ConVIRT's own recipe starts from ImageNet weights): from random
        # weights, 150 steps on 241 templated reports leave its loss at log(batch) and zero-shot at chance
        init_dir = str(self.run_dir(self.cfg.arm(init))) if init and not resume else None
        run_pretrain(cfg, run, resume=resume, init=init_dir, progress=self.progress)

    def evaluate(self, arm: Arm, baseline: str | None) -> None:
        """The protocols (and, once, the scratch baseline) at every fraction and seed."""
        from medssl.evaluate.run import EvalOptions, run_evaluate

        e = self.cfg.evaluate
        out = self.out / "evaluate" / arm.name
        if out.exists() and not (out / "metrics.json").is_file():
            shutil.rmtree(out)  # a kill mid-evaluation: it has no checkpoints, so it starts again
        run_evaluate(EvalOptions(checkpoint=str(self.run_dir(arm)), data=self.source, out=out,
                                 protocols=tuple(e.protocols), fractions=tuple(e.fractions), seeds=e.seeds,
                                 baseline=baseline, finetune_steps=e.finetune_steps, finetune_batch=e.finetune_batch,
                                 n_boot=e.n_boot, skip_bad=self.cfg.data.skip_bad, progress=self.progress))

    def zeroshot(self, arm: Arm) -> None:
        """Zero-shot classification of the test split: prompts per finding, no labels."""
        from medssl.zeroshot_run import run_zeroshot

        run_zeroshot(self.run_dir(arm), data=self.source, out=self.out / "zeroshot" / arm.name,
                     classes=self.cfg.zeroshot.classes, n_boot=self.cfg.evaluate.n_boot,
                     skip_bad=self.cfg.data.skip_bad, progress=self.progress)

    def retrieval(self, arm: Arm) -> None:
        """Retrieval scores (test queries against a train+val gallery, own patient left out) and a few examples:
        images found by words, and images and report sentences found by a test image of another patient."""
        from medssl.data.sources import load_source
        from medssl.retrieve_run import patient_of, run_evaluate_retrieval, run_retrieve

        run, data = self.run_dir(arm), self.source
        run_evaluate_retrieval(run, data=data, skip_bad=self.cfg.data.skip_bad, progress=self.progress)
        test = [r for r in load_source(data, progress=False)[0] if r.split == "test"]
        examples: list[dict[str, Any]] = [
            {"query": {"text": q}, "images": run_retrieve(run, text=q, k=4, data=data, progress=False)["images"]}
            for q in self.cfg.zeroshot.queries]
        query = next((r for r in test if r.labels and r.view.upper() != "LATERAL"), test[0] if test else None)
        if query is not None and Path(query.path).is_file():
            found = run_retrieve(run, image=str(query.path), k=40, data=data, progress=False)

            def other(hits: list[dict[str, Any]]) -> list[dict[str, Any]]:  # the gallery holds the query's patient
                return [h for h in hits if h["patient"] != patient_of(query)]

            sentences = {h["sentence"]: h for h in reversed(other(found["sentences"]))}  # one row per distinct text
            examples.append({"query": {"image": str(query.path), "labels": sorted(query.labels),
                                       "patient": patient_of(query)},
                             "images": other(found["images"])[:4],
                             "sentences": sorted(sentences.values(), key=lambda h: h["rank"])[:3]})
        for example in examples:  # paths relative to the run folder: the page is rewritten from any directory
            if "image" in example["query"]:
                example["query"]["image"] = self.in_run(example["query"]["image"])
            for hit in example["images"]:
                hit["path"] = self.in_run(hit["path"])
        folder = self.out / "retrieval" / arm.name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "examples.json").write_text(json.dumps(examples, indent=2))

    def report(self) -> None:
        """Draft reports of the test studies on the report encoder: each method (decoders on its frozen, cached
        maps; retrieval-based reports with k chosen on validation) beside the two baselines; the scores of each
        in report_generation.json. A killed decoder training resumes from its checkpoint."""
        import contextlib

        from medssl.checkpoint import last_checkpoint
        from medssl.report.baselines import baseline_rows, method_row
        from medssl.report.metrics import MeteorScorer
        from medssl.report.train import run_report_train

        from medssl.pipeline_html import report_label

        align = self.run_dir(self.cfg.arm(self.cfg.report_encoder))
        rows = []
        with contextlib.ExitStack() as stack:
            meteor = stack.enter_context(MeteorScorer()) if shutil.which("java") else True  # one java start
            for method in self.cfg.report.methods:
                folder = self.out / "report" / method
                cfg = self.report_config(method)
                if (folder / "metrics.json").is_file():     # finished before a kill of this stage
                    m = json.loads((folder / "metrics.json").read_text())
                else:
                    resume = last_checkpoint(folder).is_file()
                    if not resume and folder.exists():
                        shutil.rmtree(folder)                # a start killed before its first checkpoint
                    m = run_report_train(cfg, folder, resume=resume, progress=self.progress, meteor=meteor)
                rows.append(method_row(report_label(method, self.cfg), m))
            rows += baseline_rows(align, Path(self.source), cfg.data.views, self.cfg.evaluate.n_boot, meteor)
        (self.out / "report_generation.json").write_text(json.dumps({"rows": rows}, indent=2, default=float))

    def predict(self) -> None:
        """The kept classifier of the first arm on a few test images: what `medssl predict` prints."""
        from medssl.data.sources import load_source
        from medssl.inference import load_bundle, predict
        from medssl.pipeline_html import kept_bundle

        bundle_path = kept_bundle(self.out, self.cfg)
        if bundle_path is None:
            raise MedsslError(f"{self.out / 'evaluate'}: no kept classifier to predict with")
        test = [r for r in load_source(self.source, progress=False)[0] if r.split == "test"][: self.cfg.predict_images]
        bundle = load_bundle(bundle_path)
        rows = [{**r, "truth": sorted(rec.labels)} for r, rec in zip(predict(bundle, test), test)]
        (self.out / "predictions.json").write_text(json.dumps(rows, indent=2))


def rerun_from(stages: list[Stage], start: str | None) -> set[str]:
    """The stages `--from START` reruns: the first whose name or kind is START, and every one after it."""
    if start is None:
        return set()
    names = [s.name for s in stages]
    first = next((i for i, s in enumerate(stages) if start in (s.name, s.kind)), None)
    if first is None:
        raise MedsslError(f"--from {start}: no such stage; stages: {', '.join(names)} (or a kind: "
                          f"{', '.join(k for k in KINDS if any(s.kind == k for s in stages))})")
    return set(names[first:])


def open_run(cfg: RunConfig, out: Path) -> None:
    """The run folder for cfg: new, or one of this medssl's runs (MARKER); a foreign non-empty folder is refused."""
    out = Path(out)
    marker = out / MARKER
    if out.exists() and any(out.iterdir()) and not marker.is_file():
        old = " (a demo run of an earlier medssl: start it again in a new folder)" if (out / "demo.json").is_file() \
            else ""
        raise MedsslError(f"{out}: folder exists, is not empty and is not a medssl run{old}; choose another --out")
    out.mkdir(parents=True, exist_ok=True)


def refuse_changed(status: dict[str, str], out: Path) -> None:
    changed = [n for n, s in status.items() if s == "changed"]
    if changed:
        raise MedsslError(f"{out}: holds a run whose stage {changed[0]} ran with other settings"
                          + (f" ({len(changed)} stages: {', '.join(changed)})" if len(changed) > 1 else "")
                          + f"; rerun it with --from {changed[0]} or choose another --out")


def run_pipeline(cfg: RunConfig, out: Path, start: str | None = None, progress: bool = True,
                 config_path: str | None = None) -> dict[str, Any]:
    """Run (or finish) the study in `out`; write metrics.json and report.html there; return the metrics."""
    out = Path(out)
    pipe = Pipeline(cfg, out, progress)
    pipe.check()                         # every stage's own config, before the folder is touched
    open_run(cfg, out)
    stages = pipe.stages()
    rerun = rerun_from(stages, start)
    refuse_changed(pipe.status(stages, rerun), out)
    (out / MARKER).write_text(json.dumps({"config": to_dict(cfg), "config_file": config_path}, indent=2))
    t0 = time.perf_counter()
    pipe.run(stages, rerun)
    from medssl.pipeline_html import write_run_report

    done = {s.name: pipe.done[s.name]["seconds"] for s in stages}
    metrics = write_run_report(out, cfg, done, time.perf_counter() - t0)
    _say(f"wrote {out / 'report.html'} and {out / 'metrics.json'}; stages took {sum(done.values()):.0f} s "
         f"in all ({metrics['seconds_this_run']:.0f} s in this run)")
    return metrics

"""`medssl demo`: the SSCMIRG run on the built-in synthetic chest radiographs, in stages that skip when done.

synthesise + split -> SimCLR and MICLe pretraining on the images, ConVIRT alignment on the images and their
reports -> linear probe and LP-FT fine-tuning of each at 1 / 10 / 100 % of the labels against a scratch baseline,
over seeds -> zero-shot classification and retrieval with the ConVIRT run -> draft reports of the test studies
(attention LSTM on the frozen ConVIRT encoder, retrieval-based reports, two baselines) -> `predict` with the kept
classifier on test images -> one report.html. Every stage writes into the run folder and is skipped when its
outputs exist there, so a killed demo goes on where it stopped (a killed pretraining or decoder training resumes
from its last checkpoint).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from medssl.errors import MedsslError

IMAGE_METHODS = ("simclr", "micle")  # `medssl pretrain` arms (names of medssl.methods.METHODS)
TEXT_METHOD = "convirt"  # the `medssl align` arm: images and their reports
INIT_FROM = "simclr"  # the image encoder the align arm starts from
METHODS = (*IMAGE_METHODS, TEXT_METHOD)
DONE = "stages.json"
TEXT_QUERIES = ("pleural effusion", "cardiomegaly")  # retrieval examples by words (synthetic findings)
REPORT_METHODS = ("lstm", "retrieval")  # report generation arms, on the ConVIRT encoder
REPORT_LABELS = {"lstm": "attention LSTM (ConVIRT encoder, frozen)", "retrieval": "retrieval-based (CXR-RePaiR)"}


@dataclass(frozen=True)
class DemoSettings:
    """Sizes of the demo, chosen so that it finishes in minutes on a 2-core CPU and still shows the effect."""

    patients: int = 200
    size: int = 32
    seed: int = 0
    pretrain_steps: int = 150
    align_steps: int = 100  # ConVIRT from the SimCLR encoder: its zero-shot AUC was 0.69 after 60 steps already
    pretrain_batch: int = 64
    stem: str = "small"
    width: int = 32  # ResNet-18 at half the papers' width: a quarter of the compute, for a 2-core CPU
    finetune_steps: int = 30
    report_steps: int = 300  # attention-LSTM decoder steps on the frozen ConVIRT encoder's cached feature maps
    fractions: tuple[float, ...] = (0.01, 0.1, 1.0)
    seeds: int = 3
    n_boot: int = 200
    predict_images: int = 6

    def validate(self) -> "DemoSettings":
        """Raise MedsslError naming a bad value."""
        for name in ("patients", "size", "pretrain_steps", "align_steps", "pretrain_batch", "width", "finetune_steps",
                     "report_steps", "seeds", "n_boot"):
            if getattr(self, name) < 1:
                raise MedsslError(f"demo: {name}={getattr(self, name)} must be positive")
        if not self.fractions or any(not 0 < f <= 1 for f in self.fractions):
            raise MedsslError(f"demo: fractions={list(self.fractions)}: each must be in (0, 1]")
        if self.patients < 20:
            raise MedsslError(f"demo: patients={self.patients} is too few for 1 % labels and three splits (20+)")
        return self


def _say(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


class Demo:
    """The stages of one demo run folder; `stages.json` records each finished stage and its seconds."""

    def __init__(self, out: Path, settings: DemoSettings, progress: bool):
        self.out, self.s, self.progress = Path(out), settings, progress
        self.manifest = self.out / "data" / "manifest.csv"
        path = self.out / DONE
        self.done: dict[str, float] = json.loads(path.read_text()) if path.is_file() else {}

    def stage(self, name: str, work: Callable[[], None]) -> None:
        """Run a stage unless it finished before; record it when it finishes."""
        if name in self.done:
            _say(f"{name}: done in an earlier run ({self.done[name]:.0f} s), skipped")
            return
        t0 = time.perf_counter()
        work()
        self.done[name] = round(time.perf_counter() - t0, 1)
        (self.out / DONE).write_text(json.dumps(self.done, indent=2))
        _say(f"{name}: {self.done[name]:.0f} s")

    def data(self) -> None:
        """The built-in synthetic set with patient-level splits; sample montage and label balance."""
        from medssl.data import plots
        from medssl.data.records import read_manifest
        from medssl.data.summary import format_summary, summarize
        from medssl.synthetic.builtin import builtin_source

        builtin_source(self.manifest.parent, size=self.s.size, patients=self.s.patients, seed=self.s.seed,
                       progress=self.progress)
        records = read_manifest(self.manifest)
        summary = summarize(records, progress=False)
        print(format_summary(summary, "synthetic chest radiographs"))
        (self.out / "plots").mkdir(parents=True, exist_ok=True)
        plots.montage(records, self.out / "plots" / "samples.png", n=16)
        plots.label_balance(summary, self.out / "plots" / "label_balance.png")
        (self.out / "data_summary.json").write_text(json.dumps(summary, indent=2, default=str))

    def run_dir(self, method: str) -> Path:
        """Where a method's pretraining run lives: align/<method> for image-text methods, else pretrain/<method>."""
        return self.out / ("align" if method == TEXT_METHOD else "pretrain") / method

    def pretrain(self, method: str) -> None:
        """Pretraining on the train split (resumed when a killed run left a checkpoint): self-supervised on the
        images, or aligned with the reports (ConVIRT from the SimCLR encoder, the whole report as the text view)."""
        from medssl.checkpoint import last_checkpoint
        from medssl.config import load_config
        from medssl.data.records import read_manifest
        from medssl.pretrain import run_pretrain

        s, run = self.s, self.run_dir(method)
        records = [r for r in read_manifest(self.manifest) if r.split == "train"]
        units = len({r.study_id for r in records}) if method == TEXT_METHOD else len(records)
        batch = min(s.pretrain_batch, units)  # a small demo holds fewer training images (studies) than one batch
        overrides = [f"method={method}", f"data.source={self.manifest}", f"data.size={s.size}",
                     f"data.batch_size={batch}", "data.num_workers=1", f"model.stem={s.stem}",
                     f"model.width={s.width}", "train.log_every=5",
                     f"train.steps={s.align_steps if method == TEXT_METHOD else s.pretrain_steps}",
                     "train.checkpoint_every=50", "train.channels_last=true", "optim.warmup_steps=10",
                     "optim.grad_clip=5.0", f"train.seed={s.seed}", "model.options.proj_dim=64"]
        if method == TEXT_METHOD:
            # the whole report: a synthetic report's single sentence is mostly a negation ("No pneumothorax.")
            overrides += ["model.options.context=64", "optim.lr=0.0005", "optim.weight_decay=0.0001",
                          "data.report_sentences=0"]
        cfg = load_config(None, overrides)
        resume = last_checkpoint(run).is_file()
        # ConVIRT starts from the SimCLR encoder (ConVIRT's own recipe starts from ImageNet weights): from random
        # weights, 150 steps on 241 templated reports leave its loss at log(batch) and zero-shot at chance
        init = str(self.run_dir(INIT_FROM)) if method == TEXT_METHOD and not resume else None
        run_pretrain(cfg, run, resume=resume, init=init, progress=self.progress)

    def evaluate(self, method: str, baseline: bool) -> None:
        """Linear probe and LP-FT fine-tuning (and, once, the scratch baseline) at every fraction and seed."""
        from medssl.evaluate.run import EvalOptions, run_evaluate

        s = self.s
        run_evaluate(EvalOptions(checkpoint=str(self.run_dir(method)), data=str(self.manifest),
                                 out=self.out / "evaluate" / method, protocols=("linear", "finetune"),
                                 fractions=s.fractions, seeds=s.seeds, baseline="scratch" if baseline else None,
                                 finetune_steps=s.finetune_steps, finetune_batch=32, n_boot=s.n_boot,
                                 progress=self.progress))

    def zeroshot(self) -> None:
        """Zero-shot classification of the test split with the ConVIRT run: prompts per finding, no labels."""
        from medssl.zeroshot_run import run_zeroshot

        run_zeroshot(self.run_dir(TEXT_METHOD), data=str(self.manifest), out=self.out / "zeroshot",
                     n_boot=self.s.n_boot, progress=self.progress)

    def retrieval(self) -> None:
        """Retrieval scores (test queries against a train+val gallery, own patient left out) and a few examples:
        images found by words, and images and report sentences found by a test image of another patient."""
        from medssl.data.records import read_manifest
        from medssl.retrieve_run import patient_of, run_evaluate_retrieval, run_retrieve

        run, data = self.run_dir(TEXT_METHOD), str(self.manifest)
        run_evaluate_retrieval(run, data=data, progress=self.progress)
        test = [r for r in read_manifest(self.manifest) if r.split == "test"]
        query = next((r for r in test if r.labels and r.view.upper() != "LATERAL"), test[0])
        examples = [{"query": {"text": q}, "images": run_retrieve(run, text=q, k=4, data=data,
                                                                 progress=False)["images"]} for q in TEXT_QUERIES]
        found = run_retrieve(run, image=str(query.path), k=40, data=data, progress=False)

        def other(hits: list[dict[str, Any]]) -> list[dict[str, Any]]:  # the gallery holds the query's own patient
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
        (self.out / "retrieval_examples.json").write_text(json.dumps(examples, indent=2))

    def in_run(self, path: str) -> str:
        """A path (as the data source gave it, relative to the working directory) relative to the run folder."""
        return os.path.relpath(Path(path).resolve(), self.out.resolve())

    def report(self) -> None:
        """Draft reports of the test studies on the ConVIRT encoder: the attention LSTM (frozen encoder, cached
        maps) and retrieval-based reports (CXR-RePaiR, k chosen on validation), beside the two baselines; the
        scores of each in report_generation.json. A killed decoder training resumes from its checkpoint."""
        import contextlib
        import shutil

        from medssl.checkpoint import last_checkpoint
        from medssl.report.baselines import baseline_rows, method_row
        from medssl.report.config import load_report_config
        from medssl.report.metrics import MeteorScorer
        from medssl.report.train import run_report_train

        s, align = self.s, self.run_dir(TEXT_METHOD)
        rows = []
        with contextlib.ExitStack() as stack:
            meteor = stack.enter_context(MeteorScorer()) if shutil.which("java") else True  # one java start
            for method in REPORT_METHODS:
                folder = self.out / "report" / method
                sets = [f"method={method}", f"encoder.run={align}", f"data.source={self.manifest}",
                        f"evaluate.n_boot={s.n_boot}", "evaluate.gallery=6", f"train.seed={s.seed}"]
                if method != "retrieval":  # the 32 px demo reports fit 80 tokens; a wider decoder than 128 is idle
                    sets += [f"train.steps={s.report_steps}", "decoder.dim=128", "decoder.context=80",
                             "optim.lr=0.002", "train.val_every=50"]
                if (folder / "metrics.json").is_file():     # finished before a kill of this stage
                    m = json.loads((folder / "metrics.json").read_text())
                else:
                    resume = last_checkpoint(folder).is_file()
                    if not resume and folder.exists():
                        shutil.rmtree(folder)                # a start killed before its first checkpoint
                    m = run_report_train(load_report_config(None, sets), folder, resume=resume,
                                         progress=self.progress, meteor=meteor)
                rows.append(method_row(REPORT_LABELS[method], m))
            rows += baseline_rows(align, self.manifest, 2, s.n_boot, meteor)
        (self.out / "report_generation.json").write_text(json.dumps({"rows": rows}, indent=2, default=float))

    def predict(self) -> None:
        """The kept fine-tuned classifier on a few test images: what `medssl predict` prints."""
        from medssl.data.records import read_manifest
        from medssl.inference import load_bundle, predict

        test = [r for r in read_manifest(self.manifest) if r.split == "test"][: self.s.predict_images]
        bundle = load_bundle(self.out / "evaluate" / IMAGE_METHODS[0] / "bundles" / "finetune.pt")
        rows = [{**r, "truth": sorted(rec.labels)} for r, rec in zip(predict(bundle, test), test)]
        (self.out / "predictions.json").write_text(json.dumps(rows, indent=2))


def run_demo(out: Path, settings: DemoSettings | None = None, progress: bool = True) -> dict[str, Any]:
    """Run (or finish) the demo in `out`; write metrics.json and report.html there; return the metrics."""
    s = (settings or DemoSettings()).validate()
    out = Path(out)
    marker = out / "demo.json"
    if out.exists() and any(out.iterdir()) and not marker.is_file():
        raise MedsslError(f"{out}: folder exists, is not empty and is not a demo run; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    if marker.is_file() and json.loads(marker.read_text()) != _plain(s):
        raise MedsslError(f"{out}: holds a demo run with other settings; choose another --out or delete it")
    marker.write_text(json.dumps(_plain(s), indent=2))
    t0 = time.perf_counter()
    demo = Demo(out, s, progress)
    demo.stage("data", demo.data)
    for m in METHODS:
        demo.stage(f"{'align' if m == TEXT_METHOD else 'pretrain'}_{m}", lambda m=m: demo.pretrain(m))
    for i, m in enumerate(METHODS):
        demo.stage(f"evaluate_{m}", lambda m=m, i=i: demo.evaluate(m, baseline=i == 0))
    demo.stage("zeroshot", demo.zeroshot)
    demo.stage("retrieval", demo.retrieval)
    demo.stage("report", demo.report)
    demo.stage("predict", demo.predict)
    from medssl.pipeline_html import write_demo_report

    metrics = write_demo_report(out, s, demo.done, time.perf_counter() - t0)
    _say(f"wrote {out / 'report.html'} and {out / 'metrics.json'}; stages took {sum(demo.done.values()):.0f} s "
         f"in all ({metrics['seconds_this_run']:.0f} s in this run)")
    return metrics


def _plain(s: DemoSettings) -> dict[str, Any]:
    return json.loads(json.dumps(asdict(s)))

"""`medssl run --dry-run`: the stages a config would run or skip, and their estimated time on this machine.

Nothing is written to the run folder. The estimate comes from measured rates, probed in seconds: each arm's own
training step (its method, batch and image size, on random inputs: the fastest of three steps after a warm-up), the
backbone's forward and forward+backward per image (evaluation, fine-tuning, feature caches), and reading the data
(synthesising a few patients, or decoding the first images of the source). Counts come from the config and the
source (images, studies, split sizes). Fixed start-up costs per stage and the report decoders' step cost relative
to the backbone's were calibrated once against a full demo run on a 2-core CPU (see CALIBRATION); expect the
estimate within about a third of the real time.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medssl.errors import MedsslError
from medssl.pipeline_config import Arm, RunConfig

# Calibrated against `medssl run configs/demo.yaml` on a 2-core Xeon (see the module docstring): seconds of fixed
# work per stage (imports, model building, plots, checkpoints, t-SNE), and a report decoder's training step in
# units of one backbone forward+backward image (batch 32, cached maps: no encoder in the step).
CALIBRATION = {"start": {"data": 1.0, "pretrain": 2.0, "align": 2.0, "evaluate": 6.0, "zeroshot": 1.0,
                         "retrieval": 2.0, "report": 5.0, "predict": 1.0},
               # per label fraction x seed run: each protocol's fit, scoring and bootstrap CIs; the scratch run's
               "run_protocol": 0.3, "run_scratch": 0.1,
               "decoder_step_images": {"lstm": 3.3, "transformer": 4.2}, "generate_study_images": 3.0,
               "report_method": 5.0}  # scoring a report method on val and test (pycocoevalcap, labeller, CIs)


@dataclass
class Rates:
    """Seconds per unit on this machine."""

    step: dict[str, float] = field(default_factory=dict)  # per training step of each arm
    train_image: float = 0.0  # backbone forward + backward, per image
    infer_image: float = 0.0  # backbone forward in eval mode, per image
    read_image: float = 0.0  # synthesis or decoding, per image
    images_per_patient: float = 0.0  # synthetic data only
    seconds: float = 0.0  # the probe's own time


@dataclass
class Counts:
    images: int
    train_images: int
    test_images: int
    studies: int
    described: str


def _time(fn: Any, reps: int = 3) -> float:
    """The fastest of `reps` calls of fn() after one warm-up call, in seconds (the least disturbed by other work)."""
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def _fake_batch(method: Any, batch: int, cfg: Any) -> dict[str, Any]:
    """Random inputs of the shape a method's BatchSpec declares."""
    import torch

    spec, s, c = method.batch, cfg.data.size, cfg.data.channels
    out: dict[str, Any] = {v: torch.rand(batch, c, s, s) for v in spec.views}
    out["index"] = torch.arange(batch)
    if spec.partner:
        out["same_image"] = torch.zeros(batch, dtype=torch.bool)
    if spec.report:
        options = cfg.model.options
        out["ids"] = torch.randint(5, max(6, int(getattr(options, "vocab_size", 1000))), (batch, options.context))
        out["mask"] = torch.ones(batch, options.context, dtype=torch.long)
        out["findings"] = torch.zeros(batch, 6)
        out["study"] = torch.arange(batch)
    return out


def _step_seconds(pcfg: Any, batch: int) -> float:
    """One optimiser step of the arm's method on random inputs."""
    import torch

    from medssl.methods import build_model, method

    torch.manual_seed(0)
    model = build_model(pcfg.model_spec())
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    data = _fake_batch(method(pcfg.method), batch, pcfg)

    def step() -> None:
        loss = model(data)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if hasattr(model, "on_step"):
            model.on_step(0, 1)

    return _time(step)


def _backbone_seconds(pcfg: Any, batch: int) -> tuple[float, float]:
    """(forward+backward, forward in eval mode) seconds per image of the bare backbone."""
    import torch

    from medssl.models.factory import build_backbone

    net = build_backbone(dataclasses.replace(pcfg.model_spec(), method=None, options=None))
    x = torch.rand(batch, pcfg.data.channels, pcfg.data.size, pcfg.data.size)

    def train() -> None:
        net.train()
        net(x).sum().backward()

    def infer() -> None:
        net.eval()
        with torch.no_grad():
            net(x)

    return _time(train, reps=5) / batch, _time(infer, reps=5) / batch  # small and quick: more reps, less noise


def _counts(cfg: RunConfig, records: list[Any] | None, images_per_patient: float) -> Counts:
    if records is None:  # synthetic: from the probe's few patients and the built-in 70/10/20 split
        n = round(cfg.data.patients * images_per_patient)
        studies = round(n / 2)  # frontal + lateral
        return Counts(n, round(0.7 * n), round(0.2 * n), studies,
                      f"{cfg.data.patients} synthetic patients (about {n} images) at {cfg.data.size} px")
    splits = [r.split for r in records]
    has = all(splits)
    n_train = sum(s == "train" for s in splits) if has else round(0.7 * len(records))
    studies = len({(r.patient_id, r.study_id) for r in records})
    test = sum(s == "test" for s in splits) if has else round(0.2 * len(records))
    return Counts(len(records), n_train, test, studies,
                  f"{len(records)} images of {len({r.patient_id for r in records})} patients"
                  + ("" if has else " (no splits: 70/10/20 by patient)") + f" at {cfg.data.size} px")


def probe(cfg: RunConfig, pipe: Any, progress: bool) -> tuple[Rates, list[Any] | None]:
    """Measured rates on this machine (and the source's records, None for synthetic data)."""
    from medssl.data.sources import load_source, read_record_image

    t0 = time.perf_counter()
    rates = Rates()
    records = None
    if cfg.synthetic:
        from medssl.data.records import read_manifest
        from medssl.synthetic.builtin import builtin_source

        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            n = 4
            made = read_manifest(builtin_source(Path(tmp), size=cfg.data.size, patients=n, seed=cfg.data.seed,
                                                progress=False))
            rates.read_image = (time.perf_counter() - start) / max(1, len(made))
            rates.images_per_patient = len(made) / n
    else:
        records, _ = load_source(cfg.data.source, skip_bad=cfg.data.skip_bad, progress=progress)
        if not records:
            raise MedsslError(f"{cfg.data.source}: holds no images")
        sample = records[: min(16, len(records))]
        start = time.perf_counter()
        for r in sample:
            read_record_image(r)
        rates.read_image = (time.perf_counter() - start) / len(sample)
    for arm in cfg.arms:
        pcfg = pipe.pretrain_config(arm)
        rates.step[arm.name] = _step_seconds(pcfg, pcfg.data.batch_size)
    first = pipe.pretrain_config(cfg.arms[0])
    rates.train_image, rates.infer_image = _backbone_seconds(first, cfg.evaluate.finetune_batch)
    rates.seconds = time.perf_counter() - t0
    return rates, records


def estimate(stage: Any, cfg: RunConfig, rates: Rates, n: Counts) -> tuple[float, str]:
    """(seconds, how) of one stage."""
    start = CALIBRATION["start"][stage.kind]
    read_all = n.images * rates.read_image
    e = cfg.evaluate
    if stage.kind == "data":
        return start + read_all, n.described
    if stage.kind in ("pretrain", "align"):
        arm: Arm = stage.units["arm"]
        steps = stage.units["steps"]
        step = rates.step[arm.name]
        return (start + read_all + steps * step,
                f"{steps} steps x {step:.2f} s ({arm.method}, batch "
                f"{(cfg.align if stage.kind == 'align' else cfg.pretrain).batch}, measured)")
    if stage.kind == "evaluate":
        runs = len(e.fractions) * e.seeds
        frozen = n.images * rates.infer_image if {"linear", "knn"} & set(e.protocols) else 0.0
        per_ft = e.finetune_steps * e.finetune_batch * rates.train_image + 2 * (n.images - n.train_images) \
            * rates.infer_image
        ft = runs * per_ft * (("finetune" in e.protocols) + stage.units["baseline"])
        ft += runs * (len(e.protocols) * CALIBRATION["run_protocol"] + stage.units["baseline"]
                      * CALIBRATION["run_scratch"])
        how = f"{runs} fraction x seed runs" + (f", fine-tuning {e.finetune_steps} steps each" if "finetune" in
                                                 e.protocols else "") + (" + scratch" if stage.units["baseline"] else "")
        return start + read_all + frozen + ft, how
    if stage.kind == "zeroshot":
        return start + n.test_images * (rates.read_image + rates.infer_image), f"{n.test_images} test images"
    if stage.kind == "retrieval":
        return start + read_all + 2 * n.images * rates.infer_image, f"{n.images} images against the gallery"
    if stage.kind == "report":
        total, parts = start + read_all, []
        for m in cfg.report.methods:
            total += n.images * rates.infer_image + CALIBRATION["report_method"]  # feature cache; scoring
            if m != "retrieval":
                step = CALIBRATION["decoder_step_images"].get(m, 25.0) * rates.train_image * 32
                total += cfg.report.steps * step
                total += 0.2 * n.studies * CALIBRATION["generate_study_images"] * rates.train_image  # beam search
                parts.append(f"{m} {cfg.report.steps} steps x {step:.2f} s")
            else:
                parts.append("retrieval")
        return total, ", ".join(parts) + " + 2 baselines"
    return start + cfg.predict_images * (rates.read_image + rates.infer_image), f"{cfg.predict_images} images"


def plan(cfg: RunConfig, out: Path, start: str | None = None, progress: bool = False) -> dict[str, Any]:
    """The dry-run: every stage with its status (done / run / rerun / changed) and estimated seconds."""
    from medssl.pipeline import Pipeline, rerun_from

    pipe = Pipeline(cfg, out, progress)
    pipe.check()
    stages = pipe.stages()
    rerun = rerun_from(stages, start)
    status = pipe.status(stages, rerun)
    rates, records = probe(cfg, pipe, progress)
    counts = _counts(cfg, records, rates.images_per_patient)
    rows = []
    for s in stages:
        seconds, how = estimate(s, cfg, rates, counts)
        rows.append({"stage": s.name, "status": status[s.name], "seconds": round(seconds, 1), "how": how,
                     "earlier": pipe.done.get(s.name, {}).get("seconds")})
    todo = sum(r["seconds"] for r in rows if r["status"] in ("run", "rerun"))
    return {"out": str(out), "rows": rows, "seconds_to_run": round(todo, 1), "probe_seconds": round(rates.seconds, 1),
            "rates": dataclasses.asdict(rates), "changed": [r["stage"] for r in rows if r["status"] == "changed"]}


def _clock(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    m, s = divmod(seconds, 60)
    return f"{m} min {s:02d} s" if m < 60 else f"{m // 60} h {m % 60:02d} min"


def format_plan(p: dict[str, Any]) -> str:
    import torch

    lines = [f"plan for {p['out']} (rates measured in {p['probe_seconds']:.0f} s on {torch.get_num_threads()} "
             "threads; nothing was run or written):",
             f"  {'stage':<24} {'status':<8} {'estimate':>10}  how"]
    for r in p["rows"]:
        est = _clock(r["seconds"]) if r["status"] in ("run", "rerun") else (
            f"({_clock(r['earlier'])})" if r["earlier"] is not None else "")
        lines.append(f"  {r['stage']:<24} {r['status']:<8} {est:>10}  {r['how']}")
    lines.append(f"to run: {sum(r['status'] in ('run', 'rerun') for r in p['rows'])} of {len(p['rows'])} stages, "
                 f"about {_clock(p['seconds_to_run'])} (estimates hold to about a third)")
    if p["changed"]:
        lines.append(f"refused as it stands: {', '.join(p['changed'])} ran with other settings; add --from "
                     f"{p['changed'][0]} to rerun from there")
    return "\n".join(lines)

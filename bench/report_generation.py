"""Report-generation benchmark (issue 12): the attention LSTM, the Transformer decoder and retrieval-based reports
(CXR-RePaiR) against two baselines, the training set's most common report and the report of the nearest training
study by image embedding, on

(a) the built-in synthetic studies (200 patients, 32 px, frontal + lateral, every finding known), with the demo's
    encoders: SimCLR for 150 steps, then ConVIRT from it for 100 steps (ResNet-18 at width 32) - or --align RUN;
(b) the real COVID-19 chest X-ray collection (../shared/data/covid_cxr_224.npz) under the seeded patient-level
    70/10/20 split of `medssl evaluate`: ConVIRT trained for --budget-minutes on the train patients' images and
    CASE NOTES (history and course, not radiology reports: its text scores measure note writing, not reporting).

Scores: BLEU-1..4, ROUGE-L, CIDEr, METEOR (pycocoevalcap) and clinical precision / recall / F1 (the labeller on
generated against reference reports), with patient bootstrap CIs; on synthetic data also the F1 of the findings a
report states against the images' own labels, beside chance. Costs: the feature cache (seconds, bytes), decoder
training throughput (studies/s), and generation latency per study at 224 px with beam 3, encoder included
(ResNet-18 at the papers' width 64, one frontal view and frontal + lateral, 2 threads; the decoder of the trained
size with random weights decoding to max_len: the worst case). Part (c) is bench/labeler_agreement.py on the
3,955 IU X-ray reports (MeSH tags).

Prints one JSON object (and the tables on stderr); --json PATH also writes it. Nothing derived from the real data
is written outside the temporary run folder (or --out).

Example: python bench/report_generation.py --json /tmp/report_generation.json
         python bench/report_generation.py --skip-real --steps 200
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data_throughput import machine  # noqa: E402
from image_text import train_patients_only  # noqa: E402
import labeler_agreement  # noqa: E402

from medssl.config import load_config  # noqa: E402
from medssl.evaluate.data import plan_source  # noqa: E402
from medssl.evaluate.options import EvalOptions  # noqa: E402
from medssl.models.decoders import DecoderSpec  # noqa: E402
from medssl.models.factory import ModelSpec, build_backbone  # noqa: E402
from medssl.models.report_model import ReportModel  # noqa: E402
from medssl.pretrain import run_pretrain  # noqa: E402
from medssl.report.baselines import baseline_rows, method_row  # noqa: E402
from medssl.report.config import load_report_config  # noqa: E402
from medssl.report.generate import GenerateConfig, generate  # noqa: E402
from medssl.report.metrics import MeteorScorer  # noqa: E402
from medssl.report.train import run_report_train  # noqa: E402
from medssl.aligned import load_image_text  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
DATA = ROOT.parent / "shared" / "data"
NOTE = ("COVID-19 image data collection: the texts are CASE NOTES (history, course), not radiology reports; "
        "the labeller's findings in them are what a clinician wrote of the case")
PUBLISHED = {"R2Gen (IU X-ray)": {"bleu1": 0.470, "bleu2": 0.304, "bleu3": 0.219, "bleu4": 0.165, "meteor": 0.187,
                                  "rouge_l": 0.371},
             "R2Gen checkpoint re-run (IU X-ray)": {"bleu4": 0.155, "rouge_l": 0.325, "cider": 0.543},
             "R2Gen clinical efficacy (MIMIC-CXR)": {"ce_precision": 0.333, "ce_recall": 0.273, "ce_f1": 0.276}}
METHODS = ("lstm", "transformer", "retrieval")


def _say(msg: str) -> None:
    print(f"[report bench] {msg}", file=sys.stderr, flush=True)


def synthetic_align(root: Path) -> Path:
    """The demo's encoders (its overrides of the default config): SimCLR 150 steps, then ConVIRT from it for 100
    steps (32 px, ResNet-18 width 32, 64 per batch)."""
    base = ["data.size=32", "data.batch_size=64", "data.num_workers=1", "model.stem=small", "model.width=32",
            "train.channels_last=true", "optim.warmup_steps=10", "optim.grad_clip=5.0", "model.options.proj_dim=64",
            "train.checkpoint_every=1000", "train.log_every=10"]
    simclr = root / "simclr"
    run_pretrain(load_config(None, base + ["method=simclr", "train.steps=150"]), simclr, progress=False)
    convirt = root / "convirt"
    run_pretrain(load_config(None, base + [
        "method=convirt", "train.steps=100", "model.options.context=64", "optim.lr=0.0005", "optim.weight_decay=0.0001",
        "data.report_sentences=0"]),
        convirt, init=str(simclr), progress=False)
    return convirt


def real_align(data: Path, root: Path, minutes: float) -> Path:
    """ConVIRT on the train patients' images and notes for about `minutes` (64 px, width 32, from scratch)."""
    opts = EvalOptions(checkpoint="unused", data=str(data), out=root / "plan", protocols=("linear",),
                       fractions=(1.0,), seeds=1, baseline=None, progress=False).validate()
    plan = plan_source(opts, data)
    train = {r.patient_id for r in plan.splits["train"]}
    base = [f"data.source={data}", "data.size=64", "data.batch_size=32", "model.stem=small", "model.width=32",
            "train.checkpoint_every=100000", "train.log_every=5", "data.report_sentences=0",
            "model.options.context=96"]
    with train_patients_only(train):
        t0 = time.perf_counter()
        probe = run_pretrain(load_config(CONFIGS / "convirt.yaml", base + ["train.steps=6"]), root / "probe",
                             progress=False)
        per_step = (time.perf_counter() - t0) / 6
        steps = max(20, int(minutes * 60 / per_step))
        _say(f"covid: ConVIRT {steps} steps (probe {per_step:.2f} s/step, loss {probe['final_loss']:.3f})")
        run_pretrain(load_config(CONFIGS / "convirt.yaml", base + [f"train.steps={steps}"]), root / "convirt",
                     progress=False)
    return root / "convirt"


def run_methods(align: Path, source: str | None, root: Path, args: argparse.Namespace, extra: list[str],
                meteor) -> list:
    rows = []
    for method in METHODS:
        t0 = time.perf_counter()
        sets = [f"encoder.run={align}", f"evaluate.n_boot={args.n_boot}", *extra]
        if method != "retrieval":
            sets += [f"train.steps={args.steps}", "decoder.dim=128", "optim.lr=0.002", "train.val_every=50"]
        cfg = load_report_config(CONFIGS / f"report_{method}.yaml", sets, data=source)
        m = run_report_train(cfg, root / method, progress=False, meteor=meteor)
        rows.append(method_row(method, m))
        _say(f"{method}: {time.perf_counter() - t0:.0f} s, test clinical F1 {m['test']['clinical']['micro']['f1']:.3f}"
             f", BLEU-4 {m['test']['nlg']['bleu4']:.3f}")
    return rows


def latency(dim: int = 128, lengths: tuple[int, ...] = (60, 99), repeats: int = 15) -> dict:
    """ms per study at 224 px with beam 3, encoder included: ResNet-18 (width 64, imagenet stem) + each decoder of
    the benchmark's size with random weights, made never to end early, decoding exactly `lengths` tokens: 60 is
    R2Gen's maximum report length on IU X-ray (its reports average about 35 words), 99 this benchmark's max_len."""
    torch.set_num_threads(2)
    spec = ModelSpec(backbone="resnet18", stem="imagenet", in_channels=1, image_size=224)
    torch.manual_seed(0)
    encoder = build_backbone(spec).eval()
    with torch.no_grad():
        _, f, h, w = encoder.forward_features(torch.zeros(1, 1, 224, 224)).shape
    out = {}
    with torch.no_grad():
        times = []
        for i in range(repeats + 2):
            t0 = time.perf_counter()
            encoder.forward_features(torch.rand(1, 1, 224, 224))
            if i >= 2:
                times.append(time.perf_counter() - t0)
    out["encoder_only_1view_ms"] = round(1000 * statistics.median(times), 1)
    for kind in ("lstm", "transformer"):
        d = DecoderSpec(kind=kind, vocab_size=1500, feature_dim=f, regions=h * w, views=2, dim=dim, layers=3,
                        heads=4, max_len=max(lengths) + 1, eos_id=3)
        model = ReportModel(d, encoder).eval()
        if kind == "lstm":
            model.decoder.out.bias.data[3] = -1e4                           # never end early
        else:
            model.decoder.embed.weight.data[3] = 0.0                       # tied output: [SEP]'s logit is 0
        for length in lengths:
            cfg = GenerateConfig(beam=3, max_len=length, block_trigrams=True)
            for views in (1, 2):
                x = torch.rand(1, 2, 1, 224, 224)
                have = torch.tensor([[True, views == 2]])
                times, tokens = [], 0
                with torch.no_grad():
                    for i in range(repeats + 2):
                        t0 = time.perf_counter()
                        memory, mask = model.memory({"images": x, "views": have})
                        ids = generate(model.decoder, memory, mask, cfg)
                        if i >= 2:
                            times.append(time.perf_counter() - t0)
                        tokens = len(ids[0])
                out[f"{kind}_{views}view_{length}tok"] = {"ms_median": round(1000 * statistics.median(times), 1),
                                                          "ms_min": round(1000 * min(times), 1), "tokens": tokens}
    out["note"] = ("2 torch threads; decoders of width 128 (LSTM) and 3 x 128 (Transformer, key-value cache), "
                   "vocabulary 1,500, trigram blocking; every hypothesis runs to the token count named")
    return out


def fmt(v) -> str:
    return "  n/a" if v is None else f"{v:.3f}"


def table(title: str, rows: list[dict]) -> str:
    head = f"{'method':<34} {'B1':>6} {'B2':>6} {'B3':>6} {'B4':>6} {'R-L':>6} {'CIDEr':>6} {'MET':>6} " \
           f"{'CE-P':>6} {'CE-R':>6} {'CE-F1':>6} {'F1 CI':>13} {'stated':>7} {'chance':>7}"
    lines = [title, head]
    for r in rows:
        n, c, a = r["nlg"], r["clinical"], r.get("label_agreement") or {}
        ci = r["ci95"].get("ce_f1_micro")
        lines.append(f"{r['method']:<34} " + " ".join(f"{fmt(n.get(k)):>6}" for k in (
            "bleu1", "bleu2", "bleu3", "bleu4", "rouge_l", "cider", "meteor")) + " " + " ".join(
            f"{fmt(c.get(k)):>6}" for k in ("precision", "recall", "f1"))
            + (f" [{ci[0]:.3f},{ci[1]:.3f}]" if ci else " " * 14)
            + (f" {a['f1']:>7.3f} {a['f1_shuffled']:>7.3f}" if a else ""))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--align", type=Path, help="a synthetic `medssl align` run to use (default: train the demo's)")
    ap.add_argument("--real-align", type=Path, help="a ConVIRT run on the COVID collection's train patients to use")
    ap.add_argument("--steps", type=int, default=400, help="decoder training steps")
    ap.add_argument("--budget-minutes", type=float, default=3.0, help="ConVIRT training on the real collection")
    ap.add_argument("--n-boot", type=int, default=500)
    ap.add_argument("--skip-real", action="store_true")
    ap.add_argument("--only-real", action="store_true")
    ap.add_argument("--out", type=Path, help="keep the runs here (default: a temporary folder)")
    ap.add_argument("--json", help="also write the JSON here")
    args = ap.parse_args()
    t0 = time.perf_counter()
    result: dict = {"machine": machine(), "published": PUBLISHED}
    with tempfile.TemporaryDirectory() as tmp, MeteorScorer() as meteor:
        root = args.out or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        if not args.only_real:
            align = args.align or synthetic_align(root / "synthetic" / "align")
            aligned_cfg = json.loads(json.dumps(load_image_text(align).meta.get("config", {})))
            d = aligned_cfg.get("data") or {}
            source = d.get("source") or str(root / "synthetic" / "lstm" / "data" / "manifest.csv")
            rows = run_methods(align, d.get("source"), root / "synthetic", args, [], meteor)
            rows += baseline_rows(align, source, 2, args.n_boot, meteor)
            result["synthetic"] = {"align": str(align), "rows": rows}
            _say("\n" + table("(a) synthetic studies (test split)", rows))
        covid = DATA / "covid_cxr_224.npz"
        if not args.skip_real and covid.is_file():
            align = args.real_align or real_align(covid, root / "covid" / "align", args.budget_minutes)
            rows = run_methods(align, str(covid), root / "covid", args, ["decoder.context=96", "data.views=1"], meteor)
            rows += baseline_rows(align, str(covid), 1, args.n_boot, meteor)
            result["covid"] = {"align": str(align), "note": NOTE, "rows": rows}
            _say("\n" + table(f"(b) COVID-19 collection, case notes (test split). {NOTE}", rows))
        elif not args.skip_real:
            result["covid"] = {"skipped": f"{covid} not present"}
    result["latency_224px_beam3"] = lat = latency()
    _say("\n(latency) ms per study at 224 px, beam 3, encoder included (median): " + ", ".join(
        f"{k} {v['ms_median']}" for k, v in lat.items() if isinstance(v, dict))
        + f"; encoder alone {lat['encoder_only_1view_ms']}")
    iu = DATA / "iu_xray_reports.csv"
    if iu.is_file():
        result["labeler_iu_xray"] = labeler_agreement.measure(iu, examples=2)
        _say("\n" + labeler_agreement.table(result["labeler_iu_xray"]))
    result["minutes"] = round((time.perf_counter() - t0) / 60, 1)
    text = json.dumps(result, indent=2, default=float)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()

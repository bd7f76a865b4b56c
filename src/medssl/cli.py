"""`medssl` command line: one function per sub-command. Bad input ends in one line and exit code 2."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from medssl import __version__
from medssl.errors import MedsslError

EXIT_BAD_INPUT = 2


def _floats(text: str) -> list[float]:
    try:
        return [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _print_bad(bad: list[tuple[str, str]]) -> None:
    if bad:
        print(f"skipped {len(bad)} unreadable image(s):", file=sys.stderr)
        for _, msg in bad:
            print(f"  {msg}", file=sys.stderr)


def cmd_data_synth(args: argparse.Namespace) -> int:
    """Write synthetic chest radiographs with masks, reports and a manifest."""
    from medssl.synthetic import write_synthetic

    manifest = write_synthetic(args.out, args.patients, args.size, args.seed, progress=not args.quiet)
    print(f"wrote synthetic chest radiographs for {args.patients} patients ({args.size} px) and {manifest}")
    return 0


def cmd_data_index(args: argparse.Namespace) -> int:
    """Walk a folder of images and write a manifest."""
    from medssl.data.records import write_manifest
    from medssl.data.sources import MANIFEST, index_folder

    records, bad = index_folder(args.dir, skip_bad=args.skip_bad, patients_csv=args.patients,
                                labels_from_folders=args.labels_from_folders, verify=not args.no_verify,
                                progress=not args.quiet)
    out = Path(args.out) if args.out else Path(args.dir) / MANIFEST
    write_manifest(records, out)
    _print_bad(bad)
    own = sum(r.patient_id == Path(r.path).relative_to(Path(args.dir)).as_posix() for r in records)
    print(f"indexed {len(records)} image(s) from {len({r.path for r in records})} file(s) -> {out}")
    if own:
        print(f"note: {own} image(s) had no patient id (no DICOM PatientID, not in --patients CSV): each is its own "
              f"patient, so patient-level splits cannot keep their other images together", file=sys.stderr)
    return 0


def _load(source: str | None, skip_bad: bool, quiet: bool, tmp: str) -> tuple[list, list, str]:
    from medssl.data.sources import check_images, load_source
    from medssl.synthetic.builtin import builtin_source, describe

    if source is None:
        manifest = builtin_source(Path(tmp) / "synthetic", progress=not quiet)
        records, bad = load_source(manifest, progress=not quiet)
        return records, bad, describe()
    records, bad = load_source(source, skip_bad=skip_bad, progress=not quiet)
    if skip_bad:
        n = len(records)
        records, more = check_images(records, skip_bad=True, progress=not quiet)
        bad = bad + more
        if not records:
            raise MedsslError(f"{source}: none of its {n} image(s) could be read (first: {more[0][1]})")
    return records, bad, source


def cmd_data_info(args: argparse.Namespace) -> int:
    """Summarise a data source: counts, patients, views, label balance, image sizes, reports."""
    from medssl.data.summary import format_summary, summarize

    with tempfile.TemporaryDirectory() as tmp:
        records, bad, name = _load(args.source, args.skip_bad, args.quiet, tmp)
        summary = summarize(records, progress=not args.quiet)
    if summary["unreadable"] and not args.skip_bad:
        first = summary["unreadable"][0]["error"]
        raise MedsslError(f"{first} ({len(summary['unreadable'])} unreadable file(s); --skip-bad lists them all)")
    summary["skipped"] = [{"path": p, "error": e} for p, e in bad]
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
    print(format_summary(summary, name))
    _print_bad(bad)
    return 0


def cmd_data_cache(args: argparse.Namespace) -> int:
    """Build a source's decoded-image cache ahead of time, or remove caches."""
    from medssl.data import cache

    if args.clear:
        root = cache.cache_root(args.source, args.cache) if args.source else Path(args.cache or cache.user_root())
        gone = cache.clear(root)
        print(f"removed {len(gone)} cache folder(s) under {root}" + "".join(f"\n  {g.name}" for g in gone))
        return 0
    if args.source is None or args.size is None:
        raise MedsslError("data cache: give a SOURCE and --size N (or --clear)")
    if args.size < 8:
        raise MedsslError(f"data cache: --size {args.size} must be at least 8 pixels")
    from medssl.data.sources import load_source

    records, bad = load_source(args.source, skip_bad=args.skip_bad, progress=not args.quiet)
    if not records:
        raise MedsslError(f"{args.source}: holds no images")
    import time

    t0 = time.perf_counter()
    found = cache.cached_images(records, args.size, args.source, skip_bad=args.skip_bad, progress=not args.quiet,
                                cache=args.cache, workers=args.workers)
    seconds = time.perf_counter() - t0
    d = cache.describe(found.folder)
    rate = f", {found.decoded / seconds:.0f} images/s" if found.decoded and seconds > 0 else ""
    print(f"{found.folder}: {len(found.records)} images at {args.size} px, {d['bytes'] / 1e6:.1f} MB; "
          f"{found.decoded} decoded now in {seconds:.1f} s{rate}, {len(records) - found.decoded} from the cache")
    _print_bad(bad + found.bad)
    return 0


def cmd_data_split(args: argparse.Namespace) -> int:
    """Assign patient-level train/val/test splits (and label-fraction columns) and write a manifest."""
    from medssl.data.records import write_manifest
    from medssl.data.splits import assign_splits, by_split, label_fraction
    from medssl.data.summary import format_summary, summarize

    with tempfile.TemporaryDirectory() as tmp:
        records, bad, name = _load(args.source, args.skip_bad, args.quiet, tmp)
        if args.keep_existing and all(r.split for r in records):
            split_records = records
        else:
            split_records = assign_splits(records, args.fractions, args.seed, stratify=not args.no_stratify)
        parts = by_split(split_records)  # raises on a patient in two splits
        train = parts["train"]
        for frac in args.label_fractions:
            chosen = {r.key for r in label_fraction(train, frac, args.seed)}
            for r in split_records:
                r.extra[f"frac_{frac:g}"] = "1" if r.key in chosen else ("0" if r.split == "train" else "")
        out = write_manifest(split_records, args.out)
        print(format_summary(summarize(split_records, progress=False), f"{name} -> {out}"))
    for frac in args.label_fractions:
        n = sum(r.extra.get(f"frac_{frac:g}") == "1" for r in split_records)
        print(f"  label fraction {frac:g}: {n} training image(s) in column frac_{frac:g}")
    _print_bad(bad)
    return 0


def _train_run(args: argparse.Namespace, command: str) -> int:
    """medssl pretrain and medssl align: one code path (config, resume, run_pretrain), each refusing the other's
    methods."""
    from medssl.config import load_config
    from medssl.pretrain import check_command, resume_config, run_pretrain

    sets = list(args.set)
    if args.data:
        sets.append(f"data.source={Path(args.data).resolve()}")
    if args.skip_bad:
        sets.append("data.skip_bad=true")
    if getattr(args, "text_column", None):
        sets.append(f"data.text_column={args.text_column}")
    if args.resume:
        if args.config:
            raise MedsslError("--resume RUN_DIR continues that run with its own config; drop --config (use --set "
                              "to change e.g. train.steps or data.batch_size)")
        out, cfg = Path(args.resume), resume_config(args.resume, sets)
    else:
        if not args.config:
            example = "configs/convirt.yaml" if command == "align" else "configs/simclr.yaml"
            raise MedsslError(f"{command} needs --config (e.g. {example}) or --resume RUN_DIR")
        cfg = load_config(args.config, sets)
        out = Path(args.out or f"runs/{cfg.method}")
    check_command(cfg, command)
    metrics = run_pretrain(cfg, out, resume=bool(args.resume), init=args.init, progress=not args.quiet)
    if os.environ.get("LOCAL_RANK", "0") == "0":  # under DDP every process runs this command
        what = "pretrained" if command == "pretrain" else "aligned"
        print(f"{what} {cfg.method} ({cfg.model.backbone}) for {metrics['steps']} steps, final loss "
              f"{metrics['final_loss']:.4f} -> {out}")
        if command == "align":
            print(f"run report: {out / 'report.html'}")
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    """Self-supervised pretraining of an image encoder (SimCLR, MICLe, MoCo v2, BYOL, MAE)."""
    return _train_run(args, "pretrain")


def cmd_align(args: argparse.Namespace) -> int:
    """Image-text pretraining on images and their reports (ConVIRT, CLIP, GLoRIA): the pretrain machinery."""
    return _train_run(args, "align")


def cmd_export(args: argparse.Namespace) -> int:
    """Write a run's backbone alone as safetensors, TorchScript or ONNX."""
    from medssl.export import export

    suffix = {"safetensors": ".safetensors", "torchscript": ".pt", "onnx": ".onnx"}[args.format]
    out = Path(args.out) if args.out else Path(args.run) / f"backbone{suffix}"
    print(f"wrote {export(args.run, args.format, out)}")
    return 0


def _protocols(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _names(text: str) -> tuple[str, ...]:
    names = tuple(t.strip() for t in text.split(","))
    if not all(names) or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"expected distinct comma-separated names, got {text!r}")
    return names


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Linear probe, kNN, fine-tuning (and segmentation) at label fractions, against a scratch baseline."""
    from medssl.evaluate.run import EvalOptions, run_evaluate

    ckpt = Path(args.checkpoint)
    out = Path(args.out) if args.out else (ckpt if ckpt.is_dir() else ckpt.parent.parent) / "evaluate"
    steps = args.finetune_steps if args.finetune_steps is not None or args.finetune_epochs else 300
    opts = EvalOptions(checkpoint=args.checkpoint, data=args.data, out=out, protocols=tuple(args.protocol),
                       fractions=tuple(args.fractions), seeds=args.seeds, baseline=args.baseline,
                       finetune_steps=steps, finetune_epochs=args.finetune_epochs, finetune_lr=args.finetune_lr,
                       finetune_patience=None if args.finetune_patience == 0 else args.finetune_patience,
                       segment_steps=args.segment_steps or steps or 300, segment_lr=args.segment_lr,
                       segment_patience=args.segment_patience or None, keep_bundles=not args.no_bundles,
                       finetune_head=args.finetune_head, finetune_freeze_bn=args.finetune_bn == "frozen",
                       n_boot=args.n_boot, mask_encoding=args.mask_encoding, mask_classes=args.mask_classes,
                       task=args.task, skip_bad=args.skip_bad, progress=not args.quiet)
    metrics = run_evaluate(opts)
    print((out / "results.md").read_text(), end="")
    _print_bad([(s["path"], s["error"]) for s in metrics.get("skipped", [])])
    print(f"wrote {out / 'metrics.json'}, {out / 'results.md'} and {out / 'report.html'} "
          f"in {metrics['seconds']:.0f} s")
    for protocol, path in metrics.get("bundles", {}).items():
        print(f"kept the best {protocol} classifier (on validation) as {path}: medssl predict {path} IMAGE...")
    return 0


def cmd_zeroshot(args: argparse.Namespace) -> int:
    """`medssl zeroshot`: classify a test split from prompts alone with an image-text run."""
    from medssl.zeroshot_run import RESULTS, print_summary, run_zeroshot

    out = Path(args.out) if args.out else Path(args.run) / "zeroshot"
    metrics = run_zeroshot(args.run, data=args.data, out=out, classes=_names(args.classes) if args.classes else None,
                           prompt_file=args.prompts, n_boot=args.n_boot, skip_bad=args.skip_bad,
                           progress=not args.quiet)
    print_summary(metrics)
    _print_bad([(s["path"], s["error"]) for s in metrics.get("skipped", [])])
    print(f"wrote {out / RESULTS}")
    return 0



def cmd_retrieve(args: argparse.Namespace) -> int:
    """`medssl retrieve`: nearest images and report sentences to a query, or --evaluate retrieval on the test split."""
    from medssl.retrieve_run import (EVALUATE, FOLDER, evaluate_lines, result_lines, run_evaluate_retrieval,
                                     run_folder, run_retrieve)

    ks = [1, 5, 10] if args.evaluate else [5]
    if args.k is not None:
        try:
            ks = [int(k) for k in args.k.split(",")]
        except ValueError:
            raise MedsslError(f"--k {args.k}: expected whole numbers >= 1 separated by commas") from None
    if args.evaluate:
        if args.image is not None or args.text is not None:
            raise MedsslError("retrieve: --evaluate takes its queries from the test split; drop --image / --text")
        metrics = run_evaluate_retrieval(args.run, ks=ks, data=args.data, rebuild=args.rebuild, threads=args.threads,
                                         skip_bad=args.skip_bad, progress=not args.quiet)
        if args.json:
            print(json.dumps(metrics, default=float))
        else:
            print("\n".join(evaluate_lines(metrics)))
            print(f"wrote {run_folder(args.run) / FOLDER / EVALUATE}")
        return 0
    if len(ks) != 1:
        raise MedsslError(f"--k {','.join(map(str, ks))}: a single query takes one K")
    result = run_retrieve(args.run, image=args.image, text=args.text, k=ks[0], data=args.data, rebuild=args.rebuild,
                          threads=args.threads, skip_bad=args.skip_bad, progress=not args.quiet)
    print(json.dumps(result, default=float) if args.json else "\n".join(result_lines(result)))
    return 0

def cmd_predict(args: argparse.Namespace) -> int:
    """Class probabilities of each image from a classifier bundle."""
    from medssl.data.io import IMAGE_SUFFIXES
    from medssl.inference import load_bundle, predict

    bundle = load_bundle(args.bundle)
    paths: list[Path] = []
    for item in args.images:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and (f.suffix.lower() in IMAGE_SUFFIXES
                                                                        or f.name.lower().endswith(".nii.gz")))
            if not found:
                raise MedsslError(f"{p}: no image files in this folder")
            paths += found
        elif not p.is_file():
            raise MedsslError(f"{p}: no such image file or folder")
        else:
            paths.append(p)
    results = predict(bundle, paths)
    if args.json:
        print(json.dumps({"bundle": str(args.bundle), "task": bundle.task.kind if bundle.task else None,
                          "results": results}, indent=2))
        return 0
    for r in results:
        probs = ", ".join(f"{k} {v:.3f}" for k, v in r["probabilities"].items())
        print(f"{r['image']}: {'+'.join(r['predicted']) or '(none)'}  [{probs}]")
    return 0


DEMO_FLAGS = {"patients": "data.patients", "size": "data.size", "width": "model.width", "seed": "data.seed",
              "pretrain_steps": "pretrain.steps", "align_steps": "align.steps",
              "finetune_steps": "evaluate.finetune_steps", "report_steps": "report.steps", "seeds": "evaluate.seeds"}


def cmd_demo(args: argparse.Namespace) -> int:
    """`medssl run` on the built-in config (configs/demo.yaml states the same), with its flags as overrides."""
    sets = [f"{DEMO_FLAGS[k]}={getattr(args, k)}" for k in DEMO_FLAGS if getattr(args, k) is not None]
    if args.fractions:
        sets.append(f"evaluate.fractions={json.dumps(list(args.fractions))}")
    return _run(None, sets, args.out, args.from_stage, args.dry_run, args.quiet, "medssl demo")


def cmd_run(args: argparse.Namespace) -> int:
    """A whole study from a pipeline config into one run folder."""
    out = args.out or str(Path("runs") / Path(args.config).stem)
    return _run(args.config, args.set, out, args.from_stage, args.dry_run, args.quiet, "medssl run")


def _run(config: str | None, sets: list[str], out: str, start: str | None, dry_run: bool, quiet: bool,
         name: str) -> int:
    import time

    from medssl.pipeline import run_pipeline
    from medssl.pipeline_config import load_run_config

    cfg = load_run_config(config, sets)
    if dry_run:
        from medssl.pipeline_plan import format_plan, plan

        print(format_plan(plan(cfg, Path(out), start, progress=not quiet)))
        return 0
    t0 = time.perf_counter()
    metrics = run_pipeline(cfg, Path(out), start=start, progress=not quiet, config_path=config)
    print(metrics["verdict"]["text"])
    print(f"{name} finished in {time.perf_counter() - t0:.0f} s -> {Path(out) / 'report.html'}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """The web service over a run folder."""
    from medssl.serve.run import run_serve

    return run_serve(args.run, args.host, args.port, args.token_file, args.workers, args.max_upload_mb, args.threads,
                     pacs_url=args.pacs, pacs_auth_file=args.pacs_auth_file, pacs_ca_bundle=args.pacs_ca_bundle,
                     pacs_timeout=args.pacs_timeout)


def cmd_report_train(args: argparse.Namespace) -> int:
    """Train a report generator (or build the retrieval-based reporter) and score it on the test split."""
    from medssl.report.config import load_report_config
    from medssl.report.page import summary_lines
    from medssl.report.train import run_report_train

    cfg = load_report_config(args.config, args.set, args.data)
    metrics = run_report_train(cfg, Path(args.out), resume=args.resume, progress=not args.quiet)
    print("\n".join(summary_lines(metrics)))
    print(f"-> {Path(args.out) / 'report.html'}")
    return 0


def cmd_report_generate(args: argparse.Namespace) -> int:
    """Draft reports of images or study folders from a report run."""
    from medssl.report.generate_run import result_lines, run_generate

    results = run_generate(args.run, args.images, beam=args.beam, out=args.out)
    print(json.dumps({"run": str(args.run), "results": results}, indent=2, default=float) if args.json
          else "\n".join(result_lines(results)))
    return 0


def _pacs(args: argparse.Namespace):
    from medssl.pacs.client import connect

    return connect(args.url, auth_file=args.auth_file, ca_bundle=args.ca_bundle, timeout=args.timeout)


def cmd_pacs_pull(args: argparse.Namespace) -> int:
    """Studies from a PACS (QIDO-RS + WADO-RS) into a folder with a manifest."""
    from medssl.pacs.pull import run_pull

    s = run_pull(_pacs(args), args.out, study=args.study, query=args.query, progress=not args.quiet, jobs=args.jobs)
    p = s["this_pull"]
    rate = f", {p['images_per_s']} images/s" if p["images_per_s"] else ""
    print(f"pulled {p['fetched']} image(s) of {p['studies']} study(ies) into {args.out} ({p['already_here']} already "
          f"there, {len(s['skipped_non_image'])} non-image instance(s) skipped; {p['seconds']} s{rate}); "
          f"manifest: {Path(args.out) / 'manifest.csv'}")
    return 0


def cmd_pacs_push(args: argparse.Namespace) -> int:
    """Draft reports into the PACS as DICOM Enhanced SR, beside their images."""
    from medssl.pacs.push import run_push

    s = run_push(_pacs(args), args.run, progress=not args.quiet)
    print(f"stored {s['stored']} draft report(s) as DICOM SR ({s['already_there']} already in the PACS; "
          f"{s['seconds']} s); list: {Path(args.run) / 'pushed.json'}")
    return 0


def _pacs_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", required=True, help="DICOMweb root, e.g. http://127.0.0.1:8042/dicom-web")
    p.add_argument("--auth-file", help="first line 'USER:PASSWORD' or 'Bearer TOKEN'; or set MEDSSL_PACS_USER and "
                   "MEDSSL_PACS_PASSWORD, or MEDSSL_PACS_TOKEN. Never on the command line")
    p.add_argument("--ca-bundle", help="PEM file of the CA that signed the server's certificate (https)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for each answer (default 30)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def cmd_report_label(args: argparse.Namespace) -> int:
    """Finding labels (positive, negative, uncertain) of report texts, one line per report."""
    from medssl.report.label_run import label_lines

    for line in label_lines(args.source, args.column, args.json, stdin=sys.stdin):
        print(line)
    return 0


def _stage_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--from", dest="from_stage", metavar="STAGE",
                   help="rerun this stage (a name, e.g. evaluate_simclr, or a kind: data, pretrain, align, "
                        "evaluate, zeroshot, retrieval, report, predict) and every one after it")
    p.add_argument("--dry-run", action="store_true", help="print the stages, which would run or be skipped, "
                   "and their estimated time (from a few measured steps on this machine); run nothing")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every sub-command."""
    p = argparse.ArgumentParser(prog="medssl", description="Label-efficient medical imaging.",
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog="""examples:
  medssl demo --out runs/demo
      the whole pipeline on built-in synthetic chest radiographs -> runs/demo/report.html
  medssl run configs/pneumoniamnist.yaml
      a whole study from one config (methods x protocols x label fractions x seeds) -> one report.html
  medssl data info ../shared/data/pneumoniamnist_28.npz
      what a data source holds: images, patients, views, labels, sizes, formats, modalities
  medssl data index /data/dicom --skip-bad
      walk a folder of images (PNG/JPEG/TIFF/DICOM/NIfTI) and write /data/dicom/manifest.csv
  medssl pretrain --config configs/simclr.yaml --out runs/simclr
      self-supervised pretraining (built-in synthetic data unless --data)
  medssl evaluate --checkpoint runs/simclr --protocol linear,finetune --baseline scratch
      label-efficiency evaluation against a network trained from scratch
  medssl predict runs/simclr/evaluate/bundles/finetune.pt scan.dcm
      class probabilities from a kept classifier

`medssl COMMAND --help` lists a command's options.""")
    p.add_argument("--version", action="version", version=f"medssl {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    from medssl.pipeline_config import RunConfig  # the defaults the help states are the ones the demo uses

    d = RunConfig()
    fractions = ",".join(f"{f:g}" for f in d.evaluate.fractions)
    demo = sub.add_parser(
        "demo", help="run the pipeline on built-in synthetic data, write an HTML run report",
        description="`medssl run configs/demo.yaml`: synthesise chest radiographs with reports, pretrain SimCLR\n"
                    "and MICLe, align ConVIRT, evaluate a linear probe and LP-FT fine-tuning at label fractions\n"
                    "against a scratch baseline, zero-shot and retrieval, draft reports, predict; report.html.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=f"""examples:
  medssl demo
      the default run ({d.data.patients} patients at {d.data.size} px, fractions {fractions}, {d.evaluate.seeds} seeds) -> runs/demo
  medssl demo --out runs/small --patients 40 --pretrain-steps 20 --finetune-steps 10 --seeds 1 --fractions 0.25,1
      a smaller, faster run to try the tool (with 40 patients 1 % and 10 % of the labels would be the same images)
  medssl demo --out runs/demo
      again after a kill: finished stages are skipped, a pretraining resumes from its last checkpoint
  medssl demo --dry-run
      the stages and their estimated time, from a few measured steps on this machine""")
    demo.add_argument("--out", default="runs/demo", help="run folder; its finished stages are skipped "
                      "(default runs/demo)")
    demo.add_argument("--patients", type=int, help=f"synthetic patients, 20 or more (default {d.data.patients})")
    demo.add_argument("--size", type=int, help=f"image side in pixels (default {d.data.size})")
    demo.add_argument("--width", type=int, help=f"the ResNet-18's first-stage channels (default {d.model.width}; "
                      "the papers' 64 costs four times the compute)")
    demo.add_argument("--seed", type=int, help=f"data and training seed (default {d.data.seed})")
    demo.add_argument("--pretrain-steps", type=int, help=f"steps of SimCLR and of MICLe "
                      f"(default {d.pretrain.steps})")
    demo.add_argument("--align-steps", type=int, help=f"steps of ConVIRT, from the SimCLR encoder "
                      f"(default {d.align.steps})")
    demo.add_argument("--finetune-steps", type=int, help=f"steps of each fine-tuning run "
                      f"(default {d.evaluate.finetune_steps})")
    demo.add_argument("--report-steps", type=int, help=f"steps of the report decoder (default {d.report.steps})")
    demo.add_argument("--seeds", type=int, help=f"seeds of the label fractions (default {d.evaluate.seeds})")
    demo.add_argument("--fractions", type=_floats, metavar="F,F,...", help=f"label fractions in (0, 1] "
                      f"(default {fractions})")
    _stage_options(demo)
    demo.set_defaults(func=cmd_demo)

    run = sub.add_parser(
        "run", help="a whole study from one config: pretrain, align, evaluate, zero-shot, reports; one report.html",
        description="Run a pipeline config (data, methods to pretrain and align, evaluation protocols, fractions,\n"
                    "seeds, zero-shot classes, report methods) into one run folder with one report.html: the\n"
                    "comparison table, label-efficiency curves, zero-shot, retrieval and report generation.\n"
                    "Finished stages are skipped; a stage whose settings changed is refused until --from reruns it.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog="""examples:
  medssl run configs/demo.yaml
      what `medssl demo` runs -> runs/demo/report.html
  medssl run configs/pneumoniamnist.yaml --dry-run
      the plan of the PneumoniaMNIST label-efficiency study and its estimated time on this machine
  medssl run configs/pneumoniamnist.yaml --set evaluate.seeds=5 --from evaluate
      the same study with five seeds: pretraining is kept, evaluation and everything after it rerun
  medssl run my_study.yaml --set 'pretrain.methods=[simclr, byol]' --out runs/ablation
      an ablation: the arms listed, each pretrained, evaluated and compared on one page""")
    run.add_argument("config", help="pipeline config (YAML): see configs/demo.yaml, configs/pneumoniamnist.yaml")
    run.add_argument("--out", help="run folder (default runs/<config name>)")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config value, e.g. evaluate.seeds=5 (repeatable)")
    _stage_options(run)
    run.set_defaults(func=cmd_run)

    pre = sub.add_parser(
        "pretrain", help="self-supervised pretraining: simclr, micle, moco, byol, mae",
        description="Self-supervised pretraining of an image encoder into one run folder\n"
                    "(config.yaml, log.csv, checkpoints/last.pt, metrics.json).",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog="""examples:
  medssl pretrain --config configs/simclr.yaml --out runs/simclr
      SimCLR on the built-in synthetic chest radiographs
  medssl pretrain --config configs/micle.yaml --data /data/cxr/manifest.csv --skip-bad --set data.batch_size=64
      MICLe on your own images (their train split), going on past unreadable files
  medssl pretrain --resume runs/simclr --set train.steps=2000
      continue a run from its last checkpoint, longer; --resume takes --set only of keys that keep the model
      (data.source, data.batch_size, train.steps, train.epochs, data.num_workers, train.log_every, optim.lr, ...)""")
    pre.add_argument("--config", help="YAML config, e.g. configs/simclr.yaml (one per method in configs/)")
    pre.add_argument("--data", help="manifest .csv, folder or .npz, sets data.source (default: built-in synthetic "
                     "data)")
    pre.add_argument("--out", help="run folder (default runs/METHOD); a folder left by a run that ended before its "
                     "first checkpoint is reused")
    pre.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config value, e.g. train.steps=200 (repeatable)")
    pre.add_argument("--resume", metavar="RUN_DIR", help="continue a run exactly where its last checkpoint left it")
    pre.add_argument("--init", metavar="CKPT", help="start from earlier weights (run folder or checkpoint file)")
    pre.add_argument("--skip-bad", action="store_true", help="go on past unreadable images and list them "
                     "(sets data.skip_bad)")
    pre.add_argument("--quiet", action="store_true", help="no progress bars")
    pre.set_defaults(func=cmd_pretrain)

    al = sub.add_parser(
        "align", help="image-text pretraining on images and their reports: convirt, clip, gloria",
        description="Image-text pretraining (ConVIRT, CLIP, GLoRIA) into one run folder: what medssl pretrain\n"
                    "writes, plus report.html (loss curve, image-text similarity on a test batch). A WordPiece\n"
                    "tokenizer is trained on the training split's reports and kept in every checkpoint.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog="""examples:
  medssl align --config configs/convirt.yaml --out runs/convirt
      ConVIRT on the built-in synthetic chest radiographs and their reports
  medssl align --config configs/clip.yaml --data /data/cxr/manifest.csv --set data.batch_size=64
      CLIP on your own images (train split) with the manifest's report column (images without one are skipped)
  medssl align --config configs/convirt.yaml --data ../shared/data/covid_cxr_224.npz --text-column clinical_notes
      a .npz whose text is another field (here case notes, not radiology reports: the report says so)
  medssl align --resume runs/convirt --set train.steps=2000
      continue a run from its last checkpoint (with its tokenizer)""")
    al.add_argument("--config", help="YAML config of an image-text method, e.g. configs/convirt.yaml")
    al.add_argument("--data", help="manifest .csv (report column), folder or .npz, sets data.source (default: "
                    "built-in synthetic data)")
    al.add_argument("--out", help="run folder (default runs/METHOD)")
    al.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config value, e.g. train.steps=200 or data.report_sentences=0 (repeatable)")
    al.add_argument("--text-column", metavar="NAME", help="the text of each image from this manifest column or "
                    ".npz field instead of the report (sets data.text_column)")
    al.add_argument("--resume", metavar="RUN_DIR", help="continue a run exactly where its last checkpoint left it")
    al.add_argument("--init", metavar="CKPT", help="start from earlier weights (run folder or checkpoint file)")
    al.add_argument("--skip-bad", action="store_true", help="go on past unreadable images and list them "
                    "(sets data.skip_bad)")
    al.add_argument("--quiet", action="store_true", help="no progress bars")
    al.set_defaults(func=cmd_align)

    exp = sub.add_parser("export", help="write a run's backbone as safetensors, TorchScript or ONNX")
    exp.add_argument("run", help="run folder or checkpoint file")
    exp.add_argument("--format", choices=["safetensors", "torchscript", "onnx"], default="safetensors")
    exp.add_argument("--out", help="output file (default RUN/backbone.<ext>)")
    exp.set_defaults(func=cmd_export)

    ev = sub.add_parser("evaluate", help="linear probe, kNN and fine-tuning at label fractions vs a scratch baseline",
                        formatter_class=argparse.RawDescriptionHelpFormatter, epilog="""examples:
  medssl evaluate --checkpoint runs/simclr --seeds 3 --baseline scratch
      linear probe, kNN and fine-tuning at 1 %, 10 % and 100 % of the labels of the built-in synthetic data,
      against the same network fine-tuned from random initialisation
  medssl evaluate --checkpoint runs/simclr --data labelled/manifest.csv --protocol linear,finetune \\
      --fractions 0.1,1 --skip-bad --out runs/simclr/eval_mine
      your labelled images (manifest with a split column, or a 70/10/20 patient-level split), past unreadable files
  medssl evaluate --checkpoint runs/simclr --data masks/manifest.csv --protocol segment --mask-encoding binary
      U-Net transfer on your 0/255 PNG masks (Dice)""")
    ev.add_argument("--checkpoint", required=True, help="pretraining run folder or checkpoint file")
    ev.add_argument("--data", help="labelled source: manifest .csv, folder, .npz (default: built-in synthetic data)")
    ev.add_argument("--protocol", type=_protocols, default=["linear", "knn", "finetune"],
                    help="comma-separated: linear, knn, finetune, segment (default linear,knn,finetune)")
    ev.add_argument("--fractions", type=_floats, default=[0.01, 0.1, 1.0], help="label fractions (default 0.01,0.1,1)")
    ev.add_argument("--seeds", type=int, default=3, help="seeds: label-fraction draws and training runs per "
                    "fraction; results are mean ± std over them (default 3)")
    ev.add_argument("--baseline", choices=["scratch"], default=None,
                    help="also train from random initialisation: fine-tuning (finetune, segment), or the same probe "
                         "on a random backbone when only linear / knn run")
    ev.add_argument("--finetune-steps", type=int, default=None, help="budget of each fine-tuning run (default 300)")
    ev.add_argument("--finetune-epochs", type=int, default=None, help="budget in passes over the labelled subset "
                    "instead of steps")
    ev.add_argument("--finetune-lr", type=float, default=1e-3, help="head learning rate (backbone: a tenth of it for "
                    "a pretrained backbone; default 1e-3)")
    ev.add_argument("--finetune-patience", type=int, default=6, help="validation scores without improvement before "
                    "stopping (0: never stop early; default 6)")
    ev.add_argument("--segment-steps", type=int, default=None, help="segmentation budget (default: the fine-tuning "
                    "steps)")
    ev.add_argument("--segment-lr", type=float, default=1e-3, help="segmentation decoder learning rate (default 1e-3)")
    ev.add_argument("--segment-patience", type=int, default=0, help="segmentation early stopping (0: never, default)")
    ev.add_argument("--no-bundles", action="store_true", help="do not keep the best classifier of each protocol")
    ev.add_argument("--finetune-head", choices=["probe", "random"], default="probe",
                    help="head a pretrained backbone's fine-tuning starts from: the linear probe's (LP-FT, default) "
                         "or a random one")
    ev.add_argument("--finetune-bn", choices=["frozen", "train"], default="frozen",
                    help="a pretrained backbone's BatchNorm statistics while fine-tuning: kept (default) or updated")
    ev.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the CIs (default 1000)")
    ev.add_argument("--mask-encoding", choices=["label", "binary", "bits"],
                    help="segment: how mask files hold classes: label (0 = background, 1..K), binary (nonzero = the "
                         "class) or bits (bit k = class k); default: the manifest's mask_encoding column, else "
                         "binary if the masks are 0/1 or 0/255")
    ev.add_argument("--mask-classes", type=_names, metavar="A,B,...",
                    help="segment: mask class names in encoding order (default: the manifest's mask_classes "
                         "column; 'foreground' for binary masks)")
    ev.add_argument("--task", choices=["binary", "multiclass", "multilabel"], help="default: inferred from labels")
    ev.add_argument("--out", help="results folder (default CHECKPOINT_RUN/evaluate)")
    ev.add_argument("--skip-bad", action="store_true", help="go on past unreadable images and list them")
    ev.add_argument("--quiet", action="store_true", help="no progress bars")
    ev.set_defaults(func=cmd_evaluate)

    zs = sub.add_parser(
        "zeroshot", help="classify a test split from prompts alone with an image-text run (medssl align)",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog="""examples:
  medssl zeroshot runs/convirt
      the run's own findings on the test patients of the built-in synthetic data its pretraining never saw
  medssl zeroshot runs/convirt --data labelled/manifest.csv --classes pneumothorax,pleural_effusion
      two findings of your labelled images (their split column, else a 70/10/20 patient-level split)
  medssl zeroshot runs/convirt --prompts prompts.yaml
      your prompts: class -> [prompts], or class -> {positive: [...], negative: [...]}""")
    zs.add_argument("run", help="run folder or checkpoint of medssl align (convirt, clip, gloria)")
    zs.add_argument("--data", help="labelled source: manifest .csv, folder, .npz (default: built-in synthetic data "
                    "with the run's parameters)")
    zs.add_argument("--classes", help="comma-separated findings to score (multi-label data; default: all)")
    zs.add_argument("--prompts", help="YAML / JSON prompt file (default: medssl's templates per class)")
    zs.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples of the CIs (default 1000)")
    zs.add_argument("--out", help="results folder (default RUN/zeroshot)")
    zs.add_argument("--skip-bad", action="store_true", help="go on past unreadable images and list them")
    zs.add_argument("--quiet", action="store_true", help="no progress bars")
    zs.set_defaults(func=cmd_zeroshot)

    rt = sub.add_parser(
        "retrieve", help="nearest cases and report sentences to an image or text with an image-text run (medssl align)",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog="""\
galleries: a single query searches every split of the source; --evaluate queries the test split against
train+val, leaving each query's own patient out. Indexes are built on first use and kept in RUN/retrieval/<source>/
(rebuilt when the run or the source changes, or with --rebuild). Patients and studies are shown as digests
(p-..., s-...), never as the source's raw ids.

examples:
  medssl retrieve runs/convirt --text "large right pleural effusion" --k 5
      the 5 nearest images and report sentences of the built-in synthetic data with the run's parameters
  medssl retrieve runs/convirt --image scan.dcm --data labelled/manifest.csv --json
      the cases of your data nearest to a DICOM (or PNG, ...) image, as one JSON object
  medssl retrieve runs/convirt --evaluate --k 1,5,10
      Precision@K, Recall@K, mAP and chance for image->image, text->image and image->text""")
    rt.add_argument("run", help="run folder or checkpoint of medssl align (convirt, clip, gloria)")
    rt.add_argument("--image", help="query image file (PNG, JPEG, TIFF, DICOM, NIfTI)")
    rt.add_argument("--text", help="query text, e.g. a finding or a report sentence")
    rt.add_argument("--k", metavar="K[,K...]",
                    help="hits per index for a query (default 5); the Ks of --evaluate (default 1,5,10)")
    rt.add_argument("--evaluate", action="store_true",
                    help="score retrieval on the test split (writes RUN/retrieval/evaluate.json)")
    rt.add_argument("--data", help="labelled source: manifest .csv, folder, .npz (default: built-in synthetic data "
                    "with the run's parameters)")
    rt.add_argument("--rebuild", action="store_true", help="rebuild the saved indexes even if they are current")
    rt.add_argument("--threads", type=int, help="CPU threads for encoding and search (default: torch's current)")
    rt.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    rt.add_argument("--skip-bad", action="store_true", help="go on past unreadable gallery images and list them")
    rt.add_argument("--quiet", action="store_true", help="no progress bars")
    rt.set_defaults(func=cmd_retrieve)

    pr = sub.add_parser("predict", help="class probabilities of images from a classifier bundle (medssl evaluate's)")
    pr.add_argument("bundle", help="bundle file (RUN/evaluate/bundles/finetune.pt) or run folder")
    pr.add_argument("images", nargs="+", help="image files (PNG, JPEG, TIFF, DICOM, NIfTI) or folders")
    pr.add_argument("--json", action="store_true", help="one JSON object instead of one line per image")
    pr.set_defaults(func=cmd_predict)

    sv = sub.add_parser(
        "serve", help="a web page and JSON API over a run: findings, draft reports, similar cases, heat map",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=(
            "examples:\n  medssl serve runs/demo                      # http://127.0.0.1:8000/ on this machine only\n"
            "  MEDSSL_TOKEN=... medssl serve runs/demo --host 0.0.0.0   # beyond loopback: a token is required\n"
            "API: POST /v1/analyze (multipart 'file'), POST /v1/studies/UID/analyze (with --pacs), GET /v1/model, "
            "GET /healthz, /docs"))
    sv.add_argument("run", help="run folder of medssl demo / run, or of report train, evaluate; or a bundle file")
    sv.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--token-file", help="API token (first line); or set MEDSSL_TOKEN. Never on the command line")
    sv.add_argument("--workers", type=int, default=2, help="inference threads (requests run concurrently)")
    sv.add_argument("--max-upload-mb", type=int, default=20)
    sv.add_argument("--threads", type=int, help="torch threads (default: cores, at most 4)")
    sv.add_argument("--pacs", metavar="URL", help="DICOMweb root of a PACS: POST /v1/studies/UID/analyze pulls a "
                    "study by its UID (credentials as for medssl pacs: MEDSSL_PACS_USER / _PASSWORD / _TOKEN)")
    sv.add_argument("--pacs-auth-file", help="the PACS's credentials file (as medssl pacs --auth-file)")
    sv.add_argument("--pacs-ca-bundle", help="CA bundle for an https PACS")
    sv.add_argument("--pacs-timeout", type=float, default=30.0, help="seconds to wait for each PACS answer")
    sv.set_defaults(func=cmd_serve)

    rep = sub.add_parser("report", help="report generation: train, generate, label findings").add_subparsers(
        dest="report_command", required=True)
    rt = rep.add_parser("train", help="train an LSTM / Transformer report generator or build a retrieval reporter",
                        formatter_class=argparse.RawDescriptionHelpFormatter, epilog="""examples:
  medssl align --config configs/convirt.yaml --out runs/convirt
  medssl report train --config configs/report_lstm.yaml --set encoder.run=runs/convirt --out runs/report_lstm
      an attention LSTM on the frozen ConVIRT encoder (built-in synthetic studies) -> runs/report_lstm/report.html
  medssl report train --config configs/report_retrieval.yaml --set encoder.run=runs/convirt --out runs/repair
      retrieval-based reports (CXR-RePaiR): k chosen on validation""")
    rt.add_argument("--config", help="YAML config (configs/report_lstm.yaml, report_transformer.yaml, "
                                     "report_retrieval.yaml); default: an LSTM with default settings")
    rt.add_argument("--data", help="manifest .csv, folder or .npz with reports (default: built-in synthetic)")
    rt.add_argument("--out", required=True, help="run folder")
    rt.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config value, e.g. --set train.steps=100 (repeatable)")
    rt.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    rt.add_argument("--quiet", action="store_true", help="no progress bars")
    rt.set_defaults(func=cmd_report_train)
    rg = rep.add_parser("generate", help="draft reports of images or study folders (one folder = one study)")
    rg.add_argument("run", help="run folder of `medssl report train`")
    rg.add_argument("images", nargs="+", help="image files (DICOM, PNG, JPEG) or folders of a study's views")
    rg.add_argument("--beam", type=int, help="beam size (default: the run's; 1 = greedy)")
    rg.add_argument("--json", action="store_true", help="findings, probabilities, report and sources as JSON")
    rg.add_argument("--out", help="also write OUT/reports.json (the drafts and the model's identity): what "
                    "`medssl pacs push OUT` stores in a PACS")
    rg.set_defaults(func=cmd_report_generate)
    rl = rep.add_parser("label", help="CheXpert-style finding labels of report texts (rules with negation)")
    rl.add_argument("source", nargs="?", default="-", help="text file (one report per line), CSV, or - for "
                                                          "standard input (default)")
    rl.add_argument("--column", help="the CSV column holding the reports")
    rl.add_argument("--json", action="store_true", help="one JSON object per report: each finding's status")
    rl.set_defaults(func=cmd_report_label)

    pacs = sub.add_parser("pacs", help="read studies from a PACS over DICOMweb, write draft reports back as DICOM "
                          "SR").add_subparsers(dest="pacs_cmd", required=True)
    pull = pacs.add_parser(
        "pull", help="QIDO-RS search + WADO-RS retrieve into a folder with manifest.csv (pseudonymised; resumable)",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=(
            "examples:\n  MEDSSL_PACS_USER=... MEDSSL_PACS_PASSWORD=... medssl pacs pull --url "
            "http://127.0.0.1:8042/dicom-web --study 1.2.3.4 --out pulled\n"
            "  medssl pacs pull --url URL --query ModalitiesInStudy=CR --query StudyDate=20240101-20240131 "
            "--out pulled"))
    _pacs_options(pull)
    what = pull.add_mutually_exclusive_group(required=True)
    what.add_argument("--study", help="a Study Instance UID")
    what.add_argument("--query", action="append", metavar="KEY=VALUE",
                      help="QIDO-RS study filter (DICOM keyword or tag; repeatable), e.g. StudyDate=20240101-")
    pull.add_argument("--out", required=True, help="folder to pull into (an earlier pull's folder goes on)")
    pull.add_argument("--jobs", type=int, default=4, help="instances fetched at a time (default 4)")
    pull.set_defaults(func=cmd_pacs_pull)
    push = pacs.add_parser(
        "push", help="store draft reports (medssl report generate --out DIR) as DICOM Enhanced SR in their studies",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=(
            "example:\n  medssl report generate runs/demo/report/lstm pulled --out drafts\n"
            "  medssl pacs push drafts --url http://127.0.0.1:8042/dicom-web\n"
            "Each SR is UNVERIFIED / PARTIAL / PRELIMINARY: a draft for a radiologist. Pushing again stores "
            "nothing twice."))
    push.add_argument("run", help="folder holding reports.json (medssl report generate ... --out)")
    _pacs_options(push)
    push.set_defaults(func=cmd_pacs_push)

    data = sub.add_parser("data", help="synthesise, index, inspect and split data").add_subparsers(
        dest="data_command", required=True)
    synth = data.add_parser("synth", help="write synthetic chest radiographs, masks, reports and manifest.csv")
    synth.add_argument("out", help="folder to write (new, empty, or an earlier synthetic output)")
    synth.add_argument("--patients", type=int, default=100, help="patients, each with 1-3 studies (default 100)")
    synth.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    synth.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    synth.set_defaults(func=cmd_data_synth)

    index = data.add_parser("index", help="walk a folder of images (PNG/JPEG/TIFF/DICOM/NIfTI), write manifest.csv")
    index.add_argument("dir", help="folder of images, searched recursively")
    index.add_argument("--out", help="manifest path (default DIR/manifest.csv)")
    index.add_argument("--patients", help="CSV with path or filename + patient_id/study_id/view/labels/report")
    index.add_argument("--labels-from-folders", action="store_true", help="label = name of the image's folder")
    index.add_argument("--no-verify", action="store_true", help="read headers only, do not decode every image")
    index.set_defaults(func=cmd_data_index)

    info = data.add_parser("info", help="summarise a data source (default: built-in synthetic data)")
    info.add_argument("source", nargs="?", help="manifest .csv, folder, .npz or image file")
    info.add_argument("--json", help="also write the summary as JSON here")
    info.set_defaults(func=cmd_data_info)

    split = data.add_parser("split", help="patient-level stratified train/val/test split -> manifest")
    split.add_argument("source", nargs="?", help="manifest .csv, folder, .npz (default: built-in synthetic data)")
    split.add_argument("--out", required=True, help="manifest to write")
    split.add_argument("--fractions", type=_floats, default=[0.7, 0.1, 0.2], help="train,val,test (default 0.7,0.1,0.2)")
    split.add_argument("--label-fractions", type=_floats, default=[], help="e.g. 0.01,0.1: nested training subsets")
    split.add_argument("--seed", type=int, default=0, help="split seed: same seed, same split (default 0)")
    split.add_argument("--no-stratify", action="store_true", help="do not stratify on each patient's rarest label")
    split.add_argument("--keep-existing", action="store_true", help="keep splits the source already has (MedMNIST)")
    split.set_defaults(func=cmd_data_split)

    cache = data.add_parser(
        "cache", help="decode a source once into its image cache (what every later run reads), or clear caches",
        description="Decode every image of a source at one size into its decoded-image cache, on every core,\n"
                    "so that pretraining, evaluation and the other commands start without decoding. A later\n"
                    "run decodes again only files that changed. The cache lives beside the data when that folder\n"
                    "is writable, else under $MEDSSL_CACHE or ~/.cache/medssl (--cache names another place).",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog="""examples:
  medssl data cache /data/cxr --size 224
      every image of the folder (its manifest.csv, else indexed) decoded at 224 px, in parallel
  medssl data cache ../shared/data/pneumoniamnist_28.npz --size 28 --cache /scratch/medssl-cache
      somewhere else than beside the data (a read-only or slow share)
  medssl data cache --clear
      remove every cache under $MEDSSL_CACHE or ~/.cache/medssl (with SOURCE: the ones beside it)""")
    cache.add_argument("source", nargs="?", help="manifest .csv, folder or .npz")
    cache.add_argument("--size", type=int, help="image side in pixels, as the runs will use it (data.size)")
    cache.add_argument("--cache", help="cache root (default: beside the data, $MEDSSL_CACHE, ~/.cache/medssl)")
    cache.add_argument("--workers", type=int, help="decoding processes (default: every core)")
    cache.add_argument("--clear", action="store_true", help="remove the caches instead of building one")
    cache.set_defaults(func=cmd_data_cache)

    for sp in (synth, index, info, split, cache):
        sp.add_argument("--quiet", action="store_true", help="no progress bars")
    for sp in (index, info, split, cache):
        sp.add_argument("--skip-bad", action="store_true", help="go on past unreadable images and list them")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse, run, and turn bad input into one line on stderr with exit code 2."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except MedsslError as e:
        print(f"medssl: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as e:  # unwritable output folder, disk full: name the file
        print(f"medssl: error: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("medssl: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

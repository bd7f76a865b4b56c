"""The SSCMIRG run on built-in synthetic data (`medssl demo`).

Stages so far: synthesise -> index (decode every image) -> patient-level split and nested label fractions ->
summarise, with a JSON summary, plots and an HTML run report. Pretraining, evaluation, image-text alignment and
report generation join this run as they land.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from medssl import __version__, html
from medssl.data import plots
from medssl.data.records import read_manifest, write_manifest
from medssl.data.sources import check_images
from medssl.data.splits import assign_splits, by_split, label_fraction
from medssl.data.summary import format_summary, summarize
from medssl.synthetic import write_synthetic
from medssl.errors import MedsslError

LABEL_FRACTIONS = (0.01, 0.1, 1.0)


def _say(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def _fractions_table(train: list, seed: int) -> list[dict]:
    """Nested label fractions of the training split, checked: each smaller draw lies inside the larger one."""
    rows, previous = [], set()
    for frac in LABEL_FRACTIONS:
        chosen = label_fraction(train, frac, seed)
        keys = {r.key for r in chosen}
        if not previous <= keys:
            raise AssertionError(f"label fraction {frac} does not contain the smaller one")  # a bug, not bad input
        previous = keys
        rows.append({"fraction": frac, "images": len(chosen), "patients": len({r.patient_id for r in chosen}),
                     "classes present": len({n for r in chosen for n in r.labels})})
    return rows


def run_demo(out: Path, patients: int = 120, size: int = 64, seed: int = 0, progress: bool = True) -> dict:
    """Run the data stages into `out` and write metrics.json, plots and report.html there."""
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (out / "metrics.json").is_file():
        raise MedsslError(f"{out}: folder exists, is not empty and is not an earlier demo run; choose another --out")
    data_dir = out / "data"
    if data_dir.exists():
        shutil.rmtree(data_dir)  # an earlier demo's data: regenerate so the run matches its seed and size
    t0 = time.perf_counter()
    manifest = write_synthetic(data_dir, patients, size, seed, progress=progress)
    _say(f"synthesised {patients} patients of chest radiographs ({size} px) with masks and reports -> {manifest}")
    records, _ = check_images(read_manifest(manifest), skip_bad=False, progress=progress)
    _say(f"indexed and decoded {len(records)} images")
    records = assign_splits(records, (0.7, 0.1, 0.2), seed)
    parts = by_split(records)
    write_manifest(records, out / "manifest.csv")
    _say("patient-level split (stratified, no patient in two splits): "
         + ", ".join(f"{k} {len(v)}" for k, v in parts.items() if v) + f" -> {out / 'manifest.csv'}")
    fractions = _fractions_table(parts["train"], seed)
    _say("nested label fractions of train: " + ", ".join(f"{r['fraction']:g} -> {r['images']} images" for r in fractions))
    summary = summarize(records, progress=False)
    print(format_summary(summary, "synthetic chest radiographs"))
    plot_dir = out / "plots"
    plot_dir.mkdir(exist_ok=True)
    montage = plots.montage(records, plot_dir / "samples.png", n=16)
    balance = plots.label_balance(summary, plot_dir / "label_balance.png")
    metrics = {"version": __version__, "seed": seed, "size": size, "data": summary, "label_fractions": fractions,
               "seconds": round(time.perf_counter() - t0, 2)}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    report = html.write_report(out / "report.html", "medssl demo: synthetic chest radiographs", [
        ("What ran", html.paragraph(
            f"Synthesised {patients} patients ({len(records)} images, {size} px, seed {seed}), decoded every image, "
            "split by patient (70/10/20, stratified on the rarest finding) and drew nested label fractions. "
            "The data are synthetic phantoms, not real patients.")),
        ("Samples (red: finding masks)", html.image(montage, "samples")),
        ("Label balance", html.image(balance, "label balance")),
        ("Label fractions of the training split", html.table(fractions)),
        ("Summary", html.preformatted(format_summary(summary, "synthetic chest radiographs"))),
    ])
    _say(f"wrote {out / 'metrics.json'}, {plot_dir}/ and {report} in {metrics['seconds']} s")
    return metrics

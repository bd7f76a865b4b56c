"""What `medssl serve` runs: the models of one run folder, loaded once, and `analyze(bytes)` for one uploaded image.

A run folder of `medssl demo` (or `medssl run`) holds every part; a folder or file of a single command holds one:
- findings: the classifier bundle `medssl evaluate` kept with the best test AUC (RUN/evaluate/*/bundles/*.pt,
  or RUN itself when it is a bundle or an evaluate run), with a Grad-CAM heat map of its top finding;
- a generated draft report: RUN/report/lstm or RUN/report/transformer (or RUN, a generator run);
- a retrieval-based draft with its source sentences: RUN/report/retrieval (or RUN, a retrieval run);
- the most similar cases: the align run's image index (RUN/align/*, or the retrieval report's align run), the
  one `medssl retrieve` builds and keeps.
Whatever is missing is said in `describe()` and left out of the answer; a folder with none of them is refused.

`analyze` mutates nothing shared: the models are in eval mode with gradients off (Grad-CAM differentiates to the
feature map only, without hooks: grad_cam_map), so concurrent requests do not interfere. An upload is decoded from
memory (data.io.read_image_bytes) and nothing of a DICOM's patient identity reaches the answer: the findings, texts
and similar cases name no patient and no file path.
"""

from __future__ import annotations

import base64
import io
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medssl import __version__
from medssl.data.io import read_image_bytes
from medssl.errors import MedsslError

GENERATORS = ("lstm", "transformer")


@dataclass
class Engine:
    """The loaded parts of a run (any may be None) and what they were trained on."""

    run: Path
    classifier: Any = None  # inference.Bundle
    classifier_path: Path | None = None
    heatmaps: bool = False  # the classifier has a convolutional feature map to explain
    generator: Any = None  # report.bundle.ReportRun
    generator_path: Path | None = None
    retrieval: Any = None  # report.bundle.ReportRun (retrieval)
    retrieval_path: Path | None = None
    aligned: Any = None  # ImageTextRun for similar cases
    gallery: Any = None  # retrieve_run.Gallery
    gallery_path: Path | None = None
    notes: list[str] = field(default_factory=list)
    loaded_at: float = field(default_factory=time.time)

    def describe(self) -> dict[str, Any]:
        """GET /v1/model: what is loaded, from where, trained on what, its test metrics."""
        out: dict[str, Any] = {"medssl": __version__, "run": self.run.name, "notes": list(self.notes),
                               "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.loaded_at))}
        if self.classifier is not None:
            m = self.classifier.meta
            out["classifier"] = {"file": _rel(self.classifier_path, self.run), "task": self.classifier.task.to_dict(),
                                 "protocol": m.get("protocol"), "fraction": m.get("fraction"),
                                 "image_size": self.classifier.preprocess.size,
                                 "pretrained_from": _name(m.get("pretrained_from")),
                                 "trained_on": _name(m.get("trained_on")), "test_metrics": m.get("test_metrics")}
        for key, part, path in (("generator", self.generator, self.generator_path),
                                ("retrieval", self.retrieval, self.retrieval_path)):
            if part is not None:
                test = _test_metrics(path)
                out[key] = {"folder": _rel(path, self.run), "method": part.method, "views": part.views,
                            "image_size": part.preprocess.size, "source": _name(part.meta.get("source")),
                            "test": {"bleu4": (test.get("nlg") or {}).get("bleu4"),
                                     "rouge_l": (test.get("nlg") or {}).get("rouge_l"),
                                     "clinical_f1": ((test.get("clinical") or {}).get("micro") or {}).get("f1")}}
        if self.gallery is not None:
            out["similar_cases"] = {"folder": _rel(self.gallery_path, self.run), "images": len(self.gallery.images)}
        return out

    def analyze(self, data: bytes, name: str = "upload", k: int = 5, heatmap: bool = True) -> dict[str, Any]:
        """One image's findings, draft reports and similar cases; MedsslError (a 4xx) when it cannot be read."""
        t0 = time.perf_counter()
        pixels, meta = read_image_bytes(data, name)
        out = self._analyze([(pixels, meta)], k, heatmap)
        out["seconds"] = round(time.perf_counter() - t0, 4)
        return out

    def analyze_study(self, images: list[bytes], k: int = 5, heatmap: bool = True) -> dict[str, Any]:
        """A study's images (a PACS's DICOMs): findings, heat map and similar cases of its first frontal view, the
        draft reports from its frontal and lateral views together (as `medssl report generate` reads a study)."""
        t0 = time.perf_counter()
        decoded = [read_image_bytes(data, f"image {i + 1}") for i, data in enumerate(images)]
        if not decoded:
            raise MedsslError("the study holds no image")
        from medssl.report.studies import is_lateral

        frontal = [d for d in decoded if not is_lateral(d[1].get("view") or "")]
        lateral = [d for d in decoded if is_lateral(d[1].get("view") or "")]
        views = (frontal[:1] or lateral[:1]) + (lateral[:1] if frontal else lateral[1:2])
        out = self._analyze(views, k, heatmap)
        out["study"] = {"images": len(decoded), "views_used": [d[1].get("view") or "unknown" for d in views]}
        out["seconds"] = round(time.perf_counter() - t0, 4)
        return out

    def _analyze(self, views: list[tuple[np.ndarray, dict]], k: int, heatmap: bool) -> dict[str, Any]:
        pixels, meta = views[0]
        out: dict[str, Any] = {"draft": True, "notice": "Draft for a radiologist's review; not a diagnosis.",
                               "image": {"format": meta.get("format"), "width": int(pixels.shape[1]),
                                         "height": int(pixels.shape[0]), "view": meta.get("view"),
                                         "modality": meta.get("modality"),
                                         "png": overlay_png(pixels, None)}}
        with torch.no_grad():
            if self.classifier is not None:
                out["findings"] = self._findings(pixels, heatmap, out)
            for key, part in (("report", self.generator), ("retrieval_report", self.retrieval)):
                if part is not None:
                    decoded = [part.preprocess.decode(p) for p, _ in views[:part.views]]
                    images = torch.zeros(1, part.views, *decoded[0].shape, dtype=torch.uint8)
                    have = torch.zeros(1, part.views, dtype=torch.bool)
                    for slot, x in enumerate(decoded):
                        images[0, slot], have[0, slot] = x, True
                    from medssl.report.bundle import write_reports

                    r = write_reports(part, images, have)[0]
                    out[key] = {"method": part.method, "text": r["report"],
                                "findings": {n: round(p, 4) for n, p in r["findings"].items()}}
                    if "sources" in r:
                        out[key]["sources"] = r["sources"]
            if self.gallery is not None:
                from medssl.retrieve_run import encode_image_tensor, hits

                q = encode_image_tensor(self.aligned, self.aligned.preprocess.decode(pixels)[None])
                out["similar_cases"] = [{"rank": h["rank"], "score": round(h["score"], 4), "study": h["study"],
                                         "labels": h["labels"]}
                                        for h in hits(self.gallery.images, self.gallery.image_studies, q, k, "image")]
        return out

    def _findings(self, pixels: np.ndarray, heatmap: bool, out: dict[str, Any]) -> list[dict[str, Any]]:
        from medssl.inference import class_probabilities

        b = self.classifier
        names = list(b.task.classes)
        probs = class_probabilities(b, [pixels])[0]
        ranked = sorted(zip(names, map(float, probs)), key=lambda t: -t[1])
        if heatmap and self.heatmaps:
            x = b.preprocess.to_input(b.preprocess.decode(pixels)[None])
            explain = names.index(ranked[0][0]) if b.task.kind != "binary" else 0  # binary: one logit
            cam = grad_cam_map(b.model, x, explain)
            out["heatmap"] = {"finding": ranked[0][0] if b.task.kind != "binary" else names[-1],
                              "png": overlay_png(pixels, cam)}
        return [{"finding": n, "probability": round(p, 4)} for n, p in ranked]


def grad_cam_map(classifier: torch.nn.Module, x: torch.Tensor, class_index: int) -> np.ndarray:
    """Grad-CAM (Selvaraju et al. 2017) of one image (1, C, S, S) for one logit over the backbone's last feature map:
    ReLU of the map weighted by its mean gradient, scaled to [0, 1], at the input's size. No hooks and no copy: the
    shared model is only read (torch.autograd.grad to the map, never into the weights), so concurrent requests are
    safe. (evaluate.plots.grad_cam runs MONAI's GradCAM on a copy of the model instead: fine once per evaluation,
    but that copy and its hooks were never freed and cost about 10 MB a request in a service.)"""
    with torch.enable_grad():
        maps = classifier.backbone.forward_features(x)
        if maps.ndim != 4:
            raise MedsslError("Grad-CAM needs a convolutional feature map")
        logits = classifier.head(maps.mean(dim=(2, 3)))
        grads = torch.autograd.grad(logits[:, class_index].sum(), maps)[0]
    with torch.no_grad():
        cam = torch.relu((grads.mean(dim=(2, 3), keepdim=True) * maps).sum(dim=1, keepdim=True))
        cam = torch.nn.functional.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
        lo, hi = cam.min(), cam.max()
        return ((cam - lo) / (hi - lo).clamp_min(1e-12)).numpy()


def overlay_png(image: np.ndarray, cam: np.ndarray | None, size: int = 256) -> str:
    """A grey image (H, W) in [0, 1], with a jet heat map (h, w) in [0, 1] over it unless cam is None, as a PNG
    data URL `size` pixels wide."""
    from matplotlib import colormaps
    from PIL import Image

    h, w = image.shape
    grey = Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8)).resize((size, max(1, size * h // w)),
                                                                                 Image.BILINEAR)
    mixed = np.repeat(np.asarray(grey, dtype=np.float32)[..., None] / 255, 3, axis=2)
    if cam is not None:
        c = Image.fromarray((np.clip(cam, 0, 1) * 255).astype(np.uint8)).resize(grey.size, Image.BILINEAR)
        heat = colormaps["jet"](np.asarray(c, dtype=np.float32) / 255)[..., :3]
        mixed = 0.6 * mixed + 0.4 * heat
    img = Image.fromarray((mixed.clip(0, 1) * 255).astype(np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _test_metrics(folder: Path | None) -> dict[str, Any]:
    """The test scores a report run wrote (metrics.json), or {}."""
    import json

    try:
        return json.loads((Path(folder) / "metrics.json").read_text()).get("test") or {}
    except (OSError, ValueError, TypeError):
        return {}


def _rel(path: Path | None, run: Path) -> str | None:
    if path is None:
        return None
    try:
        return str(path.resolve().relative_to(run.resolve()))
    except ValueError:
        return path.name


def _name(value: Any) -> str | None:
    """A data or run path by its last part only (a server does not hand out its file system)."""
    return None if not value else Path(str(value)).name


def _best_bundle(run: Path) -> Path | None:
    if run.is_file():
        return run
    found = sorted(run.glob("evaluate/*/bundles/*.pt")) + sorted(run.glob("bundles/*.pt"))
    if not found:
        return None
    def auc(p: Path) -> float:
        try:
            m = torch.load(p, map_location="cpu", weights_only=False).get("test_metrics") or {}
            return float(m.get("roc_auc_macro") or m.get("roc_auc") or 0.0)
        except Exception:  # noqa: BLE001 - an unreadable bundle is reported when it is loaded
            return -1.0
    return max(found, key=auc)


def _first(run: Path, names: tuple[str, ...]) -> Path | None:
    for n in names:
        if (run / "report" / n / "model.pt").is_file():
            return run / "report" / n
    return None


def load_engine(run: str | Path, progress: bool = False) -> Engine:
    """Every part the run folder holds, loaded once (MedsslError when it holds none)."""
    run = Path(run)
    if not run.exists():
        raise MedsslError(f"{run}: no such run folder or file")
    engine = Engine(run)
    from medssl.report.bundle import GENERATOR, load_report_run

    if run.is_dir() and (run / "model.pt").is_file():
        own = load_report_run(run)
        if own.kind == GENERATOR:
            engine.generator, engine.generator_path = own, run
        else:
            engine.retrieval, engine.retrieval_path = own, run
    else:
        bundle = _best_bundle(run)
        if bundle is not None:
            from medssl.evaluate.outputs import _target_layer
            from medssl.inference import load_bundle

            b = load_bundle(bundle)
            if b.is_classifier:
                engine.classifier, engine.classifier_path = b, bundle
                engine.heatmaps = _target_layer(b.model) is not None
                if not engine.heatmaps:
                    engine.notes.append("no heat map: the classifier has no convolutional feature map")
        gen = _first(run, GENERATORS) if run.is_dir() else None
        if gen is not None:
            engine.generator, engine.generator_path = load_report_run(gen), gen
        ret = _first(run, ("retrieval",)) if run.is_dir() else None
        if ret is not None:
            engine.retrieval, engine.retrieval_path = load_report_run(ret), ret
    _load_gallery(engine, run, progress)
    if all(p is None for p in (engine.classifier, engine.generator, engine.retrieval, engine.gallery)):
        raise MedsslError(f"{run}: holds no classifier bundle, report run or align run to serve (give a run folder "
                          "of medssl demo, medssl report train or medssl evaluate, or a bundle file)")
    return engine


def _load_gallery(engine: Engine, run: Path, progress: bool) -> None:
    """The align run's image index for similar cases (built and kept by `medssl retrieve` on first use)."""
    aligns = sorted(p for p in run.glob("align/*") if (p / "checkpoints").is_dir() or (p / "final.pt").is_file()) \
        if run.is_dir() else []
    if not aligns:
        engine.notes.append("no similar cases: the run holds no align run")
        return
    from medssl.retrieve_run import ALL_SPLITS, FOLDER, gallery, source_key
    from medssl.zeroshot_run import load_run_source

    align = aligns[0]
    out = align / FOLDER
    aligned, plan = load_run_source(align, None, out, progress=progress, classify=False)
    engine.gallery = gallery(aligned, align, plan, ALL_SPLITS, out / source_key(None), progress=progress)
    engine.aligned, engine.gallery_path = aligned, align

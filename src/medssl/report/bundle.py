"""A trained report run, loaded for use: `load_report_run(path) -> ReportRun` and `write_reports(run, views)`.

Two kinds of checkpoint, both written by `medssl report train`:
- "report_generator": a ReportModel (encoder + decoder + finding head), its DecoderSpec, the encoder's ModelSpec,
  the report tokenizer, the preprocess and the generation settings;
- "report_retrieval": an aligned model (its weights as "model"; spec, tokenizer, preprocess), the corpus (the
  training reports' sentences or whole reports, their embeddings, optional centring biases), the chosen k and
  near-duplicate threshold, and a linear probe on the aligned image embeddings that gives the finding
  probabilities.
Loading imports no training code. A checkpoint of another kind, or a tokenizer whose vocabulary does not match the
decoder's, is one line naming the file (exit 2).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from medssl.aligned import ImageTextRun, image_text_from_checkpoint
from medssl.checkpoint import load_checkpoint, resolve_checkpoint
from medssl.data.preprocess import Preprocess
from medssl.errors import MedsslError
from medssl.models.decoders import DecoderSpec
from medssl.models.factory import ModelSpec, build_backbone
from medssl.models.report_model import ReportModel
from medssl.report.generate import GenerateConfig, generate
from medssl.report.labeler import label_reports
from medssl.report.retrieval_based import retrieve_reports, word_set
from medssl.text.tokenizer import ReportTokenizer

GENERATOR, RETRIEVAL = "report_generator", "report_retrieval"
MODEL = "model.pt"  # in a report run folder: the weights kept (best validation loss), what generation loads
KINDS = (GENERATOR, RETRIEVAL)


@dataclass
class ReportRun:
    """What writes a report for a study's views."""

    kind: str
    method: str  # lstm, transformer or retrieval
    preprocess: Preprocess
    views: int
    findings: tuple[str, ...]  # the names of the finding probabilities
    meta: dict[str, Any]
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    model: ReportModel | None = None
    tokenizer: ReportTokenizer | None = None
    aligned: ImageTextRun | None = None
    bank_texts: list[str] = field(default_factory=list)
    bank: np.ndarray | None = None  # (M, D) unit sentence embeddings
    bank_words: list[frozenset[str]] = field(default_factory=list)
    bank_statuses: list[dict[str, str]] = field(default_factory=list)  # the labeller's reading of each sentence
    bias: np.ndarray | None = None  # (M,) subtracted from the cosines when the run centres (see retrieval_based)
    k: int = 3
    dup_jaccard: float = 0.6
    probe: tuple[np.ndarray, np.ndarray] | None = None  # (K, D) weights and (K,) bias on aligned embeddings


def _build_generator(ckpt: dict[str, Any], path: Path) -> tuple[ReportModel, ReportTokenizer]:
    try:
        spec = DecoderSpec.from_dict(ckpt["decoder"])
        encoder_spec = ModelSpec.from_dict(ckpt["encoder_spec"])
        tokenizer = ReportTokenizer.from_json(ckpt["tokenizer"])
    except (KeyError, TypeError, ValueError) as e:
        raise MedsslError(f"{path}: its report model description is unreadable ({e})") from None
    if tokenizer.vocab_size != spec.vocab_size:
        raise MedsslError(f"{path}: vocabulary mismatch: the tokenizer has {tokenizer.vocab_size} tokens, the decoder "
                          f"{spec.vocab_size}; the checkpoint is damaged or mixed from two runs")
    torch.manual_seed(0)
    model = ReportModel(spec, build_backbone(encoder_spec), n_findings=len(ckpt.get("findings") or ()),
                        freeze_encoder=True)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise MedsslError(f"{path}: weights do not fit the stored report model: {str(e).splitlines()[0][:300]}"
                          ) from None
    return model.eval(), tokenizer


def load_report_run(path: str | Path) -> ReportRun:
    """A run folder (its model.pt: the weights training kept) or checkpoint of `medssl report train` -> ReportRun
    (eval mode, CPU)."""
    path = Path(path)
    path = resolve_checkpoint(path / MODEL if path.is_dir() and (path / MODEL).is_file() else path)
    ckpt = load_checkpoint(path)
    kind = ckpt.get("kind")
    if kind not in KINDS:
        what = ckpt.get("spec", {}).get("method") if isinstance(ckpt.get("spec"), dict) else None
        raise MedsslError(f"{path}: is a {what or kind or 'plain'} checkpoint, not a report model: give a run "
                          "folder of `medssl report train`")
    try:
        preprocess = Preprocess.from_dict(ckpt["preprocess"])
        gen = GenerateConfig(**ckpt.get("generate", {}))
    except (KeyError, TypeError, ValueError) as e:
        raise MedsslError(f"{path}: its preprocess or generation settings are unreadable ({e})") from None
    meta = {k: v for k, v in ckpt.items() if k not in ("model", "optimizer", "scheduler", "rng", "validation",
                                                       "align", "bank")}
    run = ReportRun(kind, str(ckpt.get("method")), preprocess, int(ckpt.get("views", 2)),
                    tuple(ckpt.get("findings") or ()), meta, gen)
    if kind == GENERATOR:
        run.model, run.tokenizer = _build_generator(ckpt, path)
        return run
    bank = ckpt.get("bank") or {}
    if not isinstance(ckpt.get("align"), dict) or "texts" not in bank or "embeddings" not in bank:
        raise MedsslError(f"{path}: a retrieval report run without its aligned model or sentence bank")
    run.aligned = image_text_from_checkpoint({**ckpt["align"], "model": ckpt["model"]}, path)
    run.bank_texts = list(bank["texts"])
    run.bank = np.asarray(bank["embeddings"], dtype=np.float32)
    run.bank_words = [word_set(t) for t in run.bank_texts]
    run.bank_statuses = label_reports(run.bank_texts)
    if bank.get("bias") is not None:
        run.bias = np.asarray(bank["bias"], dtype=np.float32)
    run.k, run.dup_jaccard = int(ckpt["k"]), float(ckpt["dup_jaccard"])
    if ckpt.get("probe") is not None:
        run.probe = (np.asarray(ckpt["probe"]["weight"]), np.asarray(ckpt["probe"]["bias"]))
    return run


_SENTENCE_START = re.compile(r"(^|[.!?]\s+)([a-z])")


def present(text: str) -> str:
    """Generated lower-case text as a reader expects it: each sentence starting with a capital."""
    text = re.sub(r"\s+([.,;:!?])", r"\1", " ".join(text.split()))
    return _SENTENCE_START.sub(lambda m: m.group(1) + m.group(2).upper(), text)


def study_inputs(preprocess: Preprocess, images: Tensor) -> Tensor:
    """(B, V, 1, S, S) uint8 study views -> (B, V, C, size, size) model inputs."""
    b, v = images.shape[:2]
    x = preprocess.to_input(images.flatten(0, 1))
    return x.reshape(b, v, *x.shape[1:])


def aligned_study_embeddings(aligned: ImageTextRun, images: Tensor, views: Tensor, batch: int = 64) -> np.ndarray:
    """(B, V, 1, S, S) uint8 study views -> (B, D) unit embeddings: the mean of the existing views' embeddings."""
    out = []
    with torch.no_grad():
        for lo in range(0, len(images), batch):
            x, have = images[lo:lo + batch], views[lo:lo + batch].bool()
            b, v = x.shape[:2]
            flat = aligned.preprocess.to_input(x.flatten(0, 1))
            z = aligned.model.encode_image(flat).reshape(b, v, -1) * have[..., None]
            out.append(torch.nn.functional.normalize(z.sum(1), dim=1))
    return torch.cat(out).numpy().astype(np.float32)


def write_reports(run: ReportRun, images: Tensor, views: Tensor, cfg: GenerateConfig | None = None,
                  batch: int = 32) -> list[dict[str, Any]]:
    """Per study (images (B, V, 1, S, S) uint8, views (B, V) bool): {"report", "findings": {name: probability},
    "sources": [{"sentence", "score"}] (retrieval only)}."""
    if images.ndim != 5 or images.shape[1] != run.views or views.shape != images.shape[:2]:
        raise MedsslError(f"expected study images (B, {run.views}, 1, S, S) and views (B, {run.views}), got "
                          f"{tuple(images.shape)} and {tuple(views.shape)}")
    if not bool(views.any(dim=1).all()):
        raise MedsslError("every study needs at least one image")
    results: list[dict[str, Any]] = []
    if run.kind == RETRIEVAL:
        assert run.aligned is not None and run.bank is not None
        z = aligned_study_embeddings(run.aligned, images, views)
        probs = None
        if run.probe is not None:
            probs = 1 / (1 + np.exp(-(z @ run.probe[0].T + run.probe[1])))
        for i, (text, sources) in enumerate(retrieve_reports(z, run.bank, run.bank_texts, run.k, run.dup_jaccard,
                                                             run.bank_words, run.bank_statuses, run.bias)):
            results.append({"report": present(text),
                            "findings": {} if probs is None else dict(zip(run.findings, map(float, probs[i]))),
                            "sources": [{"sentence": present(s), "score": round(c, 4)} for s, c in sources]})
        return results
    assert run.model is not None and run.tokenizer is not None
    cfg = cfg or run.generate
    with torch.no_grad():
        for lo in range(0, len(images), batch):
            x, have = study_inputs(run.preprocess, images[lo:lo + batch]), views[lo:lo + batch].bool()
            memory, mask = run.model.memory({"images": x, "views": have})
            ids = generate(run.model.decoder, memory, mask, cfg)
            logits = run.model.finding_logits(memory, mask)
            probs = torch.sigmoid(logits).numpy() if logits is not None else None
            for j, text in enumerate(run.tokenizer.decode(ids) if ids else []):
                results.append({"report": present(text),
                                "findings": {} if probs is None else dict(zip(run.findings, map(float, probs[j])))})
    return results

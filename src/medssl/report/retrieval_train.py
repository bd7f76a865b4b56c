"""The retrieval-based reporter's "training" (CXR-RePaiR): nothing is learnt but corpus, k and finding probe.

From an align run: the corpus (every distinct sentence of the training split's reports, or every distinct
training report, embedded by the aligned text encoder; which one is chosen on validation), a linear probe per
finding on the aligned image embeddings of the training studies (the finding probabilities shown beside the
text), and k, the sentences per report, chosen on the validation split by clinical F1 of the labeller's findings
(or BLEU-4), together with whether scores are centred by each unit's mean score on the training images (hubness;
see retrieval_based). Everything, the aligned model included, goes into OUT/model.pt, so the run needs nothing
else to write reports.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from medssl import __version__
from medssl.aligned import ESSENTIAL, load_image_text
from medssl.checkpoint import atomic_save, load_checkpoint, resolve_checkpoint
from medssl.report.bundle import MODEL, RETRIEVAL, aligned_study_embeddings
from medssl.report.config import ReportConfig, to_dict
from medssl.report.labeler import label_reports
from medssl.report.retrieval_based import retrieve_reports, word_set
from medssl.report.studies import Study, StudySet, study_tensors
from medssl.text.reports import split_sentences


def sentence_bank(studies: list[Study]) -> list[str]:
    """Distinct sentences of the studies' cleaned reports, in first-seen order."""
    return list(dict.fromkeys(s for st in studies for s in split_sentences(st.text)))


def fit_probe(z: np.ndarray, studies: list[Study], names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """One logistic regression per finding on the embeddings (N, D); a finding with one class in the training
    studies gets a constant: its training prevalence (clipped away from 0 and 1)."""
    from sklearn.linear_model import LogisticRegression

    weight, bias = np.zeros((len(names), z.shape[1]), np.float32), np.zeros(len(names), np.float32)
    for k, name in enumerate(names):
        y = np.array([name in s.labels for s in studies], dtype=np.int64)
        if 0 < y.sum() < len(y):
            clf = LogisticRegression(C=1.0, max_iter=2000).fit(z, y)
            weight[k], bias[k] = clf.coef_[0], clf.intercept_[0]
        else:
            p = float(np.clip(y.mean(), 0.01, 0.99))
            bias[k] = np.log(p / (1 - p))
    return {"weight": weight, "bias": bias}


@dataclass
class Bank:
    """Retrieval units (training sentences, or whole training reports), their embeddings and what selection uses."""

    unit: str
    texts: list[str]
    embeddings: np.ndarray  # (M, D) unit rows
    words: list[frozenset[str]]
    statuses: list[dict[str, str]]
    bias: np.ndarray  # (M,) each unit's mean score on the training images


def make_bank(unit: str, texts: list[str], aligned: Any, z_train: np.ndarray, progress: bool) -> Bank:
    from medssl.retrieve_run import encode_texts

    emb = encode_texts(aligned, texts, progress=progress)
    return Bank(unit, texts, emb, [word_set(t) for t in texts], label_reports(texts),
                (z_train @ emb.T).mean(axis=0).astype(np.float32))


def choose(cfg: ReportConfig, z_val: np.ndarray, val: list[Study], banks: dict[str, Bank]
           ) -> tuple[str, int, bool, list[dict[str, Any]]]:
    """(unit, k, centre) with the best validation score (cfg.retrieval.select_by) over sentences at each of ks
    and whole reports (k = 1), each with and without centring (unless cfg.retrieval sets them); the curve of all.
    CXR-RePaiR retrieves from either corpus; which fits depends on what the aligned model was trained on (a model
    aligned on whole reports embeds single sentences out of its training distribution)."""
    from medssl.report.metrics import clinical_efficacy_reports, nlg_metrics

    r = cfg.retrieval
    refs = [s.text for s in val]
    centres = (False, True) if r.center is None else (r.center,)
    units = ("sentence", "report") if r.unit is None else (r.unit,)
    curve = []
    for unit in units:
        b = banks[unit]
        ks = [1] if unit == "report" else [r.k] if r.k is not None else sorted(set(r.ks))
        for centre in centres:
            for k in ks:
                hyps = [h for h, _ in retrieve_reports(z_val, b.embeddings, b.texts, k, r.dup_jaccard, b.words,
                                                       b.statuses, b.bias if centre else None)]
                row = {"unit": unit, "k": k, "center": centre,
                       "clinical_f1": float(clinical_efficacy_reports(refs, hyps)["micro"]["f1"])}
                if r.select_by == "bleu4":
                    row["bleu4"] = float(nlg_metrics(refs, hyps, meteor=False)["bleu4"])
                curve.append(row)
    best = max(curve, key=lambda x: (x[r.select_by], -x["k"], not x["center"]))
    return str(best["unit"]), int(best["k"]), bool(best["center"]), curve


def build_retrieval(cfg: ReportConfig, studies: StudySet, out, progress: bool) -> dict[str, Any]:
    """Bank, probe, unit and k from the align run; OUT/model.pt written atomically. Returns what metrics.json
    keeps."""
    t0 = time.perf_counter()
    path = resolve_checkpoint(cfg.encoder.run)
    aligned = load_image_text(path)
    ckpt = load_checkpoint(path)
    train, val = studies.studies["train"], studies.studies["val"]
    z_train = aligned_study_embeddings(aligned, *study_tensors(train, studies.images, cfg.data.views))
    z_val = aligned_study_embeddings(aligned, *study_tensors(val, studies.images, cfg.data.views))
    probe = fit_probe(z_train, train, studies.label_names)
    units = ("sentence", "report") if cfg.retrieval.unit is None else (cfg.retrieval.unit,)
    corpora = {"sentence": lambda: sentence_bank(train), "report": lambda: list(dict.fromkeys(s.text for s in train))}
    banks = {u: make_bank(u, corpora[u](), aligned, z_train, progress) for u in units}
    unit, k, centre, curve = choose(cfg, z_val, val, banks)
    bank = banks[unit]
    # "model": the aligned model's weights (what every medssl checkpoint has); "align": the rest it is rebuilt from
    atomic_save({"kind": RETRIEVAL, "method": "retrieval", "model": ckpt["model"],
                 "align": {key: ckpt[key] for key in ESSENTIAL if key != "model"},
                 "bank": {"unit": unit, "texts": bank.texts, "embeddings": torch.from_numpy(bank.embeddings),
                          "bias": torch.from_numpy(bank.bias) if centre else None}, "k": k,
                 "dup_jaccard": cfg.retrieval.dup_jaccard,
                 "probe": {key: torch.from_numpy(v) for key, v in probe.items()},
                 "findings": list(studies.label_names), "preprocess": aligned.preprocess.to_dict(),
                 "views": cfg.data.views, "config": to_dict(cfg), "align_run": str(cfg.encoder.run),
                 "version": __version__}, out / MODEL)
    return {"retrieval": {"unit": unit, "k": k, "center": centre, "k_curve": curve,
                          "select_by": cfg.retrieval.select_by, "bank_size": len(bank.texts),
                          "dup_jaccard": cfg.retrieval.dup_jaccard},
            "train": {"seconds": time.perf_counter() - t0}}

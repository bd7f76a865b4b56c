"""The retrieval-based reporter's "training" (CXR-RePaiR): nothing is learnt but k and a finding probe.

From an align run: the sentence bank (every distinct sentence of the training split's reports, embedded by the
aligned text encoder), a linear probe per finding on the aligned image embeddings of the training studies (the
finding probabilities shown beside the text), and k, the sentences per report, chosen on the validation split by
clinical F1 of the labeller's findings (or BLEU-4). Everything, the aligned model included, goes into OUT/model.pt,
so the run needs nothing else to write reports.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from medssl import __version__
from medssl.aligned import ESSENTIAL, load_image_text
from medssl.checkpoint import atomic_save, load_checkpoint, resolve_checkpoint
from medssl.report.bundle import MODEL, RETRIEVAL, aligned_study_embeddings
from medssl.report.config import ReportConfig, to_dict
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


def choose_k(cfg: ReportConfig, z_val: np.ndarray, val: list[Study], bank: np.ndarray, texts: list[str],
             words: list[frozenset[str]]) -> tuple[int, list[dict[str, Any]]]:
    """k from cfg.retrieval.ks with the best validation score (cfg.retrieval.select_by); the curve of all."""
    from medssl.report.metrics import clinical_efficacy_reports, nlg_metrics

    refs = [s.text for s in val]
    curve = []
    for k in sorted(set(cfg.retrieval.ks)):
        hyps = [r for r, _ in retrieve_reports(z_val, bank, texts, k, cfg.retrieval.dup_jaccard, words)]
        ce = clinical_efficacy_reports(refs, hyps)
        row = {"k": k, "clinical_f1": float(ce["micro"]["f1"])}
        if cfg.retrieval.select_by == "bleu4":
            row["bleu4"] = float(nlg_metrics(refs, hyps, meteor=False)["bleu4"])
        curve.append(row)
    best = max(curve, key=lambda r: (r[cfg.retrieval.select_by], -r["k"]))
    return int(best["k"]), curve


def build_retrieval(cfg: ReportConfig, studies: StudySet, out, progress: bool) -> dict[str, Any]:
    """Bank, probe and k from the align run; OUT/model.pt written atomically. Returns what metrics.json keeps."""
    from medssl.retrieve_run import encode_texts

    t0 = time.perf_counter()
    path = resolve_checkpoint(cfg.encoder.run)
    aligned = load_image_text(path)
    ckpt = load_checkpoint(path)
    train, val = studies.studies["train"], studies.studies["val"]
    texts = sentence_bank(train)
    bank = encode_texts(aligned, texts, progress=progress)
    words = [word_set(t) for t in texts]
    z_train = aligned_study_embeddings(aligned, *study_tensors(train, studies.images, cfg.data.views))
    z_val = aligned_study_embeddings(aligned, *study_tensors(val, studies.images, cfg.data.views))
    probe = fit_probe(z_train, train, studies.label_names)
    if cfg.retrieval.k is not None:
        k, curve = cfg.retrieval.k, []
    else:
        k, curve = choose_k(cfg, z_val, val, bank, texts, words)
    # "model": the aligned model's weights (what every medssl checkpoint has); "align": the rest it is rebuilt from
    atomic_save({"kind": RETRIEVAL, "method": "retrieval", "model": ckpt["model"],
                 "align": {key: ckpt[key] for key in ESSENTIAL if key != "model"},
                 "bank": {"texts": texts, "embeddings": torch.from_numpy(bank)}, "k": k,
                 "dup_jaccard": cfg.retrieval.dup_jaccard,
                 "probe": {key: torch.from_numpy(v) for key, v in probe.items()},
                 "findings": list(studies.label_names), "preprocess": aligned.preprocess.to_dict(),
                 "views": cfg.data.views, "config": to_dict(cfg), "align_run": str(cfg.encoder.run),
                 "version": __version__}, out / MODEL)
    return {"retrieval": {"k": k, "k_curve": curve, "select_by": cfg.retrieval.select_by, "bank_sentences":
                          len(texts), "dup_jaccard": cfg.retrieval.dup_jaccard},
            "train": {"seconds": time.perf_counter() - t0}}

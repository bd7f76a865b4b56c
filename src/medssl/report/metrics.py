"""Report-generation scores as the papers report them: BLEU-1..4, ROUGE-L, CIDEr, METEOR, clinical efficacy, CIs.

The language scores are pycocoevalcap's (coco-caption's scorers, which R2Gen's `compute_scores` calls on dicts
{i: [text]}), on text lower-cased with punctuation removed (medssl.report.ptb: Stanford's PTBTokenizer when `java`
is on PATH, else a pure-Python equivalent). (R2Gen itself scores its own cleaned text, which keeps a "." token per
sentence; its numbers are close to these, not equal.)

An empty generated report is scored as the empty string, which every scorer takes (a list holding one string;
pycocoevalcap only asserts on an empty list): no n-gram, no match, and its reference still counts in BLEU's
brevity penalty, so it scores 0 against a non-empty reference. A placeholder word instead would add a unigram
guess and a token of length to BLEU and change every score.

Clinical efficacy labels both reports with `medssl.report.labeler` (uncertain mentions count as positive) and
compares the 0/1 matrices (N, 14) cell by cell (micro), as the CheXpert-labeller CE metrics of R2Gen and its
successors do. Bootstrap intervals resample patients, not reports (`evaluate.metrics.patient_resample_weights`).
"""

from __future__ import annotations

import math
import shutil
import threading
from collections.abc import Sequence
from typing import Any, NamedTuple, Self

import numpy as np
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.bleu.bleu_scorer import cook_refs, cook_test
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

from medssl.errors import MedsslError
from medssl.evaluate.metrics import Interval, patient_resample_weights
from medssl.report.ptb import (JAVA_MISSING, TOKENIZERS, tokenize, tokenize_ptb,  # noqa: F401  (the API)
                               tokenize_python)

NLG_KEYS = ("bleu1", "bleu2", "bleu3", "bleu4", "rouge_l", "cider", "meteor")
CE_KEYS = ("ce_precision_micro", "ce_recall_micro", "ce_f1_micro")
BOOTSTRAP_METRICS = NLG_KEYS[:6] + CE_KEYS  # METEOR has no CI: see bootstrap_report_samples
DEFAULT_CI = ("bleu4", "rouge_l", "cider") + CE_KEYS
_N = 4  # BLEU-1..4; CIDEr's n-grams are 1..4 too
_CHUNK_ELEMENTS = 4_000_000  # bootstrap weights (resamples, reports): about 32 MB of float64 at a time

# ---- METEOR ------------------------------------------------------------------------------------------------------
class MeteorScorer:
    """pycocoevalcap's METEOR 1.5 (`java -jar -Xmx2G meteor-1.5.jar - - -stdio -l en -norm`), kept open.

    Starting loads the paraphrase table (about 8 s): pass one scorer to many nlg_metrics calls (`meteor=`), and
    close it (`with MeteorScorer() as m:`). A score that takes longer than `timeout_s` kills the process; a failed
    scorer is closed and raises RuntimeError from then on.
    """

    def __init__(self, timeout_s: float = 600.0):
        from pycocoevalcap.meteor.meteor import Meteor

        if shutil.which("java") is None:
            raise MedsslError(JAVA_MISSING)
        self.timeout_s = timeout_s
        self._meteor: Any = Meteor()
        self._timed_out = False

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    def _kill(self) -> None:
        m = self._meteor
        if m is not None:
            self._timed_out = True
            m.meteor_p.kill()

    def score(self, references: Sequence[Sequence[str]], hypotheses: Sequence[str]) -> float:
        """Corpus METEOR of tokenised texts: the jar's aggregate of all segments' statistics."""
        if self._meteor is None:
            raise RuntimeError("the METEOR scorer is closed")
        # "|||" separates fields in the jar's protocol; pycocoevalcap strips it from hypotheses only
        gts = {i: [r.replace("|||", "") for r in refs] for i, refs in enumerate(references)}
        timer = threading.Timer(self.timeout_s, self._kill)
        timer.start()
        try:
            value, _ = self._meteor.compute_score(gts, {i: [h] for i, h in enumerate(hypotheses)})
            return float(value)
        except (ValueError, OSError) as e:  # a dead process: an empty line read, or a broken pipe
            why = f"timed out after {self.timeout_s:.0f} s" if self._timed_out else self._stderr_line() or str(e)
            self.close()
            raise RuntimeError(f"METEOR's java process failed: {why}") from e
        finally:
            timer.cancel()
            timer.join()  # the timer's thread holds this scorer: gone with it, `del scorer` ends the process

    def _stderr_line(self) -> str:
        """The first line java wrote to stderr (why it died), once the process has ended."""
        p = self._meteor.meteor_p
        p.kill()
        p.wait()
        lines = p.stderr.read().decode(errors="replace").strip().splitlines()
        return lines[0] if lines else ""

    def close(self) -> None:
        """End the java process and close its pipes (idempotent)."""
        m, self._meteor = getattr(self, "_meteor", None), None
        if m is None:
            return
        m.lock = threading.Lock()  # a failed compute_score keeps its lock: Meteor.__del__ would then block on it
        p = m.meteor_p
        for f in (p.stdin, p.stdout, p.stderr):
            try:
                f.close()
            except OSError:
                pass  # stdin of a process that died: the flush of a broken pipe
        p.kill()
        p.wait()


# ---- language scores ---------------------------------------------------------------------------------------------
def _check_pairs(references: Sequence[str | Sequence[str]],
                 hypotheses: Sequence[str]) -> tuple[list[list[str]], list[str]]:
    """References as lists of strings (one or more per report) and hypotheses as strings, or MedsslError."""
    for name, seq in (("references", references), ("hypotheses", hypotheses)):
        if isinstance(seq, (str, bytes)) or not hasattr(seq, "__len__"):
            raise MedsslError(f"{name} must be a list of reports, got {type(seq).__name__}")
    references, hypotheses = list(references), list(hypotheses)  # arrays and Series too
    if len(references) != len(hypotheses):
        raise MedsslError(f"{len(references)} references for {len(hypotheses)} hypotheses: one reference per report")
    if not hypotheses:
        raise MedsslError("no reports to score: references and hypotheses are empty")
    refs = []
    for i, (r, h) in enumerate(zip(references, hypotheses)):
        if not isinstance(h, str):
            raise MedsslError(f"hypothesis {i} is a {type(h).__name__}, not a string (an empty report is \"\")")
        r = [r] if isinstance(r, str) else r
        if isinstance(r, bytes) or not hasattr(r, "__len__") or not len(r) or not all(isinstance(x, str) for x in r):
            raise MedsslError(f"reference {i} must be a string or a non-empty list of strings, got {r!r:.60}")
        refs.append(list(r))
    return refs, hypotheses


class _PerReport(NamedTuple):
    """What the bootstrap re-weights, one row per report, computed once on the whole set."""

    bleu: np.ndarray  # (N, 2 + 2 * 4): test length, closest reference length, n-gram guesses 1..4, clipped matches
    rouge_l: np.ndarray  # (N,)
    cider: np.ndarray  # (N,) with the document frequencies of all the set's references


def _bleu_from_sums(t: np.ndarray) -> np.ndarray:
    """BLEU-1..4 (B, 4) from summed statistics (B, 10), with pycocoevalcap's epsilons (1e-15 over 1e-9)."""
    tiny, small = 1e-15, 1e-9
    precision = (t[:, 2 + _N:] + tiny) / (t[:, 2:2 + _N] + small)             # (B, 4) modified n-gram precisions
    bleu = np.cumprod(precision, axis=1) ** (1.0 / np.arange(1, _N + 1))      # geometric means of 1..n
    ratio = (t[:, 0] + tiny) / (t[:, 1] + small)
    penalty = np.exp(1 - 1 / np.minimum(ratio, 1.0))                          # brevity penalty, 1 when long enough
    return bleu * penalty[:, None]


def _bleu_stats(refs: list[list[str]], hyps: list[str]) -> np.ndarray:
    """Per-report BLEU statistics (N, 10) as BleuScorer cooks them, the reference length the closest one."""
    rows = []
    for r, h in zip(refs, hyps):
        c = cook_test(h, cook_refs(r, n=_N), eff="closest", n=_N)
        rows.append([c["testlen"], c["reflen"], *c["guess"], *c["correct"]])
    return np.asarray(rows, dtype=np.float64)


def _score_nlg(refs: list[list[str]], hyps: list[str], meteor: bool | MeteorScorer,
               tokenizer: str) -> tuple[dict[str, Any], _PerReport]:
    """nlg_metrics' dict and the per-report statistics the bootstrap needs, from checked pairs."""
    tokens, used, notes = tokenize([t for r in refs for t in r] + hyps, tokenizer)  # one java start for all
    ends = np.cumsum([len(r) for r in refs])
    tok_refs, tok_hyps = [tokens[e - len(r):e] for r, e in zip(refs, ends)], tokens[ends[-1]:]
    gts, res = dict(enumerate(tok_refs)), {i: [h] for i, h in enumerate(tok_hyps)}
    bleu, _ = Bleu(_N).compute_score(gts, res, verbose=0)
    rouge, rouge_each = Rouge().compute_score(gts, res)
    if any(t.strip() for r in tok_refs for t in r):
        cider, cider_each = Cider().compute_score(gts, res)
    else:  # no reference n-gram at all: every score is 0 (pycocoevalcap would fail on max() of nothing)
        cider, cider_each = 0.0, np.zeros(len(refs))
    value, missing = _meteor(meteor, tok_refs, tok_hyps)
    out: dict[str, Any] = {f"bleu{k + 1}": float(b) for k, b in enumerate(bleu)}
    out.update(rouge_l=float(rouge), cider=float(cider), meteor=value, tokenizer=used, n=len(refs),
               missing=missing, notes=notes)
    return out, _PerReport(_bleu_stats(tok_refs, tok_hyps), np.asarray(rouge_each, float), np.asarray(cider_each))


def _meteor(meteor: bool | MeteorScorer, refs: list[list[str]], hyps: list[str]) -> tuple[float | None, dict]:
    """(METEOR, {}) or (None, {"meteor": why}): no java or a failing java process never fails the other scores."""
    if meteor is False:
        return None, {"meteor": "not computed (meteor=False)"}
    if not isinstance(meteor, MeteorScorer) and shutil.which("java") is None:
        return None, {"meteor": JAVA_MISSING}
    try:
        if isinstance(meteor, MeteorScorer):
            return meteor.score(refs, hyps), {}
        with MeteorScorer() as scorer:  # closed (its process ended) whatever happens
            return scorer.score(refs, hyps), {}
    except (RuntimeError, OSError) as e:  # OSError: java did not start
        return None, {"meteor": f"METEOR failed: {e}" if isinstance(e, OSError) else str(e)}


def nlg_metrics(references: Sequence[str | Sequence[str]], hypotheses: Sequence[str],
                meteor: bool | MeteorScorer = True, tokenizer: str = "auto") -> dict[str, Any]:
    """BLEU-1..4, ROUGE-L, CIDEr and METEOR of generated reports, by pycocoevalcap as report-generation papers do.

    references: one string per report, or a list of strings (several references); hypotheses: one string each
    ("" for an empty report). Returns {"bleu1".."bleu4", "rouge_l", "cider", "meteor": float | None,
    "tokenizer": "ptb" | "python", "n": pairs, "missing": {metric: why}, "notes": [str]}.

    - BLEU (Papineni et al. 2002): corpus level, clipped n-gram counts and lengths summed over the set, the brevity
      penalty from the reference closest in length to each hypothesis; not a mean of sentence BLEUs.
    - ROUGE-L (Lin 2004): mean over reports of the LCS F-measure with beta = 1.2 (best reference).
    - CIDEr (Vedantam et al. 2015): coco-caption's CIDEr-D (clipped counts, gaussian length penalty sigma = 6,
      x10), with document frequencies from the references of this set, as the papers report it; so a score
      depends on the whole set, and a single pair scores 0 (each idf is log(1 / 1) = 0).
    - METEOR 1.5 (Denkowski & Lavie 2014): corpus level from the jar's aggregated statistics. It needs java:
      without it "meteor" is None and "missing" says why. meteor=True starts a scorer and closes it (about 8 s);
      pass a MeteorScorer to reuse one, or False to skip it.
    tokenizer: "auto" (PTB with java, else the Python equivalent), "ptb" or "python" (same numbers everywhere).
    """
    refs, hyps = _check_pairs(references, hypotheses)
    return _score_nlg(refs, hyps, meteor, tokenizer)[0]


# ---- clinical efficacy -------------------------------------------------------------------------------------------
def _ratio(num: np.ndarray | float, den: np.ndarray | float) -> np.ndarray:
    """num / den, 0 where den is 0 (scikit-learn's zero_division=0, as evaluate.metrics)."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape), where=den > 0)


def _check_labels(reference_labels: np.ndarray, hypothesis_labels: np.ndarray,
                  names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Both label matrices as int64 (N, K) of 0/1, K = len(names), or MedsslError."""
    ref, hyp = np.asarray(reference_labels), np.asarray(hypothesis_labels)
    shape = (ref.shape[0] if ref.ndim else 0, len(names))
    if ref.shape != shape or hyp.shape != shape or shape[0] == 0:
        raise MedsslError(f"label matrices must both be (N >= 1, {len(names)}) for {len(names)} names, got "
                          f"{ref.shape} and {hyp.shape}")
    if not (np.isin(ref, (0, 1)).all() and np.isin(hyp, (0, 1)).all()):
        raise MedsslError("label matrices must hold 0 and 1 only (map uncertain labels before)")
    return ref.astype(np.int64), hyp.astype(np.int64)


def _ce_counts(ref: np.ndarray, hyp: np.ndarray) -> np.ndarray:
    """Per-report counts (N, 3): true positive cells, predicted positive cells, reference positive cells."""
    return np.stack([(ref & hyp).sum(1), hyp.sum(1), ref.sum(1)], axis=1).astype(np.float64)


def _prf(t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall, F1 from (..., 3) sums of true positives, predicted and reference positives."""
    return _ratio(t[..., 0], t[..., 1]), _ratio(t[..., 0], t[..., 2]), _ratio(2 * t[..., 0], t[..., 1] + t[..., 2])


def clinical_efficacy(reference_labels: np.ndarray, hypothesis_labels: np.ndarray,
                      names: Sequence[str]) -> dict[str, Any]:
    """Clinical efficacy of generated reports from 0/1 finding matrices (N, K) of references and hypotheses.

    "micro": precision / recall / F1 over all N x K cells (the CE metrics of R2Gen and the CheXpert-labeller
    papers); "per_finding": {name: precision, recall, f1, support (reference positives), predicted}; "macro_f1":
    the mean F1 over the findings that have a positive reference or hypothesis ("macro_findings" of them; the
    others, listed in "excluded_from_macro", have no F1 to speak of, and counting them as 0 would punish a
    finding nobody has). A ratio with a zero denominator is 0; macro_f1 is NaN when no finding enters it.
    """
    ref, hyp = _check_labels(reference_labels, hypothesis_labels, names)
    per = np.stack([(ref & hyp).sum(0), hyp.sum(0), ref.sum(0)], axis=1).astype(np.float64)  # (K, 3)
    p, r, f = _prf(per)
    mp, mr, mf = _prf(per.sum(0))
    used = (per[:, 1] + per[:, 2]) > 0
    return {
        "micro": {"precision": float(mp), "recall": float(mr), "f1": float(mf)},
        "macro_f1": float(f[used].mean()) if used.any() else math.nan,
        "macro_findings": int(used.sum()),
        "excluded_from_macro": [n for n, u in zip(names, used) if not u],
        "per_finding": {n: {"precision": float(p[k]), "recall": float(r[k]), "f1": float(f[k]),
                            "support": int(per[k, 2]), "predicted": int(per[k, 1])} for k, n in enumerate(names)},
        "n": int(ref.shape[0]),
    }


def _single_references(refs: list[list[str]]) -> list[str]:
    """The one reference of each report: the labeller compares one reference text per report."""
    for i, r in enumerate(refs):
        if len(r) != 1:
            raise MedsslError(f"clinical efficacy compares one reference per report; report {i} has {len(r)}")
    return [r[0] for r in refs]


def _labels(texts: Sequence[str]) -> tuple[np.ndarray, tuple[str, ...]]:
    """The labeller's 0/1 matrix (N, 14) with uncertain mentions as positive, and the observation names."""
    from medssl.report.labeler import OBSERVATIONS, label_matrix  # written beside this file; imported when needed

    return np.asarray(label_matrix(list(texts), uncertain="positive")), tuple(OBSERVATIONS)


def clinical_efficacy_reports(references: Sequence[str], hypotheses: Sequence[str]) -> dict[str, Any]:
    """clinical_efficacy of report texts labelled by medssl.report.labeler (uncertain = positive, OBSERVATIONS)."""
    refs, hyps = _check_pairs(references, hypotheses)
    ref_labels, names = _labels(_single_references(refs))
    return clinical_efficacy(ref_labels, _labels(hyps)[0], names)


# ---- patient bootstrap -------------------------------------------------------------------------------------------
def _stat_columns(metric: str, per: _PerReport | None, counts: np.ndarray | None) -> np.ndarray:
    """The per-report columns (N, d) whose weighted sums give `metric` (see _from_sums)."""
    if metric.startswith("bleu"):
        return per.bleu
    if metric in ("rouge_l", "cider"):
        values = getattr(per, metric)
        return np.stack([values, np.ones_like(values)], axis=1)  # weighted mean = sum(w s) / sum(w)
    return counts


def _from_sums(metric: str, t: np.ndarray) -> np.ndarray:
    """`metric` of each resample (B,) from the weighted sums (B, d) of its columns."""
    if metric.startswith("bleu"):
        return _bleu_from_sums(t)[:, int(metric[-1]) - 1]
    if metric in ("rouge_l", "cider"):
        return t[:, 0] / t[:, 1]
    return _prf(t)[CE_KEYS.index(metric)]


def _check_bootstrap(groups: Sequence[str], n: int, n_boot: int) -> None:
    """MedsslError unless there is one patient id per report and at least one resample (before any scoring)."""
    if len(groups) != n:
        raise MedsslError(f"groups has {len(groups)} entries for {n} reports: one patient id per report")
    if n_boot < 1:
        raise MedsslError(f"n_boot must be at least 1, got {n_boot}")


def _resample(columns: dict[str, np.ndarray], groups: Sequence[str], n_boot: int, seed: int) -> dict[str, np.ndarray]:
    """Each metric on n_boot patient resamples, all metrics on the same resamples: {metric: (n_boot,)}."""
    n = len(next(iter(columns.values())))
    rng, chunk = np.random.default_rng(seed), max(1, _CHUNK_ELEMENTS // n)
    values: dict[str, list[np.ndarray]] = {m: [] for m in columns}
    for start in range(0, n_boot, chunk):
        w = patient_resample_weights(groups, min(chunk, n_boot - start), rng)  # (b, N) report multiplicities
        for m, cols in columns.items():
            values[m].append(_from_sums(m, w @ cols))
    return {m: np.concatenate(v) for m, v in values.items()}


def _columns(refs: list[list[str]], hyps: list[str], metrics: Sequence[str], per: _PerReport | None = None,
             counts: np.ndarray | None = None, tokenizer: str = "auto") -> dict[str, np.ndarray]:
    """The bootstrap's per-report columns of each metric, scoring or labelling only what the metrics need."""
    unknown = [m for m in metrics if m not in BOOTSTRAP_METRICS]
    if unknown or not metrics:
        why = " (METEOR is corpus-level: no per-report form to re-weight)" if "meteor" in unknown else ""
        raise MedsslError(f"cannot bootstrap {unknown or 'no metrics'}{why}: choose from {list(BOOTSTRAP_METRICS)}")
    if per is None and any(m not in CE_KEYS for m in metrics):
        per = _score_nlg(refs, hyps, False, tokenizer)[1]
    if counts is None and any(m in CE_KEYS for m in metrics):
        ref_labels, names = _labels(_single_references(refs))
        counts = _ce_counts(*_check_labels(ref_labels, _labels(hyps)[0], names))
    return {m: _stat_columns(m, per, counts) for m in metrics}


def bootstrap_report_samples(references: Sequence[str | Sequence[str]], hypotheses: Sequence[str],
                             groups: Sequence[str], n_boot: int = 1000, seed: int = 0,
                             metrics: Sequence[str] = DEFAULT_CI, tokenizer: str = "auto") -> dict[str, np.ndarray]:
    """Each metric on n_boot patient-level resamples (groups: one patient id per report): {metric: (n_boot,)}.

    A resample draws P patients with replacement; a report counts as often as its patient was drawn, so a
    patient's reports come and go together. Nothing is re-scored: every metric is a ratio of per-report sums.
    BLEU re-sums the per-report n-gram counts and lengths (exactly BLEU of the resampled set); ROUGE-L is a
    weighted mean of per-report scores (exact); CIDEr a weighted mean of per-report scores with the document
    frequencies of the full set kept fixed (a re-scored resample would recount them with duplicates); the
    clinical micro precision / recall / F1 re-sum their cell counts (exact). METEOR has no interval: the jar's
    corpus score aggregates matches and chunks over all segments, which the mean of per-segment scores is not.
    """
    refs, hyps = _check_pairs(references, hypotheses)
    _check_bootstrap(groups, len(refs), n_boot)
    return _resample(_columns(refs, hyps, metrics, tokenizer=tokenizer), groups, n_boot, seed)


def _interval(v: np.ndarray, alpha: float) -> Interval:
    """Percentile interval of the defined (non-NaN) resamples, as evaluate.metrics.bootstrap_intervals."""
    kept = v[~np.isnan(v)]
    lo, hi = np.percentile(kept, [50 * alpha, 100 - 50 * alpha]) if kept.size else (math.nan, math.nan)
    return Interval(float(lo), float(hi), int(kept.size), int(v.size))


def bootstrap_report_metrics(references: Sequence[str | Sequence[str]], hypotheses: Sequence[str],
                             groups: Sequence[str], n_boot: int = 1000, seed: int = 0, alpha: float = 0.05,
                             metrics: Sequence[str] = DEFAULT_CI, tokenizer: str = "auto") -> dict[str, Interval]:
    """Percentile (1 - alpha) interval per metric from bootstrap_report_samples (patients resampled)."""
    if not 0 < alpha < 1:
        raise MedsslError(f"alpha must lie in (0, 1), got {alpha}")
    samples = bootstrap_report_samples(references, hypotheses, groups, n_boot, seed, metrics, tokenizer)
    return {m: _interval(v, alpha) for m, v in samples.items()}


def report_scores(references: Sequence[str], hypotheses: Sequence[str], groups: Sequence[str] | None = None,
                  n_boot: int = 1000, seed: int = 0, meteor: bool | MeteorScorer = True,
                  tokenizer: str = "auto") -> dict[str, Any]:
    """Every score of generated reports at once: the one call of benchmarks, the demo and `medssl report train`.

    references: one reference string per report; groups: one patient id per report (None: no intervals);
    meteor and tokenizer as in nlg_metrics (a MeteorScorer saves the ~8 s start when scoring several splits).
    Returns
        "n": reports scored;
        "nlg": nlg_metrics' dict: "bleu1".."bleu4", "rouge_l", "cider" (floats), "meteor" (float | None),
               "tokenizer" ("ptb" | "python"), "n", "missing" ({metric: why}), "notes" ([str]);
        "clinical": clinical_efficacy's dict on labeller labels: "micro" {"precision", "recall", "f1"},
               "macro_f1", "macro_findings", "excluded_from_macro", "per_finding" {name: {"precision",
               "recall", "f1", "support", "predicted"}}, "n";
        "ci95": {metric: [low, high]} for DEFAULT_CI (bleu4, rouge_l, cider, ce_precision_micro,
               ce_recall_micro, ce_f1_micro), patients resampled; {} without groups;
        "bootstrap": {"n_boot", "seed", "patients", "resamples": {metric: resamples the metric was defined on}},
               or None without groups.
    Texts are tokenised and labelled once; the intervals re-weight those per-report statistics.
    """
    refs, hyps = _check_pairs(references, hypotheses)
    ref_texts = _single_references(refs)
    if groups is not None:
        _check_bootstrap(groups, len(refs), n_boot)
    nlg, per = _score_nlg(refs, hyps, meteor, tokenizer)
    ref_labels, names = _labels(ref_texts)
    hyp_labels = _labels(hyps)[0]
    out: dict[str, Any] = {"n": len(refs), "nlg": nlg, "clinical": clinical_efficacy(ref_labels, hyp_labels, names),
                           "ci95": {}, "bootstrap": None}
    if groups is not None:
        counts = _ce_counts(*_check_labels(ref_labels, hyp_labels, names))
        samples = _resample(_columns(refs, hyps, DEFAULT_CI, per, counts), groups, n_boot, seed)
        ci = {m: _interval(v, 0.05) for m, v in samples.items()}
        out["ci95"] = {m: [iv.low, iv.high] for m, iv in ci.items()}
        out["bootstrap"] = {"n_boot": n_boot, "seed": seed, "patients": len({str(g) for g in groups}),
                            "resamples": {m: iv.resamples for m, iv in ci.items()}}
    return out

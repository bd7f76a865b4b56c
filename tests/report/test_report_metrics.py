"""Report scores: BLEU / ROUGE-L / CIDEr by hand, METEOR and PTB with java, clinical efficacy, patient bootstrap.

(Named test_report_metrics.py: tests/evaluate/test_metrics.py has the basename test_metrics, and test folders have
no __init__.py, so a second test_metrics.py would stop pytest's collection.)
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import types

import numpy as np
import pytest

from medssl.errors import MedsslError
from medssl.report import metrics as rm
from medssl.report.metrics import (
    JAVA_MISSING,
    MeteorScorer,
    bootstrap_report_metrics,
    bootstrap_report_samples,
    clinical_efficacy,
    clinical_efficacy_reports,
    nlg_metrics,
    report_scores,
    tokenize_ptb,
    tokenize_python,
)
from medssl.synthetic.reports import FINDINGS, make_report

needs_java = pytest.mark.skipif(shutil.which("java") is None,
                                reason="java not on PATH: METEOR and the PTB tokenizer need a Java runtime "
                                       "(Debian: default-jre-headless; .ci/run installs it)")
FAST = {"meteor": False, "tokenizer": "python"}  # no java process where a test is not about METEOR or PTB
BP_4_5 = math.exp(1 - 5 / 4)  # brevity penalty of 4 hypothesis tokens against a 5-token reference


def _java_children() -> list[int]:
    """Process ids of this process's java children (METEOR's or the tokenizer's), from /proc."""
    out = []
    for d in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
        except OSError:
            continue  # ended while we looked
        comm, rest = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
        if comm == "java" and int(rest[1]) == os.getpid():
            out.append(int(d))
    return out


def _reports(n: int, seed: int) -> tuple[list[str], list[str]]:
    """Synthetic reference reports and 'generated' ones that keep only the first finding (so they differ)."""
    rng = np.random.default_rng(seed)
    refs, hyps = [], []
    for _ in range(n):
        found = list(rng.choice(FINDINGS, size=int(rng.integers(0, 3)), replace=False))
        refs.append(make_report(found, rng))
        hyps.append(make_report(found[:1], rng))
    return refs, hyps


@pytest.fixture
def keyword_labeler(monkeypatch):
    """A stand-in for medssl.report.labeler (same interface); records the `uncertain` it was called with."""
    calls: list[str] = []

    def label_matrix(texts, uncertain="positive"):
        calls.append(uncertain)
        return np.array([[float(w in t.lower()) for w in ("enlarged", "effusion", "clear")] for t in texts])

    fake = types.ModuleType("medssl.report.labeler")
    fake.OBSERVATIONS, fake.label_matrix = ("Cardiomegaly", "Pleural Effusion", "No Finding"), label_matrix
    monkeypatch.setitem(sys.modules, "medssl.report.labeler", fake)
    return calls


# ---- BLEU, ROUGE-L, CIDEr by hand ----------------------------------------------------------------------------------
def test_bleu_and_rouge_of_one_pair_by_hand():
    m = nlg_metrics(["the heart size is normal"], ["the heart is normal"], **FAST)
    # hypothesis n-grams against the reference (clipped counts / hypothesis n-grams):
    #   1-grams the heart is normal: 4/4; 2-grams "the heart", "is normal" of 3: 2/3;
    #   3-grams "the heart is", "heart is normal": 0/2; the 4-gram: 0/1
    # brevity penalty: 4 tokens against 5: exp(1 - 5/4) = 0.7788
    # pycocoevalcap adds 1e-15 to each count and 1e-9 to each total, so a zero count gives ~1e-15, not 0
    p = [(4 + 1e-15) / (4 + 1e-9), (2 + 1e-15) / (3 + 1e-9), 1e-15 / (2 + 1e-9), 1e-15 / (1 + 1e-9)]
    for n in range(1, 5):
        assert m[f"bleu{n}"] == pytest.approx(np.prod(p[:n]) ** (1 / n) * BP_4_5, rel=1e-6)
    assert m["bleu1"] == pytest.approx(0.7788, abs=1e-4) and m["bleu2"] == pytest.approx(0.6359, abs=1e-4)
    # ROUGE-L: LCS "the heart is normal" = 4, P = 4/4, R = 4/5, F = (1 + 1.2^2) P R / (R + 1.2^2 P)
    assert m["rouge_l"] == pytest.approx(2.44 * 0.8 / (0.8 + 1.44))                     # 0.871429


def test_bleu_is_corpus_level_and_rouge_a_mean():
    m = nlg_metrics(["the heart size is normal", "no pleural effusion"], ["the heart is normal", "no effusion"],
                    **FAST)
    # second pair: 1-grams 2/2, 2-gram "no effusion" 0/1, no 3- or 4-gram; summed over the set:
    # 1-grams 6/6, 2-grams 2/4, lengths 6 against 5 + 3 = 8: brevity penalty exp(1 - 8/6)
    bp = math.exp(1 - 8 / 6)
    assert m["bleu1"] == pytest.approx(bp, rel=1e-6)                                    # 0.7165
    assert m["bleu2"] == pytest.approx(math.sqrt(2 / 4) * bp, rel=1e-6)                 # 0.5067, not a mean
    # ROUGE-L of pair 2: LCS 2, P = 1, R = 2/3; the set's score is the mean of the two F-measures
    f2 = 2.44 * (2 / 3) / (2 / 3 + 1.44)
    assert m["rouge_l"] == pytest.approx((2.44 * 0.8 / (0.8 + 1.44) + f2) / 2)


def test_cider_by_hand():
    m = nlg_metrics(["heart normal", "lungs clear"], ["heart normal", "lungs hazy"], **FAST)
    # N = 2 references; each of their n-grams occurs in 1 of them: idf = log(2) - log(1); an n-gram in no
    # reference ("hazy") gets max(1, df) = 1 too. Pair 1 is identical: cosine 1 for 1- and 2-grams, no 3- or
    # 4-grams (0): mean 0.5, x10 = 5. Pair 2: 1-grams share "lungs": (log 2)^2 / (sqrt(2) log 2)^2 = 0.5;
    # 2-grams differ: 0; mean 0.125, x10 = 1.25. Equal lengths: no gaussian length penalty. CIDEr = 3.125.
    assert m["cider"] == pytest.approx(3.125)
    same = ["the heart is normal", "no pleural effusion is seen"]
    # identical pairs of distinct reports with 4-grams of their own: cosine 1 for every n, x10 = 10
    assert nlg_metrics(same, same, **FAST)["cider"] == pytest.approx(10.0)
    paraphrase = nlg_metrics(same, ["the heart is of normal size", "no effusion is seen"], **FAST)["cider"]
    unrelated = nlg_metrics(same, ["mild cardiomegaly", "small left pneumothorax"], **FAST)["cider"]
    assert 10.0 > paraphrase > unrelated == 0.0
    # one pair: every n-gram occurs in all (1 of 1) references, so every idf is log(1/1) = 0
    assert nlg_metrics(same[:1], same[:1], **FAST)["cider"] == 0.0


def test_an_empty_hypothesis_scores_zero_and_keeps_its_reference_in_the_brevity_penalty():
    m = nlg_metrics(["the heart is normal", "no effusion"], ["the heart is normal", ""], **FAST)
    # every n-gram of pair 1 matches; the empty report adds no n-gram but its 2 reference tokens: 4 against 6
    for n in range(1, 5):
        assert m[f"bleu{n}"] == pytest.approx(math.exp(1 - 6 / 4), rel=1e-6)
    assert m["rouge_l"] == pytest.approx(0.5)                                           # (1 + 0) / 2
    assert m["cider"] == pytest.approx(5.0)                                             # (10 + 0) / 2
    nothing = nlg_metrics(["the heart is normal", "no effusion"], ["", ""], **FAST)
    assert all(nothing[k] == 0.0 for k in ("bleu1", "bleu4", "rouge_l", "cider"))
    assert nlg_metrics(["", "."], ["no effusion", ""], **FAST)["cider"] == 0.0         # no reference n-gram


def test_the_bootstrap_sums_reproduce_pycocoevalcap_on_the_whole_set():
    refs, hyps = _reports(40, seed=1)
    scores, per = rm._score_nlg(*rm._check_pairs(refs, hyps), False, "python")
    bleu = rm._bleu_from_sums(per.bleu.sum(0, keepdims=True))[0]                        # unit weights
    assert bleu == pytest.approx([scores[f"bleu{n}"] for n in range(1, 5)], rel=1e-12)
    assert per.rouge_l.mean() == pytest.approx(scores["rouge_l"]) and per.cider.mean() == pytest.approx(scores["cider"])


# ---- tokenisation --------------------------------------------------------------------------------------------------
TYPICAL = [
    "The heart is normal in size. The mediastinum is unremarkable. The lungs are clear.",
    "No focal airspace consolidation, pleural effusion, or pneumothorax.",
    "There is a 1.5 cm nodule in the right upper lobe (series 2, image 45), unchanged from prior CT.",
    "Left-sided PICC line terminates in the mid SVC. ET tube tip is 4.5cm above the carina.",
    "Low lung volumes with bibasilar atelectasis; no pneumothorax. Status post CABG, s/p sternotomy.",
    "Opacity in the right lower lobe may represent pneumonia vs. atelectasis, e.g. aspiration.",
    "Moderate-to-severe cardiomegaly, increased compared to 2/3/2010. Recommend follow-up CT in 3-6 months.",
    "The patient's lungs are clear; there's no effusion and it doesn't appear worse.",
    "Impression: 1. No acute cardiopulmonary process. 2. Stable mild cardiomegaly.",
    "Findings were discussed with Dr. ___ at 10:30 a.m. Heart size is upper limits of normal (ratio ~0.5).",
    "No [DEID] of pleural effusion or pneumothorax. XXXX-XXXX opacity at the left base.",
    '"Cardiomegaly" was noted; lungs are hyperinflated--consistent with COPD/emphysema. Is there pneumonia?',
    "Small residual apical air (< 5%). Lines/tubes: Swan-Ganz catheter tip in the right pulmonary artery.",
    "", "   .  ",
]


def test_python_tokenizer_by_hand():
    # lower case; punctuation split off and dropped; decimals, ranges, dates, hyphenated and slashed words whole;
    # "4.5cm" splits after the number; brackets survive as -lrb- / -rrb- (coco-caption removes "-LRB-" only)
    assert tokenize_python(["Heart normal (stable), 4.5cm nodule; s/p CABG, 1.5-2 mm vs. scar -- XXXX-XXXX.",
                            "The patient's heart doesn't enlarge. Dr. Smith: no change since 12/03/2015!"]) == [
        "heart normal -lrb- stable -rrb- 4.5 cm nodule s/p cabg 1.5-2 mm vs. scar xxxx-xxxx",
        "the patient 's heart does n't enlarge dr. smith no change since 12/03/2015"]


@needs_java
def test_ptb_and_python_tokenizers_agree_on_report_text():
    texts = TYPICAL + [r for pair in zip(*_reports(60, seed=2)) for r in pair]
    assert tokenize_ptb(texts) == tokenize_python(texts)
    assert tokenize_ptb(["(unchanged)"]) == ["-lrb- unchanged -rrb-"]                   # coco-caption's quirk


# ---- METEOR --------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def meteor():
    """One METEOR process for the module's METEOR tests (starting one loads its paraphrase table: ~8 s)."""
    if shutil.which("java") is None:
        pytest.skip("java not on PATH: METEOR needs a Java runtime (Debian: default-jre-headless)")
    with MeteorScorer() as scorer:
        yield scorer


def test_meteor_scores_and_is_corpus_level(meteor):
    pairs = [("the heart is normal", "the heart is normal"), ("the heart size is normal", "the heart is normal"),
             ("no pneumothorax", "the heart is enlarged")]
    single = [meteor.score([[r]], [h]) for r, h in pairs]
    assert single[0] == pytest.approx(1.0) and single[2] == 0.0 and 0.0 < single[1] < 1.0
    m = nlg_metrics([r for r, _ in pairs], [h for _, h in pairs], meteor=meteor)
    # the jar aggregates matches and chunks over all segments: not the mean of the segment scores
    assert m["meteor"] == pytest.approx(meteor.score([[r] for r, _ in pairs], [h for _, h in pairs]))
    assert m["meteor"] != pytest.approx(np.mean(single), abs=1e-3) and m["missing"] == {}
    assert m["tokenizer"] == "ptb"
    assert nlg_metrics(["no effusion"], [""], meteor=meteor)["meteor"] == 0.0             # an empty report


def test_without_java_meteor_is_none_with_the_reason(monkeypatch):
    refs, hyps = ["the heart size is normal", "no effusion"], ["the heart is normal", ""]
    monkeypatch.setenv("PATH", "/nonexistent")
    m = nlg_metrics(refs, hyps)
    assert m["meteor"] is None and m["missing"] == {"meteor": JAVA_MISSING} and m["tokenizer"] == "python"
    assert m["bleu2"] == nlg_metrics(refs, hyps, **FAST)["bleu2"]                        # the rest still scored
    with pytest.raises(MedsslError, match="java not found"):
        nlg_metrics(refs, hyps, tokenizer="ptb")


@needs_java
def test_a_failing_meteor_is_reported_and_its_process_ended(monkeypatch):
    started = []

    class Failing(MeteorScorer):  # a real java process whose first score fails
        def __init__(self):
            super().__init__(timeout_s=0.01)  # killed long before the paraphrase table is loaded
            started.append(self._meteor.meteor_p)

    monkeypatch.setattr(rm, "MeteorScorer", Failing)
    for _ in range(3):  # repeated calls leave no process behind
        m = nlg_metrics(["the heart is normal"], ["the heart is normal"], tokenizer="python")
        assert m["meteor"] is None and "timed out" in m["missing"]["meteor"] and m["bleu1"] > 0.99
    assert len(started) == 3 and all(p.poll() is not None for p in started)
    assert not set(_java_children()) & {p.pid for p in started}


@needs_java
def test_closing_a_meteor_scorer_ends_its_process():
    scorer = MeteorScorer()
    pid = scorer._meteor.meteor_p.pid
    assert pid in _java_children()
    scorer.close()
    scorer.close()  # idempotent
    assert pid not in _java_children()
    with pytest.raises(RuntimeError, match="closed"):
        scorer.score([["a"]], ["a"])


# ---- clinical efficacy ---------------------------------------------------------------------------------------------
def test_clinical_efficacy_by_hand():
    ref = np.array([[1, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0]])
    hyp = np.array([[1, 1, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]])
    ce = clinical_efficacy(ref, hyp, ["a", "b", "c", "d"])
    # cells: true positives (0, a), (1, b) = 2; hypothesis positives 3; reference positives 4
    assert ce["micro"] == pytest.approx({"precision": 2 / 3, "recall": 2 / 4, "f1": 4 / 7})  # 2PR / (P + R)
    assert ce["per_finding"]["a"] == pytest.approx({"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2,
                                                    "predicted": 1})
    assert ce["per_finding"]["b"] == pytest.approx({"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 1,
                                                    "predicted": 2})
    assert ce["per_finding"]["c"]["f1"] == 0.0 and ce["per_finding"]["c"]["support"] == 1
    # d: nobody has it, in references or hypotheses: left out of the macro mean, not counted as F1 = 0
    assert ce["excluded_from_macro"] == ["d"] and ce["macro_findings"] == 3
    assert ce["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 0) / 3) and ce["n"] == 3


def test_clinical_efficacy_refuses_bad_matrices():
    with pytest.raises(MedsslError, match="0 and 1"):
        clinical_efficacy(np.array([[2, 0]]), np.array([[1, 0]]), ["a", "b"])
    with pytest.raises(MedsslError, match=r"\(N >= 1, 3\)"):
        clinical_efficacy(np.zeros((2, 2)), np.zeros((2, 2)), ["a", "b", "c"])


def test_clinical_efficacy_of_reports_labels_both_with_uncertain_positive(keyword_labeler):
    refs = ["The heart is enlarged. Small effusion.", "Lungs are clear.", "Effusion."]
    hyps = ["The heart is enlarged.", "Lungs are clear. Effusion.", "Nothing."]
    ce = clinical_efficacy_reports(refs, hyps)
    assert keyword_labeler == ["positive", "positive"]
    # cells (enlarged, effusion, clear): refs 110 / 001 / 010, hyps 100 / 011 / 000: tp 2, predicted 3, positives 4
    assert ce["micro"] == pytest.approx({"precision": 2 / 3, "recall": 1 / 2, "f1": 4 / 7})
    assert set(ce["per_finding"]) == {"Cardiomegaly", "Pleural Effusion", "No Finding"}


def test_clinical_efficacy_with_the_real_labeler():
    labeler = pytest.importorskip("medssl.report.labeler", reason="medssl.report.labeler not written yet")
    refs = ["The heart is enlarged, consistent with cardiomegaly. Large right pleural effusion."] * 2
    same = clinical_efficacy_reports(refs, refs)
    assert same["micro"] == pytest.approx({"precision": 1.0, "recall": 1.0, "f1": 1.0})
    assert list(same["per_finding"]) == list(labeler.OBSERVATIONS) and len(labeler.OBSERVATIONS) == 14
    normal = clinical_efficacy_reports(refs, ["The heart is normal in size. The lungs are clear."] * 2)
    assert normal["micro"]["recall"] == 0.0 and normal["micro"]["f1"] == 0.0


# ---- patient bootstrap ---------------------------------------------------------------------------------------------
def test_bootstrap_resamples_patients_not_reports():
    # patient A: one report written perfectly (ROUGE-L 1); patient B: three reports with nothing right (0).
    # Two patients drawn with replacement: AA -> 1, AB -> (1 + 0 + 0 + 0) / 4 = 0.25, BB -> 0. Drawing reports
    # instead would also give 0.5 or 0.75 (e.g. two of A's draws among four).
    refs = ["the heart is normal", "no effusion", "no pneumothorax", "lungs are clear"]
    hyps = ["the heart is normal", "mild cardiomegaly", "small nodule", "right effusion"]
    s = bootstrap_report_samples(refs, hyps, ["A", "B", "B", "B"], n_boot=300, seed=0, metrics=("rouge_l",),
                                 tokenizer="python")["rouge_l"]
    assert set(np.round(s, 12)) == {0.0, 0.25, 1.0}


def test_clinical_bootstrap_moves_a_patients_reports_together(keyword_labeler):
    # each report predicts one positive cell; patient A's two are right, patient B's two are wrong:
    # micro precision of a resample is 1 (AA), 0.5 (AB) or 0 (BB), never 0.25 or 0.75
    refs = ["heart enlarged", "an effusion", "lungs clear", "lungs clear"]
    hyps = ["heart enlarged", "an effusion", "an effusion", "heart enlarged"]
    s = bootstrap_report_samples(refs, hyps, ["A", "A", "B", "B"], n_boot=300, metrics=("ce_precision_micro",),
                                 tokenizer="python")["ce_precision_micro"]
    assert set(s) == {0.0, 0.5, 1.0}


def test_report_scores_intervals_contain_the_estimates_and_follow_the_seed(keyword_labeler):
    refs, hyps = _reports(40, seed=3)
    groups = [f"p{i // 2}" for i in range(40)]
    out = report_scores(refs, hyps, groups, n_boot=200, seed=0, **FAST)
    point = {**{k: out["nlg"][k] for k in ("bleu4", "rouge_l", "cider")},
             **{f"ce_{k}_micro": v for k, v in out["clinical"]["micro"].items()}}
    assert set(out["ci95"]) == set(point) == set(rm.DEFAULT_CI)
    for k, (low, high) in out["ci95"].items():
        assert low <= point[k] <= high and low < high, k
    assert out["bootstrap"] == {"n_boot": 200, "seed": 0, "patients": 20, "resamples": dict.fromkeys(point, 200)}
    again = bootstrap_report_metrics(refs, hyps, groups, n_boot=200, seed=0, tokenizer="python")
    assert {k: [iv.low, iv.high] for k, iv in again.items()} == out["ci95"]             # same seed, same CIs
    other = bootstrap_report_metrics(refs, hyps, groups, n_boot=200, seed=1, tokenizer="python")
    assert other["bleu4"].low != again["bleu4"].low
    plain = report_scores(refs, hyps, **FAST)
    assert plain["ci95"] == {} and plain["bootstrap"] is None and plain["nlg"] == out["nlg"] and plain["n"] == 40


# ---- bad input -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("refs, hyps, message", [
    (["a", "b"], ["a"], "2 references for 1 hypotheses"),
    ([], [], "no reports to score"),
    (["a"], [None], "hypothesis 0 is a NoneType"),
    (["a", 3], ["a", "b"], "reference 1 must be a string"),
    (["a", []], ["a", "b"], "reference 1 must be a string or a non-empty list"),
    ("the heart", "the heart", "must be a list of reports"),
])
def test_bad_pairs_are_refused_in_one_line(refs, hyps, message):
    with pytest.raises(MedsslError, match=message) as e:
        nlg_metrics(refs, hyps, **FAST)
    assert "\n" not in str(e.value)


def test_bad_bootstrap_and_tokenizer_arguments_are_refused():
    refs = hyps = ["the heart is normal", "no effusion"]
    with pytest.raises(MedsslError, match="corpus-level"):
        bootstrap_report_samples(refs, hyps, ["a", "b"], metrics=("meteor",))
    with pytest.raises(MedsslError, match="one patient id per report"):
        bootstrap_report_samples(refs, hyps, ["a"], metrics=("bleu4",), tokenizer="python")
    with pytest.raises(MedsslError, match="alpha"):
        bootstrap_report_metrics(refs, hyps, ["a", "b"], alpha=1.5)
    with pytest.raises(MedsslError, match="tokenizer must be one of"):
        nlg_metrics(refs, hyps, meteor=False, tokenizer="nltk")
    with pytest.raises(MedsslError, match="one reference per report"):
        clinical_efficacy_reports([["a", "b"], "c"], ["a", "c"])

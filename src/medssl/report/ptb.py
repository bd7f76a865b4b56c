"""The tokenisation of the report-generation scores: coco-caption's, lower case with punctuation removed.

Stanford's PTBTokenizer (the jar pycocoevalcap ships) with coco-caption's PUNCTUATIONS when `java` is on PATH, else
`tokenize_python`, written to give the same tokens on report text (tests check it). coco-caption's PUNCTUATIONS
spells brackets "-LRB-" while the tokenizer lower-cases, so "(" survives as "-lrb-"; both tokenisers keep that,
since published numbers were computed with it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from pycocoevalcap.tokenizer import ptbtokenizer
from pycocoevalcap.tokenizer.ptbtokenizer import PUNCTUATIONS

from medssl.errors import MedsslError

JAVA_MISSING = "java not found on PATH: install a Java runtime (Debian: default-jre-headless)"
TOKENIZERS = ("auto", "ptb", "python")
_PUNCT = frozenset(PUNCTUATIONS)

# Abbreviations whose period PTBTokenizer 3.4.1 keeps (probed with the jar: "see X. the end", "see X. The end",
# "see X." and "see X. 5 x" in lower, upper and title case); the others lose it like any word at a sentence end.
_ABBREV_ANY_CASE = frozenset(
    "adm ala al apr ariz assn assoc aug ave bldg blvd bros brig calif capt cf cmdr co col colo conn corp cos ct dec "
    "dept dr elec esq est etc ext feb fla fri ft ga gen gov hon inc ind jan jr jul jun kan kans ky lt ltd maj mar md "
    "messrs mfg mich minn mlle mme mo mon mont mr mrs ms mt natl neb nev nov oct okla penn ph prof rd rep rev rt "
    "sen sep sept sgt sq sr st ste tenn thu thurs tue tues univ va vs vt wed wis wisc wyo".split())
_ABBREV_CAPITALISED = frozenset("ark az del ill la mass miss ore pa tex wash".split())  # "PA." keeps it, "pa." not
_ABBREV_BEFORE_NUMBER = frozenset("art ca fig no nos op pp".split())  # "No. 5" keeps it, "No." at an end not
_LEX = [re.compile(p) for p in (
    r"[A-Za-z](?:\.[A-Za-z])+\.?",               # e.g. i.e. u.s.a. p.m.
    r"[A-Za-z]+(?:\.[A-Za-z]+)+",                # words glued by a period: "normal.lungs" stays one token
    r"[-+]?\d+(?:[.,:/]\d+)*(?:-\d+)*",           # 1.5 1,000 10:30 12/03/2015 1.5-2 -2 (then "cm" of "1.5cm")
    r"\.\d+",
    r"\w+(?:[-/']\w+)*",                         # left-sided s/p x-XXXX t11-t12 o'clock 10mm 5x5mm
    r"[A-Z]+(?:&[A-Z]+)+",                       # A&E, R&D (lower-case "at&t" is split, as PTB does)
    r"'(?:[sSmMdD]|re|RE|ll|LL|ve|VE)\b", r"n't\b", r"N'T\b",
    r"\.\.\.|--+|[?!]+|``|''|\S",
)]
_CONTRACTION = re.compile(r"(?<=\w)(n't|N'T|'(?:[sSmMdD]|re|RE|ll|LL|ve|VE))\b")
_CANNOT = re.compile(r"\b([Cc][Aa][Nn])([Nn][Oo][Tt])\b")
_MAP = {"(": "-LRB-", ")": "-RRB-", "[": "-LSB-", "]": "-RSB-", "{": "-LCB-", "}": "-RCB-", '"': "''", "—": "--",
        "–": "--", "…": "..."}
_QUOTES = str.maketrans({"‘": "'", "’": "'", "“": '"', "”": '"'})


def _lex(text: str) -> list[tuple[str, int]]:
    """PTB-like tokens of one line with their end offsets: the longest match at each position (JFlex's rule)."""
    text = _CANNOT.sub(r"\1 \2", _CONTRACTION.sub(r" \1", text.translate(_QUOTES)))
    out, i = [], 0
    while i < len(text):
        if text[i].isspace():
            i += 1
            continue
        end = max(m.end() for m in (p.match(text, i) for p in _LEX) if m)
        out.append((text[i:end], end))
        i = end
    return out


def _keeps_period(word: str, following: str) -> bool:
    """Whether PTBTokenizer reads `word.` as an abbreviation before the token `following` ("" at the end)."""
    low = word.lower()
    if len(word) == 1 and word.isalpha():
        return not following[:1].isupper()
    return (low in _ABBREV_ANY_CASE or (low in _ABBREV_CAPITALISED and word != low)
            or (low in _ABBREV_BEFORE_NUMBER and following[:1].isdigit()))


def _tokenize_line(text: str) -> str:
    """One report -> its lower-cased tokens without coco-caption's PUNCTUATIONS, joined by single spaces."""
    lexed, tokens, k = _lex(text), [], 0
    while k < len(lexed):
        tok, end = lexed[k]
        nxt = lexed[k + 1] if k + 1 < len(lexed) else None
        if nxt and nxt[0] == "." and nxt[1] == end + 1 and re.fullmatch(r"[A-Za-z]+", tok) and _keeps_period(
                tok, lexed[k + 2][0] if k + 2 < len(lexed) else ""):
            tok, k = tok + ".", k + 1
        tokens.append("--" if tok.startswith("--") else _MAP.get(tok, tok).lower())
        k += 1
    return " ".join(t for t in tokens if t not in _PUNCT)


def tokenize_python(texts: Sequence[str]) -> list[str]:
    """PTBTokenizer's tokens (-preserveLines -lowerCase, coco-caption's PUNCTUATIONS removed) without Java.

    A re-implementation of the rules report text meets: punctuation split off, decimals, dates, hyphenated and
    slashed words kept whole, contractions ("does n't", "patient 's"), brackets as -lrb- ..., the abbreviations
    that keep their period. Rare constructions (URLs, "rock'n'roll") may differ from the jar.
    """
    return [_tokenize_line(" ".join(t.split())) for t in texts]


def tokenize_ptb(texts: Sequence[str]) -> list[str]:
    """coco-caption's tokenisation through its Stanford PTBTokenizer jar (needs java); one output line per text.

    pycocoevalcap's PTBTokenizer.tokenize writes a temporary file into site-packages and loses the alignment of
    empty captions; this runs the same jar with the same flags on standard input instead.
    """
    java = shutil.which("java")
    if java is None:
        raise MedsslError(JAVA_MISSING)
    jar = Path(ptbtokenizer.__file__).with_name(ptbtokenizer.STANFORD_CORENLP_3_4_1_JAR)
    lines = [" ".join(t.split()) for t in texts]  # any line break inside a report would split its line
    cmd = [java, "-cp", str(jar), "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines", "-lowerCase"]
    proc = subprocess.run(cmd, input=("\n".join(lines) + "\n").encode(), capture_output=True,
                          timeout=120 + 0.01 * len(lines), check=False)
    out = proc.stdout.decode("utf-8", errors="replace").split("\n")
    if proc.returncode != 0 or len(out) < len(lines) or any(out[len(lines):]):
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        raise RuntimeError(f"PTBTokenizer exited {proc.returncode} with {len(out)} lines for {len(lines)} texts"
                           f"{': ' + err[0] if err else ''}")
    return [" ".join(w for w in line.split() if w not in _PUNCT) for line in out[:len(lines)]]


def tokenize(texts: Sequence[str], tokenizer: str = "auto") -> tuple[list[str], str, list[str]]:
    """(tokens, "ptb" | "python", notes): "auto" takes PTB when java is on PATH and falls back if the jar fails."""
    if tokenizer not in TOKENIZERS:
        raise MedsslError(f"tokenizer must be one of {', '.join(TOKENIZERS)}, got {tokenizer!r}")
    if tokenizer == "python" or (tokenizer == "auto" and shutil.which("java") is None):
        return tokenize_python(texts), "python", [] if tokenizer == "python" else [f"tokenizer python: {JAVA_MISSING}"]
    try:
        return tokenize_ptb(texts), "ptb", []
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        if tokenizer == "ptb":
            raise MedsslError(f"the PTB tokenizer failed: {e}") from e
        return tokenize_python(texts), "python", [f"tokenizer python: the PTB tokenizer failed ({e})"]

"""Radiology report text: sections, cleaning, sentences, ConVIRT sentence sampling, truncation, missing reports.

A report is one string with optional headers ("FINDINGS: ... IMPRESSION: ..."). The text a model trains on is, by
default, the cleaned FINDINGS followed by the IMPRESSION; a report without any header (clinical notes) is used whole.

De-identification: IU X-ray (Open-i) writes every redacted span as `XXXX` (also glued to other characters:
`x-XXXX`, `XXXXPM`, `4XXXX`). Cleaning replaces each such word, and each run of them (`XXXX XXXX XXXX` is one
redacted date and time), with the single placeholder DEID = "[DEID]". It is kept rather than dropped so that a
sentence keeps its shape ("no [DEID] of a pleural effusion"), and it is one token: the tokenizer (tokenizer.py)
registers it as a special token, never split into word pieces and never lower-cased. Pass `deid=""` to drop them.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
import torch

from medssl.errors import MedsslError

T = TypeVar("T")

DEID = "[DEID]"
TRAINING_SECTIONS: tuple[str, ...] = ("findings", "impression")
BODY = "body"  # the key of text outside any header (all of a report that has none)

# Header spellings -> the canonical section name. A header is one of these followed by a colon, any case.
SECTION_ALIASES: dict[str, str] = {
    "findings": "findings", "finding": "findings",
    "impression": "impression", "impressions": "impression", "conclusion": "impression", "conclusions": "impression",
    "indication": "indication", "indications": "indication", "clinical indication": "indication",
    "clinical history": "indication", "history": "indication", "reason for exam": "indication",
    "reason for examination": "indication",
    "comparison": "comparison", "comparisons": "comparison",
    "technique": "technique", "examination": "technique", "exam": "technique", "procedure": "technique",
    "recommendation": "recommendation", "recommendations": "recommendation",
}
_HEADER = re.compile(
    r"(?<![A-Za-z])(" + "|".join(sorted((re.escape(a) for a in SECTION_ALIASES), key=len, reverse=True)) + r")\s*:",
    re.IGNORECASE)
_DEID_WORD = re.compile(r"[A-Za-z0-9]*XXX+[A-Za-z0-9]*")
_MISSING_SPACE = re.compile(r"([a-z]{2,})\.([A-Z][a-z])")  # "apex.There" -> "apex. There" (not "e.g", "2.5")
# Markup of the source: <br> tags, [brackets], and < > that do not compare a number ("<heart size...>", not "< 1 cm").
_MARKUP = re.compile(r"<br\s*/?>|[\[\]]|[<>](?!\s?\d)", re.IGNORECASE)
_BOUNDARY = re.compile(r"([.!?])\s+")
# Words whose final period does not end a sentence (lower case, last period removed).
ABBREVIATIONS = frozenset({"e.g", "i.e", "dr", "mr", "mrs", "ms", "prof", "vs", "approx", "a.m", "p.m", "cf", "fig",
                           "viz", "incl", "esp", "pt"})
_LIST_MARKER = re.compile(r"^\(?\d{1,2}[.)]\s+")
_ONLY_DIGITS = re.compile(r"^\(?\d{1,2}\)?$")


def split_sections(report: str) -> dict[str, str]:
    """The sections of a report as {canonical name: text}; text outside any header goes under BODY.

    Headers are matched in any case when followed by a colon; aliases map to one name (IMPRESSIONS, CONCLUSION ->
    "impression"); a section that appears twice is joined with a space. Values are stripped, never empty.
    """
    sections: dict[str, str] = {}
    matches = list(_HEADER.finditer(report or ""))
    pieces = [(BODY, report[: matches[0].start()] if matches else report or "")]
    for m, nxt in zip(matches, [*matches[1:], None]):
        name = SECTION_ALIASES[" ".join(m.group(1).lower().split())]
        pieces.append((name, report[m.end(): nxt.start() if nxt else len(report)]))
    for name, text in pieces:
        text = text.strip()
        if text:
            sections[name] = f"{sections[name]} {text}" if name in sections else text
    return sections


def join_sections(sections: Mapping[str, str | None]) -> str:
    """One report 'FINDINGS: ... IMPRESSION: ...' from per-section texts (a CSV's columns); empty ones left out."""
    return " ".join(f"{name.upper()}: {text.strip()}" for name, text in sections.items() if text and text.strip())


def clean_text(text: str, lower: bool = True, deid: str = DEID) -> str:
    """One normal form of report text: HTML entities and markup (<br>, brackets) out, de-identification
    placeholders to one `deid` token (runs collapsed), a space after a glued sentence end, stray repeated periods and
    whitespace collapsed, lower case (the placeholder keeps its case)."""
    text = html.unescape(text or "").replace(DEID, "\0")  # an already-cleaned text keeps its placeholders
    text = _MARKUP.sub(" ", text)
    text = _MISSING_SPACE.sub(r"\1. \2", text)
    text = _DEID_WORD.sub("\0", text)
    text = re.sub(r"\0(?:\s+\0)+", "\0", text)  # a run of redacted words is one redacted span
    text = " ".join(text.split())
    text = re.sub(r"([.!?])(?: \.)+", r"\1", text)  # "visualized. ." (stray periods of the source)
    if lower:
        text = text.lower()
    text = text.replace("\0", deid)
    return " ".join(text.split())  # deid="" leaves double spaces


def training_text(report: str, sections: Sequence[str] = TRAINING_SECTIONS, lower: bool = True,
                  deid: str = DEID) -> str:
    """The cleaned text a model trains on: the chosen sections in order (default FINDINGS then IMPRESSION).

    A report with no header at all is used whole; a report with headers but none of the chosen sections gives "".
    """
    parts = split_sections(report)
    if set(parts) <= {BODY}:
        chosen = [parts.get(BODY, "")]
    else:
        chosen = [parts[name] for name in sections if name in parts]
    return clean_text(" ".join(chosen), lower=lower, deid=deid)


def _ends_sentence(text: str, start: int, end: int) -> bool:
    """Whether the punctuation at text[end] closes the sentence begun at `start` (not 'e.g.', 'Dr.', or '1.')."""
    before = text[start:end].strip()
    if not before or _ONLY_DIGITS.match(before):
        return False  # a list marker "1." opens an item rather than ending one
    word = before.rsplit(None, 1)[-1].lstrip("([").lower()
    return word not in ABBREVIATIONS


def split_sentences(text: str, deid: str = DEID) -> list[str]:
    """Sentences of a (cleaned) text, without list markers ("1. ", "2) ") and without empty or placeholder-only ones.

    Ends at '.', '!' or '?' followed by whitespace, except after an abbreviation (e.g., i.e., Dr., p.m.) or a
    list number; decimals ("2.5 cm") never end one since no space follows their point.
    """
    pieces, start = [], 0
    for m in _BOUNDARY.finditer(text or ""):
        if _ends_sentence(text, start, m.start(1)):
            pieces.append(text[start: m.end(1)])
            start = m.end()
    pieces.append((text or "")[start:])
    sentences = []
    for piece in pieces:
        piece = _LIST_MARKER.sub("", piece.strip().lstrip(".,;: ")).strip()
        content = piece.replace(deid, " ") if deid else piece
        if re.search(r"\w", content):
            sentences.append(piece)
    return sentences


def report_sentences(report: str, sections: Sequence[str] = TRAINING_SECTIONS, lower: bool = True) -> list[str]:
    """split_sentences(training_text(report)): the cleaned training sentences of a raw report."""
    return split_sentences(training_text(report, sections, lower=lower))


Generator = torch.Generator | np.random.Generator


def _randint(generator: Generator, high: int) -> int:
    """A uniform integer in [0, high) from either kind of generator (each random step owns its generator)."""
    if isinstance(generator, torch.Generator):
        return int(torch.randint(high, (1,), generator=generator).item())
    if isinstance(generator, np.random.Generator):
        return int(generator.integers(high))
    raise MedsslError(f"sentence sampling: generator must be a torch.Generator or numpy Generator, got "
                      f"{type(generator).__name__}")


def sample_sentences(sentences: Sequence[str], generator: Generator, max_span: int = 1) -> str:
    """ConVIRT's text view (Zhang et al. 2020): a random span of 1..max_span consecutive sentences, joined.

    max_span=1 is ConVIRT's one random sentence. The span length is drawn first, then its start; the same seed
    gives the same text.
    """
    if not sentences:
        raise MedsslError("sentence sampling: the report has no sentence to sample from")
    if max_span < 1:
        raise MedsslError(f"sentence sampling: max_span={max_span} must be at least 1")
    span = 1 + _randint(generator, min(max_span, len(sentences)))
    start = _randint(generator, len(sentences) - span + 1)
    return " ".join(sentences[start: start + span])


def truncate_sentences(sentences: Sequence[str], budget: int,
                       count: Callable[[str], int] = lambda s: len(s.split())) -> tuple[list[str], int]:
    """The leading sentences whose token counts sum to at most `budget`, and how many were dropped.

    Cut at sentence boundaries only; the first sentence is always kept, even when it alone is over the budget (the
    tokenizer then cuts it at the context). `count` gives a sentence's tokens (default: words).
    """
    if budget < 1:
        raise MedsslError(f"truncation: token budget {budget} must be at least 1")
    kept, used = [], 0
    for sentence in sentences:
        n = count(sentence)
        if kept and used + n > budget:
            break
        kept.append(sentence)
        used += n
    return kept, len(sentences) - len(kept)


def filter_reports(records: Sequence[T], text_of: Callable[[T], Any] = lambda r: getattr(r, "report", None),
                   source: str = "records", sections: Sequence[str] = TRAINING_SECTIONS) -> tuple[list[T], int]:
    """(records with a usable report, number skipped): missing, empty, or empty once cleaned and sectioned.

    Raises MedsslError naming `source` when no report is left, since image-text training needs at least one pair.
    """
    texts = [text_of(r) for r in records]
    kept = [r for r, t in zip(records, texts) if isinstance(t, str) and training_text(t, sections)]
    skipped = len(records) - len(kept)
    if not kept:
        raise MedsslError(f"{source}: no report left: {skipped} of {len(records)} records have a missing or empty "
                          f"report ({' + '.join(s.upper() for s in sections)} after cleaning)")
    return kept, skipped

"""The work of `medssl report label [FILE | -] [--column NAME] [--json]`: the finding labeller over many reports.

FILE is a text file with one report per line, or a CSV file (by its .csv suffix) with a report column: --column NAME,
else a column named "report", else the "findings" and "impression" columns joined as FINDINGS: ... IMPRESSION: ...
(`join_sections`). "-" reads standard input, one report per line. Every input line (or CSV row) gives one output
line, blank ones included ("no findings mentioned"), so that output line i belongs to input line i.
Bad input (a missing, empty or undecodable file, a CSV without the column) raises MedsslError naming the file or
the column: the CLI turns it into one line and exit code 2.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path
from typing import IO

from medssl.errors import MedsslError
from medssl.report.labeler import NEGATIVE, OBSERVATIONS, POSITIVE, UNCERTAIN, label_report
from medssl.text.reports import join_sections

REPORT_COLUMN = "report"
SECTION_COLUMNS = ("findings", "impression")


def _decode(data: bytes | str, name: str) -> str:
    """UTF-8 text (a byte-order mark dropped), or MedsslError naming the source and the first bad byte."""
    if isinstance(data, str):
        return data
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise MedsslError(f"{name}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); "
                          f"save it as UTF-8") from None


def _read(source: str, stdin: IO) -> tuple[str, str]:
    """(name to cite in errors, the whole text) of a file or of standard input ("-")."""
    if source == "-":
        name = "standard input"
        try:
            data = stdin.buffer.read() if hasattr(stdin, "buffer") else stdin.read()
        except UnicodeDecodeError:
            raise MedsslError(f"{name}: not UTF-8 text; save it as UTF-8") from None
    else:
        name, path = source, Path(source)
        if not path.is_file():
            raise MedsslError(f"{name}: no such file" + (" (a directory)" if path.is_dir() else ""))
        data = path.read_bytes()
    text = _decode(data, name)
    if not text.strip():
        raise MedsslError(f"{name}: empty, no report to label")
    return name, text


def _csv_reports(name: str, text: str, column: str | None) -> list[str]:
    """The reports of a CSV: the named column, else "report", else findings + impression joined."""
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        fields = [f for f in reader.fieldnames or [] if f is not None]
        rows = list(reader)
    except csv.Error as e:
        raise MedsslError(f"{name}: not a readable CSV ({e})") from None
    have = ", ".join(fields) or "none"
    if column is not None:
        if column not in fields:
            raise MedsslError(f"{name}: no column '{column}' (columns: {have})")
        reports = [row.get(column) or "" for row in rows]
    elif REPORT_COLUMN in fields:
        reports = [row.get(REPORT_COLUMN) or "" for row in rows]
    elif any(c in fields for c in SECTION_COLUMNS):
        reports = [join_sections({c: row.get(c) for c in SECTION_COLUMNS if c in fields}) for row in rows]
    else:
        raise MedsslError(f"{name}: no column '{REPORT_COLUMN}' nor findings / impression (columns: {have}); "
                          f"name the report column with --column")
    if not rows:
        raise MedsslError(f"{name}: a header and no rows, no report to label")
    return reports


def format_labels(labels: dict[str, str], as_json: bool) -> str:
    """One output line: 'positive: a, b; uncertain: c; negative: d', or a JSON object with all 14 observations
    (null = not mentioned)."""
    if as_json:
        return json.dumps({obs: labels.get(obs) for obs in OBSERVATIONS})
    groups = [f"{status}: " + ", ".join(o for o in OBSERVATIONS if labels.get(o) == status)
              for status in (POSITIVE, UNCERTAIN, NEGATIVE) if status in labels.values()]
    return "; ".join(groups) or "no findings mentioned"


def label_lines(source: str, column: str | None, as_json: bool, stdin: IO | None = None) -> list[str]:
    """One output line per report of FILE (text: a report a line; .csv: a column) or of standard input ("-")."""
    name, text = _read(source, stdin if stdin is not None else sys.stdin)  # the stream of the call, not import
    if source != "-" and Path(source).suffix.lower() == ".csv":
        reports = _csv_reports(name, text, column)
    elif column is not None:
        raise MedsslError(f"{name}: --column {column} needs a .csv file; a text file holds one report per line")
    else:
        reports = text.splitlines()
    return [format_labels(label_report(r), as_json) for r in reports]

"""Self-contained HTML run reports: headings, tables and plots embedded as base64 PNG (one file to mail around)."""

from __future__ import annotations

import base64
import html
import os
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

_STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222;line-height:1.4}
h1{font-size:1.6em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}img{max-width:100%}
.note{color:#555;font-size:.9em}pre{background:#f7f7f7;padding:.6em;overflow-x:auto}"""


def image(path: str | os.PathLike, alt: str = "") -> str:
    """An <img> with the PNG embedded, so the page needs no other file."""
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def table(rows: Sequence[Mapping[str, object]], columns: Sequence[str] | None = None,
          strong: Collection[tuple[int, str]] = ()) -> str:
    """An HTML table from a list of dicts (columns: the first row's keys unless given); cells (row index, column)
    in `strong` are bold."""
    if not rows:
        return "<p class=note>(empty)</p>"
    cols = list(columns or rows[0].keys())
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)

    def cell(i: int, c: str, value: object) -> str:
        text = html.escape(_fmt(value))
        return f"<td><b>{text}</b></td>" if (i, c) in strong else f"<td>{text}</td>"

    body = "".join(
        "<tr>" + "".join(cell(i, c, r.get(c, "")) for c in cols) + "</tr>" for i, r in enumerate(rows)
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(v: object) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def paragraph(text: str, note: bool = False) -> str:
    """Escaped text in a <p>."""
    return f"<p{' class=note' if note else ''}>{html.escape(text)}</p>"


def preformatted(text: str) -> str:
    """Escaped text in a <pre> (terminal summaries, logs)."""
    return f"<pre>{html.escape(text)}</pre>"


def write_report(path: str | os.PathLike, title: str, sections: Sequence[tuple[str, str]]) -> Path:
    """Write a one-file HTML page: `sections` are (heading, HTML fragment) pairs. Atomic (temp file + rename)."""
    path = Path(path)
    parts = [f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title>",
             f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"]
    parts += [f"<h2>{html.escape(h)}</h2>\n{frag}" for h, frag in sections]
    parts.append("</body></html>")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(parts), encoding="utf-8")
    os.replace(tmp, path)
    return path

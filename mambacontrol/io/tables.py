"""CSV and JSON files the package writes: safe to open in a spreadsheet, always valid JSON.

A text cell that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return would run as a
formula in Excel or LibreOffice (CSV injection); :func:`csv_cell` prefixes such text with an
apostrophe, which spreadsheets show as text, and :func:`csv_uncell` removes that prefix again when
the package reads its own CSVs back. Numbers are never touched (``-3.1`` stays a number).
JSON is written with non-finite floats as ``null`` (:func:`json_safe`), never as ``NaN``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from mambacontrol.io.atomic import write_text_atomic

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value, float_format: str | None = None) -> str:
    """One CSV cell as text: empty for None and non-finite floats, floats in ``float_format``
    (default: Python's shortest exact form), and text that a spreadsheet would run as a formula
    prefixed with ``'``."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return format(value, float_format) if float_format else repr(value)
    if isinstance(value, int):
        return str(value)
    text = str(value)
    if text.startswith(FORMULA_START):
        return "'" + text
    return text


def csv_uncell(text: str) -> str:
    """Undo :func:`csv_cell`'s formula guard on a cell read back (``'=x`` → ``=x``)."""
    if text.startswith("'") and text[1:].startswith(FORMULA_START):
        return text[1:]
    return text


def csv_text(header: Sequence[str], rows: Iterable[Sequence],
             float_format: str | None = None) -> str:
    """A CSV document (``\\n`` line ends) with every cell passed through :func:`csv_cell`."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([csv_cell(h) for h in header])
    writer.writerows([[csv_cell(v, float_format) for v in row] for row in rows])
    return buf.getvalue()


def dict_rows(rows: Sequence[Mapping]) -> tuple[list[str], list[list]]:
    """Header (keys in order of first appearance) and rows of a list of dicts (missing: empty)."""
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    return cols, [[r.get(c) for c in cols] for r in rows]


def write_csv(path: str | os.PathLike, header: Sequence[str], rows: Iterable[Sequence],
              float_format: str | None = None, inputs: Iterable[str | os.PathLike] = ()) -> Path:
    """Write a CSV atomically (see :func:`csv_text`)."""
    return write_text_atomic(path, csv_text(header, rows, float_format), inputs)


def json_safe(value):
    """A copy of nested dicts/lists/tuples with non-finite floats as ``None`` and keys as text."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def json_text(value, indent: int | None = 2) -> str:
    """Strict JSON (no NaN/Infinity) of ``value`` after :func:`json_safe`, with a final newline."""
    return json.dumps(json_safe(value), indent=indent, allow_nan=False) + "\n"


def write_json(path: str | os.PathLike, value, indent: int | None = 2,
               inputs: Iterable[str | os.PathLike] = ()) -> Path:
    """Write strict JSON atomically (see :func:`json_text`)."""
    return write_text_atomic(path, json_text(value, indent), inputs)

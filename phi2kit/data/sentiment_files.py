"""The two published file forms of the financial news data, read into records.

- the Kaggle ``all-data.csv``: no header, ``sentiment,headline``, Latin-1, CR/LF/CRLF;
- the HF ``financial_phrasebank`` layout: columns ``sentence`` and ``label``, as CSV, JSON
  lines or parquet.

A record is ``(row, raw label, raw text, label field, text field)``; turning records into
labelled rows, and the errors for bad ones, is :func:`phi2kit.data.sentiment.load_financial_news`.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd

from phi2kit.data.files import DataError

#: One parsed row: (1-based row, raw label, raw text, label field name, text field name).
Record = tuple[int, Any, Any, str, str]


def missing_column(found: list[str], path: Any, row: int | None) -> None:
    """Raise if a phrasebank header lacks ``sentence`` or ``label``."""
    for column in ("sentence", "label"):
        if column not in found:
            raise DataError(
                f"missing column {column!r}: a phrasebank file needs the columns 'sentence' "
                f"and 'label' (found {found})",
                path=path,
                row=row,
                field=column,
            )


def csv_records(text: str, path: Any) -> Iterator[Record]:
    """Yield records from CSV text.

    The first non-blank record decides the form: if it names ``sentence`` or ``label`` it
    is a phrasebank header; otherwise the file is the Kaggle form, without a header.
    """
    # CR-only and CRLF line endings (even mixed) become LF before csv sees them.
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    for cells in reader:
        row = reader.line_num
        if not "".join(cells).strip():
            continue  # blank line
        if header is None:
            names = [c.strip().lower() for c in cells]
            header = names if {"sentence", "label"} & set(names) else []
            if header:
                missing_column(header, path, row)
                continue
        if header:  # phrasebank CSV
            values = dict(zip(header, cells, strict=False))
            yield row, values.get("label"), values.get("sentence"), "label", "sentence"
        else:
            # An unquoted headline with commas splits into more cells: join them back.
            headline = ",".join(cells[1:]) if len(cells) > 1 else None
            yield row, cells[0], headline, "sentiment", "headline"


def table_records(df: pd.DataFrame, path: Any) -> Iterator[Record]:
    """Yield records from a phrasebank-layout table; rows are numbered from 1."""
    missing_column([str(c) for c in df.columns], path, None)
    for i, (sentence, label) in enumerate(zip(df["sentence"], df["label"], strict=True), start=1):
        if isinstance(label, float):
            label = None if np.isnan(label) else int(label) if label.is_integer() else label
        yield i, label, sentence if isinstance(sentence, str) else None, "label", "sentence"


def read_json_table(text: str, path: Any) -> pd.DataFrame:
    """JSON lines (or one JSON array) into a frame, naming the line of a parse error."""
    if text.lstrip().startswith("["):
        return pd.DataFrame(json.loads(text))
    rows = []
    for n, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise DataError(f"not valid JSON: {err}", path=path, row=n) from err
    return pd.DataFrame(rows)

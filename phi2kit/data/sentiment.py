"""Financial news sentiment (notebooks 02 and 03): load either published form (Kaggle's
``all-data.csv``, HF ``financial_phrasebank``) into ``text`` and ``label``, and build prompts."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from datasets import Dataset

from phi2kit.data.files import DataError, LoadResult, decode_utf8

#: The default label words, in the order of financial_phrasebank's integers 0, 1, 2.
LABELS: tuple[str, ...] = ("negative", "neutral", "positive")

#: The default template, for training and inference; the completion is ``" " + label``.
PROMPT_TEMPLATE = (
    "Classify the sentiment of this financial news headline as {labels}.\n"
    "Headline: {headline}\n"
    "Sentiment:"
)


def check_labels(labels: Sequence[str]) -> tuple[str, ...]:
    """``labels`` as a tuple, after checking there are at least two distinct, non-empty words."""
    labels = tuple(labels)
    if len(labels) < 2 or len(set(labels)) != len(labels):
        raise ValueError(f"labels must be two or more distinct words, got {labels!r}")
    if any(not isinstance(w, str) or not w.strip() or w != w.strip() for w in labels):
        raise ValueError(f"each label must be a non-empty word without outer spaces: {labels!r}")
    return labels


def list_labels(labels: Sequence[str]) -> str:
    """``("a", "b", "c")`` -> ``"a, b or c"``: how ``{labels}`` reads in a prompt."""
    labels = check_labels(labels)
    return ", ".join(labels[:-1]) + " or " + labels[-1]


#: One parsed row: (1-based row, raw label, raw text, label field name, text field name).
Record = tuple[int, Any, Any, str, str]


def csv_records(text: str, path: Any) -> Iterator[Record]:
    """Records from CSV text (CR, LF or CRLF line ends); a first row naming ``label``, ``sentence``
    or ``text`` is a header, else the file is Kaggle's (sentiment, headline)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    text_column = "text"
    for cells in reader:
        row = reader.line_num
        if not "".join(cells).strip():
            continue  # blank line
        if header is None:
            sep = next((c for c in ";\t" if len(cells) == 1 and c in cells[0]), None)
            if sep:  # Excel in many locales saves "CSV" with semicolons
                raise DataError(f"one column with {sep!r} in it: the file must be separated by "
                                "commas (save it as CSV with commas)", path=path, row=row)
            names = [c.strip().lower() for c in cells]
            header = names if {"sentence", "text", "label"} & set(names) else []
            if header:
                text_column = "sentence" if "sentence" in header else "text"
                for column in (text_column, "label"):
                    if column not in header:
                        raise DataError(f"missing column {column!r}: a file with a header needs "
                                        f"the columns 'label' and 'text' (or 'sentence') (found "
                                        f"{header})", path=path, row=row, field=column)
                continue
        if header:
            values = dict(zip(header, cells, strict=False))
            yield row, values.get("label"), values.get(text_column), "label", text_column
        else:  # an unquoted headline with commas splits into more cells: join them back
            headline = ",".join(cells[1:]) if len(cells) > 1 else None
            yield row, cells[0], headline, "sentiment", "headline"


def _label_word(value: Any, labels: Sequence[str] = LABELS, *, first: bool = False,
                **where: Any) -> str:
    """The word of a label (a word of ``labels``, any case, or an int indexing them), or a
    :class:`DataError` at ``where``; ``first``: the file's first row may be a bad header."""
    lower = {label.lower(): label for label in labels}
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        if 0 <= value < len(labels):
            return labels[value]
    elif isinstance(value, str):
        word = value.strip().lower()
        if word.isdigit() and int(word) < len(labels):
            return labels[int(word)]
        if word in lower:
            return lower[word]
    ints = ", ".join(str(i) for i in range(len(labels)))
    expected = ", ".join(labels) + (f", or {ints}" if where.get("field") == "label" else "")
    if where.get("field") == "sentiment" and first:  # maybe a header with other column names
        where.pop("field")
        raise DataError(f"not a header with the columns 'label' and 'text' (or 'sentence'), so "
                        f"read as data (sentiment, headline), with an unknown label {value!r} "
                        f"(expected one of {expected}): if it is your header, name its columns "
                        f"label and text", whole_file=True, **where)  # fmt: skip
    raise DataError(f"unknown label {value!r} (expected one of {expected})", **where)


def _collect(
    records: Iterable[Record], path: Any, skip_bad: bool, label_set: Sequence[str] = LABELS
) -> pd.DataFrame:
    """Records as a frame; bad rows raise one :class:`DataError` naming them all, or with
    ``skip_bad`` are skipped and named in ``df.attrs["problems"]``."""
    rows = LoadResult(skip_bad=skip_bad)
    for row, label, text, label_field, text_field in records:
        with rows.row():
            if label is None or not str(label).strip():
                raise DataError("empty value in this column", path=path, row=row, field=label_field)
            if text is None:
                raise DataError("missing column: no headline after the label", path=path, row=row,
                                field=text_field)
            if not str(text).strip():
                raise DataError("empty value in this column", path=path, row=row, field=text_field)
            word = _label_word(label, label_set, first=not rows and not rows.errors,
                               path=path, row=row, field=label_field)
            rows.append((str(text).strip(), word))
    rows.done()  # every bad row in one go, not one per try
    if not rows:
        raise DataError(f"no usable rows ({rows.n_skipped} bad rows skipped)", path=path)
    df = pd.DataFrame(list(rows), columns=["text", "label"])
    classes = sorted(set(df["label"]))
    if len(classes) < 2:
        raise DataError(f"only one class ({classes[0]!r}) in {len(df)} rows: nothing to classify",
                        path=path)
    df.attrs["skipped"] = rows.n_skipped
    df.attrs["path"] = str(path)  # for the split's messages
    df.attrs["problems"] = rows.problems
    return df


def _hub_record(row: int, sentence: Any, label: Any) -> Record:
    """A hub row as a record; a missing value (NaN in the table) becomes None."""
    if isinstance(label, float):  # a label column with a missing value holds floats
        label = None if np.isnan(label) else int(label) if label.is_integer() else label
    return row, label, sentence if isinstance(sentence, str) else None, "label", "sentence"


def _hub_table(hub_id: str, hub_config: str) -> pd.DataFrame:
    """The hub dataset's train split, else its Parquet export (``refs/convert/parquet``:
    ``datasets`` 4 no longer runs phrasebank's loading script), else a :class:`DataError`."""
    import datasets

    try:
        return datasets.load_dataset(hub_id, hub_config, split="train").to_pandas()
    except Exception as first:
        try:
            return datasets.load_dataset(hub_id, revision="refs/convert/parquet",
                                         data_dir=hub_config, split="train").to_pandas()
        except Exception:
            raise DataError(
                f"could not load {hub_id!r} ({hub_config}) from the hub: {first}. Offline, "
                "download the Kaggle all-data.csv or a phrasebank file and pass its path.",
                path=hub_id,
            ) from first


def load_financial_news(path: str | os.PathLike[str] | None = None, *,
                        hub_id: str = "takala/financial_phrasebank",
                        hub_config: str = "sentences_50agree", skip_bad: bool = False,
                        labels: Sequence[str] = LABELS) -> pd.DataFrame:  # fmt: skip
    """Headlines and their label word from a CSV file (either form) or, with no ``path``, the hub;
    an integer label ``i`` means ``labels[i]``. ``skip_bad`` skips bad rows (``df.attrs``), else the
    first raises :class:`DataError`."""
    labels = check_labels(labels)
    if path is None:
        table = _hub_table(hub_id, hub_config)
        pairs = zip(table["sentence"], table["label"], strict=True)
        records = (_hub_record(i, x, y) for i, (x, y) in enumerate(pairs, start=1))
        return _collect(records, hub_id, skip_bad, labels)

    if Path(path).is_dir():
        raise DataError("a folder, not a file: pass the CSV file itself", path=path)
    raw = Path(path).read_bytes()
    if not raw.strip():
        raise DataError("empty file", path=path)
    if b"\x00" in raw[:4096] and not raw.startswith((b"\xff\xfe", b"\xfe\xff")):  # not UTF-16
        raise DataError("a binary file, not CSV text: pass the CSV file itself", path=path)
    text = decode_utf8(raw, path, fallback="latin-1")  # UTF-8, else Latin-1 (the Kaggle file)
    if text.lstrip()[:1] in ("{", "["):  # e.g. chats or QA rows given to the headlines' loader
        raise DataError("JSON, not CSV: pass a CSV of headlines (label,headline rows, or the "
                        "columns text and label)", path=path)  # fmt: skip
    return _collect(csv_records(text, path), path, skip_bad, labels)


def _normalize(text: str) -> str:
    return " ".join(text.split())


def build_prompt(
    headline: str, template: str = PROMPT_TEMPLATE, labels: Sequence[str] = LABELS
) -> str:
    """The prompt for one headline (whitespace collapsed); ``{labels}`` in the template
    becomes :func:`list_labels`, and other braces are left alone."""
    if "{headline}" not in template:
        raise ValueError(f"the prompt template has no {{headline}} placeholder: {template!r}")
    if "{labels}" in template:
        template = template.replace("{labels}", list_labels(labels))
    return template.replace("{headline}", _normalize(headline))


def to_prompt_completion(df, template, labels):
    """trl's prompt-completion format (trl appends EOS to the completion); ``label`` stays for
    scoring. Notebook 02 writes it in its cells."""
    prompts = [build_prompt(text, template, labels) for text in df["text"]]
    return Dataset.from_dict({"prompt": prompts,
                              "completion": [" " + label for label in df["label"]],
                              "label": list(df["label"])})  # fmt: skip

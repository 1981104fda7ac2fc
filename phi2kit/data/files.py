"""The data loaders' error type, their one bad-row collector, and the text-file readers."""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class DataError(ValueError):
    """A data file (or data frame) cannot be used as it is.

    The message names where the problem is, for example
    ``all-data.csv, row 17, field 'sentiment': unknown label 'positve' (expected one of
    negative, neutral, positive)``.

    Args:
        message: What is wrong, and if possible how to fix it.
        path: The file (or hub id) being read, or ``None``.
        row: 1-based line (text files) or row (data frames) of the problem, or
            ``None`` when it concerns the whole file.
        field: The column or field concerned, or ``None``.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | os.PathLike[str] | None = None,
        row: int | None = None,
        field: str | None = None,
    ) -> None:
        self.path = None if path is None else str(path)
        self.row = row
        self.field = field
        self.detail = message
        where = [self.path] if self.path is not None else []
        if row is not None:
            where.append(f"row {row}")
        if field is not None:
            where.append(f"field {field!r}")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)


class LoadResult(list):
    """A plain list of records, plus what a ``skip_bad=True`` load left out.

    Every loader collects its rows the same way::

        result = LoadResult(skip_bad=skip_bad)
        for line, raw in rows:
            with result.row():  # a DataError in here: raised, or recorded and the row skipped
                result.append(check(raw, line))

    Attributes:
        skip_bad: Record a bad row's :class:`DataError` and go on, instead of raising it.
        problems: One message per skipped row (or tree), naming file, line and field.
    """

    def __init__(self, problems: list[str] | None = None, *, skip_bad: bool = False) -> None:
        super().__init__()
        self.problems: list[str] = list(problems or [])
        self.skip_bad = skip_bad

    @property
    def n_skipped(self) -> int:
        """How many rows (or trees) were skipped."""
        return len(self.problems)

    @contextmanager
    def row(self) -> Iterator[None]:
        """Check one row: a :class:`DataError` is raised, or with ``skip_bad`` recorded.

        After a recorded error the rest of the ``with`` block is skipped, so nothing of the
        bad row is kept.
        """
        try:
            yield
        except DataError as err:
            if not self.skip_bad:
                raise
            self.problems.append(str(err))

    def summary(self, what: str = "rows") -> str:
        """``"bad rows skipped: 3 (first: FILE, row 7, ...)"``, or ``"no bad rows"``."""
        if not self.problems:
            return f"no bad {what}"
        return f"bad {what} skipped: {self.n_skipped} (first: {self.problems[0]})"


def decode_utf8(
    raw: bytes, path: str | os.PathLike[str] | None, fallback: str | None = None
) -> str:
    """Decode a text file as UTF-8 (a leading BOM dropped), or raise :class:`DataError`.

    With ``fallback`` (say ``"latin-1"``, for the Kaggle sentiment file), bytes that are not
    valid UTF-8 are decoded with it instead. Trying strict UTF-8 first reads both kinds of
    file correctly: decoding UTF-8 as Latin-1 would give mojibake ("Ã©" for "é"), while
    Latin-1 text with accents is almost never valid UTF-8. Without ``fallback`` the error
    names the line of the first bad byte.
    """
    if raw[:2] in (b"\xff\xfe", b"\xfe\xff"):  # a UTF-16 byte order mark (Excel's "Unicode text")
        raise DataError("a UTF-16 file; save it as UTF-8", path=path, row=1)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        if fallback:
            text = raw.decode(fallback)
        else:
            line = raw[: exc.start].count(b"\n") + 1
            byte = raw[exc.start : exc.start + 1].hex()
            raise DataError(
                f"not valid UTF-8 (byte 0x{byte}); save the file as UTF-8", path=path, row=line
            ) from None
    return text.removeprefix("\ufeff")


def read_jsonl(path: str | os.PathLike[str]) -> list[tuple[int, Any]]:
    """Non-blank lines of a (maybe gzipped) JSON-lines file as ``(line, object)`` pairs.

    A line that is not valid JSON gives a :class:`DataError` in place of the object, so the
    caller can raise it or count it as a skip.
    """
    opener = gzip.open if Path(path).suffix == ".gz" else open
    with opener(path, "rb") as f:
        text = decode_utf8(f.read(), path)
    out: list[tuple[int, Any]] = []
    for line_no, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            try:
                out.append((line_no, json.loads(line)))
            except json.JSONDecodeError as exc:
                out.append(
                    (line_no, DataError(f"malformed JSON ({exc.msg} at column {exc.colno})",
                                        path=path, row=line_no))
                )
    return out

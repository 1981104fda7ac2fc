"""The data loaders' error type, their one bad-row collector, and the text-file readers."""

from __future__ import annotations

import gzip
import json
import os
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class DataError(ValueError):
    """A data file (or frame) that cannot be used as it is; the message says where. ``row`` is
    1-based (``None``: the whole file); ``whole_file``: the row shows the whole file is read wrong,
    so the other rows' errors would add nothing."""

    def __init__(
        self,
        message: str,
        *,
        path: str | os.PathLike[str] | None = None,
        row: int | None = None,
        field: str | None = None,
        whole_file: bool = False,
    ) -> None:
        self.path = None if path is None else str(path)
        self.row = row
        self.field = field
        self.whole_file = whole_file
        self.detail = message
        where = [self.path] if self.path is not None else []
        if row is not None:
            where.append(f"row {row}")
        if field is not None:
            where.append(f"field {field!r}")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)


class LoadResult(list):
    """A list of records, plus ``problems`` (one per row a ``skip_bad`` load left out): loaders
    append each row inside ``with result.row():``, then return ``result.done()``."""

    def __init__(self, problems: list[str] | None = None, *, skip_bad: bool = False) -> None:
        super().__init__()
        self.problems: list[str] = list(problems or [])
        self.errors: list[DataError] = []  # this load's bad rows, skipped or not
        self.skip_bad = skip_bad

    @property
    def n_skipped(self) -> int:
        """How many rows (or trees) were skipped."""
        return len(self.problems)

    @contextmanager
    def row(self) -> Iterator[None]:
        """Record a :class:`DataError` raised in the block (the rest of the row is skipped): named
        in ``problems`` with ``skip_bad``, else raised by :meth:`done`, or at once when
        ``whole_file``."""
        try:
            yield
        except DataError as err:
            if err.whole_file and not self.skip_bad:
                raise
            self.errors.append(err)
            if self.skip_bad:
                self.problems.append(str(err))

    def done(self) -> LoadResult:
        """Self; without ``skip_bad``, the first bad row's :class:`DataError` is raised, naming
        the others ("(and 2 more bad row(s): row 17, row 18)"): all of them in one try."""
        if self.errors and not self.skip_bad:
            first, more = self.errors[0], self.errors[1:]
            rows = [f"row {e.row}" for e in more if e.row is not None]
            listed = ", ".join(rows[:5]) + ", ..." * (len(rows) > 5)
            also = f" (and {len(more)} more bad row(s): {listed})" if rows else ""
            raise DataError(first.detail + also, path=first.path, row=first.row, field=first.field)
        return self

    def summary(self, what: str = "rows") -> str:
        """``"bad rows skipped: 3 (first: FILE, row 7, ...)"``, or ``"no bad rows"``."""
        if not self.problems:
            return f"no bad {what}"
        return f"bad {what} skipped: {self.n_skipped} (first: {self.problems[0]})"


def decode_utf8(
    raw: bytes, path: str | os.PathLike[str] | None, fallback: str | None = None
) -> str:
    """UTF-8 (a leading BOM dropped), else ``fallback``, else a :class:`DataError`. UTF-8 goes
    first: Latin-1 text is almost never valid UTF-8, while UTF-8 read as Latin-1 is mojibake."""
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
    """Non-blank lines of a (maybe gzipped) JSON-lines file as ``(line, object)`` pairs; a
    line that is not JSON gives a :class:`DataError` in place of the object."""
    opener = gzip.open if Path(path).suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            text = decode_utf8(f.read(), path)
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:  # named .gz, but not (all) gzip
        raise DataError(f"not a complete gzip file ({exc}): pass the file as downloaded, or "
                        "its unpacked .jsonl", path=path) from None
    if text.lstrip().startswith("["):  # one JSON array (maybe indented), not JSON lines
        raise DataError("a JSON array: this reads JSON lines, one object per line (write "
                        "each with json.dumps(row) + '\\n')", path=path)  # fmt: skip
    out: list[tuple[int, Any]] = []
    for line_no, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            try:
                out.append((line_no, json.loads(line)))
            except json.JSONDecodeError as exc:
                out.append(
                    (line_no, DataError(f"malformed JSON ({exc.msg}; column {exc.colno})",
                                        path=path, row=line_no))
                )
    return out


def hub_rows(hub_id: str, split: str, advice: str, columns: tuple[str, ...] = ()) -> Iterator:
    """``(row, dict)`` pairs of a hub split (only ``columns`` of it, when given), or a
    :class:`DataError` that says what to pass offline (``advice``)."""
    try:
        from datasets import load_dataset

        table = load_dataset(hub_id, split=split)
        if columns:
            table = table.select_columns([c for c in columns if c in table.column_names])
    except Exception as exc:  # offline, unknown split, missing package, ...
        raise DataError(
            f"could not load split {split!r} from the Hub ({type(exc).__name__}: {exc}). "
            f"Offline? {advice}",
            path=hub_id,
        ) from exc
    return enumerate(table, start=1)

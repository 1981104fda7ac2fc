"""The one error type the data loaders raise for bad input files."""

from __future__ import annotations

import os


class DataError(ValueError):
    """A data file (or data frame) cannot be used as it is.

    The message names where the problem is, for example
    ``all-data.csv, row 17, field 'sentiment': unknown label 'positve' (expected one of
    negative, neutral, positive)``.

    Args:
        message: What is wrong, and if possible how to fix it.
        path: The file (or hub id) being read, or ``None``.
        row: 1-based line (text files) or row (parquet, data frames) of the problem, or
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

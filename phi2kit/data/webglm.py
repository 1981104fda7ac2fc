"""WebGLM-QA (notebook 04): load, check citations, build prompts, fit to a token budget;
:func:`build_qa_prompt` and :func:`fit_example` are notebook 04's cells."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from phi2kit.data.files import DataError, LoadResult, hub_rows, read_jsonl

HUB_ID = "THUDM/webglm-qa"

# "[3]", "[12]", "[1, 2]" or "[1,2]"; "[1.5]", "[a]" and "[]" do not match.
_CITATION = re.compile(r"\[(\d+(?:\s*,\s*\d+)*)\]")


def parse_citations(text: str) -> list[int]:
    """Citation indices in order, with duplicates: ``"A [1][2], B [1, 3]"`` -> ``[1, 2, 1, 3]``."""
    found = []
    for match in _CITATION.finditer(text):
        found.extend(int(part) for part in match.group(1).split(","))
    return found


def _check_example(row: Any, path: str, line: int) -> dict:
    """Return a clean example or raise DataError naming the line and the field."""
    if not isinstance(row, dict):
        raise DataError(f"expected a JSON object, got {type(row).__name__}", path=path, row=line)
    for name in ("question", "answer"):
        value = row.get(name)
        if name not in row:
            raise DataError("missing field", path=path, row=line, field=name)
        if not isinstance(value, str):
            msg = f"expected a string, got {type(value).__name__}"
            raise DataError(msg, path=path, row=line, field=name)
        if not value.strip():
            raise DataError("empty text", path=path, row=line, field=name)
    refs = row.get("references")
    if "references" not in row:
        raise DataError("missing field", path=path, row=line, field="references")
    if not isinstance(refs, list) or not all(isinstance(r, str) for r in refs):
        raise DataError("expected a list of strings", path=path, row=line, field="references")
    if not refs:
        raise DataError("empty reference list", path=path, row=line, field="references")
    bad = [i for i in parse_citations(row["answer"]) if not 1 <= i <= len(refs)]
    if bad:
        msg = f"citation [{bad[0]}] is outside 1..{len(refs)} (the number of references)"
        raise DataError(msg, path=path, row=line, field="answer")
    return {"question": row["question"], "answer": row["answer"], "references": list(refs)}


def load_webglm(path: str | os.PathLike[str] | None = None, split: str = "train", *,
                hub_id: str = HUB_ID, skip_bad: bool = False,
                limit: int | None = None) -> LoadResult:  # fmt: skip
    """WebGLM-QA examples from a JSON-lines file, a folder holding ``{split}.jsonl`` or (no
    ``path``) the hub, at most ``limit``; a bad line raises :class:`DataError` naming it, or with
    ``skip_bad`` is named in ``problems``."""
    if path is None:
        advice = f"Download the JSON-lines files and pass path='folder/with/{split}.jsonl'"
        source, rows = hub_id, hub_rows(hub_id, split, advice)
    else:
        file = Path(path)
        if file.is_dir():
            file = file / f"{split}.jsonl"
        if not file.is_file():
            raise DataError(f"no such file (split {split!r})", path=str(file))
        if file.suffix.lower() in (".csv", ".tsv", ".parquet", ".xlsx", ".xls", ".zip"):
            raise DataError(f"a {file.suffix} file, not JSON lines: WebGLM-QA is read as JSON "
                            "lines (.jsonl, one object a line)", path=str(file))  # fmt: skip
        source, rows = str(file), read_jsonl(file)
        if not rows:
            raise DataError("empty file: no JSON lines", path=source)

    result = LoadResult(skip_bad=skip_bad)
    for line_no, row in rows:
        if limit is not None and len(result) >= limit:
            break
        with result.row():
            if isinstance(row, DataError):
                raise row
            result.append(_check_example(row, source, line_no))
    return result.done()


def build_qa_prompt(question, references):
    """Numbered references, the question, then the cue "Answer:" (the completion follows)."""
    lines = ["References:"] + [f"[{i}] {ref.strip()}" for i, ref in enumerate(references, 1)]
    return "\n".join((lines if references else []) + [f"Question: {question.strip()}", "Answer:"])


def fit_example(example, tokenizer, max_length):
    """Prompt and completion whose tokens (with EOS) fit in max_length; None if nothing fits."""
    question, answer = example["question"], " " + example["answer"].strip()
    refs = list(example["references"])
    while True:  # drop whole references from the last: the question and the answer are never cut
        prompt = build_qa_prompt(question, refs)
        if len(tokenizer(prompt + answer).input_ids) + 1 <= max_length:  # + 1: the EOS trl appends
            return {"prompt": prompt, "completion": answer}
        if not refs:
            return None
        refs.pop()


def references_shown(prompt: str) -> int:
    """How many ``[k] `` reference lines a prompt from :func:`build_qa_prompt` shows."""
    return len(re.findall(r"^\[\d+\] ", prompt, flags=re.M))


def fit_to_length(example: dict, tokenizer, max_length: int) -> tuple[dict, bool]:
    """``(row, trimmed)`` from :func:`fit_example` (``trimmed``: a reference was dropped), or
    a :class:`DataError` where the question and the answer alone do not fit."""
    row = fit_example(example, tokenizer, max_length)
    if row is None:
        bare = build_qa_prompt(example["question"], []) + " " + example["answer"].strip()
        n = len(tokenizer(bare).input_ids) + 1
        msg = (
            f"question and answer alone take {n} tokens (with EOS) > max_length={max_length}; "
            "they are never truncated: raise max_length or skip the example"
        )
        raise DataError(msg, field="question")
    return row, references_shown(row["prompt"]) < len(example["references"])


def to_prompt_completion(
    examples: Iterable[dict], tokenizer, max_length: int, *, skip_too_long: bool = False
):
    """``(dataset, stats)``: a ``datasets.Dataset`` of ``prompt`` and ``completion`` fitted
    to ``max_length`` tokens, and counts of what fitting dropped.

    ``stats``: ``n`` kept, ``n_trimmed`` (kept, lost a reference), ``n_dropped_refs``,
    ``n_dangling_citations`` (of dropped references), ``n_too_long`` (skipped with
    ``skip_too_long``, else they raise) and ``kept`` (positions in ``examples``).
    """
    from datasets import Dataset

    rows: list[dict] = []
    stats: dict[str, Any] = {"n": 0, "n_trimmed": 0, "n_dropped_refs": 0}
    stats.update(n_dangling_citations=0, n_too_long=0, kept=[])
    for index, example in enumerate(examples):
        try:
            row, trimmed = fit_to_length(example, tokenizer, max_length)
        except DataError as err:
            if not skip_too_long:
                raise DataError(err.detail, row=index + 1, field=err.field) from err
            stats["n_too_long"] += 1
            continue
        n_shown = references_shown(row["prompt"])
        rows.append(row)
        stats["n"] += 1
        stats["kept"].append(index)
        stats["n_trimmed"] += int(trimmed)
        stats["n_dropped_refs"] += len(example["references"]) - n_shown
        cited = parse_citations(example["answer"])
        stats["n_dangling_citations"] += sum(i > n_shown for i in cited)
    columns = {"prompt": [r["prompt"] for r in rows], "completion": [r["completion"] for r in rows]}
    return Dataset.from_dict(columns), stats

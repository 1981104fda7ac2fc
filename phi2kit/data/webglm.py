"""WebGLM-QA (notebook 04): load, check citations, build prompts, fit to a token budget.

Each example is one JSON line ``{"question": str, "answer": str, "references": [str, ...]}``.
Answers cite the references inline as ``[1]``, ``[2]``, ... (1-based).

    examples = load_webglm("data/webglm", split="train", limit=500)
    dataset, stats = to_prompt_completion(examples, tokenizer, max_length=512)
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from phi2kit.data.files import DataError, LoadResult, read_jsonl

HUB_ID = "THUDM/webglm-qa"

# "[3]", "[12]", "[1, 2]" or "[1,2]"; "[1.5]", "[a]" and "[]" do not match.
_CITATION = re.compile(r"\[(\d+(?:\s*,\s*\d+)*)\]")


def parse_citations(text: str) -> list[int]:
    """Return the citation indices in ``text``, in order of appearance, with duplicates.

    ``"A [1][2], B [1, 3]"`` gives ``[1, 2, 1, 3]``. Bracketed text that is not a list of
    whole numbers (``[a]``, ``[note]``, ``[1.5]``, ``[]``) is ignored.
    """
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


def _hub_rows(hub_id: str, split: str):
    """Yield (row number, row) from the Hugging Face Hub (needs network or the HF cache)."""
    try:
        from datasets import load_dataset

        ds = load_dataset(hub_id, split=split)
    except Exception as exc:  # offline, unknown split, missing package, ...
        msg = (
            f"could not load split {split!r} from the Hub ({type(exc).__name__}: {exc}). "
            f"Offline? Download the JSON-lines files and pass path='folder/with/{split}.jsonl'"
        )
        raise DataError(msg, path=hub_id) from exc
    yield from enumerate(ds, start=1)


def load_webglm(
    path: str | os.PathLike[str] | None = None,
    split: str = "train",
    *,
    hub_id: str = HUB_ID,
    skip_bad: bool = False,
    limit: int | None = None,
) -> LoadResult:
    """Load WebGLM-QA examples as dicts with ``question``, ``answer`` and ``references``.

    Args:
        path: A JSON-lines file, or a folder holding ``{split}.jsonl``. ``None`` loads
            ``hub_id`` from the Hugging Face Hub with ``datasets``.
        split: ``train``, ``validation`` or ``test``; picks the file in a folder.
        hub_id: The Hub dataset used when ``path`` is ``None``.
        skip_bad: Skip bad lines instead of raising; the result's ``n_skipped`` and
            ``problems`` say what was skipped.
        limit: Stop after this many good examples.

    Returns:
        A ``LoadResult`` (a list of dicts) with ``n_skipped`` and ``problems`` attributes.

    Raises:
        DataError: On a malformed JSON line, a missing or mistyped field, an empty
            reference list, a citation outside ``1..len(references)`` or an empty file,
            naming the file, the 1-based line and the field.
    """
    if path is None:
        source, rows = hub_id, _hub_rows(hub_id, split)
    else:
        file = Path(path)
        if file.is_dir():
            file = file / f"{split}.jsonl"
        if not file.is_file():
            raise DataError(f"no such file (split {split!r})", path=str(file))
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
    return result


def build_qa_prompt(question: str, references: list[str]) -> str:
    """Numbered references, then the question, then the answer cue.

    The completion to train on is ``" " + answer`` (the training code appends EOS).
    With no references the ``References:`` block is left out.

    >>> build_qa_prompt("Why?", ["Because."])
    'References:\\n[1] Because.\\nQuestion: Why?\\nAnswer:'
    """
    parts = []
    if references:
        parts.append("References:")
        parts.extend(f"[{i}] {ref.strip()}" for i, ref in enumerate(references, start=1))
    parts.append(f"Question: {question.strip()}")
    parts.append("Answer:")
    return "\n".join(parts)


def _n_tokens(tokenizer, text: str) -> int:
    """Token count of ``text`` plus one for the EOS the training code appends."""
    return len(tokenizer(text)["input_ids"]) + 1


def _most_refs_that_fit(
    question: str, refs: list[str], completion: str, tokenizer, max_length: int
) -> int:
    """How many leading references fit, from token counts of each reference line.

    Each reference is tokenized once, and only until the budget is spent, so an example
    with many long references costs time linear in what is kept (rebuilding and
    retokenizing the whole prompt for every candidate would be quadratic). With byte-level
    BPE the count of the joined prompt is the sum of its lines and newlines; the caller
    checks the result on the real prompt.
    """
    total = _n_tokens(tokenizer, build_qa_prompt(question, []) + completion)
    total += len(tokenizer("References:")["input_ids"]) + 1  # and its newline
    keep = 0
    for i, ref in enumerate(refs, start=1):
        total += len(tokenizer(f"[{i}] {ref.strip()}")["input_ids"]) + 1
        if total > max_length:
            break
        keep += 1
    return keep


def _fit(
    example: dict, tokenizer, max_length: int, row: int | None = None
) -> tuple[str, str, int, bool]:
    """Return (prompt, completion, number of references shown, trimmed)."""
    question, refs = example["question"], list(example["references"])
    completion = " " + example["answer"].strip()

    def fits(shown: list[str]) -> bool:
        return _n_tokens(tokenizer, build_qa_prompt(question, shown) + completion) <= max_length

    keep = _most_refs_that_fit(question, refs, completion, tokenizer, max_length)
    while keep > 0 and not fits(refs[:keep]):  # the estimate was off (unusual text)
        keep -= 1
    if keep == len(refs):
        return build_qa_prompt(question, refs), completion, len(refs), False
    # Whole references are dropped from the last, keeping the numbering of the others stable.
    if keep <= 0 and not fits([]):
        n = _n_tokens(tokenizer, build_qa_prompt(question, []) + completion)
        msg = (
            f"question and answer alone take {n} tokens (with EOS) > max_length={max_length}; "
            "they are never truncated: raise max_length or skip the example"
        )
        raise DataError(msg, row=row, field="question")
    # Fill what is left of the budget with the start of the next reference.
    shown = refs[:keep]
    ids = tokenizer(refs[keep].strip(), add_special_tokens=False)["input_ids"][:max_length]

    def piece(m: int) -> str:
        return tokenizer.decode(ids[:m]).rstrip("\ufffd").strip()

    def fits_first(m: int) -> bool:
        return fits(shown + [piece(m)])

    # The largest m in [lo, hi) whose first m tokens still fit (ids[:hi] does not). The
    # room left after an empty "[k] " line is a close guess: widen a window around it,
    # then bisect the window, so a long budget costs a few checks, not log2(len(ids)).
    lo, hi = 0, len(ids)
    empty_line = _n_tokens(tokenizer, build_qa_prompt(question, [*shown, ""]) + completion)
    guess, width = max_length - empty_line + 1, 4
    if 0 < guess < hi:
        if fits_first(guess):
            lo = guess
            while lo + width < hi and fits_first(lo + width):
                lo, width = lo + width, width * 2
            hi = min(hi, lo + width)
        else:
            hi = guess
            while hi - width > lo and not fits_first(hi - width):
                hi, width = hi - width, width * 2
            lo = max(lo, hi - width)
    while lo < hi - 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits_first(mid) else (lo, mid)
    if lo and piece(lo) and fits_first(lo):
        shown = shown + [piece(lo)]
    return build_qa_prompt(question, shown), completion, len(shown), True


def fit_to_length(example: dict, tokenizer, max_length: int) -> tuple[dict, bool]:
    """Build ``{"prompt", "completion"}`` whose tokens (+1 for EOS) fit in ``max_length``.

    References are dropped from the last one first; then the last reference that is kept
    is cut token-wise to use the rest of the budget. The question and the answer are never
    cut. The numbering of the kept references does not change, so the answer's ``[k]``
    still point at the same text; citations of dropped references become dangling
    (``to_prompt_completion`` counts them).

    Returns:
        ``({"prompt": ..., "completion": " " + answer}, trimmed)``.

    Raises:
        DataError: If the question and the answer alone do not fit.
    """
    prompt, completion, _, trimmed = _fit(example, tokenizer, max_length)
    return {"prompt": prompt, "completion": completion}, trimmed


def to_prompt_completion(
    examples: Iterable[dict], tokenizer, max_length: int, *, skip_too_long: bool = False
):
    """Turn WebGLM examples into a ``datasets.Dataset`` with ``prompt`` and ``completion``.

    Args:
        examples: Dicts with ``question``, ``answer`` and ``references``.
        tokenizer: The model's tokenizer (counts tokens; trimming is token-wise).
        max_length: Token budget for prompt + completion + EOS.
        skip_too_long: Skip (and count) examples whose question and answer alone do not
            fit, instead of raising ``DataError``.

    Returns:
        ``(dataset, stats)``; ``stats`` has ``n`` (examples kept), ``n_trimmed`` (kept
        examples that lost reference text), ``n_dropped_refs`` (whole references dropped),
        ``n_dangling_citations`` (citations of dropped references), ``n_too_long``
        (examples skipped) and ``kept`` (the 0-based positions in ``examples`` of the rows
        of ``dataset``, to line other data up with it).
    """
    from datasets import Dataset

    rows: dict[str, list[str]] = {"prompt": [], "completion": []}
    stats: dict[str, Any] = {"n": 0, "n_trimmed": 0, "n_dropped_refs": 0}
    stats.update(n_dangling_citations=0, n_too_long=0, kept=[])
    for index, example in enumerate(examples):
        try:
            prompt, completion, n_shown, trimmed = _fit(example, tokenizer, max_length, index + 1)
        except DataError:
            if not skip_too_long:
                raise
            stats["n_too_long"] += 1
            continue
        rows["prompt"].append(prompt)
        rows["completion"].append(completion)
        stats["n"] += 1
        stats["kept"].append(index)
        stats["n_trimmed"] += int(trimmed)
        stats["n_dropped_refs"] += len(example["references"]) - n_shown
        cited = parse_citations(example["answer"])
        stats["n_dangling_citations"] += sum(i > n_shown for i in cited)
    return Dataset.from_dict(rows), stats

"""The ``### Human: ... ### Assistant: ...`` chat format (notebook 06): threads to text.

A thread is a list of ``(role, text)`` turns, roles ``prompter`` and ``assistant`` as in
OASST1 (:mod:`phi2kit.data.oasst`). :func:`format_chat` renders it, :func:`thread_to_examples`
makes one prompt/completion pair per assistant turn, and :func:`to_prompt_completion` does
the same within a token budget, dropping the oldest turns, never the reply.

    dataset, stats = to_prompt_completion(threads, tokenizer, max_length=1024)
    fitted, n_dropped = fit_turns(history, tokenizer, max_tokens=1024)  # a prompt to generate from
"""

from __future__ import annotations

from collections.abc import Iterable

HUMAN = "### Human:"
ASSISTANT = "### Assistant:"
ROLES = ("prompter", "assistant")

Thread = list[tuple[str, str]]


def _line(role: str, text: str) -> str:
    if role not in ROLES:
        raise ValueError(f"role {role!r} is not one of {ROLES}")
    return f"{HUMAN if role == 'prompter' else ASSISTANT} {text.strip()}"


def format_chat(turns: Thread, add_generation_prompt: bool = True) -> str:
    """Render turns as ``### Human: ...`` / ``### Assistant: ...`` lines.

    With ``add_generation_prompt`` the text ends with ``"### Assistant:"``, ready for the
    model to write the next reply; the training completion is ``" " + reply``.

    >>> format_chat([("prompter", "Hi")])
    '### Human: Hi\\n### Assistant:'
    """
    lines = [_line(role, text) for role, text in turns]
    if add_generation_prompt:
        lines.append(ASSISTANT)
    return "\n".join(lines)


def thread_to_examples(thread: Thread) -> list[dict]:
    """One ``{"prompt", "completion"}`` per assistant turn, with all earlier turns as context.

    So a thread of 4 turns gives a single-turn pair and a two-turn example; the loss
    falls on the final assistant turn only (the completion). Nothing is cut: use
    :func:`to_prompt_completion` to fit the examples to a token budget.
    """
    return [
        {"prompt": format_chat(thread[:i]), "completion": " " + text.strip()}
        for i, (role, text) in enumerate(thread)
        if role == "assistant"
    ]


# --- Fitting threads to a token budget -------------------------------------------------


def _line_tokens(turns: Thread, tokenizer) -> list[int]:
    """Tokens of each turn's rendered line, each line tokenized once."""
    lines = [_line(role, text) for role, text in turns]
    return [len(ids) for ids in tokenizer(lines)["input_ids"]] if lines else []


def _fit_start(
    turns: Thread, counts: list[int], tokenizer, max_tokens: int, completion: str
) -> int | None:
    """First turn to keep so that ``format_chat(turns[start:]) + completion`` fits, or None.

    The kept part starts at the first turn or at a human turn, and always holds the last
    human turn. The estimate (sum of the lines' tokens, one per newline: exact for
    byte-level BPE on stripped text) picks the start; the real prompt is then checked.
    """
    last_human = max((i for i, (role, _) in enumerate(turns) if role == "prompter"), default=0)
    starts = [0] + [i for i in range(1, last_human + 1) if turns[i][0] == "prompter"]
    tail = len(tokenizer(ASSISTANT)["input_ids"])
    tail += len(tokenizer(completion)["input_ids"]) if completion else 0
    suffix = [0] * (len(counts) + 1)
    for i in range(len(counts) - 1, -1, -1):
        suffix[i] = suffix[i + 1] + counts[i] + 1  # the line and its newline
    for start in starts:
        if suffix[start] + tail > max_tokens:
            continue
        text = format_chat(turns[start:]) + completion
        if len(tokenizer(text)["input_ids"]) <= max_tokens:
            return start
    return None


def fit_turns(
    turns: Thread, tokenizer, max_tokens: int, completion: str = ""
) -> tuple[Thread, int] | None:
    """Drop the oldest turns until ``format_chat(turns) + completion`` fits in ``max_tokens``.

    Whole turns go, from the start of the thread, and what is kept starts with a human
    turn; the last human turn is never cut or dropped. Used for training examples (the
    completion is the reply, which is never cut either) and for prompts to generate from.

    Returns:
        ``(kept turns, number of turns dropped)``, or ``None`` when even the last human
        turn (with the turns after it and ``completion``) does not fit.
    """
    start = _fit_start(turns, _line_tokens(turns, tokenizer), tokenizer, max_tokens, completion)
    return None if start is None else (list(turns[start:]), start)


def to_prompt_completion(
    threads: Iterable[Thread], tokenizer, max_length: int, *, limit: int | None = None
):
    """Training examples (as :func:`thread_to_examples`) that fit in ``max_length`` tokens.

    trl truncates a longer example at ``max_length``, which would cut the end of the reply
    and its EOS, the very tokens that teach the model to stop. Here the budget (prompt +
    completion + the EOS the trainer appends) is met by dropping the oldest turns of the
    context (:func:`fit_turns`); the reply and the last human turn are never cut. An
    example whose last human turn and reply alone do not fit is left out and counted.

    Args:
        threads: Threads from :func:`load_oasst`.
        tokenizer: The model's tokenizer.
        max_length: The recipe's ``max_length``.
        limit: Stop after this many examples (only those threads are tokenized).

    Returns:
        ``(dataset, stats)``: a ``datasets.Dataset`` with ``prompt`` and ``completion``,
        and ``stats`` with ``n`` (examples kept), ``n_trimmed`` (examples whose context
        lost turns), ``n_dropped_turns`` (turns dropped in all) and ``n_too_long``
        (examples left out).
    """
    from datasets import Dataset

    rows: dict[str, list[str]] = {"prompt": [], "completion": []}
    stats = {"n": 0, "n_trimmed": 0, "n_dropped_turns": 0, "n_too_long": 0}
    for thread in threads:
        if limit is not None and stats["n"] >= limit:
            break
        counts = _line_tokens(thread, tokenizer)
        for i, (role, text) in enumerate(thread):
            if role != "assistant" or (limit is not None and stats["n"] >= limit):
                continue
            completion = " " + text.strip()
            context = thread[:i]
            start = _fit_start(context, counts[:i], tokenizer, max_length - 1, completion)
            if start is None:
                stats["n_too_long"] += 1
                continue
            rows["prompt"].append(format_chat(context[start:]))
            rows["completion"].append(completion)
            stats["n"] += 1
            stats["n_trimmed"] += int(start > 0)
            stats["n_dropped_turns"] += start
    return Dataset.from_dict(rows), stats

"""Tests for phi2kit.data.chat_format: threads fitted to a token budget, the reply never cut."""

import random

import pytest

from phi2kit.data.chat_format import (
    fit_turns,
    format_chat,
    thread_to_examples,
    to_prompt_completion,
)

WORDS = "otter river stone fish swim night cold warm den pup mother fur water eat sleep".split()
# Text that a naive per-line count could get wrong: punctuation, digits, inner newlines,
# leading/trailing blanks (stripped when rendered), non-ASCII.
ODD = ["  padded  ", "(brackets) first", "42 is a number", "line one\nline two", "café ñ ü", "'s"]


def n_tokens(tokenizer, text):
    return len(tokenizer(text)["input_ids"])


def random_thread(rng, n_turns, lo=1, hi=40):
    turns = []
    for i in range(n_turns):
        words = [rng.choice(WORDS) for _ in range(rng.randint(lo, hi))]
        if rng.random() < 0.3:
            words.insert(0, rng.choice(ODD))
        turns.append(("prompter" if i % 2 == 0 else "assistant", " ".join(words)))
    return turns


def best_start(turns, tokenizer, max_tokens, completion=""):
    """Brute force: the first allowed start whose real prompt fits."""
    last_human = max(i for i, (role, _) in enumerate(turns) if role == "prompter")
    for start in [0] + [i for i in range(1, last_human + 1) if turns[i][0] == "prompter"]:
        if n_tokens(tokenizer, format_chat(turns[start:]) + completion) <= max_tokens:
            return start
    return None


def test_fit_turns_keeps_a_thread_that_fits(tiny_tokenizer):
    turns = [("prompter", "Hi"), ("assistant", "Hello!"), ("prompter", "Where do otters live?")]
    assert fit_turns(turns, tiny_tokenizer, 1000) == (turns, 0)


def test_fit_turns_drops_oldest_whole_turns_and_keeps_the_last_human_turn(tiny_tokenizer):
    turns = [
        ("prompter", "first " * 50),
        ("assistant", "reply " * 50),
        ("prompter", "second question"),
        ("assistant", "short reply"),
        ("prompter", "last question"),
    ]
    budget = n_tokens(tiny_tokenizer, format_chat(turns[2:]))
    assert fit_turns(turns, tiny_tokenizer, budget) == (turns[2:], 2)  # starts with a human turn
    only_last = n_tokens(tiny_tokenizer, format_chat(turns[4:]))
    assert fit_turns(turns, tiny_tokenizer, only_last) == (turns[4:], 4)
    assert fit_turns(turns, tiny_tokenizer, only_last - 1) is None  # never cut that turn


def test_fit_turns_matches_brute_force(tiny_tokenizer):
    """Over random threads and budgets: the earliest start whose real prompt fits."""
    rng = random.Random(7)
    found = {"kept": 0, "trimmed": 0, "none": 0}
    for _ in range(120):
        turns = random_thread(rng, rng.randint(1, 9))
        if turns[-1][0] == "assistant":
            turns = turns[:-1] if len(turns) > 1 else turns
        completion = " " + rng.choice(WORDS) * rng.randint(0, 3) if rng.random() < 0.5 else ""
        budget = rng.randint(5, 300)
        expected = best_start(turns, tiny_tokenizer, budget, completion)
        got = fit_turns(turns, tiny_tokenizer, budget, completion)
        assert (None if got is None else got[1]) == expected
        if got is not None:
            assert got[0] == turns[got[1] :]
            assert n_tokens(tiny_tokenizer, format_chat(got[0]) + completion) <= budget
        found["none" if got is None else "trimmed" if got[1] else "kept"] += 1
    assert min(found.values()) >= 10, found  # every branch exercised


def test_to_prompt_completion_fits_every_example_and_never_cuts_the_reply(tiny_tokenizer):
    rng = random.Random(3)
    threads = [random_thread(rng, rng.randint(2, 12), hi=60) for _ in range(30)]
    threads = [t if t[-1][0] == "assistant" else t[:-1] for t in threads]
    max_length = 96
    dataset, stats = to_prompt_completion(threads, tiny_tokenizer, max_length)
    eos = tiny_tokenizer.eos_token
    untrimmed = [ex for t in threads for ex in thread_to_examples(t)]
    assert stats["n"] == len(dataset) and stats["n"] + stats["n_too_long"] == len(untrimmed)
    assert stats["n_trimmed"] > 5 and stats["n_too_long"] > 0 and stats["n_dropped_turns"] > 0
    # What trl trains on: prompt + completion + EOS, cut at max_length. Nothing is cut here.
    for row in dataset:
        assert n_tokens(tiny_tokenizer, row["prompt"] + row["completion"] + eos) <= max_length
        assert row["prompt"].startswith("### Human:") and row["prompt"].endswith("### Assistant:")
    replies = {ex["completion"] for ex in untrimmed}
    assert set(dataset["completion"]) <= replies  # whole replies, never a piece of one
    # Every example that fitted untrimmed is unchanged.
    fitting = [
        ex
        for ex in untrimmed
        if n_tokens(tiny_tokenizer, ex["prompt"] + ex["completion"] + eos) <= max_length
    ]
    assert len(fitting) == len(dataset) - stats["n_trimmed"]
    assert all(ex in list(dataset) for ex in fitting)


def test_to_prompt_completion_limit_and_empty(tiny_tokenizer):
    thread = [("prompter", "q1"), ("assistant", "a1"), ("prompter", "q2"), ("assistant", "a2")]
    dataset, stats = to_prompt_completion([thread, thread], tiny_tokenizer, 256, limit=3)
    assert len(dataset) == 3 == stats["n"]
    assert dataset[1] == thread_to_examples(thread)[1]
    empty, stats = to_prompt_completion([], tiny_tokenizer, 256)
    assert len(empty) == 0 and empty.column_names == ["prompt", "completion"]


def test_fit_turns_rejects_unknown_roles(tiny_tokenizer):
    with pytest.raises(ValueError, match="role 'system'"):
        fit_turns([("system", "x"), ("prompter", "q")], tiny_tokenizer, 100)

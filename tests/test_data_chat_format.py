"""Notebook 06's fitting (phi2kit.chat): threads fitted to a token budget, the reply never cut.

``to_examples`` (the lesson's) counts each line's tokens once and drops the oldest turns
until an example fits; ``fit_history`` (the chat commands' prompt) is built on it. Both are
checked here against the real tokenization of the text they produce.
"""

import random

from phi2kit.chat import fit_history, format_chat, to_examples

WORDS = "otter river stone fish swim night cold warm den pup mother fur water eat sleep".split()
# Text that a naive per-line count could get wrong: punctuation, digits, inner newlines,
# leading/trailing blanks (stripped when rendered), non-ASCII.
ODD = ["  padded  ", "(brackets) first", "42 is a number", "line one\nline two", "café ñ ü", "'s"]


def thread_to_examples(thread):
    """Every assistant turn with all earlier turns as its prompt: nothing dropped or cut."""
    return [{"prompt": format_chat(thread[:i]), "completion": " " + text.strip()}
            for i, (role, text) in enumerate(thread) if role == "assistant"]


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


def best_start(turns, tokenizer, max_tokens):
    """Brute force: the first human turn from which the real prompt fits."""
    for start in [i for i, (role, _) in enumerate(turns) if role == "prompter"]:
        if n_tokens(tokenizer, format_chat(turns[start:])) <= max_tokens:
            return start
    return None


def test_fit_history_keeps_a_history_that_fits(tiny_tokenizer):
    turns = [("prompter", "Hi"), ("assistant", "Hello!"), ("prompter", "Where do otters live?")]
    assert fit_history(turns, tiny_tokenizer, 1000) == turns


def test_fit_history_drops_oldest_whole_turns_and_keeps_the_last_human_turn(tiny_tokenizer):
    turns = [
        ("prompter", "first " * 50),
        ("assistant", "reply " * 50),
        ("prompter", "second question"),
        ("assistant", "short reply"),
        ("prompter", "last question"),
    ]
    budget = n_tokens(tiny_tokenizer, format_chat(turns[2:]))
    assert fit_history(turns, tiny_tokenizer, budget) == turns[2:]  # starts with a human turn
    only_last = n_tokens(tiny_tokenizer, format_chat(turns[4:]))
    assert fit_history(turns, tiny_tokenizer, only_last) == turns[4:]
    assert fit_history(turns, tiny_tokenizer, only_last - 1) == turns[4:]  # never cut that turn


def test_fit_history_matches_brute_force(tiny_tokenizer):
    """Over random histories and budgets: the earliest start whose real prompt fits."""
    rng = random.Random(7)
    found = {"kept": 0, "trimmed": 0, "none": 0}
    for _ in range(120):
        turns = random_thread(rng, rng.randint(1, 9))
        if turns[-1][0] == "assistant":
            turns = turns[:-1]
        budget = rng.randint(5, 300)
        expected = best_start(turns, tiny_tokenizer, budget)
        got = fit_history(turns, tiny_tokenizer, budget)
        assert got == turns[len(turns) - 1 if expected is None else expected :]
        if expected is not None:
            assert n_tokens(tiny_tokenizer, format_chat(got)) <= budget
        found["none" if expected is None else "trimmed" if expected else "kept"] += 1
    assert min(found.values()) >= 10, found  # every branch exercised


def test_to_examples_fits_every_example_and_never_cuts_the_reply(tiny_tokenizer):
    rng = random.Random(3)
    threads = [random_thread(rng, rng.randint(2, 12), hi=60) for _ in range(30)]
    threads = [t if t[-1][0] == "assistant" else t[:-1] for t in threads]
    max_length = 96
    rows = [ex for t in threads for ex in to_examples(t, tiny_tokenizer, max_length)]
    eos = tiny_tokenizer.eos_token
    untrimmed = [ex for t in threads for ex in thread_to_examples(t)]
    n_trimmed = sum(r["dropped_turns"] > 0 for r in rows)
    assert n_trimmed > 5 and len(untrimmed) - len(rows) > 0  # trimmed ones and left-out ones
    # What trl trains on: prompt + completion + EOS, cut at max_length. Nothing is cut here.
    for row in rows:
        assert n_tokens(tiny_tokenizer, row["prompt"] + row["completion"] + eos) <= max_length
        assert row["prompt"].startswith("### Human:") and row["prompt"].endswith("### Assistant:")
    replies = {ex["completion"] for ex in untrimmed}
    assert {r["completion"] for r in rows} <= replies  # whole replies, never a piece of one
    # Every example that fitted untrimmed is unchanged.
    fitting = [
        ex
        for ex in untrimmed
        if n_tokens(tiny_tokenizer, ex["prompt"] + ex["completion"] + eos) <= max_length
    ]
    assert len(fitting) == len(rows) - n_trimmed
    kept = [{"prompt": r["prompt"], "completion": r["completion"]} for r in rows]
    assert all(ex in kept for ex in fitting)

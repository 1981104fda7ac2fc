"""Preference pairs (notebook 08): OASST1's ranked sibling replies -> prompt, chosen, rejected
(every ranked reply is chosen, rejected or counted under one of :data:`REASONS`), or your own
pairs in trl's format."""

from __future__ import annotations

import gzip
import json
import os
import random
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from phi2kit.chat import ASSISTANT, HUMAN, conversation_to_rows, format_chat  # notebook 06's
from phi2kit.data.files import DataError, LoadResult, read_jsonl
from phi2kit.data.oasst import HUB_ID, ROLES, check_messages, load_messages

#: Why a ranked reply is in no pair. "one reply": the only usable ranked reply to its
#: prompt; "tie": its prompt's best rank is shared, so there is no single chosen reply.
REASONS = ("deleted or failed review", "language", "one reply", "tie", "too long")
REPLIES = ("chosen", "rejected")


class Pairs(LoadResult):
    """A list of pair dicts (``prompt``, ``chosen``, ``rejected``, ``tree``, ``prompt_id``,
    ``chosen_rank``, ``rejected_rank``), the drop counts, and the bad rows skipped."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.dropped: Counter[str] = Counter({r: 0 for r in REASONS})
        self.n_prompts = 0  # prompts with at least one pair
        self.n_ranked = 0  # ranked assistant replies seen
        self.n_unranked = 0  # assistant replies to a human turn that nobody ranked (rank null)
        self.not_ready = 0  # trees not ready_for_export, left out by the loader
        self.own = False  # True: your rows in trl's format (no ranks, no trees)

    def summary(self, what: str = "rows") -> str:
        if self.own:
            return (f"{self.n_prompts} prompts, {len(self)} pairs of your own (trl's format); "
                    f"left out: too long: {self.dropped['too long']}, repeated: "
                    f"{self.dropped['repeated']}; {super().summary(what)}")
        drops = ", ".join(f"{r}: {n}" for r, n in self.dropped.items())
        unfinished = f"{self.not_ready} unfinished trees (not ready_for_export); " * bool(
            self.not_ready)
        return (f"{self.n_prompts} prompts, {len(self)} pairs from {self.n_ranked} ranked "
                f"replies ({self.n_unranked} unranked not used); left out: {drops}; "
                f"{unfinished}{super().summary(what)}")  # fmt: skip


def _usable(msg: dict) -> bool:
    return not msg["deleted"] and msg["review_result"] is not False


def build_pairs(messages: list[dict], lang: str | None = "en", *, max_length: int | None = None,
                count_tokens: Callable[[str], int] | None = None) -> Pairs:  # fmt: skip
    """Pairs from normalized messages, in input order; with ``max_length``, a pair whose
    prompt plus either reply (plus EOS) takes more ``count_tokens`` is left out."""
    if max_length is not None and count_tokens is None:
        raise ValueError("max_length needs count_tokens (e.g. a tokenizer's token count)")
    pairs = Pairs(problems=getattr(messages, "problems", []))
    pairs.not_ready = getattr(messages, "not_ready", 0)
    by_id = {m["message_id"]: dict(m, replies=[]) for m in messages}
    for msg in by_id.values():
        if msg["parent_id"] in by_id:
            by_id[msg["parent_id"]]["replies"].append(msg)
        elif msg["parent_id"] is not None:
            pairs.problems.append(f"message {msg['message_id']}: parent {msg['parent_id']} "
                                  "not found; skipped with its replies")
    roots = [m for m in by_id.values() if m["parent_id"] is None and m["role"] == "prompter"]

    def visit(node: dict, history: list[str], ok: bool, lang_ok: bool, tree: str) -> None:
        node["message_tree_id"] = node["message_tree_id"] or tree
        ok = ok and _usable(node)
        lang_ok = lang_ok and (lang is None or node["lang"] == lang)
        history = [*history, format_chat([(node["role"], node["text"])], False)]
        if node["role"] == "prompter":
            _pairs_of(node, history, ok, lang_ok)
        for reply in node["replies"]:
            visit(reply, history, ok, lang_ok, tree)

    def _pairs_of(node: dict, history: list[str], ok: bool, lang_ok: bool) -> None:
        answers = [r for r in node["replies"] if r["role"] == "assistant"]
        ranked = [r for r in answers if r["rank"] is not None]
        pairs.n_ranked += len(ranked)
        pairs.n_unranked += len(answers) - len(ranked)
        keep = []
        for r in ranked:
            if not (ok and _usable(r)):
                pairs.dropped["deleted or failed review"] += 1
            elif not (lang_ok and (lang is None or r["lang"] == lang)):
                pairs.dropped["language"] += 1
            else:
                keep.append(r)
        keep.sort(key=lambda r: r["rank"])  # stable: equal ranks stay in input order
        if len(keep) == 1:
            pairs.dropped["one reply"] += 1
        elif len(keep) > 1 and keep[0]["rank"] == keep[1]["rank"]:
            pairs.dropped["tie"] += len(keep)
        elif keep:
            prompt = "\n".join([*history, ASSISTANT])
            best, made = keep[0], 0
            for worse in keep[1:]:
                pair = {"prompt": prompt, "chosen": " " + best["text"].strip(),
                        "rejected": " " + worse["text"].strip(), "tree": node["message_tree_id"],
                        "prompt_id": node["message_id"], "chosen_rank": best["rank"],
                        "rejected_rank": worse["rank"]}  # fmt: skip
                if _too_long(pair, max_length, count_tokens):
                    pairs.dropped["too long"] += 1
                    continue
                pairs.append(pair)
                made += 1
            if made:
                pairs.n_prompts += 1
            else:
                pairs.dropped["too long"] += 1  # the chosen reply, with no pair left

    for root in roots:
        visit(root, [], True, True, root["message_tree_id"] or root["message_id"])
    return pairs


def _too_long(pair: dict, max_length: int | None, count_tokens: Callable | None) -> bool:
    """Whether the prompt plus either reply (plus EOS) takes more than ``max_length`` tokens."""
    return max_length is not None and max(
        count_tokens(pair["prompt"] + pair[k]) + 1 for k in REPLIES) > max_length


def _as_text(obj: dict, path: str, row: int) -> dict:
    """A pair in trl's conversational form (lists of ``{"role", "content"}``; with no
    ``prompt``, the turns chosen and rejected share) as text: the prompt in 06's chat format."""
    chosen, rejected, prompt = obj.get("chosen"), obj.get("rejected"), obj.get("prompt")
    n = 0  # where the replies begin in chosen and rejected
    if prompt is None:  # trl's implicit prompt: every turn before the two replies part
        for field, turns in (("chosen", chosen), ("rejected", rejected)):
            if not isinstance(turns, list) or len(turns) < 2:
                raise DataError("missing, or not the prompt's messages then the reply (trl's "
                                "implicit-prompt form: no 'prompt')", path=path, row=row,
                                field=field)  # fmt: skip
        while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
            n += 1
        if not n:
            raise DataError("not chosen[0]: with no 'prompt', chosen and rejected begin with the "
                            "same turns (the prompt), then each its reply", path=path, row=row,
                            field="rejected[0]")  # fmt: skip
        prompt, chosen, rejected = chosen[:n], chosen[n:], rejected[n:]
    where = "chosen" if n else "prompt"  # an implicit prompt is named where it is: in chosen
    check_messages(prompt, path, row, where)  # user and assistant take turns from a user
    for field, turns in (("chosen", chosen), ("rejected", rejected)):
        check_messages(turns, path, row, field, alternate=False, start=n)
        if [m["role"] for m in turns] != ["assistant"]:
            raise DataError("expected one assistant message, the reply", path=path, row=row,
                            field=field)  # fmt: skip
    if prompt[-1]["role"] != "user":
        raise DataError("user and assistant must take turns, a user first and last",
                        path=path, row=row, field=where)  # fmt: skip
    turns = [(m["role"], m["text"]) for m in conversation_to_rows(prompt, row)]
    return {"prompt": format_chat(turns), "chosen": chosen[0]["content"],
            "rejected": rejected[0]["content"]}


def preference_rows(rows: list[tuple[int, Any]], source: str, *, skip_bad: bool = False,
                    max_length: int | None = None,
                    count_tokens: Callable[[str], int] | None = None) -> Pairs:  # fmt: skip
    """Your own pairs in trl's preference format, ``{"prompt", "chosen", "rejected"}`` (text,
    or conversational: :func:`_as_text`): a bare prompt is put in notebook 06's chat format, a
    repeated pair is counted and left out, and a pair whose prompt continues another's (a later
    turn of one chat) shares its ``tree``, so that one chat goes to one split."""
    pairs, seen = Pairs(skip_bad=skip_bad), set()
    pairs.own = True
    for row, obj in rows:
        with pairs.row():
            if isinstance(obj, DataError):
                raise obj
            fields = ("prompt", *REPLIES)
            if isinstance(obj, dict) and any(isinstance(obj.get(k), list) for k in fields):
                obj = _as_text(obj, source, row)  # trl's conversational form
            for field in fields:
                value = obj.get(field) if isinstance(obj, dict) else None
                if not isinstance(value, str) or not value.strip():
                    why = "missing, empty or not text"
                    if field == "prompt" and value is None and isinstance(obj, dict):
                        why += " (trl's implicit-prompt form is read as messages only)"
                    raise DataError(why, path=source, row=row, field=field)
            if obj["chosen"].strip() == obj["rejected"].strip():
                raise DataError("the same text as chosen: nothing to prefer", path=source,
                                row=row, field="rejected")  # fmt: skip
            prompt = obj["prompt"].strip()
            if not prompt.endswith(ASSISTANT):  # a bare question, or a human turn with no cue
                prompt = f"{prompt}\n{ASSISTANT}" if prompt.startswith(HUMAN) else \
                    format_chat([("prompter", prompt)])  # fmt: skip
            pair = {"prompt": prompt, **{k: " " + obj[k].strip() for k in REPLIES}}
            if (key := tuple(pair.values())) in seen:
                pairs.dropped["repeated"] += 1
                continue
            seen.add(key)
            if _too_long(pair, max_length, count_tokens):
                pairs.dropped["too long"] += 1
            else:
                pairs.append(pair | {"prompt_id": prompt})
    prompts = {p["prompt"] for p in pairs}
    for p in pairs:  # the shortest prompt of the file that this one continues (or itself)
        cuts = [p["prompt"][: m.end()] for m in re.finditer(re.escape(ASSISTANT), p["prompt"])]
        p["tree"] = next(cut for cut in cuts if cut in prompts)
    pairs.n_prompts = len(prompts)
    return pairs.done()


def _holds_pairs(path: Path) -> bool:
    """Whether a JSON-lines file (maybe gzipped) holds pairs in trl's format (a ``prompt`` in
    text or messages, or a reply; OASST1 has neither), read from its first line that is a JSON
    object: a malformed line before it is the pair loader's bad row (the export is large)."""
    if not path.is_file() or ".json" not in path.name:
        return False
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rt", encoding="utf-8-sig") as f:
            first = next((obj for obj in map(_json_or_none, f) if isinstance(obj, dict)), {})
    except (OSError, UnicodeDecodeError, EOFError):  # the loaders name what is wrong
        return False
    # a bad first pair gets the pairs' error; OASST1's prompt is a tree (or null), never text
    return isinstance(first.get("prompt"), (str, list)) or any(k in first for k in REPLIES)


def _json_or_none(line: str) -> Any:
    try:
        return json.loads(line)
    except ValueError:
        return None


def load_pairs(path: str | os.PathLike[str] | None = None, *, lang: str | None = "en",
               split: str = "train", skip_bad: bool = False, max_length: int | None = None,
               count_tokens: Callable[[str], int] | None = None,
               hub_id: str = HUB_ID) -> Pairs:  # fmt: skip
    """Preference pairs from OASST1 in either form (or the hub), or from your own JSON lines in
    trl's format (:func:`preference_rows`), with counts; a message of an unknown role is a bad
    row (a pair needs to know who spoke)."""
    if path is not None and _holds_pairs(Path(path)):
        return preference_rows(read_jsonl(path), str(path), skip_bad=skip_bad,
                               max_length=max_length, count_tokens=count_tokens)  # fmt: skip
    messages = load_messages(path, split=split, skip_bad=skip_bad, hub_id=hub_id)
    known = LoadResult(problems=messages.problems, skip_bad=skip_bad)
    known.not_ready = messages.not_ready
    for msg in messages:
        with known.row():
            if msg["role"] not in ROLES:
                raise DataError(f"unknown role {msg['role']!r}", path=msg["_path"],
                                row=msg["_row"], field="role")  # fmt: skip
            known.append(msg)
    return build_pairs(known.done(), lang, max_length=max_length, count_tokens=count_tokens)


def split_by_tree(pairs: list[dict], n_eval: int, n_test: int,
                  seed: int = 0) -> tuple[list[dict], list[dict], list[dict]]:  # fmt: skip
    """Train, eval and test pairs, each tree in one split, and trees that share a prompt (one
    question asked in several trees, as our generated sample does often) in the same one, so
    no prompt is in two: shuffled groups go to test, then eval, until each holds ``n_test`` and
    ``n_eval`` pairs, or a fifth of the pairs where that is fewer (a small file of your own
    keeps most pairs to train); each split keeps the pairs' order."""
    joined: dict[Any, Any] = {}  # tree -> a tree it shares a prompt with (union-find)

    def group(tree: Any) -> Any:
        while joined.setdefault(tree, tree) != tree:
            tree = joined[tree]
        return tree

    first: dict[str, Any] = {}
    for p in pairs:
        other = first.setdefault(p["prompt"], p["tree"])
        joined[group(p["tree"])] = group(other)
    roots = [group(p["tree"]) for p in pairs]  # each pair's group of trees, found once
    size = Counter(roots)  # pairs per group
    groups = list(size)
    random.Random(seed).shuffle(groups)
    held, where = [0, 0], {}  # pairs in test and eval; each group's split (0 test, 1 eval, 2 train)
    wanted = [min(n, max(1, len(pairs) // 5)) for n in (n_test, n_eval)]
    for g in groups:  # a group larger than a fifth of the pairs trains
        fits = size[g] <= max(1, len(pairs) // 5)
        where[g] = k = next((i for i, n in enumerate(wanted) if held[i] < n and fits), 2)
        if k < 2:
            held[k] += size[g]
    test, eval_, train = ([p for p, g in zip(pairs, roots, strict=True) if where[g] == k]
                          for k in range(3))  # fmt: skip
    return train, eval_, test

"""OpenAssistant OASST1 (notebook 06): both published forms (HF rows, export ``*.trees.jsonl``),
and your own chats (``{"messages": [...]}`` rows) -> checked trees -> chat threads (walked by
:mod:`phi2kit.chat`)."""

from __future__ import annotations

import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

from phi2kit import chat
from phi2kit.data.files import DataError, LoadResult, hub_rows, read_jsonl

HUB_ID = "OpenAssistant/oasst1"
#: What the loader reads, said when a file holds none of it (e.g. ShareGPT's "conversations").
FORMS = ('pass OASST1 message rows (message_id, parent_id, text, role), its *.trees.jsonl, or '
         'your chats as JSON lines {"messages": [{"role": "user", "content": ...}, ...]}')
ROLES = ("prompter", "assistant")
#: A finished tree. The export's ``*_all`` files also hold trees still growing, aborted for
#: low quality or halted by a moderator; OpenAssistant's own training code skips them too.
READY = "ready_for_export"
#: The message fields the loader reads: the others (detoxify, emojis, labels) would be made
#: Python objects for every one of the hub's ~85,000 messages.
_FIELDS = (*chat.MESSAGE_FIELDS, "message_tree_id", "tree_state")


def _none_if_nan(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value


def _as_bool(value: Any) -> bool | None:
    value = _none_if_nan(value)
    if isinstance(value, str):
        return {"true": True, "false": False, "": None}.get(value.strip().lower(), None)
    return None if value is None else bool(value)


def _normalize(raw: Any, path: str, row: int, tree_id: str | None = None) -> dict:
    """One message as a plain dict; ``_path`` and ``_row`` remember where it came from."""
    if not isinstance(raw, dict):
        raise DataError(f"expected a JSON object, got {type(raw).__name__}", path=path, row=row)
    for name in ("message_id", "text", "role"):
        if not isinstance(_none_if_nan(raw.get(name)), str):
            raise DataError("missing or not a string", path=path, row=row, field=name)
    rank = _none_if_nan(raw.get("rank"))
    try:
        rank = None if rank is None else int(rank)
    except (TypeError, ValueError):
        raise DataError(f"not an int: {rank!r}", path=path, row=row, field="rank") from None
    parent = _none_if_nan(raw.get("parent_id"))
    return {
        "message_id": raw["message_id"],
        "parent_id": parent or None,
        "text": raw["text"],
        "role": raw["role"],
        "lang": _none_if_nan(raw.get("lang")),
        "rank": rank,
        "deleted": bool(_as_bool(raw.get("deleted"))),
        "review_result": _as_bool(raw.get("review_result")),
        "message_tree_id": _none_if_nan(raw.get("message_tree_id")) or tree_id,
        "created_date": str(_none_if_nan(raw.get("created_date")) or ""),
        "_path": path,
        "_row": row,
    }


def _flatten_tree(tree: Any, path: str, line: int) -> list[dict]:
    """Messages of one export tree, parent links taken from the nesting."""
    if not isinstance(tree, dict) or not isinstance(tree.get("prompt"), dict):
        raise DataError(
            "expected a tree with a 'prompt' object", path=path, row=line, field="prompt"
        )
    tree_id = tree.get("message_tree_id") or f"line-{line}"
    out, stack = [], [(tree["prompt"], None)]
    while stack:
        raw, parent = stack.pop()
        msg = _normalize(raw, path, line, tree_id)
        msg["parent_id"], msg["message_tree_id"] = parent, tree_id
        out.append(msg)
        replies = raw.get("replies") or []
        if not isinstance(replies, list):
            raise DataError("expected a list", path=path, row=line, field="replies")
        stack.extend((reply, msg["message_id"]) for reply in reversed(replies))
    return out


def check_messages(turns: Any, path: str, row: int, field: str = "messages", *,
                   alternate: bool = True, start: int = 0) -> list[dict]:  # fmt: skip
    """``turns`` if it is a list of ``{"role", "content"}`` messages (trl's and OpenAI's chat
    format: user, assistant, a system message only first; with ``alternate``, user and assistant
    take turns from a user, after a system message too), else :class:`DataError`. ``start``:
    where ``turns`` begins in the row's list (trl's implicit prompt), for the field the error
    names."""
    if not isinstance(turns, list) or not turns:
        raise DataError('expected a list of {"role", "content"} messages', path=path, row=row,
                        field=field)  # fmt: skip
    system = isinstance(turns[0], dict) and turns[0].get("role") == "system"
    for i, m in enumerate(turns):
        where = f"{field}[{start + i}]"
        text = m.get("content") if isinstance(m, dict) else None
        if not isinstance(text, str) or not text.strip():  # whitespace is no turn either
            raise DataError("content missing, empty or not text", path=path, row=row, field=where)
        role = m.get("role")
        if alternate and system and i == 1 and role != "user":
            raise DataError(f"role {role!r}: a system message must be followed by a user turn",
                            path=path, row=row, field=where)  # fmt: skip
        if alternate and role != ("system" if system and i == 0 else
                                  ("user", "assistant")[(i - system) % 2]):  # fmt: skip
            raise DataError(f"role {role!r}: user and assistant take turns, a user first (a "
                            "system message only first)", path=path, row=row, field=where)
        if role not in ("user", "assistant", "system") or (role == "system" and i):
            raise DataError(f"role {role!r}: user or assistant (a system message only first)",
                            path=path, row=row, field=where)  # fmt: skip
    if alternate and system and len(turns) == 1:
        raise DataError("a system message alone: it must be followed by a user turn (the chat "
                        "has no user or assistant turns)", path=path, row=row,
                        field=f"{field}[{start}]")  # fmt: skip
    return turns


def _conversation(obj: Any, path: str, row: int) -> list[dict]:
    """One ``{"messages": [...]}`` row (your own chats) as messages of a one-path tree."""
    turns = check_messages(obj.get("messages") if isinstance(obj, dict) else None, path, row)
    tree = f"line-{row}"
    return [_normalize(m, path, row, tree) for m in chat.conversation_to_rows(turns, tree)]


def _ready(obj: Any) -> bool:
    """Whether a row or tree belongs to a finished tree (no ``tree_state``: assumed so)."""
    return not isinstance(obj, dict) or _none_if_nan(obj.get("tree_state")) in (None, READY)


def _form(first: dict) -> str:
    """The form of a file from its first row: "chats" where it holds ``messages`` and no tree
    (ultrachat_200k and no_robots also keep the first turn as a text ``prompt``), "trees" where
    ``prompt`` is no text (a tree, or null in an aborted one), else the hub's "rows"."""
    if "messages" in first and not isinstance(first.get("prompt"), dict):
        return "chats"
    return "trees" if "prompt" in first and not isinstance(first["prompt"], str) else "rows"


def _plain(value: Any) -> Any:
    """A Parquet cell as JSON would give it: pandas makes a list (messages) a NumPy array."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return {k: _plain(v) for k, v in value.items()} if isinstance(value, dict) else value


def _read_rows(path: Path) -> list[tuple[int, Any]]:
    """Rows of a parquet or CSV file as (1-based row, dict)."""
    import pandas as pd

    try:
        df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    except ValueError as exc:  # pyarrow's ArrowInvalid, pandas' ParserError, a binary "CSV"
        kind = "Parquet" if path.suffix == ".parquet" else "CSV"
        raise DataError(f"cannot be read as {kind} ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0][:120]})", path=path) from None
    df = df.astype(object).where(df.notna(), None)
    return [(i, {k: _plain(v) for k, v in row.items()})
            for i, row in enumerate(df.to_dict("records"), start=1)]  # fmt: skip


def _problem(msg: dict, by_id: dict[str, dict]) -> tuple[str, str] | None:
    """``(what is wrong, field)`` for one message of a tree, or None."""
    role, parent_id = msg["role"], msg["parent_id"]
    if role not in ROLES:
        return f"role {role!r} is not one of {ROLES}", "role"
    if parent_id is None:
        return None if role == "prompter" else ("thread starts with an assistant message", "role")
    parent = by_id.get(parent_id)
    if parent is None:
        return f"parent {parent_id} not found", "parent_id"
    seen, node = {msg["message_id"]}, parent
    while node is not None:
        if node["message_id"] in seen:
            return "parent links form a cycle", "parent_id"
        seen.add(node["message_id"])
        node = by_id.get(node["parent_id"]) if node["parent_id"] is not None else None
    if parent["role"] == role:
        return f"roles do not alternate ({parent['role']} -> {role})", "role"
    return None


def _check_tree(messages: list[dict], by_id: dict[str, dict], duplicates: list[dict]) -> None:
    """Raise DataError for a duplicate id, a missing parent, a cycle or a bad role."""
    found = [(m, ("duplicate message_id", "message_id")) for m in duplicates]
    found += [(m, _problem(m, by_id)) for m in messages]
    for msg, problem in found:
        if problem:
            text = f"message {msg['message_id']}: {problem[0]}"
            raise DataError(text, path=msg["_path"], row=msg["_row"], field=problem[1])


def build_threads(
    messages: list[dict], lang: str | None = None, *, skip_bad: bool = False
) -> LoadResult:
    """The main thread (a list of ``(role, text)``) of every tree, walked as notebook 06's
    :func:`phi2kit.chat.build_threads` walks it, after checking the tree.

    A duplicate id, a missing parent, a cycle or a bad role raises :class:`DataError`, or
    with ``skip_bad`` leaves the tree out and names it in ``problems``.
    """
    result = LoadResult(skip_bad=skip_bad)
    by_id, duplicates = {}, []
    for i, raw in enumerate(messages, start=1):
        msg = raw if "_path" in raw else _normalize(raw, "<messages>", i)
        if msg["message_id"] in by_id:
            duplicates.append(msg)
        else:
            by_id[msg["message_id"]] = msg

    trees: dict[str, list[dict]] = defaultdict(list)
    for msg in by_id.values():
        trees[msg["message_tree_id"] or _top(msg, by_id)].append(msg)

    dups_of = defaultdict(list)
    for dup in duplicates:
        original = by_id[dup["message_id"]]  # report it with the tree it collides with
        dups_of[original["message_tree_id"] or _top(original, by_id)].append(dup)
    for key, tree in trees.items():
        with result.row():
            _check_tree(tree, by_id, dups_of[key])
            result.extend(chat.build_threads(tree, lang))  # notebook 06's walk
    return result.done()


def _top(msg: dict, by_id: dict[str, dict]) -> str:
    """The id of the topmost ancestor reachable (groups rows that lack message_tree_id)."""
    seen, node = set(), msg
    while node["parent_id"] in by_id and node["message_id"] not in seen:
        seen.add(node["message_id"])
        node = by_id[node["parent_id"]]
    return node["message_id"] if node["message_id"] not in seen else min(seen)


def load_messages(path: str | os.PathLike[str] | None = None, *, split: str = "train",
                  hub_id: str = HUB_ID, skip_bad: bool = False) -> LoadResult:  # fmt: skip
    """OASST1 messages as plain dicts, from a file in either form or with no ``path`` the hub;
    ``not_ready`` counts the unfinished trees left out."""
    if path is None:
        rows = list(hub_rows(hub_id, split, "Pass path= a local file", _FIELDS))
        source, form = hub_id, "rows"
    else:
        file, source = Path(path), str(path)
        if not file.is_file():
            raise DataError("a folder, not a file: pass the .jsonl (or .parquet) file"
                            if file.is_dir() else "no such file", path=source)  # fmt: skip
        rows = _read_rows(file) if file.suffix in (".parquet", ".csv") else read_jsonl(file)
        first = next((obj for _, obj in rows if isinstance(obj, dict)), {})
        form = _form(first)
        if first and form == "rows" and not {"message_id", "text"} & set(first):
            fields = ", ".join(map(str, list(first)[:4]))
            raise DataError(f"its rows have the fields {fields}: not a chat form this reads; "
                            f"{FORMS}", path=source)  # fmt: skip
    if not rows:
        raise DataError("empty file: no messages", path=source)

    result, not_ready = LoadResult(skip_bad=skip_bad), set()
    for row_no, obj in rows:
        if not _ready(obj):  # a tree (or a message of one) that was never finished
            not_ready.add(obj.get("message_tree_id") or row_no)
            continue
        with result.row():
            if isinstance(obj, DataError):
                raise obj
            if form == "trees":
                result.extend(_flatten_tree(obj, source, row_no))
            elif form == "chats":
                result.extend(_conversation(obj, source, row_no))
            else:
                result.append(_normalize(obj, source, row_no))
    result.not_ready = len(not_ready)
    return result.done()


def load_oasst(path: str | os.PathLike[str] | None = None, *, lang: str | None = None,
               skip_bad: bool = False, split: str = "train",
               hub_id: str = HUB_ID) -> LoadResult:  # fmt: skip
    """:func:`load_messages` then :func:`build_threads`: OASST1's main threads, with the bad
    rows and trees (``problems``), the unfinished trees (``not_ready``) and a thread that
    repeats an earlier one (``repeated``: it could land in train and in test) left out."""
    messages = load_messages(path, split=split, hub_id=hub_id, skip_bad=skip_bad)
    threads = build_threads(messages, lang, skip_bad=skip_bad)
    threads.problems[:0] = messages.problems
    threads.not_ready = messages.not_ready
    unique = [list(t) for t in dict.fromkeys(map(tuple, threads))]  # as notebook 06
    threads.repeated, threads[:] = len(threads) - len(unique), unique
    return threads

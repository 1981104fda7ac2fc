"""Preference pairs from OASST1 files laid out exactly as published, built here.

The same made-up conversation trees are written in each published form:

- the hub's rows (``OpenAssistant/oasst1``): Parquet with the published features (``rank`` a
  nullable int32, ``review_result`` a nullable bool, ``detoxify`` a struct, ``emojis`` and
  ``labels`` sequences of structs), read from a file, through ``datasets``' hub call, and
  through ``load_dataset("parquet", ...)``;
- the export's trees, ``*.trees.jsonl.gz`` (one tree per line, nested ``replies``; nested
  messages carry no ``message_tree_id``; ``emojis`` and ``labels`` as dicts);
- the export's messages, ``*.messages.jsonl.gz`` (one message per line).

The export is written both with ``None`` fields as ``null`` and with them left out (the
export tool's ``exclude_none``). Message ids are UUID strings, dates ISO with a time zone.
Every pair and every dropped ranked reply is asserted, by reason, and every form must give
the same. All text was written for this test.
"""

from __future__ import annotations

import gzip
import json
import random
import uuid
from pathlib import Path

import pytest

from phi2kit.data.oasst_pairs import REASONS, load_pairs

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "08_preference_dpo.ipynb"
_rng = random.Random(24)
_clock = iter(range(10_000))


def _uuid() -> str:
    return str(uuid.UUID(int=_rng.getrandbits(128), version=4))


def m(role, text, rank=None, lang="en", deleted=False, review=True, replies=()):
    """One message of the official export (ExportMessageNode), every field filled in."""
    minute = next(_clock)
    return {
        "message_id": _uuid(), "parent_id": None, "user_id": _uuid(),
        "created_date": f"2023-02-{1 + minute // 1440:02d}T{minute // 60 % 24:02d}:"
                        f"{minute % 60:02d}:07.516821+00:00",
        "text": text, "role": role, "lang": lang, "review_count": 3 if review is not None else 0,
        "review_result": review, "deleted": deleted, "rank": rank, "synthetic": False,
        "model_name": None, "emojis": {"+1": 2, "_skip_labeling": 1} if role == "assistant" else {},
        "labels": {"spam": {"value": 0.0, "count": 3}, "quality": {"value": 0.75, "count": 3}},
        "detoxify": None if deleted else {"toxicity": 0.0004, "severe_toxicity": 0.00002,
                                          "obscene": 0.0001, "identity_attack": 0.0001,
                                          "insult": 0.0002, "threat": 0.00004,
                                          "sexual_explicit": 0.00003},
        "replies": list(replies),
    }  # fmt: skip


def a(text, rank, **kw):
    return m("assistant", text, rank, **kw)


def p(text, *replies, **kw):
    return m("prompter", text, None, replies=replies, **kw)


LONG = "It depends on many things. " * 40  # 200 words: over the 100-word limit below
TREES = [
    p("How far away is the moon?",  # three ranked, one unranked; a second turn under rank 0
      a("About 384,000 km on average.", 0, replies=[
          p("And the sun?", a("About 150 million km.", 0), a("Very far, maybe.", 1))]),
      a("Quite far, further than any plane flies, and it also moves a bit.", 1),
      a("The moon is about 30 km away.", 2),
      a("Nobody ranked this one.", None)),
    p("¿Por qué el cielo es azul?", a("Por la dispersión de la luz.", 0, lang="es"),
      a("No lo sé.", 1, lang="es"), lang="es"),
    p("Qual é a capital do Brasil?", a("Brasília.", 0, lang="pt-BR"),
      a("Acho que é o Rio.", 1, lang="pt-BR"), a("Não sei.", 2, lang="pt-BR"), lang="pt-BR"),
    p("Name a prime number.", a("Seven.", 0, deleted=True), a("Two.", 1), a("Nine.", 2)),
    p("What do bees make?", a("Honey.", 0, review=False), a("Wax and honey.", 1)),
    p("What is ice?", a("Frozen water.", 0, review=None), a("Cold.", 1)),  # not yet reviewed
    p("Is a tomato a fruit?", a("Yes.", 0), a("Yes, botanically.", 0), a("No.", 1)),  # a tie
    p("Say hello.", a("Hello!", 0)),  # a single reply, ranked
    p("Say goodbye.", a("Goodbye!", None)),  # a single reply, never ranked
    p("Why is the sea salty?", a("Rivers carry salt into it.", 0), a(LONG, 1)),  # over-long
    p("A prompt that was deleted.", a("A reply.", 0), a("Another reply.", 1), deleted=True),
    p("What colour is grass?", a("Green.", 0), a("Grün.", 1, lang="de")),  # a reply in German
]
for _tree in TREES:  # the export sorts replies by rank, unranked last
    _stack = [_tree]
    while _stack:
        _node = _stack.pop()
        _node["replies"].sort(key=lambda r: (r["rank"] is None, r["rank"] or 0))
        for _reply in _node["replies"]:
            _reply["parent_id"] = _node["message_id"]
        _stack.extend(_node["replies"])

PROMPT = "### Human: How far away is the moon?\n### Assistant:"
#: (prompt, chosen, rejected, chosen_rank, rejected_rank) with lang="en", max 100 words.
WANT = [
    (PROMPT, " About 384,000 km on average.",
     " Quite far, further than any plane flies, and it also moves a bit.", 0, 1),
    (PROMPT, " About 384,000 km on average.", " The moon is about 30 km away.", 0, 2),
    ("### Human: How far away is the moon?\n### Assistant: About 384,000 km on average.\n"
     "### Human: And the sun?\n### Assistant:", " About 150 million km.", " Very far, maybe.",
     0, 1),
    ("### Human: Name a prime number.\n### Assistant:", " Two.", " Nine.", 1, 2),
    ("### Human: What is ice?\n### Assistant:", " Frozen water.", " Cold.", 0, 1),
]  # fmt: skip
#: Every ranked reply in no pair, by reason (lang="en", max 100 words).
DROPPED = {
    "deleted or failed review": 4,  # the deleted rank 0, the failed review, the deleted prompt's 2
    "language": 6,  # Spanish 2, Portuguese 3, the German reply
    "one reply": 3,  # after the failed review; "Say hello."; after the German reply
    "tie": 3,  # all three replies under the tie
    "too long": 2,  # the over-long pair's rejected reply, and its chosen one with no pair left
}
N_RANKED = 27


def _words(text: str) -> int:
    return len(text.split())


# --- the published forms, written from TREES ---------------------------------------------------


def _strip_none(obj):
    """The export tool's ``exclude_none``: fields that are None are left out."""
    if isinstance(obj, dict):
        return {k: _strip_none(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, list):
        return [_strip_none(v) for v in obj]
    return obj


def _export_trees() -> list[dict]:
    trees = []
    for tree in TREES:
        prompt = json.loads(json.dumps(tree))
        stack = [prompt]
        while stack:  # nested messages: no message_tree_id or tree_state (the tree has them)
            node = stack.pop()
            node.update(message_tree_id=None, tree_state=None)
            stack.extend(node["replies"])
        trees.append({"message_tree_id": tree["message_id"], "tree_state": "ready_for_export",
                      "prompt": prompt, "origin": None})  # fmt: skip
    return trees


def _messages() -> list[dict]:
    """One dict per message, depth first, with its tree's id and state (the rows forms)."""
    rows = []
    for tree in TREES:
        stack = [tree]
        while stack:
            node = stack.pop()
            row = {k: v for k, v in node.items() if k != "replies"}
            rows.append(row | {"message_tree_id": tree["message_id"],
                               "tree_state": "ready_for_export"})  # fmt: skip
            stack.extend(reversed(node["replies"]))
    return rows


def _write_jsonl_gz(path: Path, objects: list[dict], exclude_none: bool) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for obj in objects:
            f.write(json.dumps(_strip_none(obj) if exclude_none else obj) + "\n")
    return path


def _hub_row(msg: dict) -> dict:
    """A message as the hub's Parquet holds it: ``emojis`` and ``labels`` as sequences."""
    labels = msg["labels"]
    return msg | {
        "emojis": {"name": list(msg["emojis"]), "count": list(msg["emojis"].values())},
        "labels": {"name": list(labels), "value": [v["value"] for v in labels.values()],
                   "count": [v["count"] for v in labels.values()]},
    }  # fmt: skip


def _write_hub_parquet(path: Path) -> Path:
    from datasets import Dataset
    from hub_copies import OASST_FEATURES

    path.parent.mkdir(parents=True, exist_ok=True)
    Dataset.from_list([_hub_row(r) for r in _messages()], features=OASST_FEATURES).to_parquet(path)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("oasst_real")
    return {
        "hub parquet": _write_hub_parquet(d / "hub" / "data" / "train-00000-of-00001.parquet"),
        "trees.jsonl.gz": _write_jsonl_gz(d / "2023-04-12_oasst_ready.trees.jsonl.gz",
                                          _export_trees(), exclude_none=True),
        "trees.jsonl.gz, nulls": _write_jsonl_gz(d / "nulls.trees.jsonl.gz", _export_trees(),
                                                 exclude_none=False),
        "messages.jsonl.gz": _write_jsonl_gz(d / "2023-04-12_oasst_ready.messages.jsonl.gz",
                                             _messages(), exclude_none=True),
        "messages.jsonl.gz, nulls": _write_jsonl_gz(d / "nulls.messages.jsonl.gz", _messages(),
                                                    exclude_none=False),
    }  # fmt: skip


def _key(pair: dict) -> tuple:
    return tuple(pair[k] for k in ("prompt", "chosen", "rejected", "chosen_rank", "rejected_rank"))


# --- the tests ----------------------------------------------------------------------------------


def test_the_files_are_in_the_published_layouts(files):
    """Guard the fixtures themselves: the dtypes and shapes the real files have."""
    import pyarrow.parquet as pq

    schema = pq.read_schema(files["hub parquet"])
    assert str(schema.field("rank").type) == "int32" and schema.field("rank").nullable
    assert str(schema.field("review_result").type) == "bool"
    emojis = schema.field("emojis").type  # a sequence of structs: a struct of lists
    assert [(f.name, str(f.type.value_type)) for f in emojis] == [("name", "string"),
                                                                  ("count", "int32")]
    table = pq.read_table(files["hub parquet"]).to_pydict()
    assert all(r is None for r, role in zip(table["rank"], table["role"], strict=True)
               if role == "prompter")  # fmt: skip
    assert None in table["review_result"] and True in table["deleted"]
    assert {"en", "es", "pt-BR", "de"} <= set(table["lang"]) and len(table["lang"]) == 42
    uuid.UUID(table["message_id"][0])  # ids are UUID strings
    with gzip.open(files["trees.jsonl.gz"], "rt") as f:
        tree = json.loads(f.readline())
    assert set(tree) == {"message_tree_id", "tree_state", "prompt"}  # origin None: left out
    assert "parent_id" not in tree["prompt"] and "rank" not in tree["prompt"]
    assert "message_tree_id" not in tree["prompt"]["replies"][0]
    assert tree["prompt"]["replies"][0]["labels"]["quality"] == {"value": 0.75, "count": 3}


@pytest.mark.parametrize("form", ["hub parquet", "trees.jsonl.gz", "trees.jsonl.gz, nulls",
                                  "messages.jsonl.gz", "messages.jsonl.gz, nulls"])  # fmt: skip
def test_every_form_gives_the_pairs_and_the_drops(files, form):
    pairs = load_pairs(files[form], lang="en", max_length=100, count_tokens=_words)
    assert sorted(map(_key, pairs)) == sorted(WANT)
    assert dict(pairs.dropped) == DROPPED and set(pairs.dropped) == set(REASONS)
    assert (pairs.n_prompts, len(pairs), pairs.n_ranked, pairs.n_unranked) == (4, 5, N_RANKED, 2)
    assert pairs.n_prompts + len(pairs) + sum(pairs.dropped.values()) == pairs.n_ranked
    assert pairs.problems == []
    assert "4 prompts, 5 pairs from 27 ranked replies (2 unranked not used)" in pairs.summary()
    trees = {p["tree"] for p in pairs}  # the tree id is the root prompt's id in every form
    assert trees == {TREES[0]["message_id"], TREES[3]["message_id"], TREES[5]["message_id"]}


def test_every_language(files):
    """``lang=None``: the Spanish, Portuguese and mixed trees give pairs too."""
    for form in ("hub parquet", "trees.jsonl.gz", "messages.jsonl.gz"):
        pairs = load_pairs(files[form], lang=None, max_length=100, count_tokens=_words)
        assert (len(pairs), pairs.n_prompts) == (9, 7)
        assert dict(pairs.dropped) == {"deleted or failed review": 4, "language": 0,
                                       "one reply": 2, "tie": 3, "too long": 2}  # fmt: skip
        assert ("### Human: What colour is grass?\n### Assistant:", " Green.", " Grün.", 0, 1) in {
            _key(p) for p in pairs}  # fmt: skip
    pt = load_pairs(files["trees.jsonl.gz"], lang="pt-BR")  # a region code is matched exactly
    assert [p["rejected"] for p in pt] == [" Acho que é o Rio.", " Não sei."]
    assert dict(pt.dropped) == {"deleted or failed review": 4, "language": N_RANKED - 3 - 4,
                                "one reply": 0, "tie": 0, "too long": 0}  # fmt: skip


def test_without_a_length_limit_the_long_pair_is_kept(files):
    pairs = load_pairs(files["trees.jsonl.gz"])
    assert len(pairs) == 6 and pairs.dropped["too long"] == 0
    assert any(p["rejected"] == " " + LONG.strip() for p in pairs)


def test_the_hub_call_and_load_dataset_read_the_parquet(files, tmp_path, monkeypatch):
    """The lesson's GPU path (``DATA_PATH = "auto"``) calls ``load_dataset(hub_id)``; the
    same rows through ``load_dataset("parquet", ...)`` keep the published types."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    hub = files["hub parquet"].parents[1]
    pairs = load_pairs(None, hub_id=str(hub), lang="en", max_length=100, count_tokens=_words)
    assert sorted(map(_key, pairs)) == sorted(WANT) and dict(pairs.dropped) == DROPPED
    rows = datasets.load_dataset("parquet", data_files=str(files["hub parquet"]), split="train")
    assert rows.features["rank"].dtype == "int32" and rows[0]["rank"] is None
    assert rows[1]["emojis"] == {"name": ["+1", "_skip_labeling"], "count": [2, 1]}


def test_the_lessons_cells_read_the_gz_export(files):
    """Notebook 08's pair-building cell and its raw-tree cell take ``*.trees.jsonl.gz``."""
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    source = next("".join(c["source"]) for c in cells if "pairs" in c["metadata"].get("tags", []))
    ns: dict = {}
    exec(source, ns)
    for form in ("trees.jsonl.gz", "trees.jsonl.gz, nulls"):
        in_cell = ns["pairs_from_trees"](files[form], lang="en")
        loader = load_pairs(files[form], lang="en")
        assert sorted(map(_key, loader))[:1] and len(in_cell) == len(loader) == 6
        assert sorted((q["prompt"], q["chosen"], q["rejected"]) for q in in_cell) == sorted(
            (q["prompt"], q["chosen"], q["rejected"]) for q in loader)  # fmt: skip
        first = ns["read_trees"](files[form])[0]
        assert first["prompt"]["text"] == "How far away is the moon?"

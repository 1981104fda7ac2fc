"""phi2kit.data.oasst_pairs: OASST1 preference pairs from both published forms."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from phi2kit.data import sample_path
from phi2kit.data.files import DataError
from phi2kit.data.oasst_pairs import REASONS, build_pairs, load_pairs, split_by_tree

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "08_preference_dpo.ipynb"


def _msg(mid, role, text, rank=None, lang="en", replies=(), **kw):
    return {"message_id": mid, "role": role, "text": text, "rank": rank, "lang": lang,
            "deleted": kw.get("deleted", False), "review_result": kw.get("review", True),
            "replies": list(replies)}  # fmt: skip


def _tree_rows(tree: dict) -> list[dict]:
    """The hub's form of one export tree: one row per message, linked by parent_id."""
    rows, stack = [], [(tree["prompt"], None)]
    while stack:
        msg, parent = stack.pop()
        row = {k: v for k, v in msg.items() if k != "replies"}
        rows.append(dict(row, parent_id=parent, message_tree_id=tree["message_tree_id"]))
        stack.extend((r, msg["message_id"]) for r in reversed(msg["replies"]))
    return rows


def _write_trees(path: Path, trees: list[dict]) -> Path:
    path.write_text("".join(json.dumps(t) + "\n" for t in trees))
    return path


def test_sample_pairs_and_every_ranked_reply_accounted_for():
    pairs = load_pairs(sample_path("oasst1"), lang="en")
    assert len(pairs) > 1000 and pairs.n_prompts > 500
    assert all(p["chosen_rank"] < p["rejected_rank"] for p in pairs)
    assert all(p["prompt"].endswith("### Assistant:") for p in pairs)
    # chosen replies + rejected replies + dropped = every ranked reply
    assert pairs.n_prompts + len(pairs) + sum(pairs.dropped.values()) == pairs.n_ranked
    assert pairs.dropped["deleted or failed review"] > 0 and pairs.dropped["language"] > 0
    assert pairs.dropped["one reply"] > 0
    kinds = {p["rejected"][-20:] for p in pairs if "### Human:" in p["rejected"]}
    assert kinds, "the sample has rejected replies that invent the next human turn"


def test_rows_form_gives_the_same_pairs_as_trees(tmp_path):
    trees = [json.loads(line) for line in sample_path("oasst1").read_text().splitlines()[:80]]
    tree_file = _write_trees(tmp_path / "x.trees.jsonl", trees)
    rows = [row for tree in trees for row in _tree_rows(tree)]
    rows_file = tmp_path / "rows.jsonl"
    rows_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    from_trees = load_pairs(tree_file)
    from_rows = load_pairs(rows_file)
    assert from_rows == from_trees and from_rows.dropped == from_trees.dropped
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame(rows).drop(columns=["emojis", "labels"])  # empty structs: no parquet
    frame.to_parquet(tmp_path / "rows.parquet")
    assert load_pairs(tmp_path / "rows.parquet") == from_trees


def test_each_reason_is_counted(tmp_path):
    a = lambda mid, rank, **kw: _msg(mid, "assistant", f"reply {mid}", rank, **kw)  # noqa: E731
    trees = [
        {"message_tree_id": "t1", "prompt": _msg("p1", "prompter", "q1", replies=[
            a("a1", 0), a("a2", 1), a("a3", 2, deleted=True), a("a4", 3, review=False),
            a("a5", 4, lang="de"), a("a6", None)])},
        {"message_tree_id": "t2", "prompt": _msg("p2", "prompter", "q2", replies=[
            a("b1", 0), a("b2", 0), a("b3", 1)])},  # a tie at the top
        {"message_tree_id": "t3", "prompt": _msg("p3", "prompter", "q3", replies=[
            a("c1", 0), a("c2", 1, deleted=True)])},  # one usable reply left
        {"message_tree_id": "t4", "prompt": _msg("p4", "prompter", "q4", lang="de", replies=[
            a("d1", 0, lang="de"), a("d2", 1, lang="de")])},
        {"message_tree_id": "t5", "prompt": _msg("p5", "prompter", "q5 " + "long " * 50,
                                                 replies=[a("e1", 0), a("e2", 1)])},
    ]  # fmt: skip
    pairs = load_pairs(_write_trees(tmp_path / "t.trees.jsonl", trees), lang="en",
                       max_length=40, count_tokens=lambda s: len(s.split()))  # fmt: skip
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [(" reply a1", " reply a2")]
    assert dict(pairs.dropped) == {"deleted or failed review": 3, "language": 3,
                                   "one reply": 1, "tie": 3, "too long": 2}  # fmt: skip
    assert set(pairs.dropped) == set(REASONS)
    assert pairs.n_prompts + len(pairs) + sum(pairs.dropped.values()) == pairs.n_ranked
    everything = load_pairs(tmp_path / "t.trees.jsonl", lang=None)
    assert ("### Human: q4\n### Assistant:", " reply d1") in {
        (p["prompt"], p["chosen"]) for p in everything
    }


def test_later_turns_carry_the_conversation_so_far():
    a = _msg("a1", "assistant", "It lives in rivers.", 0, replies=[
        _msg("p2", "prompter", "More?", replies=[
            _msg("a3", "assistant", "Yes.", 0), _msg("a4", "assistant", "No.", 1)])])  # fmt: skip
    messages = [
        {**m, "parent_id": parent, "message_tree_id": "t"}
        for m, parent in [(_msg("p1", "prompter", "Where?"), None), (a, "p1"),
                          (a["replies"][0], "a1"), (a["replies"][0]["replies"][0], "p2"),
                          (a["replies"][0]["replies"][1], "p2")]
    ]  # fmt: skip
    (pair,) = build_pairs(messages)
    assert pair["prompt"] == ("### Human: Where?\n### Assistant: It lives in rivers.\n"
                              "### Human: More?\n### Assistant:")  # fmt: skip
    assert (pair["chosen"], pair["rejected"], pair["prompt_id"]) == (" Yes.", " No.", "p2")


def test_eval_and_test_take_at_most_a_fifth_each():
    """A small file of your own (or a large n_test) keeps most pairs to train."""
    pairs = load_pairs(sample_path("oasst1"))
    train, eval_, test = split_by_tree(pairs, n_eval=10_000, n_test=10_000)
    fifth = len(pairs) // 5  # over by less than one group of trees (a group is at most a fifth)
    assert fifth <= len(test) < 2 * fifth and fifth <= len(eval_) < 2 * fifth, (len(test), fifth)
    assert len(train) > len(pairs) // 2


def test_trees_that_share_a_prompt_go_to_one_split():
    """The sample asks each question in several trees: split by tree alone, one copy of a pair
    went to train and another to test (15 of 42 test pairs on tiny); joining only trees that
    share a whole pair still left 8 eval and 7 test prompts in train. Trees that share a
    prompt share a split now, so no prompt (and so no pair) is in two."""
    pairs = load_pairs(sample_path("oasst1"))
    assert len({p["prompt"] for p in pairs}) < len({p["tree"] for p in pairs})  # shared prompts
    for seed in range(3):
        train, eval_, test = ({p["prompt"] for p in part} for part in
                              split_by_tree(pairs, n_eval=40, n_test=40, seed=seed))  # fmt: skip
        assert eval_ and test and not (train & eval_ or train & test or eval_ & test), seed


def test_split_by_tree_keeps_every_prompt_in_one_split():
    pairs = load_pairs(sample_path("oasst1"))
    train, eval_, test = split_by_tree(pairs, n_eval=40, n_test=30, seed=1)
    assert len(train) + len(eval_) + len(test) == len(pairs)
    assert 40 <= len(eval_) < 110 and 30 <= len(test) < 100  # over by less than one group
    sets = [{p["prompt_id"] for p in s} for s in (train, eval_, test)]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    trees = [{p["tree"] for p in s} for s in (train, eval_, test)]
    assert not (trees[0] & trees[1] or trees[0] & trees[2] or trees[1] & trees[2])
    assert split_by_tree(pairs, 40, 30, seed=1) == (train, eval_, test)


def test_bad_rows_are_named_or_counted(tmp_path):
    good = sample_path("oasst1").read_text().splitlines()[1]
    path = tmp_path / "bad.trees.jsonl"
    path.write_text(good + "\n{not json\n" + json.dumps({"prompt": {"message_id": "x"}}) + "\n")
    with pytest.raises(DataError, match=r"bad.trees.jsonl, row 2: malformed JSON"):
        load_pairs(path)
    pairs = load_pairs(path, skip_bad=True)
    assert pairs.n_skipped == 2 and "row 3, field 'text'" in pairs.problems[1]
    assert len(pairs) > 0
    with pytest.raises(DataError, match="no such file"):
        load_pairs(tmp_path / "missing.jsonl")


def test_max_length_needs_a_counter():
    with pytest.raises(ValueError, match="max_length needs count_tokens"):
        build_pairs([], max_length=10)


def test_hub_rows_through_datasets(tmp_path, monkeypatch):
    """The hub path: ``datasets.load_dataset`` on a local copy of the published layout."""
    import datasets
    import hub_copies

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    hub_id = str(hub_copies.write_all(tmp_path / "hub")["oasst1"])
    with pytest.raises(DataError, match=r"row 11, field 'text': missing or not a string"):
        load_pairs(None, hub_id=hub_id)
    pairs = load_pairs(None, hub_id=hub_id, skip_bad=True)
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [
        (" They remember landmarks and the position of the sun.", " A worse answer.")
    ]
    assert (pairs.dropped["one reply"], pairs.dropped["language"]) == (2, 1)
    assert pairs.n_skipped == 2 and "parent gone not found" in pairs.problems[1]


def _notebook_cell(tag: str) -> str:
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    return next("".join(c["source"]) for c in cells if tag in c.get("metadata", {}).get("tags", []))


def test_the_lessons_pair_building_gives_the_loaders_pairs():
    """Notebook 08 builds pairs in a cell (tagged ``pairs``); the loader must agree."""
    ns: dict = {}
    exec(_notebook_cell("pairs"), ns)
    path = sample_path("oasst1")
    in_cell = ns["pairs_from_trees"](path, lang="en")
    loader = load_pairs(path, lang="en")
    key = lambda p: (p["prompt"], p["chosen"], p["rejected"])  # noqa: E731
    assert sorted(map(key, in_cell)) == sorted(map(key, loader))
    assert len(in_cell) == len(loader) > 1000


def test_the_lessons_pair_building_leaves_out_unfinished_trees_as_the_loader(tmp_path):
    ns: dict = {}
    exec(_notebook_cell("pairs"), ns)
    trees = [json.loads(line) for line in sample_path("oasst1").read_text().splitlines()[:40]]
    for tree in trees[::2]:
        tree["tree_state"] = "aborted_low_grade"
    path = _write_trees(tmp_path / "all.trees.jsonl", trees)
    in_cell, loader = ns["pairs_from_trees"](path, lang=None), load_pairs(path, lang=None)
    key = lambda p: (p["prompt"], p["chosen"], p["rejected"])  # noqa: E731
    assert sorted(map(key, in_cell)) == sorted(map(key, loader)) and loader.not_ready == 20
    assert 0 < len(loader) < len(load_pairs(sample_path("oasst1"), lang=None))


def test_the_lessons_cell_reads_a_trees_file_with_a_byte_order_mark(tmp_path):
    """A BOM (a file saved by Windows Notepad): the loader drops it, and so does the cell."""
    ns: dict = {}
    exec(_notebook_cell("pairs"), ns)
    lines = sample_path("oasst1").read_text().splitlines()[:40]
    path = tmp_path / "bom.trees.jsonl"
    path.write_text("\ufeff" + "\n".join(lines) + "\n", encoding="utf-8")
    key = lambda p: (p["prompt"], p["chosen"], p["rejected"])  # noqa: E731
    in_cell, loader = ns["pairs_from_trees"](path, lang=None), load_pairs(path, lang=None)
    assert sorted(map(key, in_cell)) == sorted(map(key, loader)) and len(loader) > 10


def test_an_unfinished_tree_gives_no_pairs_and_is_counted(tmp_path):
    ranked = [_msg("a1", "assistant", "Best.", rank=0), _msg("a2", "assistant", "Worse.", rank=1)]
    tree = {"message_tree_id": "p1", "tree_state": "ready_for_export",
            "prompt": _msg("p1", "prompter", "Hi?", replies=ranked)}  # fmt: skip
    halted = json.loads(json.dumps(tree).replace('"p1"', '"h1"').replace('"a', '"h'))
    halted["tree_state"] = "halted_by_moderator"
    pairs = load_pairs(_write_trees(tmp_path / "t.trees.jsonl", [tree, halted]))
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [(" Best.", " Worse.")]
    assert pairs.not_ready == 1 and "1 unfinished trees (not ready_for_export)" in pairs.summary()
    ready_only = load_pairs(_write_trees(tmp_path / "r.trees.jsonl", [tree]))
    assert "unfinished" not in ready_only.summary()


def test_your_own_pairs_in_trls_format(tmp_path):
    """JSON lines of {"prompt", "chosen", "rejected"}: a bare prompt gets 06's chat format, a
    conversation's pairs share a tree (one split), and too-long pairs are counted."""
    rows = [{"prompt": "Is the sky blue?", "chosen": "Yes.", "rejected": "Maybe."},
            {"prompt": "### Human: Hi\n### Assistant:", "chosen": "Hello!", "rejected": "Go."},
            {"prompt": "### Human: Hi\n### Assistant: Hello!\n### Human: Name?\n### Assistant:",
             "chosen": "Phi.", "rejected": "No. " * 60}]  # fmt: skip
    path = tmp_path / "mine.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pairs = load_pairs(path, max_length=60, count_tokens=lambda text: len(text.split()) + 1)
    assert [(p["prompt"], p["chosen"], p["rejected"]) for p in pairs] == [
        ("### Human: Is the sky blue?\n### Assistant:", " Yes.", " Maybe."),
        ("### Human: Hi\n### Assistant:", " Hello!", " Go.")]
    assert pairs.dropped["too long"] == 1 and len(load_pairs(path)) == 3
    assert pairs.summary().startswith("2 prompts, 2 pairs of your own (trl's format)")
    whole = load_pairs(path, lang="de")  # the language filter is OASST1's: rows carry none
    train, evals, test = split_by_tree(whole, n_eval=1, n_test=1)
    assert {p["tree"] for p in evals + test} & {p["tree"] for p in train} == set()
    assert len({p["tree"] for p in whole}) == 2  # the "Hi" chat's two turns: one conversation
    more = [{"prompt": "### Human: Be brief.\n### Assistant: OK.\n### Human: " + q,
             "chosen": "2", "rejected": "3"} for q in ("1 + 1?", "4 / 2?")]  # fmt: skip
    (more_path := tmp_path / "more.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in rows + more + more))
    again = load_pairs(more_path)  # a shared opening turn is not one conversation; repeats counted
    assert len({p["tree"] for p in again}) == 4 and again.dropped["repeated"] == 2
    assert again[-1]["prompt"].endswith("### Human: 4 / 2?\n### Assistant:")  # one cue added
    short = load_pairs(path, max_length=8, count_tokens=lambda text: len(text.split()) + 1)
    assert short.dropped["too long"] == 2 and len(short) == 1
    for other in ("mine.json", "mine.jsonl.gz"):  # known by their first line, gzipped or not
        (tmp_path / other).write_bytes((gzip.compress if other.endswith(".gz") else bytes)(
            path.read_bytes()))  # fmt: skip
        assert load_pairs(tmp_path / other).own and len(load_pairs(tmp_path / other)) == 3


@pytest.mark.parametrize(
    ("line", "field", "detail"),
    [('{"prompt": "Q", "chosen": "A"}', "rejected", "missing, empty or not text"),
     ('{"prompt": "Q", "chosen": [{"role": "assistant", "content": "A"}], "rejected": "B"}',
      "prompt", 'expected a list of {"role", "content"} messages'),  # text and messages mixed
     ('{"prompt": [{"role": "user", "content": "Q"}], "chosen": [{"role": "user", "content": '
      '"A"}], "rejected": [{"role": "assistant", "content": "B"}]}', "chosen",
      "expected one assistant message, the reply"),
     ('{"prompt": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}], '
      '"chosen": [{"role": "assistant", "content": "B"}], "rejected": [{"role": "assistant", '
      '"content": "C"}]}', "prompt", "a user first and last"),
     ('{"chosen": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}], '
      '"rejected": [{"role": "user", "content": "Q"}, {"role": "tool", "content": "B"}]}',
      "rejected[1]", "role 'tool'"),  # its place in the file, after the shared turn
     ('{"chosen": "Q A", "rejected": "Q B"}', "prompt",
      "trl's implicit-prompt form is read as messages only"),
     ('{"prompt": "Q", "chosen": "A", "rejected": " A"}', "rejected", "the same text as chosen"),
     ('{"prompt": [{"role": "user", "content": "  "}], "chosen": [{"role": "assistant", "content": '
      '"A"}], "rejected": [{"role": "assistant", "content": "B"}]}', "prompt[0]",
      "content missing, empty or not text"),  # as the text form refuses a blank prompt
     ('{"prompt": [{"role": "system", "content": "S"}], "chosen": [{"role": "assistant", '
      '"content": "A"}], "rejected": [{"role": "assistant", "content": "B"}]}', "prompt[0]",
      "a system message alone"),
     ('{"chosen": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}',
      "rejected", "missing, or not the prompt's messages then the reply"),
     ('{"chosen": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}], '
      '"rejected": [{"role": "user", "content": "R"}, {"role": "assistant", "content": "B"}]}',
      "rejected[0]", "not chosen[0]: with no 'prompt', chosen and rejected begin with the same"),
     ('{"chosen": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}, '
      '{"role": "user", "content": "C"}], "rejected": [{"role": "user", "content": "Q"}, '
      '{"role": "assistant", "content": "A"}, {"role": "user", "content": "D"}]}', "chosen",
      "expected one assistant message, the reply")],  # the replies part at a user turn
)  # fmt: skip
def test_a_bad_row_of_your_own_pairs_is_named(tmp_path, line, field, detail):
    path = tmp_path / "mine.jsonl"
    path.write_text('{"prompt": "Q", "chosen": "A", "rejected": "B"}\n' + line + "\n")
    with pytest.raises(DataError) as err:
        load_pairs(path)
    assert (err.value.row, err.value.field) == (2, field) and detail in err.value.detail
    assert len(load_pairs(path, skip_bad=True)) == 1


def test_trls_conversational_pairs_read_as_the_text_pairs(tmp_path):
    """trl's conversational preference form, with an explicit prompt or the implicit one (the
    turns chosen and rejected share), gives the pairs its text form gives: the prompt in 06's
    chat format, a leading system message before the first user turn."""
    def msg(role, content):
        return {"role": role, "content": content}

    chat = [msg("user", "Hi"), msg("assistant", "Hello."), msg("user", "1 + 1?")]
    rows = [{"prompt": [msg("system", "Be brief."), msg("user", "2 + 2?")],
             "chosen": [msg("assistant", "4")], "rejected": [msg("assistant", "5")]},
            {"chosen": [*chat, msg("assistant", "2")], "rejected": [*chat, msg("assistant", "3")]}]
    path = tmp_path / "conversational.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = tmp_path / "text.jsonl"
    text.write_text("".join(json.dumps(r) + "\n" for r in [
        {"prompt": "Be brief.\n\n2 + 2?", "chosen": "4", "rejected": "5"},
        {"prompt": "### Human: Hi\n### Assistant: Hello.\n### Human: 1 + 1?", "chosen": "2",
         "rejected": "3"}]))  # fmt: skip
    mine = load_pairs(path)
    assert mine.own and [dict(p) for p in mine] == [dict(p) for p in load_pairs(text)]
    assert mine[0]["prompt"] == "### Human: Be brief.\n\n2 + 2?\n### Assistant:"
    assert (mine[1]["chosen"], mine[1]["rejected"]) == (" 2", " 3")


def test_a_bad_first_pair_gets_the_pairs_error_not_oasst1s(tmp_path):
    path = tmp_path / "mine.jsonl"  # the form is known from the first line
    path.write_text('{"prompt": "Q", "chosen": "A"}\n'
                    '{"prompt": "Q", "chosen": "A", "rejected": "B"}\n')
    with pytest.raises(DataError) as err:
        load_pairs(path)
    assert (err.value.row, err.value.field) == (1, "rejected"), err.value


@pytest.mark.parametrize(("first", "form"), [
    ("not json", "text"),  # a malformed first line: the next line tells the form
    ('{"prompt": [{"role": "user", "content": "Q"}]}', "messages"),  # a first row with no reply
    ("\ufeff" + '{"prompt": "Q", "chosen": "A"}', "text"),  # a UTF-8 byte order mark
])  # fmt: skip
def test_a_pairs_file_is_known_by_its_first_row_that_parses(tmp_path, first, form):
    """A pairs file whose first row is bad is still read as pairs (not as OASST1 trees), and
    its first row is the one bad row."""
    good = {"text": {"prompt": "Q", "chosen": "A", "rejected": "B"},
            "messages": {"prompt": [{"role": "user", "content": "Q"}],
                         "chosen": [{"role": "assistant", "content": "A"}],
                         "rejected": [{"role": "assistant", "content": "B"}]}}[form]  # fmt: skip
    for name in ("mine.jsonl", "mine.jsonl.gz"):
        text = f"{first}\n{json.dumps(good)}\n".encode()
        (path := tmp_path / name).write_bytes(gzip.compress(text) if name.endswith(".gz") else text)
        with pytest.raises(DataError) as err:
            load_pairs(path)
        assert err.value.row == 1 and "more bad row" not in str(err.value), str(err.value)
        pairs = load_pairs(path, skip_bad=True)
        assert pairs.own and [(p["chosen"], p["rejected"]) for p in pairs] == [(" A", " B")]

"""Tests for phi2kit.data.oasst: both published forms, thread choice, errors, chat format."""

import copy
import gzip
import json
from pathlib import Path

import pandas as pd
import pytest

from phi2kit.chat import ASSISTANT, HUMAN, format_chat
from phi2kit.data.files import DataError
from phi2kit.data.oasst import READY, build_threads, load_oasst


def msg(mid, role, text, rank=None, lang="en", replies=(), **extra):
    """A made-up message in the export's nested shape."""
    base = {"message_id": mid, "role": role, "text": text, "rank": rank, "lang": lang}
    base.update({"deleted": False, "review_result": True, "synthetic": False}, **extra)
    base["replies"] = list(replies)
    return base


def make_trees():
    """Two conversations; the expected main thread of the first is p1, a2, p2, a4."""
    first = msg(
        "p1",
        "prompter",
        "How do kites fly?",
        replies=[
            msg("a1", "assistant", "Second best answer.", rank=1),
            msg(
                "a2",
                "assistant",
                "Wind pushes them up.",
                rank=0,
                replies=[
                    msg("p3", "prompter", "Rejected follow-up.", review_result=False),
                    msg(
                        "p2",
                        "prompter",
                        "And without wind?",
                        replies=[
                            msg("a4", "assistant", "You have to run.", created_date="2023-02-01"),
                            msg(
                                "a5",
                                "assistant",
                                "Unranked second reply.",
                                created_date="2023-02-02",
                            ),
                        ],
                    ),
                ],
            ),
            msg("a3", "assistant", "Deleted answer.", deleted=True),
        ],
    )
    second = msg(
        "q1", "prompter", "Wie spät ist es?", lang="de",
        replies=[msg("b1", "assistant", "Zeit für Tee.", rank=0, lang="de")],
    )  # fmt: skip
    return [
        {"message_tree_id": "p1", "tree_state": "ready_for_export", "prompt": first},
        {"message_tree_id": "q1", "tree_state": "ready_for_export", "prompt": second},
    ]


EXPECTED_EN = [
    ("prompter", "How do kites fly?"),
    ("assistant", "Wind pushes them up."),
    ("prompter", "And without wind?"),
    ("assistant", "You have to run."),
]
EXPECTED_DE = [("prompter", "Wie spät ist es?"), ("assistant", "Zeit für Tee.")]


def to_rows(trees):
    """Flatten trees into HF-style message rows (one per message, parent_id links)."""
    rows = []

    def walk(node, parent, tree_id):
        row = {k: v for k, v in node.items() if k != "replies"}
        row.update(parent_id=parent, message_tree_id=tree_id, tree_state="ready_for_export")
        rows.append(row)
        for reply in node["replies"]:
            walk(reply, node["message_id"], tree_id)

    for tree in trees:
        walk(tree["prompt"], None, tree["message_tree_id"])
    return rows


def write_jsonl(path, objs):
    path.write_text("".join((o if isinstance(o, str) else json.dumps(o)) + "\n" for o in objs))
    return path


# --- both forms --------------------------------------------------------------------


def test_rows_and_trees_give_the_same_threads(tmp_path):
    trees = make_trees()
    rows = to_rows(trees)
    from_trees = load_oasst(write_jsonl(tmp_path / "x.trees.jsonl", trees))
    from_rows = load_oasst(write_jsonl(tmp_path / "rows.jsonl", rows))
    assert from_trees == from_rows == [EXPECTED_EN, EXPECTED_DE]
    gz = tmp_path / "x.trees.jsonl.gz"
    gz.write_bytes(gzip.compress((tmp_path / "x.trees.jsonl").read_bytes()))
    assert load_oasst(gz) == from_trees

    pd.DataFrame(rows).to_parquet(tmp_path / "train.parquet")
    pd.DataFrame(rows).to_csv(tmp_path / "train.csv", index=False)
    assert load_oasst(tmp_path / "train.parquet") == from_rows
    assert load_oasst(tmp_path / "train.csv") == from_rows


def test_row_order_does_not_matter():
    rows = to_rows(make_trees())
    assert build_threads(rows[::-1]) == [EXPECTED_DE, EXPECTED_EN]


def test_hub_offline_suggests_a_local_file(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match="Offline.*path="):
        load_oasst()


# --- thread choice -----------------------------------------------------------------


def test_rank_zero_wins_over_order():
    threads = build_threads(to_rows(make_trees()), lang="en")
    assert threads[0][1] == ("assistant", "Wind pushes them up.")  # rank 0, listed second


def test_deleted_and_failed_review_are_skipped_with_subtrees():
    trees = make_trees()
    a2 = trees[0]["prompt"]["replies"][1]
    a2["deleted"] = True
    thread = build_threads(to_rows(trees), lang="en")[0]
    assert thread == [("prompter", "How do kites fly?"), ("assistant", "Second best answer.")]

    trees = make_trees()
    p2 = trees[0]["prompt"]["replies"][1]["replies"][1]
    p2["review_result"] = False  # both prompter replies fail review: thread stops at a2
    assert build_threads(to_rows(trees), lang="en")[0] == EXPECTED_EN[:2]


def test_unranked_replies_pick_the_earliest_then_the_first():
    trees = make_trees()
    p2 = trees[0]["prompt"]["replies"][1]["replies"][1]
    p2["replies"].reverse()
    assert build_threads(to_rows(trees), lang="en")[0] == EXPECTED_EN  # earliest created_date
    for reply in p2["replies"]:
        del reply["created_date"]
    assert build_threads(to_rows(trees), lang="en")[0][-1] == (
        "assistant",
        "Unranked second reply.",
    )


def test_trailing_prompter_turn_is_dropped_and_lone_prompts_left_out():
    rows = to_rows(make_trees())
    rows = [r for r in rows if r["message_id"] not in ("a4", "a5", "b1")]
    assert build_threads(rows) == [EXPECTED_EN[:2]]


def test_lang_filter():
    rows = to_rows(make_trees())
    assert build_threads(rows, lang="en") == [EXPECTED_EN]
    assert build_threads(rows, lang="de") == [EXPECTED_DE]
    assert build_threads(rows, lang="fr") == []


# --- errors ------------------------------------------------------------------------


def rows_with(change):
    """Rows of make_trees() with ``{message_id: {field: new value}}`` applied."""
    rows = to_rows(make_trees())
    for row in rows:
        row.update(change.get(row["message_id"], {}))
    return rows


EN, DE = [EXPECTED_EN], [EXPECTED_DE]
ROW_ERRORS = [
    ("parent x9 not found", "parent_id", DE, {"a4": {"parent_id": "x9"}}),
    ("cycle", "parent_id", DE, {"p1": {"parent_id": "a2", "role": "assistant"}}),
    ("cycle", "parent_id", DE, {"a4": {"parent_id": "a4"}}),
    (r"do not alternate \(prompter -> prompter\)", "role", DE, {"p3": {"parent_id": "p2"}}),
    (r"do not alternate \(assistant -> assistant\)", "role", DE, {"a4": {"parent_id": "a2"}}),
    (
        "starts with an assistant",
        "role",
        EN,
        {"q1": {"role": "assistant"}, "b1": {"role": "prompter"}},
    ),
    ("duplicate message_id", "message_id", DE, {"a5": {"message_id": "a4"}}),
    ("role 'user' is not one of", "role", DE, {"a5": {"role": "user"}}),
]


@pytest.mark.parametrize("message, field, survivors, change", ROW_ERRORS)
def test_bad_rows(tmp_path, message, field, survivors, change):
    path = write_jsonl(tmp_path / "rows.jsonl", rows_with(change))
    with pytest.raises(DataError, match=message) as info:
        load_oasst(path)
    assert "rows.jsonl" in str(info.value) and f"field '{field}'" in str(info.value)
    assert "row " in str(info.value)

    loaded = load_oasst(path, skip_bad=True)
    assert loaded == survivors and loaded.n_skipped == 1  # the whole bad tree is skipped


def test_malformed_json_line_names_line(tmp_path):
    trees = make_trees()
    path = write_jsonl(tmp_path / "t.trees.jsonl", [trees[0], '{"message_tree_id": ', trees[1]])
    with pytest.raises(DataError, match="row 2.*malformed JSON"):
        load_oasst(path)
    loaded = load_oasst(path, skip_bad=True)
    assert loaded == [EXPECTED_EN, EXPECTED_DE] and loaded.n_skipped == 1
    path = write_jsonl(tmp_path / "t.trees.jsonl", ["{", trees[0], "[", trees[1], "{"])
    with pytest.raises(DataError, match=r"row 1: .*malformed JSON.* \(and 2 more bad row\(s\): "
                       r"row 3, row 5\)$"):  # every bad line in one go  # fmt: skip
        load_oasst(path)


def test_bad_tree_is_skipped_in_trees_form(tmp_path):
    trees = make_trees()
    bad = copy.deepcopy(trees[1])
    bad["message_tree_id"] = bad["prompt"]["message_id"] = "q9"
    bad["prompt"]["replies"][0]["role"] = "prompter"
    path = write_jsonl(tmp_path / "t.trees.jsonl", [trees[0], bad])
    with pytest.raises(DataError, match="row 2.*do not alternate"):
        load_oasst(path)
    path = write_jsonl(tmp_path / "t.trees.jsonl", [trees[0], bad, {"tree_state": READY}])
    with pytest.raises(DataError, match="row 3, field 'prompt'"):
        load_oasst(path)
    loaded = load_oasst(path, skip_bad=True)
    assert loaded == [EXPECTED_EN] and loaded.n_skipped == 2


def test_empty_file(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n")
    with pytest.raises(DataError, match="empty file"):
        load_oasst(path)


# --- chat format -------------------------------------------------------------------


def test_format_chat():
    turns = [("prompter", "Hi "), ("assistant", "Hello."), ("prompter", "How are you?")]
    assert format_chat(turns) == (
        f"{HUMAN} Hi\n{ASSISTANT} Hello.\n{HUMAN} How are you?\n{ASSISTANT}"
    )
    assert (
        format_chat(turns[:2], add_generation_prompt=False)
        == "### Human: Hi\n### Assistant: Hello."
    )


def test_to_examples_of_a_loaded_thread(tiny_tokenizer):
    """Lesson 06's examples (what ``phi2kit train chat`` trains on): with room for all, every
    earlier turn is the prompt."""
    from phi2kit.chat import to_examples

    examples = to_examples(EXPECTED_EN, tiny_tokenizer, 10_000)
    assert examples == [
        {
            "prompt": "### Human: How do kites fly?\n### Assistant:",
            "completion": " Wind pushes them up.",
            "dropped_turns": 0,
        },
        {
            "prompt": "### Human: How do kites fly?\n### Assistant: Wind pushes them up.\n"
            "### Human: And without wind?\n### Assistant:",
            "completion": " You have to run.",
            "dropped_turns": 0,
        },
    ]


# --- Notebook 06 writes the walk in its cells: it must agree with this loader ---------------


def _lesson_threads(path, lang):
    """The walk as notebook 06's cells do it: ``load_dataset``, flatten, ``build_threads``."""
    from datasets import load_dataset

    from phi2kit import chat

    kind = "parquet" if Path(path).suffix == ".parquet" else "json"
    raw = load_dataset(kind, data_files=str(path), split="train")
    if "messages" in raw[0] and not isinstance(raw[0].get("prompt"), dict):
        messages = [m for k, row in enumerate(raw)
                    for m in chat.conversation_to_rows(row["messages"], k)]  # fmt: skip
    elif "prompt" in raw[0]:
        messages = [m for tree in raw for m in chat.tree_to_rows(tree["prompt"])]
    else:
        messages = [{k: m.get(k) for k in chat.MESSAGE_FIELDS} for m in raw]
    threads = chat.build_threads(messages, lang=lang)
    return [list(t) for t in dict.fromkeys(map(tuple, threads))]  # repeats left out, as 06 does


@pytest.mark.parametrize("lang", ["en", "de", None])
def test_lesson_walk_gives_the_loaders_threads_on_the_sample(lang):
    from phi2kit.data import sample_path

    sample = sample_path("oasst1")
    lesson = _lesson_threads(sample, lang)
    assert lesson and lesson == list(load_oasst(sample, lang=lang))


def test_lesson_walk_reads_the_hub_rows_form_too(tmp_path):
    # the sample's trees written as the hub's message rows (parent_id links)
    from phi2kit.chat import tree_to_rows
    from phi2kit.data import sample_path

    trees = [json.loads(line) for line in sample_path("oasst1").read_text().splitlines()]
    rows = tmp_path / "rows.jsonl"
    with rows.open("w") as f:
        for tree in trees:
            for m in tree_to_rows(tree["prompt"]):
                f.write(json.dumps({**m, "message_tree_id": tree["message_tree_id"]}) + "\n")
    lesson = _lesson_threads(rows, "en")
    from_trees = list(load_oasst(sample_path("oasst1"), lang="en"))
    assert lesson == list(load_oasst(rows, lang="en")) == from_trees


# --- your own chats: {"messages": [{"role", "content"}, ...]} rows --------------------------


def _chats(threads, system=None):
    """Threads as the messages format, one conversation a line (trl's and OpenAI's)."""
    role = {"prompter": "user", "assistant": "assistant"}
    lines = []
    for thread in threads:
        head = [{"role": "system", "content": system}] if system else []
        turns = [{"role": role[r], "content": text} for r, text in thread]
        lines.append(json.dumps({"messages": head + turns}))
    return "\n".join(lines) + "\n"


def test_own_chats_give_the_threads_they_hold_in_the_lesson_and_the_loader(tmp_path):
    """The sample's English threads written as chats read back as the same threads: through
    notebook 06's cells and through the loader (``phi2kit train chat``); they carry no
    language, so LANG="en" keeps them. A leading system message goes before the first turn."""
    from phi2kit.data import sample_path

    threads = list(load_oasst(sample_path("oasst1"), lang="en"))
    chats = tmp_path / "chats.jsonl"
    chats.write_text(_chats(threads))
    assert _lesson_threads(chats, "en") == list(load_oasst(chats, lang="en")) == threads
    chats.write_text(_chats(threads[:2] + [[("prompter", "Hi"), ("assistant", "Hi!"),
                                            ("prompter", "Bye")]], system="Be brief."))  # fmt: skip
    got = list(load_oasst(chats, lang="en"))
    assert got == _lesson_threads(chats, "en") and len(got) == 3
    assert got[0] == [("prompter", "Be brief.\n\n" + threads[0][0][1]), *threads[0][1:]]
    assert got[2] == [("prompter", "Be brief.\n\nHi"), ("assistant", "Hi!")]  # ends on an answer


def test_chat_sets_with_a_prompt_text_beside_messages_are_read_as_chats(tmp_path):
    """HuggingFaceH4/ultrachat_200k's rows hold "prompt" (the first turn as text), "prompt_id"
    and "messages"; no_robots' add "category" and may open with a system message. They are
    chats, not OASST1 trees: the loader and notebook 06's cells read them from JSON lines and
    from the hub's Parquet (written here as ``datasets`` writes it)."""
    from datasets import Dataset

    from phi2kit.data import sample_path

    threads = list(load_oasst(sample_path("oasst1"), lang="en"))[:6]
    role = {"prompter": "user", "assistant": "assistant"}
    rows = [{"prompt": t[0][1], "prompt_id": f"{k:064x}",
             "messages": [{"content": text, "role": role[r]} for r, text in t]}
            for k, t in enumerate(threads)]  # fmt: skip
    robots = [{**row, "category": "Chat", "messages": [
        {"content": "Be brief.", "role": "system"}, *row["messages"]]} for row in rows]
    want = [[("prompter", "Be brief.\n\n" + t[0][1]), *t[1:]] for t in threads]
    for name, table, expected in (("ultrachat", rows, threads), ("no_robots", robots, want)):
        jsonl = write_jsonl(tmp_path / f"{name}.jsonl", table)
        parquet = tmp_path / f"{name}.parquet"
        Dataset.from_list(table).to_parquet(parquet)
        for path in (jsonl, parquet):
            got = list(load_oasst(path, lang="en"))
            assert got == expected and _lesson_threads(path, "en") == expected, (path, got)


@pytest.mark.parametrize(("line", "field", "why"), [
    ('{"messages": []}', "messages", "expected a list"),
    ('{"messages": "Hi"}', "messages", "expected a list"),
    ('{"messages": [{"role": "user"}]}', "messages[0]", "content missing"),
    ('{"messages": [{"role": "user", "content": ""}]}', "messages[0]", "content missing"),
    ('{"messages": [{"role": "human", "content": "Hi"}]}', "messages[0]", "role 'human'"),
    ('{"messages": [{"role": "user", "content": "Hi"}, {"role": "system", "content": "x"}]}',
     "messages[1]", "a system message only first"),
    ('{"messages": [{"role": "user", "content": "Hi"}, {"role": "user", "content": "Hey"}]}',
     "messages[1]", "user and assistant take turns, a user first"),
    ('{"messages": [{"role": "assistant", "content": "Hi"}]}', "messages[0]", "a user first"),
    ('{"messages": [{"role": "user", "content": " \\n "}, {"role": "assistant", "content": "A"}]}',
     "messages[0]", "content missing, empty or not text"),  # whitespace is no turn
    ('{"messages": [{"role": "system", "content": "Be brief."}]}', "messages[0]",
     "a system message alone: it must be followed by a user turn"),
    ('{"messages": [{"role": "system", "content": "Be brief."}, {"role": "assistant", "content": '
     '"Yo"}]}', "messages[1]", "role 'assistant': a system message must be followed by a user"),
])  # fmt: skip
def test_a_bad_chat_names_its_line_and_field(tmp_path, line, field, why):
    chats = tmp_path / "chats.jsonl"
    good = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]
    chats.write_text(json.dumps({"messages": good}) + "\n" + line + "\n")
    with pytest.raises(DataError) as err:
        load_oasst(chats)
    assert (err.value.row, err.value.field) == (2, field) and why in str(err.value), str(err.value)
    assert len(load_oasst(chats, skip_bad=True)) == 1  # the good chat stays


@pytest.mark.parametrize(("content", "said"), [
    ('{"conversations": [{"from": "human", "value": "Hi"}]}\n',  # ShareGPT's form
     "its rows have the fields conversations: not a chat form this reads; pass OASST1"),
    ('{"prompt": "Hi", "chosen": "Yo", "rejected": "No"}\n',  # pairs: a text prompt, no tree
     "its rows have the fields prompt, chosen, rejected: not a chat form this reads"),
    ('[\n  {"messages": [{"role": "user", "content": "Hi"}]}\n]\n',
     "a JSON array: this reads JSON lines, one object per line"),
])  # fmt: skip
def test_a_file_in_another_form_is_named_not_blamed_on_a_field(tmp_path, content, said):
    path = tmp_path / "mine.jsonl"
    path.write_text(content)
    with pytest.raises(DataError) as err:
        load_oasst(path)
    assert said in str(err.value) and err.value.field is None, str(err.value)


def test_lesson_cells_equal_phi2kit_chat():
    """What notebook 06 writes in its cells and keeps in phi2kit.chat is the same code."""
    import ast
    import inspect

    from phi2kit import chat

    notebook = Path(__file__).resolve().parents[1] / "notebooks" / "06_chat_oasst1.ipynb"
    cells = json.loads(notebook.read_text())["cells"]
    written = {}
    for cell in cells:
        if cell["cell_type"] != "code":
            continue
        for node in ast.parse("".join(cell["source"])).body:
            if isinstance(node, ast.FunctionDef):
                written[node.name] = ast.dump(node)
    names = ["tree_to_rows", "conversation_to_rows", "build_threads", "format_chat", "to_examples"]
    for name in names:
        kept = ast.parse(inspect.getsource(getattr(chat, name))).body[0]
        assert written.get(name) == ast.dump(kept), f"{name}: notebook 06 and phi2kit.chat differ"


# --- unfinished trees (the export's *_all files) -----------------------------------------


@pytest.mark.parametrize("form", ["trees", "rows", "parquet"])
def test_trees_not_ready_for_export_are_left_out_and_counted(tmp_path, form):
    """The ``*_all`` export also holds trees still growing or aborted: their threads are not
    trained on (as OpenAssistant's own loaders do); a missing ``tree_state`` counts as ready."""
    trees = make_trees()
    trees[1]["tree_state"] = "aborted_low_grade"
    growing = copy.deepcopy(trees[0])
    growing["message_tree_id"] = "g1"
    growing["tree_state"] = "growing"
    for m in [growing["prompt"], *growing["prompt"]["replies"]]:
        m["message_id"] = "g-" + m["message_id"]
    no_state = {k: v for k, v in copy.deepcopy(trees[0]).items() if k != "tree_state"}
    no_state["message_tree_id"] = "n1"
    stack = [no_state["prompt"]]
    while stack:  # new ids, the same conversation
        node = stack.pop()
        node["message_id"] = "n-" + node["message_id"]
        stack.extend(node["replies"])
    all_trees = [trees[0], trees[1], growing, no_state]
    if form == "trees":
        path = write_jsonl(tmp_path / "all.trees.jsonl", all_trees)
    else:
        rows = to_rows(all_trees)
        for row in rows:  # each row carries its tree's state, as the hub's rows do
            row["tree_state"] = next(t.get("tree_state") for t in all_trees
                                     if t["message_tree_id"] == row["message_tree_id"])
        path = write_jsonl(tmp_path / "all.jsonl", rows)
        if form == "parquet":
            path = tmp_path / "all.parquet"
            pd.DataFrame(rows).to_parquet(path)
    threads = load_oasst(path)
    assert threads == [EXPECTED_EN], threads  # p1; the tree without a state: ready, a repeat
    assert threads.not_ready == 2 and threads.repeated == 1  # q1 (aborted) and g1 (growing)


def test_a_trees_file_opening_with_an_aborted_tree_is_read_as_trees(tmp_path):
    """The ``*_all`` export may open with an aborted tree whose prompt is null: still trees."""
    aborted = {"message_tree_id": "x1", "tree_state": "aborted_low_grade", "prompt": None}
    path = write_jsonl(tmp_path / "all.trees.jsonl", [aborted, *make_trees()])
    threads = load_oasst(path, lang=None)
    assert threads == load_oasst(write_jsonl(tmp_path / "t.jsonl", make_trees()), lang=None)
    assert threads.not_ready == 1


def test_a_folder_is_named_as_a_folder(tmp_path):
    with pytest.raises(DataError, match="a folder, not a file: pass the .jsonl"):
        load_oasst(tmp_path)
    with pytest.raises(DataError, match="no such file"):
        load_oasst(tmp_path / "missing.jsonl")


@pytest.mark.parametrize(
    "name, content, said",
    [
        ("t.trees.jsonl.gz", b'{"message_tree_id": "q1"}\n', "not a complete gzip file"),
        ("rows.parquet", b"message_id,text\nm1,hi\n", "cannot be read as Parquet"),
        ("rows.csv", bytes(range(256)) * 8, "cannot be read as CSV"),
    ],
)
def test_a_file_that_is_not_its_kind_is_one_data_error(tmp_path, name, content, said):
    # a shell user's wrong file: named .gz, .parquet or .csv, but not that inside
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=said) as err:
        load_oasst(path)
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)
    if name.endswith(".gz"):  # cut short: a download that stopped
        path.write_bytes(gzip.compress(content * 50)[:40])
        with pytest.raises(DataError, match="not a complete gzip file"):
            load_oasst(path)


def test_malformed_json_is_said_once(tmp_path):
    path = write_jsonl(tmp_path / "t.trees.jsonl", ['{"text": "unterminated'])
    said = r"malformed JSON \(Unterminated string starting at; column"  # not "at at column"
    with pytest.raises(DataError, match=said):
        load_oasst(path)

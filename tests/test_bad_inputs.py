"""Every loader against every bad input that applies to it, and ``phi2kit train`` on bad data.

Each bad file must give a ``DataError`` naming the file and the row or field (or, with
``skip_bad=True``, a counted skip that keeps the good rows), and must leave nothing behind:
the loaders write nothing, and ``phi2kit train`` creates no output folder and no temp folder.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from phi2kit.data.files import DataError
from phi2kit.data.oasst import load_oasst
from phi2kit.data.sentiment import load_financial_news
from phi2kit.data.webglm import fit_to_length, load_webglm, to_prompt_completion


def jsonl(*rows: Any) -> bytes:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows).encode()


# --- Good rows each bad file is built around ----------------------------------------------

NEWS = 'positive,"Profits rose, again"\nnegative,Sales fell\nneutral,The board met\n'
QA = [
    {
        "question": "Where does the moose live?",
        "answer": "In mountains [1].",
        "references": ["The moose lives in mountains.", "Falcons fly."],
    },
    {
        "question": "What do badgers eat?",
        "answer": "Shellfish [2].",
        "references": ["Otters swim.", "Badgers eat shellfish."],
    },
]


def message(mid: str, role: str, parent: str | None, tree: str = "t1", **extra: Any) -> dict:
    row = {"message_id": mid, "parent_id": parent, "message_tree_id": tree, "role": role}
    return row | {"text": f"text of {mid}", "lang": "en", "rank": 0} | extra


CHAT = [message("p1", "prompter", None), message("a1", "assistant", "p1")]


def tree(prompt: dict, tree_id: str = "t9") -> dict:
    return {"message_tree_id": tree_id, "tree_state": "ready_for_export", "prompt": prompt}


def nested(mid: str, role: str, *replies: dict) -> dict:
    return {"message_id": mid, "role": role, "text": f"text of {mid}", "replies": list(replies)}


GOOD_TREE = tree(nested("p1", "prompter", nested("a1", "assistant")), "t1")


# --- The loaders, with how each counts skipped rows -----------------------------------------


def financial(path: Path, skip_bad: bool = False) -> tuple[int, int]:
    df = load_financial_news(path, skip_bad=skip_bad)
    return len(df), df.attrs["skipped"]


def webglm(path: Path, skip_bad: bool = False) -> tuple[int, int]:
    result = load_webglm(path, skip_bad=skip_bad)
    return len(result), result.n_skipped


def oasst(path: Path, skip_bad: bool = False) -> tuple[int, int]:
    result = load_oasst(path, skip_bad=skip_bad)
    return len(result), result.n_skipped


@dataclass
class Case:
    """A bad file: what the error must say and, if skipping applies, how many rows survive.

    ``match`` is a regex after the file name (``FILE, row N, field 'x': what``);
    ``kept`` is the number of good records left with ``skip_bad=True`` (one is skipped),
    ``None`` when the whole file is unusable.
    """

    loader: Any
    name: str
    data: bytes
    match: str
    kept: int | None = None


CASES = {
    # financial news: Kaggle CSV (no header) and the phrasebank layout
    "news-missing-column": Case(
        financial,
        "pb.csv",
        b"sentence,score\nShares up,2\n",
        r", row 1, field 'label': missing column 'label'",
    ),
    "news-missing-headline": Case(
        financial,
        "all-data.csv",
        (NEWS + "positive\n").encode(),
        r", row 4, field 'headline': missing column",
        kept=3,
    ),
    "news-unknown-label": Case(
        financial,
        "all-data.csv",
        (NEWS + "positve,Shares jumped\n").encode(),
        r", row 4, field 'sentiment': unknown label 'positve'",
        kept=3,
    ),
    "news-unknown-int-label": Case(
        financial,
        "pb.csv",
        b"sentence,label\nUp,2\nDown,0\nOdd,7\n",
        r", row 4, field 'label': unknown label '7'",
        kept=2,
    ),
    "news-empty": Case(financial, "all-data.csv", b"\n\r\n", r": empty file"),
    # JSON lines given to the headlines' loader: its first cell was called an unknown label
    "news-json": Case(financial, "chats.jsonl", b'{"messages": [{"role": "user"}]}\n',
                      r": JSON, not CSV: pass a CSV of headlines"),
    "news-binary": Case(financial, "all-data.csv", bytes(range(256)) * 4,
                        r": a binary file, not CSV text"),  # not "one column with '\t'"
    "news-single-class": Case(
        financial,
        "all-data.csv",
        b"positive,Up\npositive,Up again\n",
        r": only one class \('positive'\)",
    ),
    # WebGLM-QA
    "webglm-utf16": Case(webglm, "train.jsonl", jsonl(*QA).decode().encode("utf-16"), r", row 1"),
    "webglm-invalid-bytes": Case(
        webglm, "train.jsonl", jsonl(*QA) + b'{"question": "Caf\xe9?"}\n', r", row 3"
    ),
    "webglm-missing-field": Case(
        webglm,
        "train.jsonl",
        jsonl(*QA, {"question": "Why?", "references": ["x"]}),
        r", row 3, field 'answer': missing field",
        kept=2,
    ),
    "webglm-wrong-type": Case(
        webglm,
        "train.jsonl",
        jsonl(*QA, QA[0] | {"answer": 5}),
        r", row 3, field 'answer': expected a string",
        kept=2,
    ),
    "webglm-no-references": Case(
        webglm,
        "train.jsonl",
        jsonl(*QA, QA[0] | {"references": []}),
        r", row 3, field 'references': empty reference list",
        kept=2,
    ),
    "webglm-empty": Case(webglm, "train.jsonl", b"\n \n", r": empty file"),
    "webglm-malformed-json": Case(
        webglm,
        "train.jsonl",
        jsonl(QA[0], '{"question": "Why?",', QA[1]),
        r", row 2: malformed JSON",
        kept=2,
    ),
    "webglm-citation-outside": Case(
        webglm,
        "train.jsonl",
        jsonl(*QA, QA[0] | {"answer": "See [3]."}),
        r", row 3, field 'answer': citation \[3\] is outside 1\.\.2",
        kept=2,
    ),
    # OASST1: rows form (parent_id links) and the trees export
    "oasst-utf16": Case(oasst, "oasst.jsonl", jsonl(*CHAT).decode().encode("utf-16"), r", row 1"),
    "oasst-invalid-bytes": Case(
        oasst, "oasst.jsonl", jsonl(*CHAT) + b'{"text": "Caf\xe9"}\n', r", row 3"
    ),
    "oasst-missing-field": Case(
        oasst,
        "oasst.jsonl",
        jsonl(*CHAT, {"message_id": "q1", "text": "Hi", "parent_id": None}),
        r", row 3, field 'role': missing or not a string",
        kept=1,
    ),
    "oasst-unknown-role": Case(
        oasst,
        "oasst.jsonl",
        jsonl(*CHAT, message("q1", "user", None, "t2")),
        r", row 3, field 'role': message q1: role 'user' is not one of",
        kept=1,
    ),
    "oasst-empty": Case(oasst, "oasst.jsonl", b"", r": empty file"),
    "oasst-malformed-json": Case(
        oasst,
        "oasst.jsonl",
        jsonl(*CHAT, '{"message_id": "q1"'),
        r", row 3: malformed JSON",
        kept=1,
    ),
    "oasst-missing-parent": Case(
        oasst,
        "oasst.jsonl",
        jsonl(*CHAT, message("q2", "assistant", "ghost", "t2")),
        r", row 3, field 'parent_id': message q2: parent ghost not found",
        kept=1,
    ),
    "oasst-cycle": Case(
        oasst,
        "oasst.jsonl",
        jsonl(*CHAT, message("x1", "prompter", "x2", "t2"), message("x2", "assistant", "x1", "t2")),
        r", row 3, field 'parent_id': message x1: parent links form a cycle",
        kept=1,
    ),
    "oasst-not-alternating": Case(
        oasst,
        "oasst.jsonl",
        jsonl(*CHAT, message("q1", "prompter", None, "t2"), message("q2", "prompter", "q1", "t2")),
        r", row 4, field 'role': message q2: roles do not alternate \(prompter -> prompter\)",
        kept=1,
    ),
    "oasst-assistant-root": Case(
        oasst,
        "oasst.jsonl",
        jsonl(*CHAT, message("q1", "assistant", None, "t2")),
        r", row 3, field 'role': message q1: thread starts with an assistant",
        kept=1,
    ),
    "oasst-duplicate-id": Case(
        oasst,
        "oasst.jsonl",
        jsonl(*CHAT, message("a1", "assistant", "p1")),
        r", row 3, field 'message_id': message a1: duplicate message_id",
    ),
    "oasst-trees-not-alternating": Case(
        oasst,
        "x.trees.jsonl",
        jsonl(GOOD_TREE, tree(nested("q1", "prompter", nested("q2", "prompter")))),
        r", row 2, field 'role': message q2: roles do not alternate",
        kept=1,
    ),
    "oasst-trees-no-prompt": Case(
        oasst,
        "x.trees.jsonl",
        jsonl(GOOD_TREE, {"message_tree_id": "t2", "prompt": "oops"}),
        r", row 2, field 'prompt': expected a tree",
        kept=1,
    ),
}


def params(ids):
    return [pytest.param(CASES[i], id=i) for i in ids]


def write(tmp_path: Path, case: Case) -> Path:
    path = tmp_path / case.name
    path.write_bytes(case.data)
    return path


@pytest.mark.parametrize("case", params(CASES))
def test_bad_input_raises_naming_file_and_place(case, tmp_path):
    path = write(tmp_path, case)
    with pytest.raises(DataError, match=re.escape(str(path)) + case.match):
        case.loader(path)
    assert list(tmp_path.iterdir()) == [path]  # nothing written next to the input


@pytest.mark.parametrize("case", params(i for i, c in CASES.items() if c.kept is not None))
def test_bad_row_is_skipped_and_counted_when_asked(case, tmp_path):
    path = write(tmp_path, case)
    kept, skipped = case.loader(path, skip_bad=True)
    assert (kept, skipped) == (case.kept, 1)
    assert list(tmp_path.iterdir()) == [path]


def test_every_loader_and_input_kind_is_covered():
    loaders = {c.loader for c in CASES.values()}
    assert loaders == {financial, webglm, oasst}
    kinds = {key.split("-", 1)[1] for key in CASES}
    for kind in ("utf16", "missing-column", "unknown-label", "empty", "single-class"):
        assert kind in kinds
    for kind in ("malformed-json", "citation-outside", "missing-parent", "cycle"):
        assert kind in kinds


# --- Over-long examples: the question and the answer are never truncated ------------------

LONG = {"question": "Why " + "really " * 300 + "?", "answer": "Because [1].", "references": ["x"]}


def test_overlong_example_is_refused_or_skipped_and_counted(tiny_tokenizer):
    with pytest.raises(DataError, match=r"field 'question': question and answer alone take \d+"):
        fit_to_length(LONG, tiny_tokenizer, max_length=64)
    with pytest.raises(DataError, match=r"^row 2, field 'question': .*max_length=64"):
        to_prompt_completion([QA[0], LONG], tiny_tokenizer, max_length=64)
    dataset, stats = to_prompt_completion(
        [QA[0], LONG, QA[1]], tiny_tokenizer, max_length=64, skip_too_long=True
    )
    assert (len(dataset), stats["n_too_long"]) == (2, 1)


# --- phi2kit train on bad data: an error naming the file, and no output left behind -------

CLI_CASES = [
    pytest.param("sentiment", CASES["news-unknown-label"], id="sentiment-unknown-label"),
    pytest.param("classifier", CASES["news-single-class"], id="classifier-single-class"),
    pytest.param("chat", CASES["oasst-missing-parent"], id="chat-missing-parent"),
    pytest.param("chat", CASES["oasst-trees-not-alternating"], id="chat-trees-roles"),
    pytest.param("webglm", CASES["webglm-citation-outside"], id="webglm-citation"),
    pytest.param(
        "webglm",
        Case(webglm, "qa.jsonl", jsonl(LONG, *QA), r", field 'question': example 1: question"),
        id="webglm-overlong",
    ),
    pytest.param("webglm", CASES["webglm-utf16"], id="webglm-utf16"),
]


@pytest.mark.parametrize(("task", "case"), CLI_CASES)
def test_train_on_bad_data_fails_and_leaves_nothing(task, case, tmp_path, capsys):
    from phi2kit.commands.train import main

    path, out = write(tmp_path, case), tmp_path / "run"
    argv = [task, "--profile", "tiny", "--data", str(path), "--output-dir", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert re.search(re.escape(str(path)) + case.match, err), err
    assert list(tmp_path.iterdir()) == [path]  # no run folder, no temp folder


# --- The one bad-row collector every loader uses --------------------------------------------


def test_load_result_names_every_bad_row_or_records_and_skips_the_rest_of_the_row():
    from phi2kit.data.files import LoadResult

    def load(skip_bad: bool, values=("a", None, "c", None, None)) -> LoadResult:
        result = LoadResult(skip_bad=skip_bad)
        for i, value in enumerate(values, start=1):
            with result.row():
                if value is None:
                    raise DataError("no text", path="f.jsonl", row=i, field="text")
                if value == "header":
                    raise DataError("a header", path="f.jsonl", row=i, whole_file=True)
                result.append(value)
        return result.done()

    with pytest.raises(DataError) as info:  # the first bad row, and where the others are
        load(skip_bad=False)
    assert str(info.value) == ("f.jsonl, row 2, field 'text': no text (and 2 more bad row(s): "
                               "row 4, row 5)")  # fmt: skip
    with pytest.raises(DataError) as info:
        load(skip_bad=False, values=("a", None, "c"))
    assert str(info.value) == "f.jsonl, row 2, field 'text': no text"
    with pytest.raises(DataError) as info:  # the whole file is read wrong: said at once
        load(skip_bad=False, values=("header", None, None))
    assert str(info.value) == "f.jsonl, row 1: a header"
    loaded = load(skip_bad=True)
    assert loaded == ["a", "c"] and loaded.n_skipped == 3
    assert loaded.summary() == "bad rows skipped: 3 (first: f.jsonl, row 2, field 'text': no text)"
    assert load(skip_bad=True, values=("header", "b")) == ["b"]
    assert LoadResult().summary("trees") == "no bad trees"
    with pytest.raises(KeyError), LoadResult(skip_bad=True).row():
        raise KeyError("not a data problem: never swallowed")

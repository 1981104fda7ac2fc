"""Tests for phi2kit.data.webglm: loading, citations, prompts and reference trimming."""

import ast
import json
import random
from pathlib import Path

import pytest

from phi2kit.data import webglm
from phi2kit.data.files import DataError
from phi2kit.data.webglm import (
    build_qa_prompt,
    fit_to_length,
    load_webglm,
    parse_citations,
    to_prompt_completion,
)

WORDS = (
    "the quick brown fox jumps over lazy dog river stone cloud paper lamp green window "
    "seven orange bicycle garden music table quiet mountain answer question because"
).split()


@pytest.fixture(scope="module")
def tokenizer():
    """A tiny byte-level BPE trained on made-up sentences, wrapped like Phi-2's tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(0)
    sentences = [" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(200)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(sentences, trainer)
    eos = "<|endoftext|>"
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=eos, bos_token=eos, unk_token=eos
    )


def n_tokens(tokenizer, text):
    return len(tokenizer(text)["input_ids"]) + 1  # + EOS


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


GOOD = {
    "question": "Why is the sky blue?",
    "answer": "Light scatters [1][2].",
    "references": ["a", "b"],
}


# --- parse_citations ---------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("no citations here", []),
        ("one [1].", [1]),
        ("big [12] number", [12]),
        ("adjacent [1][2] ones", [1, 2]),
        ("list [1, 2] and [3,4] and [5 , 6]", [1, 2, 3, 4, 5, 6]),
        ("repeats [2] then [1] then [2]", [2, 1, 2]),
        ("not citations [a] [note] [1.5] [] [ ] [1,] [-1]", []),
        ("mixed [x][3] [2.0] [10]", [3, 10]),
        ("zero [0] is parsed (and invalid later)", [0]),
    ],
)
def test_parse_citations(text, expected):
    assert parse_citations(text) == expected


# --- load_webglm -------------------------------------------------------------------


def test_load_file_folder_and_limit(tmp_path):
    rows = [dict(GOOD, question=f"Question {i}?") for i in range(5)]
    write_jsonl(tmp_path / "validation.jsonl", rows)
    assert load_webglm(tmp_path / "validation.jsonl") == rows
    assert load_webglm(tmp_path, split="validation") == rows
    assert [r["question"] for r in load_webglm(tmp_path, "validation", limit=2)] == [
        "Question 0?",
        "Question 1?",
    ]
    with pytest.raises(DataError, match="no such file"):
        load_webglm(tmp_path, split="test")


BAD_CASES = [
    ("malformed JSON", '{"question": "q", "answer": ', None),
    ("missing field", {"answer": "a", "references": ["r"]}, "question"),
    ("expected a string", dict(GOOD, answer=42), "answer"),
    ("expected a list of strings", dict(GOOD, references="just one"), "references"),
    ("expected a list of strings", dict(GOOD, references=["ok", 3]), "references"),
    ("empty reference list", dict(GOOD, references=[]), "references"),
    (r"citation \[3\] is outside 1\.\.2", dict(GOOD, answer="See [1] and [3]."), "answer"),
    (r"citation \[0\] is outside", dict(GOOD, answer="See [0]."), "answer"),
    ("expected a JSON object", [1, 2], None),
]


@pytest.mark.parametrize("message, bad_row, field", BAD_CASES)
def test_bad_line_names_file_line_and_field(tmp_path, message, bad_row, field):
    path = write_jsonl(tmp_path / "train.jsonl", [GOOD, "", bad_row, GOOD])
    with pytest.raises(DataError, match=message) as info:
        load_webglm(path)
    err = str(info.value)
    assert "train.jsonl" in err and "row 3" in err  # blank line 2 still counts
    if field:
        assert f"field '{field}'" in err

    loaded = load_webglm(path, skip_bad=True)
    assert loaded == [GOOD, GOOD]
    assert loaded.n_skipped == 1 and "row 3" in loaded.problems[0]


def test_every_bad_line_is_named_in_one_go(tmp_path):
    rows = [GOOD, dict(GOOD, references=[]), GOOD, "{", dict(GOOD, answer=""), GOOD]
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(DataError) as info:
        load_webglm(path)
    assert str(info.value) == (f"{path}, row 2, field 'references': empty reference list "
                               "(and 2 more bad row(s): row 4, row 5)")  # fmt: skip


def test_empty_file(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("\n  \n")
    with pytest.raises(DataError, match="empty file"):
        load_webglm(path)


def test_hub_offline_suggests_local_path(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match="Offline.*path="):
        load_webglm(None, split="train")


# --- prompts and trimming ----------------------------------------------------------


def test_build_qa_prompt():
    prompt = build_qa_prompt("Why?", ["First ref.", "Second ref."])
    assert prompt == "References:\n[1] First ref.\n[2] Second ref.\nQuestion: Why?\nAnswer:"
    assert build_qa_prompt("Why?", []) == "Question: Why?\nAnswer:"


def test_fit_keeps_short_examples_unchanged(tokenizer):
    out, trimmed = fit_to_length(GOOD, tokenizer, max_length=512)
    assert not trimmed
    assert out == {
        "prompt": build_qa_prompt(GOOD["question"], GOOD["references"]),
        "completion": " " + GOOD["answer"],
    }


def test_fit_drops_last_references_first(tokenizer):
    refs = ["lamp " * 5, "river " * 40, "stone " * 40]
    example = {"question": "What is green?", "answer": "The lamp [1].", "references": refs}
    budget = n_tokens(tokenizer, build_qa_prompt(example["question"], refs[:1]) + " The lamp [1].")
    out, trimmed = fit_to_length(example, tokenizer, budget + 3)
    assert trimmed
    assert "[1] " + refs[0].strip() in out["prompt"] and "[3]" not in out["prompt"]
    assert n_tokens(tokenizer, out["prompt"] + out["completion"]) <= budget + 3


def test_fit_raises_when_question_and_answer_do_not_fit(tokenizer):
    example = dict(GOOD, answer="word " * 50)
    with pytest.raises(DataError, match="never truncated"):
        fit_to_length(example, tokenizer, max_length=20)


def random_text(rng, lo, hi):
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


def test_trimming_property(tokenizer):
    """Over many random examples: question and answer intact, length fits, numbering kept,
    references dropped whole from the last."""
    rng = random.Random(1234)
    n_fitted = n_trimmed = n_raised = 0
    for _ in range(150):
        refs = [random_text(rng, 1, 60) for _ in range(rng.randint(1, 6))]
        question = random_text(rng, 1, 15) + "?"
        answer = random_text(rng, 1, 20) + f" [{rng.randint(1, len(refs))}]."
        example = {"question": question, "answer": answer, "references": refs}
        max_length = rng.randint(15, 250)
        bare = n_tokens(tokenizer, build_qa_prompt(question, []) + " " + answer)
        try:
            out, trimmed = fit_to_length(example, tokenizer, max_length)
        except DataError:
            assert bare > max_length  # raised only when question + answer cannot fit
            n_raised += 1
            continue
        n_fitted += 1
        n_trimmed += trimmed
        assert out["completion"] == " " + answer
        assert out["prompt"].endswith(f"Question: {question}\nAnswer:")
        assert n_tokens(tokenizer, out["prompt"] + out["completion"]) <= max_length
        shown = [ln for ln in out["prompt"].split("\n") if ln.startswith("[")]
        for k, line in enumerate(shown, start=1):
            assert line.startswith(f"[{k}] ")
            assert line[len(f"[{k}] ") :] == refs[k - 1]  # whole references, never cut
        assert trimmed == (len(shown) < len(refs))
        if trimmed:  # as many leading references as fit: one more would not
            more = build_qa_prompt(question, refs[: len(shown) + 1]) + " " + answer
            assert n_tokens(tokenizer, more) > max_length
    assert n_fitted > 50 and n_trimmed > 20 and n_raised > 5  # all branches exercised


def test_to_prompt_completion_stats(tokenizer):
    long_refs = ["lamp", "river " * 60, "stone " * 60]
    examples = [
        GOOD,
        {
            "question": "Where?",
            "answer": "Near the river [2] and stone [3].",
            "references": long_refs,
        },
        dict(GOOD, answer="word " * 80),
    ]
    with pytest.raises(DataError, match="row 3.*never truncated"):
        to_prompt_completion(examples, tokenizer, max_length=110)
    dataset, stats = to_prompt_completion(examples, tokenizer, max_length=110, skip_too_long=True)
    assert dataset.column_names == ["prompt", "completion"]
    assert len(dataset) == 2 == stats["n"]
    assert stats["n_too_long"] == 1 and stats["n_trimmed"] == 1
    assert stats["n_dropped_refs"] == 2  # whole references only: [3], then [2]
    assert stats["n_dangling_citations"] == 2
    assert dataset[1]["completion"] == " Near the river [2] and stone [3]."


# --- Notebook 04 reads with datasets and writes the prompt and the trimming in its cells ----

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "04_webglm_qlora.ipynb"


def notebook_cells() -> dict[str, str]:
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    return {c["id"]: "".join(c["source"]) for c in cells if c["cell_type"] == "code"}


def defined_in(source: str, name: str) -> ast.AST:
    return next(n for n in ast.parse(source).body if getattr(n, "name", None) == name)


@pytest.mark.parametrize("name", ["build_qa_prompt", "fit_example"])
def test_the_notebooks_functions_are_the_loaders(name):
    cell = next(s for s in notebook_cells().values() if f"def {name}(" in s)
    module = Path(webglm.__file__).read_text()
    assert ast.dump(defined_in(cell, name)) == ast.dump(defined_in(module, name))


def test_the_notebooks_cells_and_the_loader_give_the_same_rows(tiny_tokenizer):
    from phi2kit.data import sample_path
    from phi2kit.profiles import get_profile
    from phi2kit.recipes import get_recipe

    profile = get_profile("tiny")
    recipe = get_recipe("webglm", profile)
    ns = {"profile": profile, "recipe": recipe, "DATA_PATH": "auto", "N_EVAL": 24, "n_test": 24}
    cells = notebook_cells()
    for cell in ("cell-07", "cell-09"):  # load_dataset, then keep well-formed rows
        exec(compile(cells[cell], str(NOTEBOOK), "exec"), ns)  # noqa: S102  (our own notebook)
    sample = sample_path("webglm")
    for split, name, n in [("train", "train_raw", recipe.n_train), ("validation", "eval_raw", 24),
                           ("test", "test_raw", 24)]:  # fmt: skip
        loaded = load_webglm(sample, split, limit=n, skip_bad=True)
        assert list(ns[name]) == list(loaded), split
    ns["build_qa_prompt"] = build_qa_prompt  # cell-10b's, the same function (test above)
    exec(compile(cells["cell-10f"], str(NOTEBOOK), "exec"), ns)  # noqa: S102
    fitted = [ns["fit_example"](e, tiny_tokenizer, 160) for e in ns["train_raw"]]
    dataset, stats = to_prompt_completion(ns["train_raw"], tiny_tokenizer, 160, skip_too_long=True)
    assert [f for f in fitted if f is not None] == dataset.to_list()
    assert stats["n_trimmed"] > 0  # the budget bites: the comparison covers dropping

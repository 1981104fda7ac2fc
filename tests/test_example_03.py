"""examples/03_classifier.py: lesson 03 as one script, without phi2kit.

It learns on the tiny model and the shipped sample, refuses bad files before any model
loads, reads both published CSV forms, and builds the same BitsAndBytesConfig, LoraConfig
and TrainingArguments as notebook 03's cells tagged ``recipe`` for the t4 profile.
"""

from __future__ import annotations

import contextlib
import io
import json
import re

import pytest
import torch
from example_scripts import (
    ROOT,
    TINY,
    imported_packages,
    load_script,
    mismatch,
    notebook_recipe,
    run_script,
)

NAME = "03_classifier.py"
SAMPLE = ROOT / "data" / "financial_news" / "all-data.csv"


def test_imports_no_phi2kit():
    assert "phi2kit" not in imported_packages(NAME)


def test_learns_on_the_tiny_model(tmp_path):
    """A few dozen steps on the shipped sample beat the majority class by 15 points."""
    out = io.StringIO()
    argv = ["--model", str(TINY), "--data", str(SAMPLE), "--output-dir", str(tmp_path),
            "--no-4bit", "--max-steps", "30", "--batch-size", "16", "--learning-rate", "3e-3"]
    with contextlib.redirect_stdout(out):
        assert load_script(NAME).main(argv) == 0
    found = re.search(r"test accuracy ([\d.]+) .*majority class ([\d.]+)", out.getvalue())
    assert found, out.getvalue()[-2000:]
    accuracy, majority = map(float, found.groups())
    assert accuracy >= majority + 0.15, (accuracy, majority)
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    kept = json.loads((tmp_path / "metrics.json").read_text())  # the head's rows, by name
    assert kept["labels"] == ["negative", "neutral", "positive"]
    assert kept["test_accuracy"] == pytest.approx(accuracy, abs=1e-4)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"text,label\nSales rose,positive\n,negative\n", "row 3, field 'text': empty"),
        (b"sentence,label\nSales rose,positive\n", "row 1 (header): no column 'text'"),
        (b'{"question": "q", "answer": "a"}\n', "row 1, field 'label': '{\"question\": \"q\"' is"),
        (b"a,b,c\n", "row 1: 3 fields"),
        (b"PAR1\x15\x04\x15\x00label", "bad.csv: a binary file, not CSV text"),  # Parquet
        ("text,label\nSales rose,positive\n".encode("utf-16"),  # Excel's "Unicode text"
         "bad.csv: row 1: a UTF-16 file; save it as UTF-8"),  # as the library says
        (b"positive,Sales rose\nnegative,Profit fell\n", "field 'label': 'negative' has 1 text(s)"),
        (b"text;label\nSales rose;positive\n", "row 1: one column with ';' in it: save"),
        (b"text,label\nup 0,positive\ndown 0,negative\nflat,postive\nup 1,positive\n"
         b"down 1,negative\nup 2,positive\ndown 2,negative\n",  # a typo: name its row
         "bad.csv: row 4, field 'label': 'postive' has 1 text(s); each label needs 3 (test, eval "
         "and train). A misspelt label? The others are: negative, positive"),
    ],
)
def test_refuses_a_bad_file_before_loading_a_model(tmp_path, content, message):
    bad = tmp_path / "bad.csv"
    bad.write_bytes(content)
    run = run_script(NAME, "--model", "no/such-model", "--data", str(bad),
                     "--output-dir", str(tmp_path / "out"), timeout=60)
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0] and message in lines[0], run.stderr


def test_reads_the_kaggle_form_and_a_headed_csv(tmp_path):
    script = load_script(NAME)
    kaggle = tmp_path / "all-data.csv"  # Latin-1, CR line endings, a quoted comma
    kaggle.write_bytes('neutral,"V\xe4rmont, Oy: results"\rpositive,Sales rose\r'.encode("latin-1"))
    assert script.read_rows(kaggle) == [("V\xe4rmont, Oy: results", "neutral"),
                                        ("Sales rose", "positive")]
    headed = tmp_path / "own.csv"
    headed.write_text("id,review,stars\n1,Lovely,good\n2,Slow,bad\n")
    assert script.read_rows(headed, "review", "stars") == [("Lovely", "good"), ("Slow", "bad")]
    spaced = tmp_path / "spaced.csv"  # one headline twice, spaced differently: one text, as 02
    spaced.write_text('label,text\nneg,"Profit fell, firm says"\nneg," Profit  fell,\tfirm says"\n')
    assert {t for t, _ in script.read_rows(spaced, "text", "label")} == {"Profit fell, firm says"}


def test_split_keeps_a_repeated_text_once_and_leaves_out_two_labels(capsys):
    rows = [(f"text {i}", "a" if i % 2 else "b") for i in range(40)] + [("text 1", "b")]
    rows += [("text 2", "b")]  # a repeat with the same label
    labels, parts = load_script(NAME).split(rows, "f.csv")
    assert capsys.readouterr().out == ("42 rows, 40 distinct texts: 2 repeats, 1 texts with two "
                                       "labels left out\n")  # fmt: skip
    texts = [t for part in parts.values() for t, _ in part]
    assert labels == ["a", "b"] and len(texts) == len(set(texts)) == 39 and "text 1" not in texts
    assert len(parts["test"]) == len(parts["eval"]) == 4


def test_configs_equal_the_notebooks_for_the_t4_profile(tmp_path):
    script = load_script(NAME)
    args = script.parse_args(["--model", "microsoft/phi-2", "--data", "x.csv",
                              "--output-dir", str(tmp_path)])
    dtype, quant, lora, train_args = script.build_configs(args, cuda=True, bf16=False)
    ns = notebook_recipe("03_classification_head.ipynb", "classifier", tmp_path)
    assert dtype == ns["load_kwargs"]["dtype"] == torch.float16
    assert quant.to_dict() == ns["quant_config"].to_dict()
    assert lora.to_dict() == ns["peft_config"].to_dict()
    assert not (diff := mismatch(train_args, ns["args"])), diff

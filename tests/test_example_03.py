"""examples/03_classifier.py: lesson 03 as one script, without phi2kit.

It learns on the tiny model and the shipped sample, refuses bad files before any model
loads, reads both published CSV forms, and builds the same BitsAndBytesConfig, LoraConfig
and TrainingArguments as notebook 03's cells tagged ``recipe`` for the t4 profile.
"""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from phi2kit.profiles import get_profile
from phi2kit.recipes import get_recipe

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "03_classifier.py"
NOTEBOOK = ROOT / "notebooks" / "03_classification_head.ipynb"
SAMPLE = ROOT / "data" / "financial_news" / "all-data.csv"
TINY = ROOT / "phi2kit" / "tiny" / "model"
IGNORED = {"output_dir", "logging_dir"}  # where files go, not what is trained


def load_script():
    spec = importlib.util.spec_from_file_location("example_03", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_imports_no_phi2kit():
    tree = ast.parse(SCRIPT.read_text())
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    names += [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert not [n for n in names if n and n.split(".")[0] == "phi2kit"]


def test_learns_on_the_tiny_model(tmp_path):
    """A few dozen steps on the shipped sample beat the majority class by 15 points."""
    out = io.StringIO()
    argv = ["--model", str(TINY), "--data", str(SAMPLE), "--output-dir", str(tmp_path),
            "--no-4bit", "--max-steps", "30", "--batch-size", "16", "--learning-rate", "3e-3"]
    with contextlib.redirect_stdout(out):
        assert load_script().main(argv) == 0
    found = re.search(r"test accuracy ([\d.]+) .*majority class ([\d.]+)", out.getvalue())
    assert found, out.getvalue()[-2000:]
    accuracy, majority = map(float, found.groups())
    assert accuracy >= majority + 0.15, (accuracy, majority)
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize(
    "content, message",
    [
        (b"text,label\nSales rose,positive\n,negative\n", "row 3, field 'text': empty"),
        (b"sentence,label\nSales rose,positive\n", "row 1 (header): no column 'text'"),
        (b'{"question": "q", "answer": "a"}\n', "row 1, field 'label': '{\"question\": \"q\"' is"),
        (b"a,b,c\n", "row 1: 3 fields"),
        (b"positive,Sales rose\nnegative,Profit fell\n", "field 'label': 'negative' has 1 texts"),
    ],
)
def test_refuses_a_bad_file_before_loading_a_model(tmp_path, content, message):
    bad = tmp_path / "bad.csv"
    bad.write_bytes(content)
    cmd = [sys.executable, str(SCRIPT), "--model", "no/such-model", "--data", str(bad),
           "--output-dir", str(tmp_path / "out")]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0] and message in lines[0], run.stderr


def test_reads_the_kaggle_form_and_a_headed_csv(tmp_path):
    script = load_script()
    kaggle = tmp_path / "all-data.csv"  # Latin-1, CR line endings, a quoted comma
    kaggle.write_bytes('neutral,"V\xe4rmont, Oy: results"\rpositive,Sales rose\r'.encode("latin-1"))
    assert script.read_rows(kaggle) == [("V\xe4rmont, Oy: results", "neutral"),
                                        ("Sales rose", "positive")]
    headed = tmp_path / "own.csv"
    headed.write_text("id,review,stars\n1,Lovely,good\n2,Slow,bad\n")
    assert script.read_rows(headed, "review", "stars") == [("Lovely", "good"), ("Slow", "bad")]


def test_split_keeps_a_repeated_text_in_one_split():
    rows = [(f"text {i}", "a" if i % 2 else "b") for i in range(40)] + [("text 1", "b")]
    labels, parts = load_script().split(rows, "f.csv")
    texts = [t for part in parts.values() for t, _ in part]
    assert labels == ["a", "b"] and len(texts) == len(set(texts)) == 40
    assert len(parts["test"]) == len(parts["eval"]) == 4


def notebook_recipe(profile_name: str, out: Path) -> dict:
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    sources = ["".join(c["source"]) for c in cells
               if c["cell_type"] == "code" and "recipe" in c["metadata"].get("tags", [])]
    assert len(sources) == 3, "BitsAndBytesConfig, LoraConfig and TrainingArguments cells"
    profile = get_profile(profile_name, check=False)
    ns = {"torch": torch, "profile": profile, "recipe": get_recipe("classifier", profile),
          "OUTPUT_DIR": str(out)}
    for source in sources:
        exec(compile(source, str(NOTEBOOK), "exec"), ns)  # noqa: S102  (our own notebook)
    return ns


def test_configs_equal_the_notebooks_for_the_t4_profile(tmp_path):
    script = load_script()
    args = script.parse_args(["--model", "microsoft/phi-2", "--data", "x.csv",
                              "--output-dir", str(tmp_path)])
    dtype, quant, lora, train_args = script.build_configs(args, cuda=True, bf16=False)
    ns = notebook_recipe("t4", tmp_path)
    assert dtype == ns["load_kwargs"]["dtype"] == torch.float16
    assert quant.to_dict() == ns["quant_config"].to_dict()
    assert lora.to_dict() == ns["peft_config"].to_dict()
    mine = {k: v for k, v in train_args.to_dict().items() if k not in IGNORED}
    theirs = {k: v for k, v in ns["args"].to_dict().items() if k not in IGNORED}
    assert mine == theirs, {k: (v, theirs.get(k)) for k, v in mine.items() if theirs.get(k) != v}

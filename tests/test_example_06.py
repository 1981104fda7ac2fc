"""examples/06_chat_sft.py: the take-home chat script learns on the tiny model, refuses a bad
file before any model loads, and builds notebook 06's configurations for the t4 profile."""

from __future__ import annotations

import ast
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from phi2kit.data import sample_path
from phi2kit.profiles import get_profile
from phi2kit.recipes import get_recipe

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "06_chat_sft.py"
NOTEBOOK = ROOT / "notebooks" / "06_chat_oasst1.ipynb"
TINY = ROOT / "phi2kit" / "tiny" / "model"
IGNORED = {"output_dir", "logging_dir"}  # where files go, not what is trained


def load_script():
    spec = importlib.util.spec_from_file_location("chat_sft_example", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(tmp_path, *argv, timeout=300):
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--output-dir", str(tmp_path / "out"), *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )


def test_script_imports_no_phi2kit():
    tree = ast.parse(SCRIPT.read_text())
    modules = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    modules |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not any(m.split(".")[0] == "phi2kit" for m in modules), modules


def test_learns_on_the_tiny_model(tmp_path):
    # the tiny recipe's numbers (06 on the tiny profile), LoRA on the fp32 base
    args = ["--model", str(TINY), "--data", str(sample_path("oasst1")), "--no-4bit",
            "--max-steps", "30", "--n-eval", "16", "--lora-r", "16", "--lora-alpha", "32",
            "--lora-dropout", "0", "--learning-rate", "3e-3", "--batch-size", "8",
            "--grad-accum", "1", "--max-length", "256"]  # fmt: skip
    result = run(tmp_path, *args)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    # measured 2026-12-04: about 0.21 -> 0.03; the check leaves a wide margin
    assert metrics["eval_loss_best"] < 0.5 * metrics["eval_loss_before"], metrics
    assert (tmp_path / "out" / "adapter" / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize(
    ("line", "expect"),
    [
        ('{"message_id": "m1", "role": "prompter"}', "line 2, field 'text'"),
        ('{"message_id": "m1", "text": "hi", "role": "user"}', "line 2, field 'role'"),
        ("not json", "line 2, field '-': not JSON"),
        ('{"message_id": "m1", "text": "hi", "role": "prompter", "parent_id": "x"}',
         "line 2, field 'parent_id'"),
        ('{"message_tree_id": "t", "prompt": {"message_id": "p", "text": "hi", "role": "prompter",'
         ' "replies": [{"message_id": "r", "role": "assistant"}]}}', "line 2, field 'text'"),
    ],
)  # fmt: skip
def test_a_bad_row_is_one_line_exit_2_before_any_model(tmp_path, capsys, line, expect):
    good = json.dumps({"message_id": "m0", "text": "Hello?", "role": "prompter", "parent_id": None})
    data = tmp_path / "bad.jsonl"
    data.write_text(f"{good}\n{line}\n")
    # a model folder that does not exist: reaching the model would fail differently
    argv = ["--model", str(tmp_path / "no-model"), "--data", str(data)]
    with pytest.raises(SystemExit) as exit_:
        load_script().main([*argv, "--output-dir", str(tmp_path / "out")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(f"error: {data}, ") and expect in err, err


def _notebook_recipe(out: Path) -> dict:
    profile = get_profile("t4", check=False)
    recipe = get_recipe("chat", profile)
    ns = {"torch": torch, "profile": profile, "recipe": recipe, "OUTPUT_DIR": str(out),
          "EVAL_EVERY": None}  # fmt: skip
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    tagged = [c for c in cells if "recipe" in c["metadata"].get("tags", [])]
    sources = ["".join(c["source"]) for c in tagged]
    assert len(sources) == 3, "notebook 06 tags its BitsAndBytesConfig, LoraConfig, SFTConfig"
    for source in sources:
        exec(compile(source, str(NOTEBOOK), "exec"), ns)  # noqa: S102  (our own notebook)
    return ns


def _plain(config) -> dict:
    return {k: v for k, v in config.to_dict().items() if k not in IGNORED}


def test_configs_equal_the_notebooks_for_t4(tmp_path):
    ns = _notebook_recipe(tmp_path)
    script = load_script()
    args = script.parse_args(["--data", "x.jsonl", "--output-dir", str(tmp_path)])
    quant, lora, sft = script.build_configs(args, gpu="t4")
    assert _plain(quant) == _plain(ns["quant_config"])
    assert _plain(lora) == _plain(ns["peft_config"])
    cell, ours = _plain(ns["sft_args"]), _plain(sft)
    assert cell == ours, {k: (cell.get(k), ours.get(k)) for k in cell.keys() | ours.keys()
                          if cell.get(k) != ours.get(k)}  # fmt: skip
    assert sft.fp16 and not sft.bf16 and sft.optim == "paged_adamw_8bit"

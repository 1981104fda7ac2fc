"""examples/05_merge_adapter.py on the tiny model: a clean merge, the right route for QLoRA,
clear errors before any model loads, and the lessons' nf4 config."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from example_scripts import TINY, imported_packages, load_script, run_script, script_path

NAME = "05_merge_adapter.py"


def _script():
    return load_script(NAME)


def _run(*args: str):
    return run_script(NAME, *args)


def _adapter(path: Path, base_4bit: bool, note: bool = True) -> Path:
    """A LoRA with random (non-zero) B, made with peft directly, on the fp32 or nf4 tiny base."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from phi2kit.models import bnb_config
    from phi2kit.profiles import get_profile

    torch.manual_seed(0)
    extra = {"quantization_config": bnb_config(get_profile("tiny"))} if base_4bit else {}
    base = AutoModelForCausalLM.from_pretrained(TINY, device_map="cpu", **extra)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "fc1", "fc2"],
                        init_lora_weights=False)  # fmt: skip
    get_peft_model(base, config).save_pretrained(path)
    if note:
        (path / "phi2kit_adapter.json").write_text(json.dumps({"base_4bit": base_4bit}))
    return path


def _max_delta(out: str) -> float:
    return float(re.search(r"max \|delta logit\| ([0-9.e+-]+)", out).group(1))


def test_lora_merge_is_exact_and_saved(tmp_path):
    adapter = _adapter(tmp_path / "lora", base_4bit=False)
    out = _run("--model", TINY, "--adapter", str(adapter), "--output-dir", str(tmp_path / "m"))
    assert out.returncode == 0, out.stderr
    assert _max_delta(out.stdout) < 1e-4, out.stdout
    assert (tmp_path / "m" / "model.safetensors").is_file()
    assert (tmp_path / "m" / "tokenizer.json").is_file()


def test_qlora_is_merged_into_the_dequantized_base(tmp_path):
    """Dequantize-then-merge reproduces the adapter on 4-bit; merging into W does not."""
    adapter = _adapter(tmp_path / "qlora", base_4bit=True)
    right = _run("--model", TINY, "--adapter", str(adapter), "--output-dir", str(tmp_path / "a"))
    assert right.returncode == 0, right.stderr
    assert "dequantized 24 4-bit layers" in right.stdout
    assert _max_delta(right.stdout) < 1e-3, right.stdout
    # the same adapter declared as LoRA is merged into W; against the adapter on W that is
    # exact too, so compare the two merged models' weights instead: they must differ
    from safetensors.torch import load_file

    wrong = _run("--model", TINY, "--adapter", str(adapter), "--output-dir", str(tmp_path / "b"),
                 "--trained-on", "full")  # fmt: skip
    assert wrong.returncode == 0, wrong.stderr
    a = load_file(tmp_path / "a" / "model.safetensors")
    b = load_file(tmp_path / "b" / "model.safetensors")
    key = "model.layers.0.mlp.fc1.weight"
    assert (a[key] - b[key]).abs().max() > 1e-3  # the nf4 rounding the QLoRA adapter learned on


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p / "missing", "no such folder"),
        (lambda p: (p / "a.jsonl").write_text("{}") and p / "a.jsonl", "a file, not a folder"),
        (lambda p: (p / "empty").mkdir() or p / "empty", "not a PEFT adapter folder"),
        (lambda p: _bad_json(p), "not valid JSON"),
        (lambda p: _adapter(p / "nonote", base_4bit=False, note=False), "--trained-on"),
    ],
)
def test_bad_adapter_is_refused_before_loading(tmp_path, make, message):
    folder = make(tmp_path)
    out = _run("--model", "no/such-model", "--adapter", str(folder), "--output-dir", str(tmp_path))
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert message in out.stderr and "Traceback" not in out.stderr
    assert str(folder) in out.stderr


def test_a_classifier_adapter_is_refused_before_loading(tmp_path):
    """03's adapter (task_type SEQ_CLS) carries a `score` head a causal LM would drop."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    adapter = tmp_path / "clf"  # as 03 saves it: LoRA + the score head, on the fp32 base
    base = AutoModelForSequenceClassification.from_pretrained(TINY, num_labels=3)
    lora = LoraConfig(r=8, target_modules=["q_proj", "fc1"], task_type="SEQ_CLS")
    get_peft_model(base, lora).save_pretrained(adapter)
    (adapter / "phi2kit_adapter.json").write_text(json.dumps({"base_4bit": False}))
    out = _run("--model", str(TINY), "--adapter", str(adapter),
               "--output-dir", str(tmp_path / "m"))  # fmt: skip
    assert out.returncode == 2, (out.stdout, out.stderr)
    err = out.stderr.strip()
    assert "\n" not in err and err.startswith("error: ") and "sequence-classification" in err, err
    assert "causal-LM" in err and "AutoModelForSequenceClassification" in err, err
    assert not (tmp_path / "m").exists() and "saved" not in out.stdout


def test_a_non_empty_output_dir_is_refused_before_loading(tmp_path):
    adapter = _adapter(tmp_path / "lora", base_4bit=False)
    taken = tmp_path / "merged"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    out = _run("--model", "no/such-model", "--adapter", str(adapter), "--output-dir", str(taken))
    assert out.returncode == 2, (out.stdout, out.stderr)
    want = f"error: --output-dir {taken} is not empty: pass another, or remove it"
    assert out.stderr.strip() == want, out.stderr
    assert [f.name for f in taken.iterdir()] == ["keep.txt"]


def test_a_bad_adapter_config_names_line_and_column(tmp_path):
    folder = _bad_json(tmp_path)
    out = _run("--model", "no/such-model", "--adapter", str(folder), "--output-dir", "m")
    assert out.returncode == 2
    assert out.stderr.strip().endswith("not valid JSON (Expecting property name enclosed in "
                                       "double quotes at line 1 column 2)"), out.stderr


def _bad_json(p: Path) -> Path:
    (p / "bad").mkdir()
    (p / "bad" / "adapter_config.json").write_text("{not json")
    return p / "bad"


def test_quant_config_is_the_lessons_for_t4():
    """The script's nf4 config equals phi2kit's (lessons 01-05) for the t4 profile."""
    from phi2kit.models import bnb_config
    from phi2kit.profiles import get_profile

    args = _script().make_parser().parse_args(
        ["--model", "m", "--adapter", "a", "--output-dir", "o", "--dtype", "float16"])  # fmt: skip
    want = bnb_config(get_profile("t4", check=False)).to_dict()
    assert _script().quant_config(args).to_dict() == want


def test_the_script_never_imports_phi2kit():
    assert "phi2kit" not in imported_packages(NAME)
    code = re.sub(r'""".*?"""', "", script_path(NAME).read_text(), flags=re.S)
    assert "phi2kit" not in code.replace("phi2kit_adapter.json", "").replace("phi2kit's", "")


def test_trained_on_overrides_the_note_and_says_so(tmp_path, capsys):
    """--trained-on wins over phi2kit_adapter.json, but a disagreement is said on stderr."""
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"peft_type": "LORA", "task_type": "CAUSAL_LM"}')
    (adapter / "phi2kit_adapter.json").write_text('{"base_4bit": false}')

    def check(trained_on: str) -> bool:
        args = _script().make_parser().parse_args(
            ["--model", "m", "--adapter", str(adapter), "--output-dir", "o", "--trained-on",
             trained_on])
        return _script().check_adapter(args)

    assert check("4bit") is True
    said = capsys.readouterr().err
    assert said.strip() == (f"note: {adapter / 'phi2kit_adapter.json'} says base_4bit False; "
                            "merging as --trained-on 4bit asks"), said
    assert check("full") is False and check("auto") is False
    assert capsys.readouterr().err == ""  # agreeing, or no override: nothing said

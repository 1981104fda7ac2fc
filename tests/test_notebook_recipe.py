"""Notebook 02 writes the QLoRA recipe in its cells; the helpers later notebooks use must
build the same thing.

The cells tagged ``recipe`` in notebook 02 build ``quant_config`` (``BitsAndBytesConfig``),
``load_kwargs`` (the ``from_pretrained`` arguments), ``peft_config`` (``LoraConfig``) and
``sft_args`` (``SFTConfig``) from ``profile`` and ``recipe`` alone, without a model or a
GPU. Here they run for every profile and are compared, field by field, with
``phi2kit.models.load_kwargs``/``bnb_config``, ``phi2kit.lora.lora_config`` and
``phi2kit.training.sft_config``.
"""

from __future__ import annotations

import ast
import inspect
import json
from pathlib import Path

import pytest
import torch

from phi2kit.lora import lora_config
from phi2kit.models import load_kwargs
from phi2kit.profiles import PROFILES, get_profile
from phi2kit.recipes import get_recipe
from phi2kit.training import sft_config

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "02_sentiment_finetuning.ipynb"
IGNORED = {"output_dir", "logging_dir"}  # where files go, not what is trained


def recipe_cells() -> list[str]:
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    return [
        "".join(c["source"])
        for c in cells
        if c["cell_type"] == "code" and "recipe" in c["metadata"].get("tags", [])
    ]


def run_cells(sources: list[str], profile_name: str, out: Path, **knobs) -> dict:
    profile = get_profile(profile_name, check=False)
    recipe = get_recipe("sentiment", profile, **knobs)
    ns = {"torch": torch, "profile": profile, "recipe": recipe, "OUTPUT_DIR": str(out)}
    for source in sources:
        exec(compile(source, str(NOTEBOOK), "exec"), ns)  # noqa: S102  (our own notebook)
    return ns


def as_dict(config) -> dict:
    if config is None:
        return {}
    data = config.to_dict()
    return {k: v for k, v in data.items() if k not in IGNORED}


def differences(ns: dict, out: Path) -> dict[str, object]:
    """What the notebook's cells build that the helpers do not (empty: identical)."""
    profile, recipe = ns["profile"], ns["recipe"]
    found: dict[str, object] = {}
    helper_load = load_kwargs(profile, recipe.quantize_4bit)
    cell_load = dict(ns["load_kwargs"])
    q_cell, q_helper = cell_load.pop("quantization_config"), helper_load.pop("quantization_config")
    if as_dict(q_cell) != as_dict(q_helper) or (q_cell is None) != (q_helper is None):
        found["quantization_config"] = (as_dict(q_cell), as_dict(q_helper))
    if as_dict(ns["quant_config"]) != as_dict(q_helper):
        found["quant_config"] = (as_dict(ns["quant_config"]), as_dict(q_helper))
    if cell_load != helper_load:
        found["load_kwargs"] = (cell_load, helper_load)
    if as_dict(ns["peft_config"]) != as_dict(lora_config(recipe)):
        found["peft_config"] = (as_dict(ns["peft_config"]), as_dict(lora_config(recipe)))
    cell_args = as_dict(ns["sft_args"])
    helper_args = as_dict(
        sft_config(profile, recipe, out / "trainer", eval_steps=max(1, recipe.max_steps // 5))
    )
    diff = {
        k for k in cell_args.keys() | helper_args.keys() if cell_args.get(k) != helper_args.get(k)
    }
    if diff:
        found["sft_args"] = {k: (cell_args.get(k), helper_args.get(k)) for k in sorted(diff)}
    return found


def test_notebook_tags_its_recipe_cells():
    sources = recipe_cells()
    text = "\n".join(sources)
    for call in ("BitsAndBytesConfig(", "LoraConfig(", "SFTConfig("):
        assert call in text, call
    nb = NOTEBOOK.read_text()
    for call in (
        "AutoModelForCausalLM.from_pretrained(",
        "prepare_model_for_kbit_training(",
        "get_peft_model(",
        "SFTTrainer(",
    ):
        assert call in nb, f"notebook 02 no longer writes {call}"


# ampere's SFTConfig(bf16=True) refuses to be built without a bf16 GPU (transformers checks)
BUILDABLE_ON_CPU = sorted(set(PROFILES) - {"ampere"})


@pytest.mark.parametrize("profile_name", BUILDABLE_ON_CPU)
@pytest.mark.parametrize("quantize", [None, False, True])
def test_cells_build_what_the_helpers_build(profile_name, quantize, tmp_path):
    knobs = {} if quantize is None else {"quantize_4bit": quantize}
    ns = run_cells(recipe_cells(), profile_name, tmp_path, **knobs)
    assert (ns["quant_config"] is not None) == ns["recipe"].quantize_4bit
    assert differences(ns, tmp_path) == {}


@pytest.mark.parametrize(
    ("old", "new", "what"),
    [
        ("lora_dropout=recipe.lora_dropout", "lora_dropout=0.5", "peft_config"),
        ('bnb_4bit_quant_type="nf4"', 'bnb_4bit_quant_type="fp4"', "quant_config"),
        ("fp16=profile.fp16", "fp16=False", "sft_args"),
        ('"use_reentrant": False', '"use_reentrant": True', "sft_args"),
        ('metric_for_best_model="eval_loss"', 'metric_for_best_model="loss"', "sft_args"),
    ],
)
def test_a_changed_cell_is_caught(old, new, what, tmp_path):
    sources = recipe_cells()
    assert any(old in s for s in sources), old
    changed = [s.replace(old, new) for s in sources]
    ns = run_cells(changed, "t4", tmp_path)
    assert what in differences(ns, tmp_path)


def notebook_functions() -> dict[str, ast.FunctionDef]:
    """The functions notebook 02 defines in its code cells, by name."""
    found = {}
    for c in json.loads(NOTEBOOK.read_text())["cells"]:
        if c["cell_type"] == "code":
            tree = ast.parse("".join(c["source"]))
            found.update({n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)})
    return found


@pytest.mark.parametrize(
    ("name", "module"),
    [
        ("plot_losses", "phi2kit.training"),
        ("label_logprobs", "phi2kit.evaluate.scoring"),
        ("parse_label", "phi2kit_exercises.classification"),
    ],
)
def test_cell_functions_equal_the_package(name, module):
    """What 02 writes in a cell and later lessons import is the same code (ast-equal)."""
    import importlib

    cell = notebook_functions()[name]
    kept = ast.parse(inspect.getsource(getattr(importlib.import_module(module), name))).body[0]
    assert ast.dump(cell) == ast.dump(kept)


def test_notebook_imports_no_module_of_its_own():
    own = ("phi2kit.lora", "phi2kit.training", "phi2kit.evaluate")
    sources = [
        "".join(c["source"])
        for c in json.loads(NOTEBOOK.read_text())["cells"]
        if c["cell_type"] == "code"
    ]
    assert not [line for s in sources for line in s.splitlines() if line.startswith("from ")
                and line.split()[1].startswith(own)]

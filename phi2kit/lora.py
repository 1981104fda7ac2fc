"""LoRA on Phi-2's linear layers (notebook 02's recipe), a loud :func:`check_targets`, a note
beside each saved adapter saying whether its base was 4-bit, and :func:`trained_by` (the task
``phi2kit train`` noted for it)."""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from phi2kit.profiles import Profile
from phi2kit.recipes import PHI_LORA_TARGETS, Recipe
from phi2kit.training import CHECKPOINTING_KWARGS


def check_targets(model: nn.Module, targets: tuple[str, ...] | list[str]) -> dict[str, int]:
    """Count the Linear-like modules each LoRA target matches (PEFT's rule: the dotted name ends
    with ``.<target>``); raise if one matches none."""
    names = [n for n, m in model.named_modules()
             if getattr(m, "weight", None) is not None and m.weight.dim() == 2]  # fmt: skip
    counts = {t: sum(1 for n in names if n == t or n.endswith("." + t)) for t in targets}
    missing = [t for t, c in counts.items() if c == 0]
    if missing:
        leaves = sorted({n.rsplit(".", 1)[-1] for n in names})
        raise ValueError(
            f"LoRA target(s) {missing} match no module in {type(model).__name__}. "
            f"Its layers with a weight matrix (what LoRA can target) are named: {leaves}. "
            f"The course's targets for Phi-2 are {', '.join(PHI_LORA_TARGETS)}."
        )
    return counts


def lora_config(recipe: Recipe):
    """The PEFT ``LoraConfig`` for a recipe (``SEQ_CLS`` also saves the ``score`` head)."""
    from peft import LoraConfig

    return LoraConfig(r=recipe.lora_r, lora_alpha=recipe.lora_alpha,
                      lora_dropout=recipe.lora_dropout, target_modules=list(recipe.target_modules),
                      bias="none", task_type=recipe.task_type)  # fmt: skip


def is_quantized(model: nn.Module) -> bool:
    """Whether the model's base weights are quantized (loaded in 4-bit: QLoRA)."""
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_quantized", False))


def add_lora(model: nn.Module, recipe: Recipe, profile: Profile):
    """Wrap ``model`` in a LoRA (or QLoRA, if the base is 4-bit) ``PeftModel``."""
    from peft import get_peft_model, prepare_model_for_kbit_training

    check_targets(model, recipe.target_modules)
    if is_quantized(model):
        # Freezes the base, upcasts norms/embeddings to fp32, enables input grads.
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=profile.gradient_checkpointing,
            gradient_checkpointing_kwargs=CHECKPOINTING_KWARGS)  # fmt: skip
    # peft keeps the new adapter weights in fp32 (autocast_adapter_dtype=True, its default)
    peft_model = get_peft_model(model, lora_config(recipe))
    if peft_model.get_nb_trainable_parameters()[0] == 0:
        raise RuntimeError("the LoRA model has no trainable parameters")
    return peft_model


#: Written next to an adapter by :func:`save_adapter`: what the adapter's config does not say.
ADAPTER_NOTE = "phi2kit_adapter.json"


def save_adapter(model: nn.Module, path: str | Path, profile: str | None = None) -> Path:
    """``model.save_pretrained(path)`` plus :data:`ADAPTER_NOTE`: whether the base was 4-bit
    (merging needs it; the adapter's config does not say) and the profile it was trained under."""
    path = Path(path)
    model.save_pretrained(str(path))
    note = {"base_4bit": is_quantized(model)} | ({"profile": profile} if profile else {})
    (path / ADAPTER_NOTE).write_text(json.dumps(note, indent=2) + "\n")
    return path


def _note(adapter: str | Path) -> dict:
    """:data:`ADAPTER_NOTE` beside ``adapter``; ``{}`` without one."""
    note = Path(adapter) / ADAPTER_NOTE
    return json.loads(note.read_text()) if note.is_file() else {}


def adapter_base_4bit(adapter: str | Path) -> bool | None:
    """Whether the adapter was trained on a 4-bit base, from its note; None without one."""
    return _note(adapter).get("base_4bit")


def adapter_profile(adapter: str | Path) -> str | None:
    """The profile the adapter was trained under, from its note; None without one."""
    return _note(adapter).get("profile")


def trained_by(adapter: str | Path) -> tuple[Path, str | None]:
    """``run.json`` beside ``adapter`` (from ``phi2kit train``, one level up) and the task it
    names; the task is None without it."""
    run = Path(adapter).parent / "run.json"
    return run, json.loads(run.read_text()).get("task") if run.is_file() else None

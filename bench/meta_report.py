"""Prove the T4 recipes on a full-size Phi-2 without a GPU, weights or a download.

:func:`phi2_on_meta` builds Phi-2 on the meta device; here each notebook's
default recipe is applied to it with the same ``LoraConfig`` as training, and the adapter's
modules and parameters are counted::

    python bench/meta_report.py   # the README's table of the default T4 recipes

(moved out of the library: no lesson imports it; ``bench/phi2_real_size.py`` and the tests
use it, with ``bench/`` on ``sys.path``).
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from phi2kit.profiles import Profile, get_profile
from phi2kit.recipes import TASKS, get_recipe

#: Notebooks 08 (DPO) and 09 (GRPO): ``get_recipe`` serves them, but they are not SFT ``TASKS``.
EXTRA_TASKS = ("dpo", "grpo")

BYTES_FP32 = 4  # LoRA weights are trained and saved in fp32 (phi2kit.training.upcast_trainable)
MB = 1e6  # decimal megabytes, like the planner's decimal GB



def phi2_on_meta(
    num_labels: int | None = None, profile: Profile | str = "t4", config=None
) -> nn.Module:
    """Phi-2 (``PhiForCausalLM``) on the meta device: real shapes, no storage, no download.

    Args:
        num_labels: Build ``PhiForSequenceClassification`` with a ``num_labels``-way
            ``score`` head (no bias) instead of the causal LM.
        profile: ``t4``/``ampere`` give Phi-2; ``tiny`` gives the shipped tiny Phi's shapes.
        config: Another ``PhiConfig`` to build (e.g. Phi-2 with fewer layers); by default
            the profile's.
    """
    from transformers import PhiForCausalLM, PhiForSequenceClassification

    from phi2kit.footprint import phi2_config
    from phi2kit.tiny import tiny_config

    profile = get_profile(profile, check=False) if isinstance(profile, str) else profile
    if config is not None:
        cfg = copy.deepcopy(config)  # the caller's config is left as it was
    else:
        cfg = tiny_config() if profile.is_tiny else phi2_config()
    if num_labels is not None:
        cfg.num_labels = num_labels
    cls = PhiForCausalLM if num_labels is None else PhiForSequenceClassification
    with torch.device("meta"):
        model = cls(cfg)
    return model

@dataclass(frozen=True)
class RecipeReport:
    """What a recipe's LoRA adapter looks like on the full-size model.

    Args:
        task: The notebook's task.
        profile: The profile whose default recipe was applied.
        task_type: ``CAUSAL_LM`` or ``SEQ_CLS``.
        lora_r: LoRA rank.
        lora_alpha: LoRA scaling numerator.
        matched: Modules PEFT adapted, per target name (``q_proj`` -> 32 on Phi-2).
        trainable: Trainable parameters: the LoRA matrices (+ the score head for SEQ_CLS).
        total: All parameters of the wrapped model, as PEFT counts them. For SEQ_CLS this
            includes PEFT's trainable copy of ``score`` next to the frozen original.
        base: Parameters of the model before wrapping.
        modules_to_save: Extra modules PEFT trains and saves with the adapter.
        score_head: ``(in, out)`` features of the trained ``score`` head, or ``None``.
        allocated_bytes: Bytes of parameters that are not on the meta device (0: nothing
            was allocated).
    """

    task: str
    profile: str
    task_type: str
    lora_r: int
    lora_alpha: int
    matched: dict[str, int]
    trainable: int
    total: int
    base: int
    modules_to_save: tuple[str, ...]
    score_head: tuple[int, int] | None
    allocated_bytes: int = 0

    @property
    def adapter_mb(self) -> float:
        """Size of the saved adapter: trainable parameters x 4 bytes (fp32), in MB."""
        return self.trainable * BYTES_FP32 / MB

    @property
    def trainable_percent(self) -> float:
        return 100 * self.trainable / self.base


def recipe_report(
    task: str,
    profile: Profile | str = "t4",
    num_labels: int = 3,
    *,
    config=None,
    **overrides: object,
) -> RecipeReport:
    """Apply ``task``'s default recipe on ``profile`` to the meta model and count the result.

    ``overrides`` change the recipe (``lora_r=8``, ``target_modules=("q_proj",)``);
    ``config`` replaces the profile's model config (see :func:`phi2_on_meta`).

    Uses the same ``LoraConfig`` as training (:func:`phi2kit.lora.lora_config`), and
    :func:`phi2kit.lora.check_targets` first, so a target that matches nothing fails
    here exactly as it would on Colab. SEQ_CLS recipes get a ``num_labels``-way classifier.
    """
    from peft import get_peft_model

    from phi2kit.lora import check_targets, lora_config

    profile = get_profile(profile, check=False) if isinstance(profile, str) else profile
    recipe = get_recipe(task, profile, **overrides)
    seq_cls = recipe.task_type == "SEQ_CLS"
    model = phi2_on_meta(num_labels if seq_cls else None, profile, config)
    base = sum(p.numel() for p in model.parameters())
    check_targets(model, recipe.target_modules)
    with warnings.catch_warnings():
        # peft 0.21 reads transformers' deprecated `is_gradient_checkpointing`; not ours.
        warnings.filterwarnings(
            "ignore", message=".*is_gradient_checkpointing", category=FutureWarning
        )
        # Under the meta device the LoRA matrices are created without storage too;
        # otherwise PEFT builds them on the CPU (377 MB for r=64) and then moves them.
        with torch.device("meta"):
            peft_model = get_peft_model(model, lora_config(recipe))
    matched = {t: 0 for t in recipe.target_modules}
    for name, module in peft_model.named_modules():
        if hasattr(module, "lora_A"):  # a LoRA layer wraps the original Linear
            leaf = name.rsplit(".", 1)[-1]
            if leaf in matched:
                matched[leaf] += 1
    trainable, total = peft_model.get_nb_trainable_parameters()
    allocated = sum(p.numel() * p.element_size() for p in peft_model.parameters() if not p.is_meta)
    to_save = tuple(sorted(peft_model.peft_config["default"].modules_to_save or ()))
    score = None
    if seq_cls:
        head = peft_model.base_model.model.score
        if "score" not in to_save or not any(p.requires_grad for p in head.parameters()):
            raise RuntimeError(f"{task}: PEFT does not train and save the score head ({to_save})")
        weight = head.modules_to_save["default"].weight
        score = (weight.shape[1], weight.shape[0])
    return RecipeReport(
        task=task,
        profile=profile.name,
        task_type=recipe.task_type,
        lora_r=recipe.lora_r,
        lora_alpha=recipe.lora_alpha,
        matched=matched,
        trainable=trainable,
        total=total,
        base=base,
        modules_to_save=to_save,
        score_head=score,
        allocated_bytes=allocated,
    )


def all_reports(profile: Profile | str = "t4") -> list[RecipeReport]:
    """One :class:`RecipeReport` per notebook task, DPO (08) and GRPO (09) included."""
    return [recipe_report(task, profile) for task in (*TASKS, *EXTRA_TASKS)]


def report_table(reports: list[RecipeReport]) -> str:
    """A markdown table of reports: targets, rank, trainable parameters and adapter size."""
    rows = [
        "| task | task type | r / alpha | LoRA targets (modules matched) | trainable params "
        "| % of base | adapter (fp32) | score head |",
        "|---|---|---|---|---:|---:|---:|---|",
    ]
    for r in reports:
        targets = ", ".join(f"{t} ({n})" for t, n in r.matched.items())
        head = f"{r.score_head[0]}→{r.score_head[1]}, trained + saved" if r.score_head else "–"
        rows.append(
            f"| {r.task} | {r.task_type} | {r.lora_r} / {r.lora_alpha} | {targets} "
            f"| {r.trainable:,} | {r.trainable_percent:.2f} % | {r.adapter_mb:.1f} MB | {head} |"
        )
    return "\n".join(rows)


def t4_recipes_markdown() -> str:
    """The README's table of the default T4 recipes, counted on the meta-device Phi-2."""
    reports = all_reports("t4")
    base = phi2_on_meta()
    n = sum(p.numel() for p in base.parameters())
    return (
        f"Counted on Phi-2 built from its published config on the meta device "
        f"({n:,} parameters; `bench/meta_report.py`). The adapter size is what "
        "`save_pretrained` writes: trainable parameters × 4 bytes (fp32).\n\n"
        + report_table(reports)
    )


if __name__ == "__main__":
    print(t4_recipes_markdown())

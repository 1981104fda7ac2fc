"""The planner for GRPO (notebook 09): memory and time of generation, reference and training."""

from __future__ import annotations

import math
from typing import Any

from phi2kit.footprint import GB, count_parameters, phi2_config
from phi2kit.plan import (
    ALLOCATOR_SLACK,
    CUDA_CONTEXT_GB,
    Estimate,
    _resolve,
    cache_bytes,
    estimate,
    generation_gb,
)
from phi2kit.plan.course import COURSE, T4_CALIBRATION_LENGTH, T4_CALIBRATIONS, _rounded_minutes

#: Assumption, not measured here: seconds per decoding step of ``model.generate`` for a batch of
#: nf4 Phi-2 sequences on a T4 (memory-bound: every step reads and dequantizes all weights).
T4_DECODE_STEP_S = 0.08
#: Assumed mean tokens of a GRPO training row on a T4: WebGLM prompt (~450) + answer (~100).
GRPO_TYPICAL_TOKENS = 550
#: Notebook 09's learning check on a GPU: validation questions, one sampled group each, before
#: and after training (its ``N_CHECK``; 60 on the CPU profiles).
CHECK_PROMPTS = 40


def estimate_grpo(model: Any, recipe: Any, *, device_gb: float = 15.0, **kwargs: Any) -> Estimate:
    """Predicted peak memory of one GRPO step (trl, no vLLM), by part, in GB. Generation, the
    reference pass (``beta > 0``) and the training step never hold their buffers at once: the peak
    adds the largest to the weights, adapters and optimizer."""
    train = estimate(model, recipe, device_gb=device_gb, overhead_gb=0.0, _levers=False, **kwargs)
    cfg, profile = _resolve(model)
    cfg, dtype = kwargs.get("config") or cfg, train.settings["dtype"]
    on_gpu = bool(profile and profile.requires_cuda)
    gen_rows = recipe.generation_batch  # trl: batch x steps_per_generation (default grad_accum)
    new = recipe.max_completion_length
    generation = GB * generation_gb(cfg, gen_rows, recipe.max_length - new, new,
                                    cache_bytes(recipe, dtype), train.settings["attn"])
    reference = 0.0
    if recipe.beta > 0:
        reference = 2 * 4 * recipe.batch_size * recipe.max_completion_length * cfg.vocab_size
    step = (train.parts["activations"] + train.parts["logits + grads"]) * GB
    skip = ("activations", "logits + grads", "overhead")
    parts = {k: v for k, v in train.parts.items() if k not in skip}
    parts["ref adapter (beta>0)"] = parts["LoRA weights (fp32)"] if recipe.beta > 0 else 0.0
    parts["training step"] = step / GB  # activations + logits, as estimate() counts them
    parts["generation (extra)"] = max(0.0, generation - step) / GB  # beyond the step
    parts["ref pass (extra)"] = max(0.0, reference - max(step, generation)) / GB  # beyond both
    parts["overhead"] = CUDA_CONTEXT_GB + ALLOCATOR_SLACK * sum(parts.values()) if on_gpu else 0.0
    settings = dict(train.settings, num_generations=recipe.num_generations,
                    max_completion_length=recipe.max_completion_length, beta=recipe.beta,
                    generation_rows=gen_rows)  # fmt: skip
    est = Estimate(parts, device_gb, settings, possible=train.possible)
    verdict = "fits" if est.fits else "does not fit"
    est.verdict = f"{verdict}: {est.total_gb:.2f} GB of {device_gb:.1f} GB"
    return est


def grpo_minutes(recipe: Any, calibration: int = T4_CALIBRATION_LENGTH,
                 check_prompts: int = CHECK_PROMPTS) -> dict[str, float]:  # fmt: skip
    """Predicted T4 minutes of a GRPO run by phase: training at 6N FLOPs a token, the reference pass
    (``beta > 0``) at 2N, and :data:`T4_DECODE_STEP_S` per decoding step of each ``generate`` call,
    training's and the learning check's (``check_prompts`` groups, twice)."""
    n = count_parameters(phi2_config())
    tokens = recipe.max_steps * recipe.effective_batch * GRPO_TYPICAL_TOKENS
    flops = T4_CALIBRATIONS[calibration]
    call = recipe.max_completion_length * T4_DECODE_STEP_S / 60  # minutes of one generate call
    check_calls = 2 * math.ceil(check_prompts * recipe.num_generations / recipe.generation_batch)
    return {
        "generation": recipe.max_steps * recipe.effective_batch / recipe.generation_batch * call,
        "learning check": check_calls * call,
        "reference pass": (2 * n * tokens / flops / 60) if recipe.beta > 0 else 0.0,
        "training": 6 * n * tokens / flops / 60,
    }


def grpo_course_row() -> tuple[str, str, str, str]:
    """Notebook 09's row of the README's course table, as :func:`course_rows` makes the others."""
    from phi2kit.recipes import get_recipe

    recipe = get_recipe("grpo", "t4")
    minutes = _rounded_minutes(sum(grpo_minutes(recipe).values()))
    name, teaches, _ = next(row for row in COURSE if row[2] == "grpo")
    return (name, teaches, minutes, f"{estimate_grpo('t4', recipe).total_gb:.1f}")

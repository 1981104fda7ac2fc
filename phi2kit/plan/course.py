"""Time on a T4, and the course table (the README's and each lesson's first cell)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from phi2kit.footprint import GB, count_parameters, phi2_config, weight_bytes
from phi2kit.plan import ALLOCATOR_SLACK, CUDA_CONTEXT_GB, cache_bytes, estimate, generation_gb
from phi2kit.recipes import get_recipe

#: Assumed mean tokens per training example with Phi-2's tokenizer (prompt + completion),
#: after dynamic padding. Headlines are short; WebGLM references are long.
TYPICAL_TOKENS = {"sentiment": 70, "classifier": 55, "webglm": 600, "chat": 350}
#: The one T4 timing there is: seed 003 reports 10 hours per epoch of QLoRA on a T4 for
#: 5,000 WebGLM examples, every one padded to ``max_length``. Its code sets 2,048, but its
#: text says any ``max_length`` above 1,024 ran out of memory on the T4, so the 10 h run was
#: most likely at 1,024. Each reading gives an effective throughput (6N FLOPs per token:
#: forward, recompute under checkpointing, input gradients; attention's own FLOPs, about 6 %
#: at 1,024, are folded in):
#:
#: - 1,024 tokens: 2.4 TFLOP/s, 3.6 % of the T4's 65 TFLOP/s fp16 peak (the course's clock);
#: - 2,048 tokens: 4.7 TFLOP/s, 7.3 %: every training time half as long.
SEED003_EPOCH = {"examples": 5000, "hours": 10.0}
T4_CALIBRATIONS = {
    length: 6 * 2_779_683_840 * SEED003_EPOCH["examples"] * length
    / (SEED003_EPOCH["hours"] * 3600)
    for length in (1024, 2048)
}  # fmt: skip
#: The reading the course table, the notebooks and ``train_minutes`` use by default.
T4_CALIBRATION_LENGTH = 1024
T4_EFFECTIVE_FLOPS = T4_CALIBRATIONS[T4_CALIBRATION_LENGTH]

#: The evaluation ``generate`` of 04 and 06 on a GPU: prompts per call (04's ``GEN_BATCH``, 06's
#: ``generate`` default) and new tokens (their ``MAX_NEW_TOKENS`` on a GPU); prompts up to the
#: recipe's ``max_length``. Its KV cache can take more than the training step.
EVAL_GENERATION = {"webglm": (8, 256), "chat": (8, 256)}

COURSE = [  # notebook, what it teaches, task (None: no training)
    ("01_baseline_inference", "fp16 vs nf4 loading, stopping, batched generation", None),
    ("02_sentiment_finetuning", "zero-shot baseline, LoRA/QLoRA SFT, per-class evaluation",
     "sentiment"),
    ("03_classification_head", "backbone + new `score` head, LoRA/QLoRA with the Trainer",
     "classifier"),
    ("04_webglm_qlora", "QLoRA on cited QA, completion-only loss, efficient batching",
     "webglm"),
    ("05_adapter_merging", "merge into a full-precision base, measure the error", None),
    ("06_chat_oasst1", "OASST1 threads, chat SFT that learns to stop, chat demo", "chat"),
    ("07_export_gguf", "GGUF export (F16, Q8_0, Q4_K_M) checked through llama.cpp, GGUF adapter, "
     "Ollama", None),
    ("08_preference_dpo", "OASST1 ranks as preference pairs, DPO on 06's adapter, which model "
     "is the reference, ORPO beside it on the tiny profile", "dpo"),
    ("09_grpo_rewards", "GRPO on 04's checks as rewards, reward hacking and its guards", "grpo"),
]  # fmt: skip


def eval_generation_gb(est: Any, recipe: Any, cfg: Any, calls: int | None = None) -> float:
    """GPU GB of 04's or 06's evaluation ``generate`` (:data:`EVAL_GENERATION`; ``calls``
    prompts at a time) on the model trained as ``est`` plans it: its weights and adapter,
    the cache, and on a GPU the context and slack; 0 for the other tasks."""
    if recipe.task not in EVAL_GENERATION:
        return 0.0
    default, new = EVAL_GENERATION[recipe.task]
    held = sum(v for k, v in est.parts.items() if k.startswith(("base", "LoRA w")))
    held += generation_gb(cfg, calls or default, recipe.max_length, new,
                          cache_bytes(recipe, est.settings["dtype"]), est.settings["attn"])
    return held + (CUDA_CONTEXT_GB + ALLOCATOR_SLACK * held if est.parts["overhead"] else 0.0)


def train_minutes(
    task: str, profile: str = "t4", calibration: int = T4_CALIBRATION_LENGTH
) -> float:
    """T4 training minutes of a task's recipe (eval excluded) at a seed-003 ``calibration``."""
    if calibration not in T4_CALIBRATIONS:
        raise ValueError(f"calibration must be one of {sorted(T4_CALIBRATIONS)}")
    recipe = get_recipe(task, profile)
    per_token = 6 * count_parameters(phi2_config())  # forward, recompute, input grads
    tokens = recipe.max_steps * recipe.effective_batch * TYPICAL_TOKENS[task]
    return tokens * per_token / T4_CALIBRATIONS[calibration] / 60


def _rounded_minutes(minutes: float) -> str:
    """``~N`` with N a multiple of 5, rounded up (never below 5)."""
    return f"~{5 * round(minutes / 5 + 0.5):.0f}"


def course_minutes(task: str, calibration: int = T4_CALIBRATION_LENGTH) -> str:
    """A training notebook's T4 time as the course table shows it (``~20``)."""
    runs = 2 if task == "classifier" else 1  # 03 trains LoRA on the fp16 base, then QLoRA
    return _rounded_minutes(runs * train_minutes(task, calibration=calibration))


def course_rows() -> list[tuple[str, str, str, str]]:
    """(notebook, teaches, T4 minutes, T4 peak GB) for the README's course table; 01 and 05
    hold fp16 Phi-2 and its nf4 copy side by side (05 merges into the fp16 base in place).
    The minutes of 01, 05 and 07 (no training) are a rough allowance, not a prediction."""
    fp16 = weight_bytes(phi2_config(), "float16") / GB
    nf4 = weight_bytes(phi2_config(), "float16", quantize_4bit=True) / GB
    rows = []
    for name, teaches, task in COURSE:
        if task is None and name.startswith("07"):  # an fp32 base next to its nf4 copy
            gb, minutes = weight_bytes(phi2_config(), "float32") / GB + nf4 + CUDA_CONTEXT_GB, "~20"
        elif task == "dpo":
            from phi2kit.plan.dpo import estimate_dpo

            dpo = get_recipe("dpo", "t4")
            gb, minutes = estimate_dpo("t4", dpo).total_gb, _rounded_minutes(dpo.t4_minutes())
        elif task == "grpo":  # generation, reference pass and training step (plan.grpo)
            from phi2kit.plan.grpo import grpo_course_row

            _, _, minutes, gb_text = grpo_course_row()
            gb = float(gb_text)
        elif task is None:
            gb = fp16 + nf4 + CUDA_CONTEXT_GB
            minutes = "~5" if name.startswith("01") else "~10"
        else:
            recipe = get_recipe(task, "t4")
            est = estimate("t4", recipe)
            gb = max(est.total_gb, eval_generation_gb(est, recipe, phi2_config()))
            if task == "classifier":  # 03 trains LoRA on the fp16 base, then QLoRA
                gb = max(gb, estimate("t4", replace(recipe, quantize_4bit=False)).total_gb)
            minutes = course_minutes(task)
        rows.append((name, teaches, minutes, f"{gb:.1f}"))
    return rows

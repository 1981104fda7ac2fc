"""Memory fit planner: will a LoRA/QLoRA recipe fit on the GPU, and if not, what to change.

In Python (``phi2kit plan --profile t4 --task webglm --max-length 2048`` prints the same
table from the shell, :mod:`phi2kit.commands.plan`)::

    from phi2kit.plan import estimate, format_table
    print(format_table(estimate("t4", get_recipe("webglm", "t4"))))

Units are decimal GB (1e9 bytes). Plausibility check: the Phi-2 model card gives 2.7B
parameters stored in fp16; 2,779,683,840 x 2 B = 5.56 GB of inference weights.

The counting is in :mod:`phi2kit.footprint`; this module adds the GPU overheads, the
optimizer, the verdict and the levers to pull.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from typing import Any

from phi2kit.footprint import (
    DTYPE_BYTES,
    GB,
    activation_bytes_per_token,
    count_parameters,
    dequant_bytes,
    lora_parameters,
    phi2_config,
    weight_bytes,
)

CUDA_CONTEXT_GB = 0.5  # assumption: CUDA context + cuBLAS workspace on a T4
ALLOCATOR_SLACK = 0.10  # assumption: fragmentation in PyTorch's caching allocator


@dataclass
class Estimate:
    """Predicted peak GPU memory of one training step, by part, in GB."""

    parts: dict[str, float]
    device_gb: float
    settings: dict[str, Any] = field(default_factory=dict)
    levers: list[str] = field(default_factory=list)
    verdict: str = ""

    @property
    def total_gb(self) -> float:
        return sum(self.parts.values())

    @property
    def fits(self) -> bool:
        return self.total_gb <= self.device_gb


def _resolve(model: Any) -> tuple[Any, Any]:
    """(config, profile or None) from a PhiConfig, a Profile or a profile name."""
    from phi2kit.profiles import Profile, get_profile

    profile = get_profile(model, check=False) if isinstance(model, str) else model
    if not isinstance(profile, Profile):
        return model, None
    if profile.is_tiny:
        try:
            from phi2kit.tiny import tiny_config
        except ImportError as err:
            raise ValueError("phi2kit.tiny.tiny_config() is missing; pass a config") from err
        return tiny_config(), profile
    return phi2_config(), profile


def estimate(model: Any, recipe: Any, *, device_gb: float = 15.0, attn: str | None = None,
             gradient_checkpointing: bool | None = None, overhead_gb: float | None = None,
             dtype: str | None = None, optim: str | None = None, double_quant: bool = True,
             num_labels: int = 3, config: Any = None,
             _levers: bool = True) -> Estimate:  # fmt: skip
    """Predict the peak memory of training ``recipe`` on ``model``.

    Args:
        model: a ``PhiConfig``, a :class:`~phi2kit.profiles.Profile` or a profile name. A
            profile supplies the defaults of ``dtype``, ``optim``, ``attn`` and
            ``gradient_checkpointing``; a bare config defaults to fp32 AdamW on the CPU.
        recipe: a :class:`~phi2kit.recipes.Recipe` (batch, length, LoRA, 4-bit).
        device_gb: memory available, in GB (1e9 bytes).
        attn: ``eager``, ``sdpa`` (also flash) or ``phi2kit_fp32`` (eager in fp32).
        gradient_checkpointing: keep only each layer's input and recompute one layer at a
            time in backward. That layer (with its gradient buffers) lives only after the
            logits' buffers are freed, so it adds to the peak only by what it exceeds them.
        overhead_gb: fixed framework overhead; ``None`` means CUDA context + 10 % allocator
            slack on a GPU, and zero on the CPU.
        optim: ``adamw_torch`` (two fp32 states, 8 B/param) or ``paged_adamw_8bit`` (two
            uint8 states, 2 B/param, counted as resident though pages can be evicted).
        config: count this ``PhiConfig`` (e.g. Phi-2 with fewer layers) with the settings
            of the profile ``model``.
    """
    cfg, profile = _resolve(model)
    cfg = config if config is not None else cfg
    dtype = dtype or (profile.dtype if profile else "float32")
    optim = optim or (profile.optim if profile else "adamw_torch")
    attn = attn or (profile.attn_implementation if profile else "eager")
    on_gpu = bool(profile and profile.requires_cuda)
    ckpt = gradient_checkpointing
    if ckpt is None:
        ckpt = bool(profile and profile.gradient_checkpointing)
    causal = recipe.task_type == "CAUSAL_LM"
    tokens, seq = recipe.batch_size * recipe.max_length, recipe.max_length
    q4 = recipe.quantize_4bit
    n_lora = lora_parameters(cfg, recipe, num_labels)
    stream = 4 if (q4 or dtype == "float32") else DTYPE_BYTES[dtype]
    layer = activation_bytes_per_token(cfg, recipe, seq, dtype=dtype, attn=attn, on_gpu=on_gpu)
    outputs = cfg.vocab_size if causal else num_labels
    logits = tokens * outputs * 12  # fp32 log-probs saved + their grad + grad of logits
    final = tokens * (stream * cfg.hidden_size + 8 + (0 if causal else 4 * cfg.hidden_size))
    # A 4-bit matmul holds its weight dequantized while it runs: never next to the logits'
    # buffers (lm_head is not 4-bit), so it adds to the peak only by what it exceeds them.
    dequant = dequant_bytes(cfg, dtype, double_quant) if q4 else 0
    if ckpt:
        acts = tokens * stream * cfg.hidden_size * cfg.num_hidden_layers
        # backward of the recomputed layer: ~2 intermediate-size + 2 hidden-size fp32 grads
        transient = 4 * (2 * cfg.intermediate_size + 2 * cfg.hidden_size)
        acts += final + max(0.0, tokens * (layer + transient) + dequant - logits)
    else:
        acts = tokens * layer * cfg.num_hidden_layers + final + max(0.0, dequant - logits)
    parts = {
        "base weights": weight_bytes(cfg, dtype, quantize_4bit=q4, double_quant=double_quant,
                                     upcast_fp32=q4, head=causal) / GB,
        "LoRA weights (fp32)": 4 * n_lora / GB,
        "LoRA gradients (fp32)": 4 * n_lora / GB,
        "optimizer state": (2 if "8bit" in optim else 8) * n_lora / GB,
        "activations": acts / GB,
        "logits + grads": logits / GB,
    }  # fmt: skip
    fixed = overhead_gb
    if overhead_gb is None:
        overhead_gb = CUDA_CONTEXT_GB + ALLOCATOR_SLACK * sum(parts.values()) if on_gpu else 0.0
    parts["overhead"] = overhead_gb
    settings = {"dtype": dtype, "optim": optim, "attn": attn, "gradient_checkpointing": ckpt,
                "4-bit": q4, "batch": recipe.batch_size, "max_length": seq}  # fmt: skip
    est = Estimate(parts, device_gb, settings)
    est.verdict = f"fits: {est.total_gb:.2f} GB of {device_gb:.1f} GB"
    if not est.fits and _levers:
        kw = {"attn": attn, "dtype": dtype, "optim": optim, "double_quant": double_quant,
              "num_labels": num_labels, "device_gb": device_gb, "overhead_gb": fixed,
              "config": config}  # fmt: skip
        est.levers = _find_levers(model, recipe, ckpt, kw)
        est.verdict = (f"does not fit: {est.total_gb:.2f} GB > {device_gb:.1f} GB. "
                       "It would fit with " + "; or ".join(est.levers))  # fmt: skip
    return est


def _find_levers(model: Any, recipe: Any, ckpt: bool, kw: dict[str, Any]) -> list[str]:
    """Single changes that make ``recipe`` fit, else the first fitting combination."""
    from dataclasses import replace

    def total(changes: dict[str, Any], ckpt_on: bool) -> float:
        r = replace(recipe, **changes)
        return estimate(model, r, gradient_checkpointing=ckpt_on, _levers=False, **kw).total_gb

    accum = recipe.batch_size * recipe.grad_accum
    options: list[tuple[str, dict[str, Any]]] = []
    if not ckpt:
        options.append(("gradient checkpointing on", {}))
    if not recipe.quantize_4bit:
        options.append(("4-bit (QLoRA)", {"quantize_4bit": True}))
    if recipe.batch_size > 1:
        options.append((f"batch 1 with grad_accum {accum}", {"batch_size": 1, "grad_accum": accum}))
    length = recipe.max_length // 2
    while length >= 64 and total({"max_length": length}, ckpt) > kw["device_gb"]:
        length //= 2
    if length >= 64:
        options.append((f"max_length {length}", {"max_length": length}))
    # Smallest combinations first: one change, then pairs, ... (max_length is last resort).
    others = [o for o in options if not o[0].startswith("max_length")]
    for size in range(1, len(others) + 1):
        combos = options if size == 1 else others
        levers = []
        for combo in itertools.combinations(combos, size):
            changes = {k: v for _, change in combo for k, v in change.items()}
            ckpt_on = ckpt or any(name.startswith("gradient") for name, _ in combo)
            gb = total(changes, ckpt_on)
            if gb <= kw["device_gb"]:
                levers.append(" + ".join(name for name, _ in combo) + f" ({gb:.1f} GB)")
        if levers:
            return levers
    return ["all of " + ", ".join(n for n, _ in others) + " and a shorter max_length"]


def format_table(est: Estimate) -> str:
    """Plain-text table of an estimate's parts, total and verdict."""
    s = est.settings
    lines = [", ".join(f"{k}={v}" for k, v in s.items()), f"{'part':<24}{'GB':>8}"]
    lines += [f"{name:<24}{gb:>8.2f}" for name, gb in est.parts.items()]
    lines += [f"{'total':<24}{est.total_gb:>8.2f}", f"{'device':<24}{est.device_gb:>8.2f}",
              est.verdict]  # fmt: skip
    return "\n".join(lines)


def plan_all_t4(device_gb: float = 15.0) -> list[tuple[str, Estimate]]:
    """Estimate every task's default T4 recipe."""
    from phi2kit.recipes import TASKS, get_recipe

    return [(t, estimate("t4", get_recipe(t, "t4"), device_gb=device_gb)) for t in TASKS]


# --- time, and the course table ------------------------------------------------------------

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
]  # fmt: skip


def train_minutes(
    task: str, profile: str = "t4", calibration: int = T4_CALIBRATION_LENGTH
) -> float:
    """Predicted training time of a task's default recipe on a T4, eval excluded.

    ``calibration`` picks the reading of seed 003's run (:data:`T4_CALIBRATIONS`): 1,024
    (the default, most likely) or 2,048 tokens per padded example.
    """
    from phi2kit.recipes import get_recipe

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
    """(notebook, teaches, T4 minutes, T4 peak GB) for the README's course table.

    Training times use :data:`T4_CALIBRATION_LENGTH` (seed 003's run read at 1,024 tokens).

    Inference notebooks count their weights: 01 and 05 hold fp16 Phi-2 and its nf4 copy side
    by side (05 merges adapters into the fp16 base in place).
    """
    fp16 = weight_bytes(phi2_config(), "float16") / GB
    nf4 = weight_bytes(phi2_config(), "float16", quantize_4bit=True) / GB
    rows = []
    for name, teaches, task in COURSE:
        if task is None:
            gb = fp16 + nf4 + CUDA_CONTEXT_GB
            minutes = "~5" if name.startswith("01") else "~10"
        else:
            from dataclasses import replace

            from phi2kit.recipes import get_recipe

            recipe = get_recipe(task, "t4")
            gb = estimate("t4", recipe).total_gb
            if task == "classifier":  # 03 trains LoRA on the fp16 base, then QLoRA
                gb = max(gb, estimate("t4", replace(recipe, quantize_4bit=False)).total_gb)
            minutes = course_minutes(task)
        rows.append((name, teaches, minutes, f"{gb:.1f}"))
    return rows



# --- DPO (notebook 08): chosen + rejected in one batch, and the reference --------------------
def estimate_dpo(model: Any, recipe: Any, reference: str = "adapter", precompute: bool = False,
                 **kw: Any) -> Estimate:  # fmt: skip
    """One DPO step: the policy on 2 x ``batch_size`` sequences (chosen + rejected); the
    reference, trl's frozen copy of the SFT adapter (``"adapter"``), the base with adapters
    off (``"base"``) or a second base (``"model"``, freed before training by ``precompute``);
    and the reference's no-grad pass, whose fp32 logits and log-probs add what exceeds the
    policy's logits buffers (nothing with ``precompute``: it runs before training)."""
    est = estimate(model, replace(recipe, batch_size=2 * recipe.batch_size), _levers=False, **kw)
    cfg, p, s = kw.get("config") or _resolve(model)[0], est.parts, est.settings
    base2 = 0 if precompute else weight_bytes(cfg, s["dtype"], quantize_4bit=s["4-bit"]) / GB
    p["reference"] = {"adapter": 4 * lora_parameters(cfg, recipe) / GB, "model": base2}.get(
        reference, 0.0)
    ref_pass = 2 * recipe.batch_size * recipe.max_length * cfg.vocab_size * 8 / GB
    p["reference pass"] = 0.0 if precompute else max(0.0, ref_pass - p["logits + grads"])
    p["overhead"] += ALLOCATOR_SLACK * (p["reference"] + p["reference pass"]) * (p["overhead"] > 0)
    s.update(batch=f"{recipe.batch_size} pairs", reference=reference, precompute=precompute)
    est.verdict = f"{'fits' if est.fits else 'does not fit'}: {est.total_gb:.2f} GB of "
    est.verdict += f"{est.device_gb:.1f} GB"
    return est

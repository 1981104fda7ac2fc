"""Memory fit planner: will a LoRA/QLoRA recipe fit on the GPU, and if not, what to change
(``phi2kit plan``). Decimal GB; the counting is :mod:`phi2kit.footprint`'s."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from typing import Any

from phi2kit.footprint import (
    DTYPE_BYTES,
    GB,
    activation_bytes_per_token,
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
    #: False when no setting fits: the base weights alone exceed the device.
    possible: bool = True

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
        from phi2kit.tiny import tiny_config

        return tiny_config(), profile
    return phi2_config(), profile


def estimate(model: Any, recipe: Any, *, device_gb: float = 15.0, attn: str | None = None,
             gradient_checkpointing: bool | None = None, overhead_gb: float | None = None,
             dtype: str | None = None, optim: str | None = None, double_quant: bool = True,
             num_labels: int = 3, config: Any = None,
             _levers: bool = True) -> Estimate:  # fmt: skip
    """Predict the peak memory of training ``recipe`` on ``model`` (a ``PhiConfig``, or a profile or
    its name whose settings are the defaults; ``config``: another model under them);
    ``overhead_gb=None``: CUDA context + allocator slack on a GPU, 0 on a CPU. Paged AdamW's states
    count as resident."""
    if recipe.max_length < 1 or recipe.batch_size < 1 or device_gb <= 0:
        raise ValueError(
            f"max_length ({recipe.max_length}), batch ({recipe.batch_size}) and device_gb "
            f"({device_gb}) must be positive"
        )
    cfg, profile = _resolve(model)
    cfg = config if config is not None else cfg
    dtype = dtype or (profile.dtype if profile else "float32")
    optim = optim or (profile.optim if profile else "adamw_torch")
    attn = attn or (profile.attn_implementation if profile else "eager")
    on_gpu = bool(profile and profile.requires_cuda)
    ckpt = gradient_checkpointing
    ckpt = bool(profile and profile.gradient_checkpointing) if ckpt is None else ckpt
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
    est.verdict = f"fits: {est.total_gb:.2f} GB of {device_gb:g} GB"
    if not est.fits and _levers:
        kw = {"attn": attn, "dtype": dtype, "optim": optim, "double_quant": double_quant,
              "num_labels": num_labels, "device_gb": device_gb, "overhead_gb": fixed,
              "config": config}  # fmt: skip
        # The floor: every lever at once (4-bit, checkpointing, batch 1) and a 1-token sequence
        smallest = replace(recipe, quantize_4bit=True, batch_size=1, max_length=1)
        floor = estimate(model, smallest, gradient_checkpointing=True, _levers=False, **kw)
        if not floor.fits:
            weights = floor.parts["base weights"]
            est.verdict = (
                f"cannot fit at any setting: in 4-bit with gradient checkpointing, batch 1 and "
                f"max_length 1 it takes {floor.total_gb:.2f} GB (the base weights alone "
                f"{weights:.2f} GB), more than the {device_gb:g} GB device"
            )
            est.possible = False
            return est
        est.levers = _find_levers(model, recipe, ckpt, kw)
        est.verdict = (f"does not fit: {est.total_gb:.2f} GB > {device_gb:g} GB. "
                       "It would fit with " + "; or ".join(est.levers))  # fmt: skip
    return est


def cache_bytes(recipe: Any, dtype: str) -> int:
    """Bytes per value of the KV cache ``generate`` fills on the trained model. On an nf4 base
    it is fp32: ``prepare_model_for_kbit_training`` upcasts the embeddings, bitsandbytes' 4-bit
    layers return their input's dtype, and ``generate`` runs outside the trainer's autocast."""
    return 4 if recipe.quantize_4bit else DTYPE_BYTES[dtype]


def generation_gb(cfg: Any, rows: int, prompt: int, new: int, value_bytes: int,
                  attn: str) -> float:  # fmt: skip
    """GB that one batched ``generate`` call adds to the weights: the KV cache after the last
    token, or at the prefill the prompt's cache and (eager attention) one layer's fp32 scores
    and probabilities, whichever is larger; and the last position's fp32 logits."""
    per_token = 2 * cfg.num_hidden_layers * cfg.hidden_size * value_bytes
    scores = 0 if attn == "sdpa" else 2 * 4 * cfg.num_attention_heads * prompt**2
    peak = max(prompt * per_token + scores, (prompt + new) * per_token)
    return rows * (peak + 2 * 4 * cfg.vocab_size) / GB


def _find_levers(model: Any, recipe: Any, ckpt: bool, kw: dict[str, Any]) -> list[str]:
    """Single changes that make ``recipe`` fit, else the first fitting combination."""
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
                levers.append(" + ".join(name for name, _ in combo) + f" ({gb:.2f} GB)")
        if levers:
            return levers
    # none without a shorter max_length: all of them, and the longest max_length that fits then
    every = {k: v for _, change in others for k, v in change.items()}
    length = recipe.max_length // 2
    gb = total(every | {"max_length": length}, True)
    while length > 1 and gb > kw["device_gb"]:
        length //= 2
        gb = total(every | {"max_length": length}, True)
    return [" + ".join([n for n, _ in others] + [f"max_length {length}"]) + f" ({gb:.2f} GB)"]


def format_table(est: Estimate) -> str:
    """Plain-text table of an estimate's parts, total and verdict."""
    s = est.settings
    lines = [", ".join(f"{k}={v}" for k, v in s.items()), f"{'part':<24}{'GB':>8}"]
    lines += [f"{name:<24}{gb:>8.2f}" for name, gb in est.parts.items()]
    lines += [f"{'total':<24}{est.total_gb:>8.2f}", f"{'device':<24}{est.device_gb:>8.2f}",
              est.verdict]  # fmt: skip
    return "\n".join(lines)

"""Memory fit planner: will a LoRA/QLoRA recipe fit on the GPU, and if not, what to change.

Run ``phi2kit plan --profile t4 --task webglm --max-length 2048`` or, in Python::

    from phi2kit.plan import estimate, format_table
    print(format_table(estimate("t4", get_recipe("webglm", "t4"))))

Units are decimal GB (1e9 bytes). Plausibility check: the Phi-2 model card gives 2.7B
parameters stored in fp16; 2,779,683,840 x 2 B = 5.56 GB of inference weights.

Every part is counted from Phi's forward in transformers 5.23 (``PhiDecoderLayer``:
parallel attention and MLP on one layernorm output), with a frozen base and LoRA adapters.
On the CPU in fp32 the weights, LoRA, optimizer state and activations agree with
measurements (``tests/test_plan.py``). The GPU-only assumptions are stated where they apply:
fp16/bf16 autocast runs layer_norm and pow in fp32, CUDA dropout keeps a 1-byte mask, and
``phi2kit_fp32`` attention is counted as eager attention computed in fp32.
"""

from __future__ import annotations

import argparse
import itertools
from dataclasses import dataclass, field
from typing import Any

GB = 1e9
CUDA_CONTEXT_GB = 0.5  # assumption: CUDA context + cuBLAS workspace on a T4
ALLOCATOR_SLACK = 0.10  # assumption: fragmentation in PyTorch's caching allocator
NF4_BLOCK, NESTED_BLOCK = 64, 256  # bitsandbytes blocksizes for absmax and nested absmax
_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


def phi2_config() -> Any:
    """``transformers.PhiConfig`` of ``microsoft/phi-2``, from its published config.json.

    In transformers 5 ``partial_rotary_factor`` lives in ``config.rope_parameters``.
    """
    from transformers import PhiConfig

    return PhiConfig(
        vocab_size=51200, hidden_size=2560, intermediate_size=10240, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=2048,
        hidden_act="gelu_new", tie_word_embeddings=False, qk_layernorm=False,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                         "partial_rotary_factor": 0.4},
        bos_token_id=50256, eos_token_id=50256,
    )  # fmt: skip


def _linears(cfg: Any) -> dict[str, tuple[int, int]]:
    """(in, out) features of each Linear in one decoder layer."""
    h, i = cfg.hidden_size, cfg.intermediate_size
    hd = getattr(cfg, "head_dim", None) or h // cfg.num_attention_heads
    q, kv = cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd
    return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "dense": (q, h),
            "fc1": (h, i), "fc2": (i, h)}  # fmt: skip


def _split_params(cfg: Any, head: bool = True) -> tuple[int, int, int]:
    """(decoder Linear weights, decoder Linear count, all other params) of a Phi model."""
    lin = _linears(cfg)
    weights = cfg.num_hidden_layers * sum(i * o for i, o in lin.values())
    biases = cfg.num_hidden_layers * sum(o for _, o in lin.values())
    norms = (cfg.num_hidden_layers + 1) * 2 * cfg.hidden_size  # input + final LayerNorm
    qk_norm = 4 * (cfg.hidden_size // cfg.num_attention_heads) if cfg.qk_layernorm else 0
    other = cfg.vocab_size * cfg.hidden_size + biases + norms + cfg.num_hidden_layers * qk_norm
    if head:  # lm_head has a bias in Phi; a tied head shares the embedding
        tied = cfg.tie_word_embeddings
        other += cfg.vocab_size * (0 if tied else cfg.hidden_size) + cfg.vocab_size
    return weights, cfg.num_hidden_layers * len(lin), other


def count_parameters(config: Any) -> int:
    """Parameters of ``PhiForCausalLM(config)``, from shapes. Phi-2: 2,779,683,840."""
    weights, _, other = _split_params(config)
    return weights + other


def weight_bytes(config: Any, dtype: str = "float16", *, quantize_4bit: bool = False,
                 double_quant: bool = True, upcast_fp32: bool = False,
                 head: bool = True) -> int:  # fmt: skip
    """Bytes of the base model's weights.

    With ``quantize_4bit`` the decoder Linear weights are nf4, packed two per byte, with one
    absmax per block of 64: fp32, or with ``double_quant`` uint8 plus one fp32 absmax per
    256 blocks, an fp32 offset and a 256-entry fp32 code per Linear. Every Linear also keeps
    its 16-entry fp32 nf4 code. bitsandbytes leaves lm_head, embeddings, biases and
    layernorms in ``dtype``; ``upcast_fp32`` models ``prepare_model_for_kbit_training``,
    which casts all of them to fp32. Rotary buffers (a few hundred bytes) are ignored.
    """
    weights, n_lin, other = _split_params(config, head)
    size = 4 if upcast_fp32 else _DTYPE_BYTES[dtype]
    if not quantize_4bit:
        return (weights + other) * size
    blocks = sum(-(-i * o // NF4_BLOCK) for i, o in _linears(config).values())
    blocks *= config.num_hidden_layers
    absmax = blocks * 4
    if double_quant:
        nested = sum(-(-(i * o // NF4_BLOCK) // NESTED_BLOCK) for i, o in _linears(config).values())
        absmax = blocks + 4 * nested * config.num_hidden_layers + n_lin * (4 + 256 * 4)
    return -(-weights // 2) + absmax + n_lin * 16 * 4 + other * size


def lora_parameters(config: Any, recipe: Any, num_labels: int = 3) -> int:
    """Trainable parameters: ``r * (in + out)`` per adapted Linear (+ the SEQ_CLS score head)."""
    lin = _linears(config)
    unknown = set(recipe.target_modules) - set(lin)
    if unknown:
        raise ValueError(f"target_modules {sorted(unknown)} are not Phi Linear layers {list(lin)}")
    n = config.num_hidden_layers * sum(recipe.lora_r * sum(lin[t]) for t in recipe.target_modules)
    return n + (config.hidden_size * num_labels if recipe.task_type == "SEQ_CLS" else 0)


def activation_bytes_per_token(config: Any, recipe: Any, seq: int, *, dtype: str = "float32",
                               attn: str = "eager", on_gpu: bool = False) -> float:  # fmt: skip
    """Bytes one decoder layer saves for backward, per token, with a frozen base + LoRA.

    Counted from the tensors autograd keeps (frozen base Linears and 4-bit matmuls keep no
    input): layernorm input + mean/rstd; per adapted Linear its lora_A input (the dropout
    output or a dtype cast; with no dropout and no cast the shared input counts once), the
    dropout mask and the rank-r lora_A output; the rotated q and k and v; eager attention
    probabilities in fp32 (+ a compute-dtype copy under autocast; ``seq`` enters here);
    sdpa's output and logsumexp instead; gelu_new's four saved intermediates (x, tanh, x/2,
    1+tanh); residual adds save nothing. Rotary slices and cos/sin are negligible.
    """
    lin = _linears(config)
    c = _DTYPE_BYTES[dtype]
    amp = c != 4  # fp16/bf16 autocast: layer_norm and pow (in gelu_new) run in fp32
    stream = 4 if (recipe.quantize_4bit or not amp) else c  # QLoRA upcasts the embedding
    gelu, heads = 4, config.num_attention_heads
    q, kv, inter = lin["q_proj"][1], lin["k_proj"][1], config.intermediate_size
    total = stream * config.hidden_size + 8  # layernorm input, mean and rstd
    ln = ("ln", config.hidden_size, 4)  # the layernorm output feeds q, k, v and fc1
    inputs = {"q_proj": ln, "k_proj": ln, "v_proj": ln, "fc1": ln,
              "dense": ("attn", q, c), "fc2": ("gelu", inter, gelu)}  # fmt: skip
    shared = set()
    for t in recipe.target_modules:
        source, width, in_b = inputs[t]
        total += recipe.lora_r * c
        if recipe.lora_dropout > 0:  # dropout output (or its cast) + mask
            total += width * (c + (1 if on_gpu else in_b))
        elif in_b != c:
            total += width * c  # autocast copy per Linear
        elif source not in shared:
            shared.add(source)
            total += width * c
    if attn in ("eager", "phi2kit_fp32"):
        qkv_b = 4 if attn == "phi2kit_fp32" else c
        total += (q + 2 * kv) * qkv_b + heads * seq * (4 + (c if qkv_b != 4 else 0))
    else:  # sdpa / flash: q, k, v, output and logsumexp, no seq^2 term
        total += (q + 2 * kv) * c + q * c + heads * 4
    total += inter * (2 * c + 2 * gelu)  # gelu_new intermediates
    return float(total)


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
             num_labels: int = 3, _levers: bool = True) -> Estimate:  # fmt: skip
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
    """
    cfg, profile = _resolve(model)
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
    stream = 4 if (q4 or dtype == "float32") else _DTYPE_BYTES[dtype]
    layer = activation_bytes_per_token(cfg, recipe, seq, dtype=dtype, attn=attn, on_gpu=on_gpu)
    outputs = cfg.vocab_size if causal else num_labels
    logits = tokens * outputs * 12  # fp32 log-probs saved + their grad + grad of logits
    final = tokens * (stream * cfg.hidden_size + 8 + (0 if causal else 4 * cfg.hidden_size))
    if ckpt:
        acts = tokens * stream * cfg.hidden_size * cfg.num_hidden_layers
        # backward of the recomputed layer: ~2 intermediate-size + 2 hidden-size fp32 grads
        transient = 4 * (2 * cfg.intermediate_size + 2 * cfg.hidden_size)
        acts += final + max(0.0, tokens * (layer + transient) - logits)
    else:
        acts = tokens * layer * cfg.num_hidden_layers + final
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
              "num_labels": num_labels, "device_gb": device_gb, "overhead_gb": fixed}  # fmt: skip
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


def add_plan_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``phi2kit plan``, e.g. ``phi2kit plan --task chat --max-length 2048``."""
    p = subparsers.add_parser("plan", help="predict whether a recipe fits in GPU memory")
    p.add_argument("--profile", default="t4", choices=["tiny", "t4", "ampere"])
    p.add_argument(
        "--task", default="webglm", choices=["sentiment", "classifier", "webglm", "chat"]
    )
    p.add_argument("--max-length", type=int, default=None, help="override the recipe's")
    p.add_argument("--batch", type=int, default=None, help="per-device micro-batch")
    p.add_argument("--grad-ckpt", action=argparse.BooleanOptionalAction, default=None,
                   help="gradient checkpointing (default: the profile's)")  # fmt: skip
    p.add_argument("--device-gb", type=float, default=15.0, help="GPU memory in GB")
    p.set_defaults(func=run_plan)
    return p


def run_plan(args: argparse.Namespace) -> int:
    """Print the planner table and verdict; return 0 if it fits, else 1."""
    from phi2kit.recipes import get_recipe

    overrides = {k: v for k, v in (("max_length", args.max_length), ("batch_size", args.batch))
                 if v is not None}  # fmt: skip
    recipe = get_recipe(args.task, args.profile, **overrides)
    est = estimate(args.profile, recipe, device_gb=args.device_gb,
                   gradient_checkpointing=args.grad_ckpt)  # fmt: skip
    print(f"{args.task} on {args.profile}")
    print(format_table(est))
    return 0 if est.fits else 1


# --- time, and the course table ------------------------------------------------------------

#: Assumed mean tokens per training example with Phi-2's tokenizer (prompt + completion),
#: after dynamic padding. Headlines are short; WebGLM references are long.
TYPICAL_TOKENS = {"sentiment": 70, "classifier": 55, "webglm": 600, "chat": 350}
#: Effective training throughput of 4-bit Phi-2 on a T4 with checkpointing (6N FLOPs per
#: token), calibrated from seed 003's reported 10 hours per epoch: 5,000 examples padded to
#: 2,048 tokens. About 4.7 TFLOP/s, 7 % of the T4's 65 TFLOP/s fp16 peak.
T4_EFFECTIVE_FLOPS = 6 * 2_779_683_840 * 5000 * 2048 / (10 * 3600)

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


def train_minutes(task: str, profile: str = "t4") -> float:
    """Predicted training time of a task's default recipe (T4 calibration; eval excluded)."""
    from phi2kit.recipes import get_recipe

    recipe = get_recipe(task, profile)
    per_token = 6 * count_parameters(phi2_config())  # forward, recompute, input grads
    tokens = recipe.max_steps * recipe.effective_batch * TYPICAL_TOKENS[task]
    return tokens * per_token / T4_EFFECTIVE_FLOPS / 60


def course_rows() -> list[tuple[str, str, str, str]]:
    """(notebook, teaches, T4 minutes, T4 peak GB) for the README's course table.

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
            runs = 1
            if task == "classifier":  # 03 trains LoRA on the fp16 base, then QLoRA
                gb = max(gb, estimate("t4", replace(recipe, quantize_4bit=False)).total_gb)
                runs = 2
            minutes = f"~{5 * round(runs * train_minutes(task) / 5 + 0.5):.0f}"
        rows.append((name, teaches, minutes, f"{gb:.1f}"))
    return rows

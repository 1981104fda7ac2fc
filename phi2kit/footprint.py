"""What a Phi model holds in memory, counted from shapes (no model built): the planner's base,
checked against measurements (``tests/test_plan.py``, ``bench/measure_memory.py``)."""

from __future__ import annotations

from typing import Any

GB = 1e9
NF4_BLOCK, NESTED_BLOCK = 64, 256  # bitsandbytes blocksizes for absmax and nested absmax
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


def phi2_config() -> Any:
    """``transformers.PhiConfig`` of ``microsoft/phi-2``, from its published config.json."""
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
    """Bytes of the base model's weights; with ``quantize_4bit`` the decoder Linears in nf4 with
    bitsandbytes' absmax (nested with ``double_quant``), the rest in ``dtype`` (fp32 with
    ``upcast_fp32``)."""
    weights, n_lin, other = _split_params(config, head)
    size = 4 if upcast_fp32 else DTYPE_BYTES[dtype]
    if not quantize_4bit:
        return (weights + other) * size
    lin = _linears(config).values()
    blocks = config.num_hidden_layers * sum(-(-i * o // NF4_BLOCK) for i, o in lin)
    absmax = blocks * 4
    if double_quant:
        nested = sum(-(-(i * o // NF4_BLOCK) // NESTED_BLOCK) for i, o in lin)
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


def dequant_bytes(config: Any, dtype: str = "float16", double_quant: bool = True) -> int:
    """Transient bytes of the largest 4-bit weight dequantized for a matmul (bitsandbytes
    dequantizes the whole weight, and first its absmax; one lives at a time)."""
    largest = max(i * o for i, o in _linears(config).values())
    absmax = -(-largest // NF4_BLOCK) * 4 if double_quant else 0
    return largest * DTYPE_BYTES[dtype] + absmax


def activation_bytes_per_token(config: Any, recipe: Any, seq: int, *, dtype: str = "float32",
                               attn: str = "eager", on_gpu: bool = False) -> float:  # fmt: skip
    """Bytes one decoder layer saves for backward, per token, with a frozen base + LoRA: the tensors
    autograd keeps (frozen and 4-bit matmuls keep no input). Layernorm input + mean/rstd; per
    adapted Linear its lora_A input (dropout output or dtype cast; else a shared input counts once),
    dropout mask and rank-r output; rotated q, k and v; eager attention probabilities in fp32 (+ a
    compute-dtype copy under autocast; ``seq`` enters here) or sdpa's output and logsumexp;
    gelu_new's four intermediates (x, tanh, x/2, 1+tanh). Residual adds save nothing; rotary slices
    and cos/sin are negligible."""
    lin = _linears(config)
    c = DTYPE_BYTES[dtype]
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


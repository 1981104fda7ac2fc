"""The planner for GGUF files (notebook 07): disk and RAM per type, from Phi-2's published
shapes, before writing one (checked against the tiny model's files)."""

from __future__ import annotations

from typing import Any

from phi2kit.footprint import GB, phi2_config

#: (bytes, weights) per block of ggml's types; llama.cpp's fallback for rows not a multiple of 256
GGUF_BLOCKS = {"F32": (4, 1), "F16": (2, 1), "Q8_0": (34, 32), "Q5_0": (22, 32),
               "Q4_K": (144, 256), "Q6_K": (210, 256)}  # fmt: skip
GGUF_FALLBACK = {"Q4_K": "Q5_0", "Q6_K": "Q8_0"}


def gguf_tensor_types(qtype: str, config: Any = None) -> list[tuple[str, str, int]]:
    """``(name, type, weights)`` per tensor of a ``phi2`` GGUF file (default: Phi-2's config).
    F16/Q8_0: 1-D tensors F32, matrices ``qtype``; Q4_K_M as llama.cpp quantizes: Q4_K, Q6_K for
    ``output`` and for ``attn_v``/``ffn_down`` in use_more_bits layers, and rows not a multiple of
    256 fall back (:data:`GGUF_FALLBACK`; ``output`` -> Q8_0)."""
    if qtype not in ("F16", "Q8_0", "Q4_K_M"):
        raise ValueError(f"qtype must be 'F16', 'Q8_0' or 'Q4_K_M', not {qtype!r}")
    cfg = config if config is not None else phi2_config()
    d, ff, v, n = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size, cfg.num_hidden_layers

    def matrix(name: str, rows: int, cols: int, i: int = -1) -> tuple[str, str, int]:
        kind = qtype
        if qtype == "Q4_K_M" and name == "output.weight":
            kind = "Q6_K" if cols % 256 == 0 else "Q8_0"
        elif qtype == "Q4_K_M":
            more = i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2  # use_more_bits
            big = i >= 0 and more and name.split(".")[2] in ("attn_v", "ffn_down")
            kind = "Q6_K" if big else "Q4_K"
            kind = kind if cols % 256 == 0 else GGUF_FALLBACK[kind]
        return name, kind, rows * cols

    out = [matrix("token_embd.weight", v, d), ("output_norm.weight", "F32", d),
           ("output_norm.bias", "F32", d), matrix("output.weight", v, d), ("output.bias", "F32", v)]
    for i in range(n):
        out += [(f"blk.{i}.attn_norm.weight", "F32", d), (f"blk.{i}.attn_norm.bias", "F32", d)]
        for part, rows, cols in [("attn_q", d, d), ("attn_k", d, d), ("attn_v", d, d),
                                 ("attn_output", d, d), ("ffn_up", ff, d), ("ffn_down", d, ff)]:
            out += [matrix(f"blk.{i}.{part}.weight", rows, cols, i),
                    (f"blk.{i}.{part}.bias", "F32", rows)]
    return out


def gguf_footprint(qtype: str, config: Any = None, n_ctx: int = 2048, n_ubatch: int = 512) -> dict:
    """Disk and CPU RAM (GB) of a ``phi2`` GGUF file served by llama.cpp: ``tensors_gb`` exact;
    assumed 32 B per vocabulary entry for the tokenizer, an F16 KV cache of ``n_ctx`` and a compute
    buffer of ``4 B x n_ubatch x (vocabulary + heads x n_ctx + 4 x intermediate)``."""
    cfg = config if config is not None else phi2_config()
    types = gguf_tensor_types(qtype, cfg)
    tensors = sum(GGUF_BLOCKS[t][0] * count // GGUF_BLOCKS[t][1] for _, t, count in types)
    disk = tensors + 32 * cfg.vocab_size
    kv = 2 * cfg.num_hidden_layers * n_ctx * cfg.hidden_size * 2
    compute = 4 * n_ubatch * (cfg.vocab_size + cfg.num_attention_heads * n_ctx
                              + 4 * cfg.intermediate_size)  # fmt: skip
    return {"tensors_gb": tensors / GB, "disk_gb": disk / GB, "kv_cache_gb": kv / GB,
            "ram_gb": (disk + kv + compute) / GB}  # fmt: skip

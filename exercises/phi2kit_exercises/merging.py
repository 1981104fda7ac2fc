"""Notebook 05's cells, for the exercises and ``bench/phi2_real_size.py``: compare two models'
logits (:func:`probe_logits`, :func:`merge_error`) and :func:`dequantize_into`, the base a
QLoRA adapter must be merged into.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from phi2kit.generation import inference
from phi2kit.twin import keep_nf4_layout_on_cpu

# --- comparing models ------------------------------------------------------------------------


def probe_logits(model: nn.Module, tokenizer, texts: Sequence[str]) -> torch.Tensor:
    """fp32 logits at every real (non-pad) position of ``texts``: shape ``(tokens, vocab)``.

    Left padding and the attention mask make each position see only its own prompt, so the
    rows can be compared across models token by token. A 4-bit model is switched to the
    reference kernel first (:func:`keep_nf4_layout_on_cpu`).
    """
    keep_nf4_layout_on_cpu(model)
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        batch = tokenizer(list(texts), return_tensors="pt", padding=True)
    finally:
        tokenizer.padding_side = side
    batch = batch.to(next(model.parameters()).device)
    with inference(model):
        logits = model(**batch).logits
    return logits[batch["attention_mask"].bool()].float().cpu()


@dataclass
class LogitGap:
    """How far one model's logits are from a reference model's, on the same tokens."""

    max_abs: float
    mean_abs: float
    token_agreement: float  # share of positions where the argmax (greedy) token agrees
    n_tokens: int

    def __str__(self) -> str:
        return (
            f"max |Δlogit| {self.max_abs:.2e}, mean {self.mean_abs:.2e}, "
            f"greedy tokens agree {100 * self.token_agreement:.1f} % of {self.n_tokens}"
        )


def merge_error(reference: torch.Tensor, logits: torch.Tensor) -> LogitGap:
    """Compare ``logits`` with ``reference`` (both from :func:`probe_logits`)."""
    if reference.shape != logits.shape:
        raise ValueError(
            f"logits of shape {tuple(logits.shape)} cannot be compared with a reference of "
            f"shape {tuple(reference.shape)}: probe both models with the same texts"
        )
    diff = (reference.float() - logits.float()).abs()
    agree = (reference.argmax(-1) == logits.argmax(-1)).float().mean()
    return LogitGap(diff.max().item(), diff.mean().item(), agree.item(), reference.shape[0])


# --- dequantize, then merge --------------------------------------------------------------------


@torch.no_grad()
def dequantize_into(target: nn.Module, quantized: nn.Module) -> int:
    """Copy ``dequant(nf4)`` of every 4-bit Linear in ``quantized`` into ``target``.

    ``target`` is the same architecture in full precision; afterwards its Linear weights
    are exactly what the 4-bit model computes with. Returns the number of layers copied.
    """
    import bitsandbytes as bnb
    from bitsandbytes.functional import dequantize_4bit

    n = 0
    for name, module in quantized.named_modules():
        if not isinstance(module, bnb.nn.Linear4bit):
            continue
        state = module.weight.quant_state
        if getattr(state, "packing_format_for_cpu", False):
            raise RuntimeError(
                f"{name}: the 4-bit weight was repacked for the CPU bf16 kernel and cannot "
                "be dequantized; call keep_nf4_layout_on_cpu(model) before its first forward"
            )
        weight = target.get_submodule(name).weight
        weight.copy_(dequantize_4bit(module.weight.data, state).to(weight.dtype))
        n += 1
    if n == 0:
        raise ValueError("the quantized model has no 4-bit Linear layers")
    return n

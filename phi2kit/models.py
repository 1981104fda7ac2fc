"""Load Phi-2 (or the tiny Phi) for a profile: safetensors only, ``pad = eos``, nf4 for QLoRA, and
notebook 01's fp32 attention (Phi-2's ``Q @ K^T`` overflows fp16 on a T4)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask

from phi2kit.profiles import Profile, get_profile
from phi2kit.twin import keep_nf4_layout_on_cpu

FP32_ATTENTION = "phi2kit_fp32"


def fp32_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs: object,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager attention with the scores, the mask and the softmax in fp32.

    Same maths as transformers' eager attention, but ``Q @ K^T`` is computed from fp32
    copies of ``query`` and ``key``, with autocast off, so it cannot overflow in fp16, in
    inference or inside an fp16 mixed-precision ``trainer.train()``. The output goes back to
    the input dtype. Shapes: query ``(batch, heads, q_len, head_dim)``.
    """
    n_rep = query.shape[1] // key.shape[1]
    if n_rep > 1:  # grouped-query attention (Phi-2 has none, but stay general)
        key = key.repeat_interleave(n_rep, dim=1)
        value = value.repeat_interleave(n_rep, dim=1)
    # Under fp16 autocast (what Trainer(fp16=True) runs) a matmul of fp32 tensors is cast
    # back to fp16, so upcasting the inputs alone does not escape it: switch autocast off.
    with torch.autocast(device_type=query.device.type, enabled=False):
        scores = torch.matmul(query.float(), key.float().transpose(2, 3)) * scaling
        if attention_mask is not None:
            mask = attention_mask[:, :, :, : key.shape[-2]]
            if mask.dtype == torch.bool:  # custom attention gets sdpa-style masks: True = attend
                scores = scores.masked_fill(~mask, torch.finfo(torch.float32).min)
            else:  # eager-style additive mask
                scores = scores + mask.float()
        probs = torch.softmax(scores, dim=-1)
        probs = nn.functional.dropout(probs, p=dropout, training=module.training)
        out = torch.matmul(probs, value.float()).to(query.dtype)
    return out.transpose(1, 2).contiguous(), probs.to(query.dtype)


def register_fp32_attention() -> str:
    """Register :func:`fp32_attention_forward` as ``"phi2kit_fp32"``; returns the name."""
    AttentionInterface.register(FP32_ATTENTION, fp32_attention_forward)
    # A custom attention also needs a mask builder, or transformers passes no padding mask
    # at all. Ours takes eager's additive mask.
    AttentionMaskInterface.register(FP32_ATTENTION, eager_mask)
    return FP32_ATTENTION


def _device_map(profile: Profile) -> str | dict[str, int]:
    """CPU for the tiny profile; under DDP (``accelerate launch``), one whole GPU per process."""
    if not profile.requires_cuda:
        return "cpu"
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return {"": int(os.environ.get("LOCAL_RANK", "0"))}
    return "auto"


def model_source(profile: Profile) -> str:
    """Hub id or folder of the profile's base model (the shipped tiny Phi for ``tiny``)."""
    if profile.model_id is not None:
        return profile.model_id
    from phi2kit.tiny import tiny_path

    return str(tiny_path())


def load_tokenizer(profile: Profile | str = "auto",
                   padding_side: Literal["left", "right"] = "right"):  # fmt: skip
    """The profile's tokenizer with ``pad = eos``; padding left to generate, right to train."""
    from transformers import AutoTokenizer

    profile = get_profile(profile, check=False) if isinstance(profile, str) else profile
    tok = AutoTokenizer.from_pretrained(model_source(profile))
    if tok.pad_token is None:
        # Phi-2 ships no pad token. Reusing eos adds no new embedding row; training code
        # must therefore mask padding by attention mask, not by this id.
        tok.pad_token = tok.eos_token
    tok.padding_side = padding_side
    return tok


def bnb_config(profile: Profile):
    """nf4 4-bit with double quantization; compute in the profile's dtype."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                              bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=getattr(torch, profile.dtype))  # fmt: skip


def load_kwargs(profile: Profile, quantize_4bit: bool) -> dict:
    """The ``from_pretrained`` arguments notebook 02 writes out."""
    return {
        "dtype": getattr(torch, profile.dtype),
        "attn_implementation": profile.attn_implementation,
        "quantization_config": bnb_config(profile) if quantize_4bit else None,
        "use_safetensors": True,
        "device_map": _device_map(profile),
    }


def load_model(profile: Profile | str = "auto", *, quantize_4bit: bool | None = None,
               num_labels: int | None = None, source: str | None = None):  # fmt: skip
    """The profile's causal LM, or a classifier with a fresh head of ``num_labels``; nf4 by the
    profile unless ``quantize_4bit`` says; ``source``: another folder (a merged model)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    profile = get_profile(profile) if isinstance(profile, str) else profile
    quantize = profile.quantize_4bit if quantize_4bit is None else quantize_4bit
    kwargs = load_kwargs(profile, quantize)
    if kwargs["attn_implementation"] == FP32_ATTENTION:
        register_fp32_attention()
    if num_labels is not None:
        kwargs["num_labels"] = num_labels
    auto = AutoModelForCausalLM if num_labels is None else AutoModelForSequenceClassification
    model = auto.from_pretrained(source or model_source(profile), **kwargs)
    if model.config.pad_token_id is None:
        # Sequence classification pools the last non-pad token and needs this id.
        model.config.pad_token_id = model.config.eos_token_id
    if getattr(model, "generation_config", None) is not None:  # causal LMs only
        model.generation_config.pad_token_id = model.config.pad_token_id
    if quantize and not profile.requires_cuda:
        keep_nf4_layout_on_cpu(model)
    return model


@dataclass
class ModelSummary:
    """What :func:`describe` reports about a model."""

    parameters: int
    trainable: int
    bytes_by_dtype: dict[str, int]

    @property
    def total_bytes(self) -> int:
        return sum(self.bytes_by_dtype.values())

    def __str__(self) -> str:
        by = ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in self.bytes_by_dtype.items())
        pct = 100 * self.trainable / max(self.parameters, 1)
        return (
            f"{self.parameters:,} parameters ({self.trainable:,} trainable, {pct:.2f} %); "
            f"{self.total_bytes / 2**20:.1f} MiB: {by}"
        )


def describe(model: nn.Module) -> ModelSummary:
    """Parameter count, trainable count and bytes by dtype (4-bit weights count as stored).

    bitsandbytes packs two 4-bit weights into each uint8, so a packed ``Params4bit`` counts
    for twice its element count in ``parameters``; the quantization constants (its
    ``quant_state``) are included in the bytes.
    """
    n_params = n_train = 0
    by_dtype: dict[str, int] = {}
    for p in model.parameters():
        n = p.numel() * (2 if p.dtype == torch.uint8 else 1)
        n_params += n
        n_train += n if p.requires_grad else 0
        key = "nf4 (packed)" if p.dtype == torch.uint8 else str(p.dtype).replace("torch.", "")
        by_dtype[key] = by_dtype.get(key, 0) + p.numel() * p.element_size()
        state = getattr(p, "quant_state", None)
        if state is not None:
            by_dtype["quant constants"] = by_dtype.get("quant constants", 0) + _state_bytes(state)
    return ModelSummary(n_params, n_train, by_dtype)


def _state_bytes(state) -> int:
    """Bytes of a 4-bit weight's quant_state: absmax and nf4's 16-level code, and with double
    quantization the offset and the nested absmax and code table."""
    tensors = [state.absmax, state.code]
    if state.nested:
        tensors += [state.offset, state.state2.absmax, state.state2.code]
    return sum(t.numel() * t.element_size() for t in tensors)

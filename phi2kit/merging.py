"""Merge LoRA/QLoRA adapters into a full-precision base, and measure what merging costs.

Notebook 05 uses these helpers:

- :func:`find_adapter` picks an adapter saved by an earlier notebook (02, 04, 06) that fits
  the profile's base model and was trained on the right precision (:func:`save_adapter`
  notes it); :func:`train_demo_adapter` trains a small one when it is missing.
- :func:`probe_logits` and :func:`merge_error` compare two models on the same inputs: max
  and mean ``|Δ logit|`` and how often the greedy (argmax) token agrees.
- :func:`dequantize_into` / :func:`load_dequantized_base` build the full-precision base
  whose Linear weights equal ``dequant(nf4)``: merging a QLoRA adapter into *that* base
  reproduces the adapter-on-4-bit model that was trained.
- ``phi2kit.twin.keep_nf4_layout_on_cpu`` (applied by ``load_model`` on CPU profiles)
  keeps bitsandbytes from repacking nf4 weights, which would make dequantizing them wrong.
- :func:`save_merged` writes a merged model as safetensors, ready for
  ``load_model(profile, quantize_4bit=False, source=path)``.

    peft_model = PeftModel.from_pretrained(load_model(profile, quantize_4bit=False), path)
    merged = peft_model.merge_and_unload()
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from phi2kit.generation import inference
from phi2kit.lora import adapter_base_4bit, save_adapter
from phi2kit.profiles import Profile
from phi2kit.twin import keep_nf4_layout_on_cpu


def _linear4bit_class():
    import bitsandbytes as bnb

    return bnb.nn.Linear4bit


# --- which adapter ---------------------------------------------------------------------------


def adapter_fits(adapter: str | Path, profile: Profile) -> bool:
    """Whether a saved adapter exists and was trained on this profile's base model.

    The base is read from ``adapter_config.json`` (``base_model_name_or_path``). Local
    folders match when their ``config.json`` files are identical, so an adapter trained in
    another checkout of the repository still fits the shipped tiny model.
    """
    from phi2kit.models import model_source

    config = Path(adapter) / "adapter_config.json"
    if not config.is_file():
        return False
    base = json.loads(config.read_text()).get("base_model_name_or_path") or ""
    ours = model_source(profile)
    if base == ours:
        return True
    theirs, mine = Path(base) / "config.json", Path(ours) / "config.json"
    return theirs.is_file() and mine.is_file() and theirs.read_text() == mine.read_text()


def find_adapter(
    candidates: Iterable[str | Path], profile: Profile, base_4bit: bool | None = None
) -> Path | None:
    """The first candidate folder holding an adapter for ``profile``'s base, else None.

    With ``base_4bit``, only an adapter whose note says it was trained on a 4-bit base
    (``True``, QLoRA) or on a full-precision one (``False``, LoRA) qualifies; one saved
    without a note (plain ``save_pretrained``) does not, since it cannot be told apart.
    """
    for candidate in candidates:
        if not adapter_fits(candidate, profile):
            continue
        if base_4bit is None or adapter_base_4bit(candidate) is base_4bit:
            return Path(candidate)
    return None


def train_demo_adapter(
    profile: Profile,
    output_dir: str | Path,
    *,
    quantize_4bit: bool,
    max_steps: int = 20,
    n_train: int = 64,
    data_path: str | Path | None = None,
) -> Path:
    """Train a small chat adapter (LoRA, or QLoRA with ``quantize_4bit``) and save it.

    The stand-in for an adapter from notebooks 02/04/06 when they have not been run: the
    profile's ``chat`` recipe on ``n_train`` OASST examples for ``max_steps`` steps. It is
    meant to be merged, not chatted with. Returns ``output_dir``.
    """
    from datasets import Dataset

    from phi2kit.data import resolve_data
    from phi2kit.data.oasst import load_oasst, thread_to_examples
    from phi2kit.lora import add_lora
    from phi2kit.models import load_model, load_tokenizer
    from phi2kit.recipes import get_recipe
    from phi2kit.training import sft_trainer

    torch.manual_seed(0)
    recipe = get_recipe(
        "chat", profile, quantize_4bit=quantize_4bit, max_steps=max_steps, n_train=n_train
    )
    threads = load_oasst(resolve_data("oasst1", data_path, profile), lang="en")
    examples = [ex for thread in threads for ex in thread_to_examples(thread)][:n_train]
    model = load_model(profile, quantize_4bit=quantize_4bit)
    model = add_lora(model, recipe, profile)
    tokenizer = load_tokenizer(profile, padding_side="right")
    trainer = sft_trainer(
        model, tokenizer, Dataset.from_list(examples), profile, recipe, Path(output_dir) / "run"
    )
    trainer.train()
    return save_adapter(model, output_dir)


def load_adapters(base: nn.Module, adapters: dict[str, str | Path]):
    """Put several saved adapters on one base model; the first one is active.

    Switch with ``model.set_adapter(name)``: the base weights are shared, only the small
    LoRA matrices differ per adapter.
    """
    from peft import PeftModel

    if not adapters:
        raise ValueError("adapters is empty: pass {name: folder}")
    items = list(adapters.items())
    name, path = items[0]
    model = PeftModel.from_pretrained(base, str(path), adapter_name=name)
    for name, path in items[1:]:
        model.load_adapter(str(path), adapter_name=name)
    model.set_adapter(items[0][0])
    model.eval()
    return model


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
    device = next(model.parameters()).device
    batch = batch.to(device)
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
    from bitsandbytes.functional import dequantize_4bit

    linear4bit = _linear4bit_class()
    n = 0
    for name, module in quantized.named_modules():
        if not isinstance(module, linear4bit):
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


def load_dequantized_base(profile: Profile):
    """The full-precision base whose Linear weights are ``dequant(nf4(W))``.

    Merge a QLoRA adapter into this model (not into the original weights) to get a
    full-precision model that computes what the adapter-on-4-bit model computes.
    """
    from phi2kit.models import load_model

    quantized = load_model(profile, quantize_4bit=True)
    target = load_model(profile, quantize_4bit=False)
    dequantize_into(target, quantized)
    del quantized
    return target


def save_merged(model: nn.Module, tokenizer, path: str | Path) -> Path:
    """Save a merged (plain transformers) model and its tokenizer as safetensors."""
    if hasattr(model, "peft_config"):
        raise TypeError("this is still a PeftModel: call merge_and_unload() first")
    path = Path(path)
    model.save_pretrained(str(path), safe_serialization=True)
    tokenizer.save_pretrained(str(path))
    if not list(path.glob("*.safetensors")):
        raise RuntimeError(f"no .safetensors file was written to {path}")
    return path

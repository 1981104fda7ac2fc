"""Batched generation that stops cleanly: notebook 01's cells, the same source."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from phi2kit.logs import progress


@dataclass
class Generation:
    """Outputs of :func:`generate`, in prompt order."""

    texts: list[str]
    new_tokens: list[int]
    finish: list[str]  # "eos", "stop" (a stop string) or "length" (hit max_new_tokens)
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return sum(self.new_tokens) / max(self.seconds, 1e-9)


@contextmanager
def inference(model: Any) -> Iterator[None]:
    """Eval mode and no gradients for the block; the model's mode is restored after.

    Every generation and evaluation helper runs inside it. ``trainer.train()`` leaves the
    model in train mode, where LoRA dropout is active and, with gradient checkpointing on,
    transformers' checkpointed decoder layers drop the KV cache: ``generate`` then feeds only
    the newest token to a model that has forgotten the prompt, and every prompt gets the same
    degenerate continuation.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def cut_at_stop(text: str, stop_strings: str | Sequence[str] = ()) -> tuple[str, bool]:
    """Cut ``text`` at the earliest stop string (e.g. ``"### Human:"``).

    Returns ``(text before the stop, trailing whitespace removed, True)``, or ``(text, False)``
    when no stop string occurs. Empty stop strings are ignored.
    """
    if isinstance(stop_strings, str):
        stop_strings = [stop_strings]
    hits = [i for i in (text.find(s) for s in stop_strings if s) if i >= 0]
    if not hits:
        return text, False
    return text[: min(hits)].rstrip(), True


def generate(
    model,
    tokenizer,
    prompts: list[str],
    *,
    max_new_tokens: int = 64,
    stop_strings: list[str] | tuple[str, ...] = (),
    batch_size: int = 8,
    **generate_kwargs,
) -> Generation:
    """Greedy (by default) generation for many prompts, ``batch_size`` at a time.

    Returned texts hold only the new text, cut at the first stop string. ``finish`` tells
    how each sequence ended: ``"eos"``, ``"stop"`` or ``"length"``. Runs in eval mode
    (:func:`inference`), so it is safe right after ``trainer.train()``.
    """
    old_side, old_pad = tokenizer.padding_side, tokenizer.pad_token
    tokenizer.padding_side = "left"  # every prompt ends in the last column
    tokenizer.pad_token = old_pad or tokenizer.eos_token  # Phi-2 ships no pad token
    texts, counts, finish = [], [], []
    device = next(model.parameters()).device
    start = time.perf_counter()
    try:
        with inference(model):
            for i in progress(range(0, len(prompts), batch_size), desc="generating",
                              show=device.type == "cuda"):  # fmt: skip
                batch = tokenizer(prompts[i : i + batch_size], return_tensors="pt", padding=True)
                kwargs = {"do_sample": False, **generate_kwargs}
                if stop_strings:  # checked after every step, on the decoded text
                    kwargs.update(stop_strings=list(stop_strings), tokenizer=tokenizer)
                out = model.generate(
                    **batch.to(device),
                    max_new_tokens=max_new_tokens,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                    **kwargs,
                )
                for row in out[:, batch["input_ids"].shape[1] :].tolist():
                    # pad == eos: a row that finished early is filled with eos after its end
                    hit_eos = tokenizer.eos_token_id in row
                    ids = row[: row.index(tokenizer.eos_token_id)] if hit_eos else row
                    text, hit_stop = cut_at_stop(tokenizer.decode(ids), stop_strings)
                    texts.append(text)
                    counts.append(len(ids) + int(hit_eos and not hit_stop))
                    finish.append("stop" if hit_stop else "eos" if hit_eos else "length")
    finally:
        tokenizer.padding_side, tokenizer.pad_token = old_side, old_pad
    return Generation(texts, counts, finish, time.perf_counter() - start)

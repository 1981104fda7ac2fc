"""Label scoring: a causal LM as a classifier that cannot give an invalid label (02).
:func:`label_logprobs` is notebook 02's cell; :func:`score_labels` gives the same scores faster."""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence

from phi2kit.data.sentiment import LABELS
from phi2kit.generation import inference
from phi2kit.logs import on_gpu, progress


@torch.no_grad()
def label_logprobs(model, tokenizer, prompts, labels, batch_size=32):
    """Log-probability of " " + label right after each prompt: an array (prompts, labels)."""
    label_ids = [tokenizer(" " + label, add_special_tokens=False)["input_ids"] for label in labels]
    prompt_ids = tokenizer(list(prompts))["input_ids"]
    rows = [(i, j, p + ids) for i, p in enumerate(prompt_ids) for j, ids in enumerate(label_ids)]
    scores = torch.zeros(len(prompts), len(labels), dtype=torch.float64)
    model.eval()
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        ids = [torch.tensor(row) for *_, row in batch]
        input_ids = pad_sequence(ids, batch_first=True, padding_value=tokenizer.pad_token_id)
        mask = pad_sequence([torch.ones_like(x) for x in ids], batch_first=True)  # right padding
        out = model(input_ids=input_ids.to(model.device), attention_mask=mask.to(model.device))
        logp = torch.log_softmax(out.logits.float(), dim=-1)
        for b, (i, j, row) in enumerate(batch):  # the label's tokens: row[len(prompt):]
            n = len(prompt_ids[i])  # token t is predicted by the logits at t - 1
            scores[i, j] = sum(logp[b, t - 1, row[t]].item() for t in range(n, len(row)))
    return scores.numpy()


def shared_prefix_length(rows: Sequence[Sequence[int]]) -> int:
    """How many leading token ids every row shares, leaving each row at least one of its own."""
    if not rows:
        return 0
    rows = [list(ids) for ids in rows]  # commonprefix compares any lists item by item
    return max(min(len(os.path.commonprefix(rows)), min(map(len, rows)) - 1), 0)


def _forward_rows(model: Any, rows: Sequence[Sequence[int]], n_shared: int, prefix: Any,
                  **kw: Any):  # fmt: skip
    """Logits for rows that share their first ``n_shared`` tokens: the prefix's cache (copied: the
    forward appends to it) is repeated across the batch, and each row runs its own tokens,
    left-padded, at the positions it would see alone."""
    own = [list(ids[n_shared:]) for ids in rows]
    width = max(len(ids) for ids in own)
    input_ids = torch.tensor([[0] * (width - len(ids)) + ids for ids in own])  # pads: masked
    attention_mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in own])
    position_ids = n_shared + (attention_mask.cumsum(-1) - 1).clamp(min=0)
    if n_shared:
        cache = copy.deepcopy(prefix)
        cache.batch_repeat_interleave(len(rows))
        ones = torch.ones((len(rows), n_shared), dtype=attention_mask.dtype)
        attention_mask = torch.cat([ones, attention_mask], dim=1)
        kw.update(past_key_values=cache, use_cache=True)
    return model(
        input_ids=input_ids.to(model.device),
        attention_mask=attention_mask.to(model.device),
        position_ids=position_ids.to(model.device),
        **kw,
    ).logits


def score_labels(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    labels: Sequence[str] = LABELS,
    batch_size: int = 32,
    share_prefix: bool = True,
) -> np.ndarray:
    """:func:`label_logprobs`' scores (up to float rounding), faster: with one-token labels each
    prompt is one left-padded row, its shared prefix run once (``share_prefix``); otherwise the
    lesson's way."""
    if len(prompts) == 0:
        return np.zeros((0, len(labels)), dtype=np.float64)
    encoded = [list(ids) for ids in tokenizer(list(prompts))["input_ids"]]  # one batched call
    empty = [i for i, ids in enumerate(encoded) if not ids]
    if empty:
        raise ValueError(f"prompt {empty[0]} is empty after tokenization: nothing to condition on")
    label_ids = [tokenizer(" " + label, add_special_tokens=False)["input_ids"] for label in labels]
    if any(len(ids) != 1 for ids in label_ids):  # the lesson's way: a row per (prompt, label)
        with inference(model):
            return label_logprobs(model, tokenizer, prompts, labels, batch_size).astype(np.float64)
    n_shared = shared_prefix_length(encoded) if share_prefix else 0
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    scores = np.zeros((len(encoded), len(labels)), dtype=np.float64)
    with inference(model):
        shared = torch.tensor([encoded[0][:n_shared]], device=model.device)  # run once
        prefix = model(input_ids=shared, use_cache=True).past_key_values if n_shared else None
        starts = range(0, len(order), batch_size)
        for start in progress(starts, desc="label scoring", show=on_gpu(model)):
            idx = order[start : start + batch_size]
            rows = [encoded[i] for i in idx]  # left-padded: every prompt ends in the last column
            logits = _forward_rows(model, rows, n_shared, prefix, logits_to_keep=1)
            logp = torch.log_softmax(logits[:, -1].float(), dim=-1)[:, [i[0] for i in label_ids]]
            scores[idx] = logp.double().cpu().numpy()
    return scores


def predict_by_scoring(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    labels: Sequence[str] = LABELS,
    batch_size: int = 32,
) -> list[str]:
    """The most likely label for each prompt, by :func:`score_labels`."""
    scores = score_labels(model, tokenizer, prompts, labels=labels, batch_size=batch_size)
    return [labels[j] for j in scores.argmax(axis=1)]

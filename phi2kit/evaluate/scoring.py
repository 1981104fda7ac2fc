"""Label scoring: a causal LM as a classifier that cannot give an invalid label (02).

For each prompt, the log-likelihood of every candidate completion ``" " + label``; the
prediction is the best one.

- :func:`label_logprobs` is the idea as notebook 02 writes it in a cell (kept identical):
  one row per (prompt, label), right-padded, batched.
- :func:`score_labels` computes the same scores faster, for ``bench/bench_eval.py`` and
  :func:`predict_by_scoring`: one row per prompt when every label is one token, and the
  prompts' shared instruction run once per batch as a KV cache.

The other way, generation and parsing, is in :mod:`phi2kit.evaluate.classification`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence

from phi2kit.data.sentiment import LABELS
from phi2kit.generation import device_of, inference, pad_id_of
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
    """How many leading token ids every row shares, leaving each row at least one of its own.

    >>> shared_prefix_length([[5, 6, 7, 8], [5, 6, 9], [5, 6, 7]])
    2
    >>> shared_prefix_length([[5, 6], [5, 6, 7]])  # the first row keeps its last token
    1
    """
    if not rows:
        return 0
    n = min(len(ids) for ids in rows) - 1
    first = rows[0]
    for ids in rows[1:]:
        n = next((k for k in range(n) if ids[k] != first[k]), n)
    return max(n, 0)


def _prefix_cache(model: Any, ids: Sequence[int]) -> Any:
    """The keys and values of ``ids`` run once, for one row (``None`` for no prefix)."""
    if not ids:
        return None
    return model(input_ids=torch.tensor([list(ids)], device=device_of(model)),
                 use_cache=True).past_key_values  # fmt: skip


def _forward_rows(model: Any, rows: Sequence[Sequence[int]], n_shared: int, pad_id: int,
                  prefix: Any = None, **kw: Any):  # fmt: skip
    """Logits for token-id rows that all start with the same ``n_shared`` tokens.

    The shared prefix runs once, for one row (or comes in ``prefix``, from
    :func:`_prefix_cache`, left as it was); its keys and values are repeated across the
    batch (``past_key_values``), so each row runs only its own tokens. Those are left-padded
    by hand (the mask comes from the true lengths, whatever the tokenizer's padding side or
    pad token), and explicit position ids give every row the positions it would see alone.
    """
    device = device_of(model)
    own = [list(ids[n_shared:]) for ids in rows]
    width = max(len(ids) for ids in own)
    input_ids = torch.tensor([[pad_id] * (width - len(ids)) + ids for ids in own])
    attention_mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in own])
    position_ids = n_shared + (attention_mask.cumsum(-1) - 1).clamp(min=0)
    if n_shared:
        cache = copy.deepcopy(prefix) if prefix is not None else _prefix_cache(
            model, rows[0][:n_shared])  # the forward below appends to it
        cache.batch_repeat_interleave(len(rows))
        ones = torch.ones((len(rows), n_shared), dtype=attention_mask.dtype)
        attention_mask = torch.cat([ones, attention_mask], dim=1)
        kw.update(past_key_values=cache, use_cache=True)
    return model(
        input_ids=input_ids.to(device),
        attention_mask=attention_mask.to(device),
        position_ids=position_ids.to(device),
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
    """Summed log-likelihood of each completion ``" " + label`` after each prompt.

    The prompt is tokenized as in training (the tokenizer's special tokens included) and the
    completion separately, without special tokens. Padding is done by hand, with an attention
    mask built from the lengths: the result does not depend on the tokenizer's padding side,
    nor on the pad token being eos. What keeps it fast, none of it changing the scores beyond
    float rounding:

    - **One row per prompt** when every label is a single token (as in the tiny tokenizer
      and Phi-2's, for the default labels): the labels are entries of one next-token
      distribution, read at the last column of left-padded rows (``logits_to_keep=1``).
      Otherwise every (prompt, label) pair is a row, as in :func:`label_logprobs`.
    - **The shared prefix once.** Every prompt starts with the same instruction; it runs
      once, for one row, and its keys and values are reused by every row of every batch
      (``share_prefix``).
    - **Batches of similar length**: prompts are sorted by length, so there is little
      padding; scores come back in the input order.

    Args:
        model: A causal LM (``transformers`` or ``peft``) returning ``.logits``.
        tokenizer: Its tokenizer.
        prompts: Prompts ending where the label should begin (``"...Sentiment:"``).
        labels: Candidate label words.
        batch_size: Rows per forward pass.
        share_prefix: Run the prompts' common token prefix once.

    Returns:
        Array of shape ``(len(prompts), len(labels))``; the higher, the more likely.
    """
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
        prefix = _prefix_cache(model, encoded[0][:n_shared])
        starts = range(0, len(order), batch_size)
        for start in progress(starts, desc="label scoring", show=on_gpu(model)):
            idx = order[start : start + batch_size]
            rows = [encoded[i] for i in idx]  # left-padded: every prompt ends in the last column
            logits = _forward_rows(model, rows, n_shared, pad_id_of(tokenizer), prefix,
                                   logits_to_keep=1)  # fmt: skip
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

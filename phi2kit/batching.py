"""How much of a training batch is real work: token counts, useful-token fraction, masked loss.

A batch is a rectangle ``(rows, columns)``; the model computes every cell. Padding cells are
wasted work, and since Phi-2's pad token *is* its eos token, padding must be found through
the attention mask, never through the token id.

- :func:`token_counts` (notebook 04's cell) counts collated batches: non-pad tokens, cells
  computed, supervised tokens (``labels != -100``) and supervised positions that are padding
  (a bug if > 0); :func:`count_tokens` gives one batch's as :class:`TokenCounts`.
- :class:`CountingCollator` wraps a trainer's collator and counts every batch it builds, so
  the counts are those of the batches the model actually trained on.
- :func:`masked_loss` is the mean cross-entropy over supervised tokens only (the eval loss
  on answers), weighted by token, for any model and dataloader.
- :func:`length_grouped_indices` / :class:`SeededLengthGroupedSampler` order an epoch so
  that each batch holds examples of similar length while the batches come in random order;
  :func:`group_by_length` makes a trainer use it (``sft_trainer`` does).

    trainer.data_collator = CountingCollator(trainer.data_collator)
    trainer.train()
    print(trainer.data_collator.counts.useful_fraction)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers.trainer_pt_utils import LengthGroupedSampler

from phi2kit.logs import on_gpu, progress

IGNORE_INDEX = -100  # label value that the loss skips (PyTorch's and transformers' default)
#: Batches per mega-batch: examples are sorted by length within a mega-batch of this many
#: batches (transformers' cap too, but it also shrinks the mega-batch to a quarter of the data).
MEGA_BATCHES = 50


@dataclass
class TokenCounts:
    """Token counts of one or more collated batches.

    Args:
        computed: Cells the model computes: ``input_ids.numel()`` summed over batches.
        non_pad: Real tokens: ``attention_mask.sum()`` (all cells in a padding-free batch,
            which has no attention mask and no padding).
        supervised: Positions with a label other than ``-100``.
        supervised_pad: Supervised positions where ``attention_mask == 0``: loss on padding.
        batches: How many batches were counted.
    """

    computed: int = 0
    non_pad: int = 0
    supervised: int = 0
    supervised_pad: int = 0
    batches: int = 0

    def __add__(self, other: TokenCounts) -> TokenCounts:
        return TokenCounts(
            self.computed + other.computed,
            self.non_pad + other.non_pad,
            self.supervised + other.supervised,
            self.supervised_pad + other.supervised_pad,
            self.batches + other.batches,
        )

    @property
    def useful_fraction(self) -> float:
        """Non-pad tokens over tokens computed (1.0 = no padding at all)."""
        return self.non_pad / self.computed if self.computed else 0.0


def token_counts(batches):  # (real tokens, tokens computed, supervised tokens, supervised padding)
    """Notebook 04's count (the same code as its cell), over collated batches that hold
    ``attention_mask`` and ``labels``."""
    real = computed = supervised = on_pad = 0
    for b in batches:
        mask, sup = b["attention_mask"], b["labels"] != -100
        real, computed = real + int(mask.sum()), computed + mask.numel()
        supervised, on_pad = supervised + int(sup.sum()), on_pad + int((sup & (mask == 0)).sum())
    return real, computed, supervised, on_pad


def count_tokens(batch: Mapping[str, Any]) -> TokenCounts:
    """:func:`token_counts` of one batch, as :class:`TokenCounts`.

    ``input_ids`` is required; no ``attention_mask`` means no padding (a padding-free
    batch), no ``labels`` means nothing supervised. Padding is found through the mask
    (pad = eos in Phi-2, so the id says nothing).
    """
    ids = torch.as_tensor(batch["input_ids"])
    mask, labels = batch.get("attention_mask"), batch.get("labels")
    mask = torch.ones_like(ids) if mask is None else torch.as_tensor(mask)
    if mask.shape != ids.shape:
        raise ValueError(
            f"attention_mask shape {tuple(mask.shape)} != input_ids {tuple(ids.shape)}"
        )
    labels = torch.full_like(ids, IGNORE_INDEX) if labels is None else torch.as_tensor(labels)
    real, computed, supervised, on_pad = token_counts([{"attention_mask": mask, "labels": labels}])
    return TokenCounts(computed, real, supervised, on_pad, 1)


class CountingCollator:
    """Wrap a data collator and add up :func:`count_tokens` of every batch it returns.

    Set it as ``trainer.data_collator`` before ``trainer.train()``: the Trainer builds its
    dataloader from that attribute, so the counts are those of the batches trained on.
    """

    def __init__(self, collator: Callable[[list], Mapping[str, Any]]) -> None:
        self.collator = collator
        self.counts = TokenCounts()

    def __call__(self, features: list) -> Mapping[str, Any]:
        batch = self.collator(features)
        self.counts = self.counts + count_tokens(batch)
        return batch


def _length(batches: Iterable) -> int | None:
    """``len(batches)`` when it has one (a DataLoader does), for the progress bar."""
    try:
        return len(batches)  # type: ignore[arg-type]
    except TypeError:
        return None


@torch.no_grad()  # evaluation only: no graph over the full-vocabulary logits
def masked_loss(model: torch.nn.Module, batches: Iterable[Mapping[str, Any]]) -> float:
    """Mean next-token cross-entropy over supervised positions (``labels != -100``).

    Every supervised token weighs the same, whatever its batch (the Trainer's eval loss
    averages per batch instead). With trl's prompt/completion batches this is the loss on
    the answers and their final EOS.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, n = 0.0, 0
    try:
        for batch in progress(batches, total=_length(batches), desc="loss", show=on_gpu(model)):
            inputs = {k: torch.as_tensor(v).to(device) for k, v in batch.items() if k != "labels"}
            labels = torch.as_tensor(batch["labels"]).to(device)
            logits = model(**inputs, use_cache=False).logits.float()
            shift_logits, shift_labels = logits[:, :-1], labels[:, 1:]
            loss = torch.nn.functional.cross_entropy(
                shift_logits.reshape(-1, shift_logits.shape[-1]),
                shift_labels.reshape(-1),
                ignore_index=IGNORE_INDEX,
                reduction="sum",
            )
            total += float(loss)
            n += int((shift_labels != IGNORE_INDEX).sum())
    finally:
        model.train(was_training)
    if n == 0:
        raise ValueError("no supervised tokens (all labels are -100)")
    return total / n


def length_grouped_indices(
    lengths: Sequence[int],
    batch_size: int,
    generator: torch.Generator | None = None,
    mega_batches: int = MEGA_BATCHES,
) -> list[int]:
    """One epoch's example order: similar lengths within a batch, batches in random order.

    1. Shuffle all examples, and cut them into mega-batches of ``mega_batches`` batches.
    2. Sort each mega-batch by length and cut it into batches of ``batch_size``.
    3. Shuffle the order of all batches (no curriculum: a short batch is as likely early as
       late), then move the batch holding the longest example to the front, so that an
       out-of-memory error shows up at the first step. An incomplete batch goes last.

    transformers' ``get_length_grouped_indices`` makes the mega-batch at most a quarter
    of the data (``len // (4 * batch_size)`` batches) and keeps each mega-batch sorted
    longest first: on 96 examples in batches of 8 it sorts within groups of 24 only, and
    its batches waste 13 % of their cells on padding (a full sort: 4 %).

    ``batch_size`` is the examples per optimizer step over all processes (per-device batch
    x gradient accumulation x processes): every micro-batch is a slice of one sorted run.
    """
    n = len(lengths)
    if batch_size < 1 or mega_batches < 1:
        raise ValueError(f"batch_size and mega_batches must be >= 1: {batch_size}, {mega_batches}")
    order = torch.randperm(n, generator=generator).tolist()
    mega = batch_size * mega_batches
    batches: list[list[int]] = []
    for start in range(0, n, mega):
        # stable sort of a random permutation: equal lengths stay in random order
        group = sorted(order[start : start + mega], key=lambda i: lengths[i])
        batches += [group[i : i + batch_size] for i in range(0, len(group), batch_size)]
    tail = [b for b in batches if len(b) < batch_size]  # at most one, from the last group
    full = [b for b in batches if len(b) == batch_size]
    full = [full[i] for i in torch.randperm(len(full), generator=generator).tolist()]
    batches = full + tail
    if full:
        first = max(range(len(batches)), key=lambda k: max(lengths[i] for i in batches[k]))
        if first < len(full):  # an incomplete batch must stay last
            batches.insert(0, batches.pop(first))
    return [i for batch in batches for i in batch]


class SeededLengthGroupedSampler(LengthGroupedSampler):
    """:func:`length_grouped_indices`, reshuffled each epoch from ``(seed, epoch)`` only.

    A ``LengthGroupedSampler`` (same ``lengths`` and ``batch_size``) with another order.

    transformers' ``LengthGroupedSampler`` shuffles with the *global* torch RNG, so a run
    resumed in the middle of a later epoch sees another order than the uninterrupted run.
    Here the order is a function of the seed and the epoch (the Trainer calls
    ``set_epoch``), so a resumed run replays it exactly.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        seed: int = 0,
        mega_batches: int = MEGA_BATCHES,
    ) -> None:
        super().__init__(batch_size, lengths=list(lengths))
        self.seed = seed
        self.mega_batches = mega_batches
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(
            length_grouped_indices(self.lengths, self.batch_size, generator, self.mega_batches)
        )


def group_by_length(trainer):
    """Make ``trainer`` use :class:`SeededLengthGroupedSampler` where it would group by length.

    Wraps the Trainer's ``_get_train_sampler`` (a private method, the only hook for the
    sampler): when it builds transformers' ``LengthGroupedSampler``, that sampler's lengths
    (the tokenized lengths) go to ours, with the batch of one optimizer step over all
    processes (so 2 processes x 4 and 1 process x 8 see the same examples per step) and the
    seed ``data_seed`` (else ``seed``). Other strategies (``"random"``) are left alone.
    Calling it twice does nothing more.
    """
    if getattr(trainer, "_phi2kit_group_by_length", False):
        return trainer
    build = trainer._get_train_sampler

    def get_train_sampler(train_dataset=None):
        sampler = build(train_dataset)
        if type(sampler) is not LengthGroupedSampler:
            return sampler
        args = trainer.args
        seed = args.data_seed if args.data_seed is not None else args.seed
        return SeededLengthGroupedSampler(
            sampler.lengths, sampler.batch_size * args.world_size, seed=seed
        )

    trainer._get_train_sampler = get_train_sampler
    trainer._phi2kit_group_by_length = True
    return trainer

"""What a training batch computes (:func:`token_counts`, notebook 04's cell), and the order
batches come in: similar lengths in random order, seeded for an exact resume."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers.trainer_pt_utils import LengthGroupedSampler

#: Batches per mega-batch: examples are sorted by length within a mega-batch of this many
#: batches (transformers' cap too, but it also shrinks the mega-batch to a quarter of the data).
MEGA_BATCHES = 50


def token_counts(batches):  # (real tokens, tokens computed, supervised tokens, supervised padding)
    """Notebook 04's count, over collated batches that hold ``attention_mask`` and ``labels``;
    supervised padding is a bug. Padding is found through the attention mask: Phi-2's pad
    token *is* its eos token."""
    real = computed = supervised = on_pad = 0
    for b in batches:
        mask, sup = b["attention_mask"], b["labels"] != -100
        real, computed = real + int(mask.sum()), computed + mask.numel()
        supervised, on_pad = supervised + int(sup.sum()), on_pad + int((sup & (mask == 0)).sum())
    return real, computed, supervised, on_pad


def length_grouped_indices(
    lengths: Sequence[int],
    batch_size: int,
    generator: torch.Generator | None = None,
    mega_batches: int = MEGA_BATCHES,
) -> list[int]:
    """One epoch's order: lengths sorted within mega-batches of ``mega_batches`` batches, batches
    shuffled, the longest first (out of memory shows at step 1), an incomplete one last;
    ``batch_size``: examples per optimizer step over all processes."""
    order = torch.randperm(len(lengths), generator=generator).tolist()
    mega = batch_size * mega_batches
    batches: list[list[int]] = []
    for start in range(0, len(order), mega):
        # stable sort of a random permutation: equal lengths stay in random order
        group = sorted(order[start : start + mega], key=lambda i: lengths[i])
        batches += [group[i : i + batch_size] for i in range(0, len(group), batch_size)]
    tail = [b for b in batches if len(b) < batch_size]  # at most one, from the last group
    full = [b for b in batches if len(b) == batch_size]
    full = [full[i] for i in torch.randperm(len(full), generator=generator).tolist()]
    batches = full + tail
    if full:
        longest = max(range(len(batches)), key=lambda k: max(lengths[i] for i in batches[k]))
        if longest < len(full):  # an incomplete batch stays last
            batches.insert(0, batches.pop(longest))
    return [i for batch in batches for i in batch]


class SeededLengthGroupedSampler(LengthGroupedSampler):
    """:func:`length_grouped_indices`, reshuffled each epoch from ``(seed, epoch)`` only:
    transformers' sampler draws from the global RNG, so a resumed run would see another order."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int = 0) -> None:
        super().__init__(batch_size, lengths=list(lengths))
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(length_grouped_indices(self.lengths, self.batch_size, generator))


def group_by_length(trainer):
    """Make ``trainer`` use :class:`SeededLengthGroupedSampler` where it would group by length,
    through its private ``_get_train_sampler`` (the only hook), seeded by ``data_seed`` (else
    ``seed``); a second call does nothing."""
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

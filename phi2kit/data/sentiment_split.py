"""Duplicate headlines, and a stratified split with no leak (notebook 02, sections 2.3-2.4)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from phi2kit.data.files import DataError
from phi2kit.data.sentiment import LABELS, _normalize, check_labels


@dataclass
class DuplicateReport:
    """Counts of repeated headlines (compared after collapsing whitespace); ``examples``:
    up to five conflicting headlines, then other repeats, each with its label counts."""

    n_rows: int
    n_unique_texts: int
    n_duplicate_rows: int
    n_conflicting_texts: int
    n_dropped_ties: int = 0
    examples: list[dict[str, Any]] = field(default_factory=list)

    def __str__(self) -> str:
        text = (
            f"{self.n_rows} rows, {self.n_unique_texts} distinct headlines: "
            f"{self.n_duplicate_rows} duplicate rows, {self.n_conflicting_texts} headlines "
            "with conflicting labels"
        )
        # Only deduplicate() drops ties; find_duplicates() changes nothing, so says nothing.
        return text + (f" ({self.n_dropped_ties} ties dropped)" if self.n_dropped_ties else "")


def _label_counts(df: pd.DataFrame) -> dict[str, Counter]:
    """Normalized headline -> Counter of its labels, in order of first appearance."""
    counts: dict[str, Counter] = {}
    for text, label in zip(df["text"], df["label"], strict=True):
        counts.setdefault(_normalize(text), Counter())[label] += 1
    return counts


def find_duplicates(df: pd.DataFrame) -> DuplicateReport:
    """Count repeated headlines in ``df`` (columns ``text``, ``label``) without changing it."""
    counts = _label_counts(df)
    conflicting = [t for t, c in counts.items() if len(c) > 1]
    repeated = [t for t, c in counts.items() if len(c) == 1 and c.total() > 1]
    examples = [{"text": t, "labels": dict(counts[t])} for t in conflicting + repeated]
    n = len(df)
    return DuplicateReport(n, len(counts), n - len(counts), len(conflicting), 0, examples[:5])


def deduplicate(df: pd.DataFrame) -> tuple[pd.DataFrame, DuplicateReport]:
    """One row per headline (its first spelling), with its majority label; a tie has no
    honest label and is dropped. Returns the frame (fresh index) and the report."""
    report = find_duplicates(df)
    first_text = df["text"].groupby(df["text"].map(_normalize), sort=False).first()
    texts, labels = [], []
    for key, counts in _label_counts(df).items():
        (top, n_top), *rest = counts.most_common()
        if rest and rest[0][1] == n_top:
            report.n_dropped_ties += 1
            continue
        texts.append(first_text[key])
        labels.append(top)
    return pd.DataFrame({"text": texts, "label": labels}), report


@dataclass
class SentimentSplits:
    """Train, test and eval frames (columns ``text``, ``label``), and notes on how."""

    train: pd.DataFrame
    test: pd.DataFrame
    eval: pd.DataFrame
    notes: list[str] = field(default_factory=list)


def split_sentiment(df: pd.DataFrame, n_train: int = 300, n_test: int = 300, n_eval: int = 50,
                    seed: int = 42, labels: Sequence[str] = LABELS) -> SentimentSplits:  # fmt: skip
    """Deduplicate, draw per class ``n_train`` and ``n_test`` without replacement, then ``n_eval``
    from the rest (with replacement, and a note, where too few are left); a class too small raises
    :class:`DataError` naming a split that fits."""
    if min(n_train, n_test, n_eval) < 0:
        raise ValueError("n_train, n_test and n_eval must be >= 0")
    labels = check_labels(labels)
    unknown = sorted(set(df["label"]) - set(labels))
    if unknown:
        raise DataError(f"labels {unknown} are not in the label set {list(labels)}")
    where = {"path": df.attrs.get("path")}  # the file, for the messages below
    df, report = deduplicate(df)
    notes = [f"deduplicated: {report}"]
    # One generator per class, and another for eval draws and shuffles: train and test then
    # depend only on (seed, n_train, n_test), never on n_eval or on the other classes.
    rng = np.random.default_rng([seed, len(labels)])
    parts: dict[str, list[pd.DataFrame]] = {"train": [], "test": [], "eval": []}
    counts = {label: int((df["label"] == label).sum()) for label in labels}
    label = min(labels, key=counts.get)  # the class with the fewest headlines decides the fit
    smallest, needed = counts[label], n_train + n_test
    test = max(1, smallest // 5)  # a split every class can give, for the messages below
    noisy = (f" (a test split of {test * len(labels)} headlines is noisy: each moves the "
             f"accuracy by {100 / (test * len(labels)):.0f} points)") if test < 10 else ""
    fits = (f", for example n_train={min(n_train, smallest - test - 1)} n_test={test} n_eval=1"
            f"{noisy}"  # a smaller n_train than yours is kept
            if smallest >= 3 else
            f" (the smallest class has {smallest}: each needs 3, for train, test and eval)")
    ties = report.n_dropped_ties  # a headline whose labels tie: in no class
    tied = f"; {ties} headline(s) whose labels tie were left out" if ties else ""
    if smallest < needed:
        raise DataError(
            f"class {label!r} has {smallest} headlines after deduplication (the fewest{tied}); "
            f"the split needs n_train + n_test = {n_train} + {n_test} = {needed}"
            f"{', and 1 more for eval' if n_eval else ''}. Lower n_train or n_test{fits}.", **where
        )
    if smallest == needed and n_eval:
        raise DataError(
            f"class {label!r} has {smallest} headlines after deduplication (the fewest{tied}), "
            f"and train + test take all of them: none is left for n_eval = {n_eval}. Lower n_test "
            f"(or n_train){fits}, or pass n_eval=0.", **where
        )
    for k, label in enumerate(labels):
        rows = df[df["label"] == label]
        rows = rows.iloc[np.random.default_rng([seed, k]).permutation(len(rows))]
        parts["train"].append(rows.iloc[:n_train])
        parts["test"].append(rows.iloc[n_train:needed])
        left = rows.iloc[needed:]
        if len(left) >= n_eval:
            parts["eval"].append(left.iloc[:n_eval])
        else:
            parts["eval"].append(left.iloc[rng.integers(0, len(left), size=n_eval)])
            notes.append(
                f"eval: class {label!r} has only {len(left)} headlines left after train and "
                f"test, so its {n_eval} eval rows are sampled from them with replacement."
            )
    splits = {}
    for name, frames in parts.items():
        joined = pd.concat(frames)
        splits[name] = joined.iloc[rng.permutation(len(joined))].reset_index(drop=True)
    return SentimentSplits(**splits, notes=notes)

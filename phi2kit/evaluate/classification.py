"""Evaluate a causal LM as a classifier (notebooks 02 and 03).

Notebook 02 writes :func:`parse_label` in a cell (the two are kept identical); the metrics
and plots here serve notebook 03, the exercises and the benchmark. Two ways to get a label
out of a causal LM:

- **Label scoring** (:func:`phi2kit.evaluate.scoring.score_labels`): for each prompt, the
  log-likelihood of every candidate completion ``" " + label``; the prediction is the best
  one. It cannot produce an invalid label.
- **Generation** (:func:`predict_by_generation`): greedy decoding, then
  :func:`parse_label`. Outputs that name no label stay ``None`` and count as wrong.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from phi2kit.data.sentiment import LABELS
from phi2kit.generation import generate

if TYPE_CHECKING:
    from matplotlib.figure import Figure

UNPARSED = "unparsed"


def parse_label(text, labels=LABELS):
    """The label word that starts ``text`` (any case; spaces, quotes, ``*:-`` before it skipped).

    Anything else gives None: unparsed, counted as wrong, never mapped to a label.
    """
    alternatives = "|".join(re.escape(label) for label in labels)
    match = re.match(rf"[\s\"'*:\-]*({alternatives})\b", text or "", flags=re.IGNORECASE)
    if match is None:
        return None
    return next(label for label in labels if label.lower() == match.group(1).lower())


def predict_by_generation(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    max_new_tokens: int = 4,
    batch_size: int = 16,
    labels: Sequence[str] = LABELS,
) -> list[str | None]:
    """Greedy generation, parsed with :func:`parse_label`. Unparseable outputs are ``None``."""
    out = generate(
        model, tokenizer, list(prompts), max_new_tokens=max_new_tokens, batch_size=batch_size
    )
    texts = out.texts
    return [parse_label(text, labels) for text in texts]


def _with_unparsed(y_true: Sequence[str], y_pred: Sequence[str | None], labels: Sequence[str]):
    """Check the inputs; map ``None`` predictions to ``"unparsed"``."""
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true has {len(y_true)} items but y_pred has {len(y_pred)}")
    if len(y_true) == 0:
        raise ValueError("nothing to evaluate: y_true is empty")
    unknown = sorted(set(y_true) - set(labels))
    if unknown:
        raise ValueError(f"y_true has labels {unknown} that are not in {list(labels)}")
    return list(y_true), [UNPARSED if p is None else p for p in y_pred]


def classification_metrics(
    y_true: Sequence[str], y_pred: Sequence[str | None], labels: Sequence[str] = LABELS
) -> dict[str, Any]:
    """Accuracy, per-class accuracy (recall), macro F1 and a confusion matrix.

    ``None`` predictions (unparsed generations) count as wrong and are counted in
    ``n_unparsed``; in ``report`` they appear as ``"unparsed"``.

    Returns:
        ``accuracy``, ``per_class_accuracy`` (label -> recall, ``nan`` if absent),
        ``macro_f1`` (over ``labels``), ``n_unparsed``, ``n``, ``report`` (sklearn text
        report) and ``confusion`` (rows: true label, columns: predicted label, both in
        ``labels`` order; unparsed predictions are in no column).
    """
    from sklearn.metrics import classification_report, confusion_matrix, f1_score

    y_true, y_pred = _with_unparsed(y_true, y_pred, labels)
    correct = np.array([t == p for t, p in zip(y_true, y_pred, strict=True)])
    per_class = {}
    for label in labels:
        mask = np.array([t == label for t in y_true])
        per_class[label] = float(correct[mask].mean()) if mask.any() else float("nan")
    return {
        "accuracy": float(correct.mean()),
        "per_class_accuracy": per_class,
        "macro_f1": float(
            f1_score(y_true, y_pred, labels=list(labels), average="macro", zero_division=0)
        ),
        "n_unparsed": y_pred.count(UNPARSED),
        "n": len(y_true),
        "report": classification_report(
            y_true, y_pred, labels=list(labels), zero_division=0, digits=3
        ),
        "confusion": confusion_matrix(y_true, y_pred, labels=list(labels)),
    }


def plot_confusion(
    y_true: Sequence[str],
    y_pred: Sequence[str | None],
    labels: Sequence[str] = LABELS,
    title: str = "Confusion matrix",
) -> Figure:
    """A confusion-matrix figure; an ``unparsed`` column is added when there are any.

    Works headless; in Jupyter, a returned figure displays itself.
    """
    from phi2kit.plotting import new_figure

    y_true, y_pred = _with_unparsed(y_true, y_pred, labels)
    columns = list(labels) + ([UNPARSED] if UNPARSED in y_pred else [])
    counts = Counter(zip(y_true, y_pred, strict=True))
    matrix = np.array([[counts[(t, p)] for p in columns] for t in labels])

    fig, ax = new_figure(
        figsize=(1.4 * len(columns) + 1.5, 1.2 * len(labels) + 1.2), layout="constrained"
    )
    ax.imshow(matrix, cmap="Blues")
    for r in range(matrix.shape[0]):
        for c in range(matrix.shape[1]):
            color = "white" if matrix[r, c] > matrix.max() / 2 else "black"
            ax.text(c, r, str(matrix[r, c]), ha="center", va="center", color=color)
    ax.set_xticks(range(len(columns)), columns)
    ax.set_yticks(range(len(labels)), list(labels))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    return fig


def majority_rate(y_true: Sequence[str]) -> float:
    """Accuracy of always predicting the most common label: the baseline to beat."""
    if len(y_true) == 0:
        raise ValueError("y_true is empty")
    return Counter(y_true).most_common(1)[0][1] / len(y_true)

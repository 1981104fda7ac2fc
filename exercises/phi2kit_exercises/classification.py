"""Notebook 02's :func:`parse_label`, the classification metrics, and 03's head read back
(:func:`predict_logits`, :func:`adapter_keys`), for the exercises and the bench (no lesson or
command imports them). Label scoring is in :mod:`phi2kit.evaluate.scoring`.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from phi2kit.data.sentiment import LABELS
from phi2kit.generation import inference
from phi2kit.logs import on_gpu, progress

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


def classification_metrics(
    y_true: Sequence[str], y_pred: Sequence[str | None], labels: Sequence[str] = LABELS
) -> dict[str, Any]:
    """Accuracy, per-class accuracy (recall, ``nan`` if absent), macro F1, ``n``, sklearn's
    ``report`` and the ``confusion`` matrix (rows: true, columns: predicted, in ``labels``
    order). ``None`` predictions (unparsed) count as wrong, in ``n_unparsed`` and in
    ``report`` as ``"unparsed"``.
    """
    from sklearn.metrics import classification_report, confusion_matrix, f1_score, recall_score

    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true has {len(y_true)} items but y_pred has {len(y_pred)}")
    if len(y_true) == 0:
        raise ValueError("nothing to evaluate: y_true is empty")
    labels = list(labels)
    unknown = sorted(set(y_true) - set(labels))
    if unknown:
        raise ValueError(f"y_true has labels {unknown} that are not in {labels}")
    y_true, y_pred = list(y_true), [UNPARSED if p is None else p for p in y_pred]
    recall = recall_score(y_true, y_pred, labels=labels, average=None, zero_division=np.nan)
    kw = {"labels": labels, "zero_division": 0}
    return {
        "accuracy": sum(t == p for t, p in zip(y_true, y_pred, strict=True)) / len(y_true),
        "per_class_accuracy": {label: float(r) for label, r in zip(labels, recall, strict=True)},
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", **kw)),
        "n_unparsed": y_pred.count(UNPARSED),
        "n": len(y_true),
        "report": classification_report(y_true, y_pred, digits=3, **kw),
        "confusion": confusion_matrix(y_true, y_pred, labels=labels),
    }


def majority_rate(y_true: Sequence[str]) -> float:
    """Accuracy of always predicting the most common label: the baseline to beat."""
    if len(y_true) == 0:
        raise ValueError("y_true is empty")
    return Counter(y_true).most_common(1)[0][1] / len(y_true)


def predict_logits(model, tokenizer, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
    """Classifier logits ``(len(texts), num_labels)`` for already-formatted texts."""
    out = []
    with inference(model):  # eval mode, no autograd graph; the mode is restored after
        starts = range(0, len(texts), batch_size)
        for start in progress(starts, desc="classifying", show=on_gpu(model)):
            enc = tokenizer(
                list(texts[start : start + batch_size]), return_tensors="pt", padding=True
            ).to(model.device)
            out.append(model(**enc).logits.float().cpu().numpy())
    return np.concatenate(out)


def adapter_keys(path: str | Path) -> list[str]:
    """Tensor names in a saved adapter's ``adapter_model.safetensors``."""
    from safetensors.torch import load_file

    return list(load_file(Path(path) / "adapter_model.safetensors"))

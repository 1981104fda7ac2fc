"""A classification head on Phi-2's backbone (notebook 03, whose cells write
:func:`last_token_index`, :func:`classify_by_hand` and :func:`compute_metrics`), as one call each
for ``phi2kit train classifier``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from sklearn.metrics import accuracy_score, f1_score

from phi2kit.data.sentiment import LABELS, PROMPT_TEMPLATE, build_prompt
from phi2kit.profiles import Profile
from phi2kit.recipes import Recipe

if TYPE_CHECKING:
    import datasets
    import pandas as pd
    from transformers import Trainer


def last_token_index(attention_mask):
    """The last position with attention_mask == 1 in each row."""
    positions = torch.arange(attention_mask.shape[-1], device=attention_mask.device)
    return (positions * (attention_mask != 0)).argmax(-1)


def classify_by_hand(backbone, score, enc):
    """Backbone, then `score` at each row's last real token: (batch, labels) logits."""
    hidden = backbone(**enc).last_hidden_state  # (batch, seq, hidden)
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    return score(hidden)[rows, last_token_index(enc["attention_mask"])]


def compute_metrics(eval_pred):
    logits, labels = eval_pred
    preds = logits.argmax(-1)
    return {
        "accuracy": accuracy_score(labels, preds),
        "macro_f1": f1_score(labels, preds, average="macro"),
    }


def load_classifier(
    profile: Profile | str = "auto",
    *,
    quantize_4bit: bool | None = None,
    labels: Sequence[str] = LABELS,
):
    """transformers' ``AutoModelForSequenceClassification`` for the profile: a fresh ``score`` head,
    one output per label (``id2label``), the base in nf4 when ``quantize_4bit``."""
    from phi2kit.models import load_model

    model = load_model(profile, quantize_4bit=quantize_4bit, num_labels=len(labels))
    model.config.id2label = dict(enumerate(labels))
    model.config.label2id = {label: i for i, label in enumerate(labels)}
    return model


def tokenize_headlines(
    df: pd.DataFrame,
    tokenizer,
    max_length: int,
    *,
    labels: Sequence[str] = LABELS,
    template: str = PROMPT_TEMPLATE,
) -> datasets.Dataset:
    """``input_ids``, ``attention_mask`` and ``labels`` (indices into ``labels``), unpadded, of
    notebook 02's prompt, so the head reads where 02 reads the label."""
    import datasets

    labels = list(labels)
    texts = [build_prompt(t, template, labels) for t in df["text"]]
    enc = tokenizer(texts, truncation=True, max_length=max_length)
    return datasets.Dataset.from_dict(
        {
            "input_ids": enc["input_ids"],
            "attention_mask": enc["attention_mask"],
            "labels": [labels.index(label) for label in df["label"]],
        }
    )


def classifier_trainer(
    model,
    tokenizer,
    train_dataset,
    profile: Profile,
    recipe: Recipe,
    output_dir: str | Path,
    eval_dataset=None,
    **overrides,
) -> Trainer:
    """HF ``Trainer``, right padding, :func:`compute_metrics`; ``overrides``: training arguments."""
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    from phi2kit.training import common_args, finish_trainer

    if tokenizer.padding_side != "right":
        raise ValueError("train with tokenizer.padding_side='right' (load_tokenizer's default)")
    overrides.setdefault("label_names", ["labels"])  # PEFT's wrapper hides forward's signature
    trainer = Trainer(
        model=model,
        args=TrainingArguments(**common_args(profile, recipe, output_dir) | overrides),
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=compute_metrics,
    )
    # transformers 5.23's classifiers return a batch's mean loss yet accept loss kwargs, so the
    # Trainer would not divide by gradient accumulation (notebook 03, 3.7)
    trainer.loss_is_scaled_for_ga = False
    return finish_trainer(trainer)

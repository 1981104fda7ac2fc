"""A classification head on Phi-2's backbone (notebook 03).

A causal LM is a **backbone** (``model.model``: embeddings, decoder layers, final norm) and
a **head** (``lm_head``: hidden -> vocabulary). A sequence classifier keeps the backbone and
swaps the head for ``score`` (hidden -> ``num_labels``, no bias), read at the last real
token of each sequence.

- :class:`PhiClassifier` is that model. Its weight names are those of transformers'
  ``PhiForSequenceClassification`` (``model.*``, ``score.weight``), so state dicts and PEFT
  adapters move freely between the two. One difference: it pools the last position where
  ``attention_mask == 1``. Transformers (5.23) pools the last token whose id is not
  ``pad_token_id``; with ``pad = eos`` (Phi-2) it skips every EOS at the *end* of a text and
  reads the token before, as if the EOS were absent. An EOS inside a text is fine, and for
  any padding side the two agree to the bit on texts that do not end with EOS.
- :func:`classifier_from_causal_lm` builds it around a loaded causal LM (fp or 4-bit);
  :func:`load_classifier` loads and builds in one call, with one ``quantize_4bit`` switch.
- :func:`classifier_trainer` is the HF ``Trainer`` with dynamic padding, the metrics of
  :func:`compute_metrics` and, optionally, a class-weighted loss (:func:`weighted_loss`).
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutputWithPast
from transformers.models.phi.modeling_phi import PhiModel, PhiPreTrainedModel

from phi2kit.data.sentiment import LABELS, PROMPT_TEMPLATE, build_prompt
from phi2kit.evaluate.classification import classification_metrics
from phi2kit.generation import device_of, inference
from phi2kit.logs import on_gpu, progress
from phi2kit.profiles import Profile
from phi2kit.recipes import Recipe

if TYPE_CHECKING:
    import datasets
    import pandas as pd
    from transformers import EvalPrediction, Trainer


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last position with ``attention_mask == 1`` in each row.

    Correct for right padding (the last real token sits before the pads) and for left
    padding (it sits in the last column), whatever token ids the pads or the text hold.
    """
    positions = torch.arange(attention_mask.shape[-1], device=attention_mask.device)
    return (positions * (attention_mask != 0)).argmax(-1)


def cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    weight: torch.Tensor | None = None,
    num_items_in_batch: int | torch.Tensor | None = None,
) -> torch.Tensor:
    """``sum_i w[y_i] * CE_i / n``: n is ``num_items_in_batch`` (the Trainer's count over a
    whole accumulated batch) or else the batch size.

    Without ``weight`` this is plain mean cross entropy. With the weights of
    :func:`class_weights` (mean 1 over the training set) a rare-class example counts more,
    and the Trainer's gradient accumulation stays exact because nothing depends on the
    other micro-batches.
    """
    labels = labels.view(-1).to(logits.device)
    weight = None if weight is None else weight.to(logits.device, torch.float32)
    n = labels.numel() if num_items_in_batch is None else num_items_in_batch
    if torch.is_tensor(n):
        n = n.to(logits.device)
    # reduction="sum": torch's weighted "mean" divides by the summed weights, not by n
    return nn.functional.cross_entropy(logits.float(), labels, weight=weight, reduction="sum") / n


class PhiClassifier(PhiPreTrainedModel):
    """Phi backbone + ``score`` head, pooled at the last attended position.

    Args:
        config: A ``PhiConfig`` with ``num_labels`` and ``pad_token_id`` set.
        backbone: An existing ``PhiModel`` to reuse (``causal_lm.model``); ``None`` builds
            a freshly initialized one from ``config``.
    """

    def __init__(self, config, backbone: PhiModel | None = None) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = backbone if backbone is not None else PhiModel(config)
        self.score = nn.Linear(config.hidden_size, config.num_labels, bias=False)
        self.post_init()  # initializes `score` only: the backbone's weights are marked loaded

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> SequenceClassifierOutputWithPast:
        """Logits ``(batch, num_labels)`` at each row's last attended token; loss if labels."""
        kwargs.pop("return_dict", None)
        num_items = kwargs.pop("num_items_in_batch", None)
        kwargs.setdefault("use_cache", False)  # a classifier never decodes
        out = self.model(
            input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds, **kwargs
        )
        hidden = out.last_hidden_state
        # Score every position, then pick one per row: the same order of operations as
        # transformers, so equal inputs give bit-identical logits. The head is small.
        all_logits = self.score(hidden.to(self.score.weight.dtype))
        if attention_mask is None:  # no mask: no padding, every position is real
            attention_mask = torch.ones(hidden.shape[:2], dtype=torch.long, device=hidden.device)
        last = last_token_index(attention_mask.to(hidden.device))
        logits = all_logits[torch.arange(hidden.shape[0], device=hidden.device), last]
        loss = None if labels is None else cross_entropy(logits, labels, None, num_items)
        return SequenceClassifierOutputWithPast(
            loss=loss,
            logits=logits,
            past_key_values=out.past_key_values,
            hidden_states=out.hidden_states,
            attentions=out.attentions,
        )


def classifier_from_causal_lm(
    causal_lm: nn.Module, labels: Sequence[str] = LABELS
) -> PhiClassifier:
    """A :class:`PhiClassifier` that shares ``causal_lm.model`` and has a fresh ``score``.

    The LM head is left behind. The new head is fp32 even on a 4-bit or fp16 base, and a
    4-bit base stays marked as quantized (so PEFT and the Trainer treat it as QLoRA).
    ``config.pad_token_id`` is always set (to eos when the LM has none).
    """
    config = copy.deepcopy(causal_lm.config)
    config.num_labels = len(labels)
    config.id2label = dict(enumerate(labels))
    config.label2id = {label: i for i, label in enumerate(labels)}
    config.architectures = [PhiClassifier.__name__]
    if config.pad_token_id is None:
        config.pad_token_id = config.eos_token_id
    model = PhiClassifier(config, backbone=causal_lm.model)
    model.score.to(device=next(causal_lm.model.parameters()).device, dtype=torch.float32)
    quant_attrs = ("hf_quantizer", "is_quantized", "is_loaded_in_4bit", "quantization_method")
    for attr in quant_attrs:
        if getattr(causal_lm, attr, None) is not None:
            setattr(model, attr, getattr(causal_lm, attr))
    model.name_or_path = getattr(causal_lm, "name_or_path", "")
    return model


def load_classifier(
    profile: Profile | str = "auto",
    *,
    quantize_4bit: bool | None = None,
    labels: Sequence[str] = LABELS,
) -> PhiClassifier:
    """Load the profile's causal LM (nf4 when ``quantize_4bit``) and put a head on it."""
    from phi2kit.models import load_model

    return classifier_from_causal_lm(load_model(profile, quantize_4bit=quantize_4bit), labels)


# --- Data, loss, metrics, trainer --------------------------------------------------------


def tokenize_headlines(
    df: pd.DataFrame,
    tokenizer,
    max_length: int,
    prompt: bool = True,
    *,
    labels: Sequence[str] = LABELS,
    template: str = PROMPT_TEMPLATE,
) -> datasets.Dataset:
    """``input_ids``, ``attention_mask`` and integer ``labels`` (indices into ``labels``).

    With ``prompt`` the text is notebook 02's prompt (``template``: instruction, headline,
    then ``"Sentiment:"``), so the head reads the same position where 02's LM head predicts
    the label word. Nothing is padded here: :class:`DataCollatorWithPadding` pads per batch.
    """
    import datasets

    labels = list(labels)
    texts = [build_prompt(t, template, labels) if prompt else t for t in df["text"]]
    enc = tokenizer(texts, truncation=True, max_length=max_length)
    return datasets.Dataset.from_dict(
        {
            "input_ids": enc["input_ids"],
            "attention_mask": enc["attention_mask"],
            "labels": [labels.index(label) for label in df["label"]],
        }
    )


def class_weights(labels: Sequence[int | str], classes: Sequence[str] = LABELS) -> torch.Tensor:
    """``n / (num_labels * count_c)`` per class: 1 for balanced data, mean 1 per example.

    Labels may be ints or words of ``classes`` (the label set, in head order). A class
    absent from ``labels`` raises.
    """
    classes = list(classes)
    num_labels = len(classes)
    ids = [classes.index(y) if isinstance(y, str) else int(y) for y in labels]
    counts = Counter(ids)
    missing = [c for c in range(num_labels) if counts[c] == 0]
    if missing:
        raise ValueError(f"classes {missing} do not occur in the training labels")
    return torch.tensor([len(ids) / (num_labels * counts[c]) for c in range(num_labels)])


def weighted_loss(weight: torch.Tensor):
    """A ``compute_loss_func`` for ``Trainer``: :func:`cross_entropy` with class weights."""

    def compute_loss(outputs, labels, num_items_in_batch=None):
        return cross_entropy(outputs.logits, labels, weight, num_items_in_batch)

    return compute_loss


def head_labels(model) -> list[str]:
    """The label words of a classifier (or its PEFT wrapper), in head order (``id2label``)."""
    id2label = {int(k): v for k, v in model.config.id2label.items()}
    return [id2label[i] for i in range(len(id2label))]


def compute_metrics(eval_pred: EvalPrediction, labels: Sequence[str] = LABELS) -> dict[str, float]:
    """Trainer metrics from :func:`~phi2kit.evaluate.classification.classification_metrics`:
    accuracy, macro F1 and the accuracy of each class (``labels``: the head's label words)."""
    logits, label_ids = eval_pred.predictions, eval_pred.label_ids
    logits = logits[0] if isinstance(logits, tuple) else logits
    y_pred = [labels[i] for i in np.asarray(logits).argmax(-1)]
    y_true = [labels[i] for i in np.asarray(label_ids)]
    m = classification_metrics(y_true, y_pred, labels)
    out = {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}
    out.update({f"accuracy_{k}": v for k, v in m["per_class_accuracy"].items()})
    return out


def classifier_trainer(
    model,
    tokenizer,
    train_dataset,
    profile: Profile,
    recipe: Recipe,
    output_dir: str | Path,
    eval_dataset=None,
    weight: torch.Tensor | None = None,
    **overrides,
) -> Trainer:
    """HF ``Trainer`` with dynamic (right) padding, :func:`compute_metrics` over the model's
    own label words (:func:`head_labels`), and the class-weighted loss when ``weight`` is
    given. ``overrides`` go to ``TrainingArguments``."""
    from functools import partial

    from transformers import DataCollatorWithPadding, Trainer

    from phi2kit.training import finish_trainer, training_args

    if tokenizer.padding_side != "right":
        raise ValueError("train with tokenizer.padding_side='right' (load_tokenizer's default)")
    trainer = Trainer(
        model=model,
        args=training_args(profile, recipe, output_dir, **overrides),
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=partial(compute_metrics, labels=head_labels(model)),
        compute_loss_func=None if weight is None else weighted_loss(weight),
    )
    return finish_trainer(trainer)


def predict_logits(model, tokenizer, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
    """Classifier logits ``(len(texts), num_labels)`` for already-formatted texts."""
    device = device_of(model)
    out = []
    with inference(model):  # eval mode, no autograd graph; the mode is restored after
        starts = range(0, len(texts), batch_size)
        for start in progress(starts, desc="classifying", show=on_gpu(model)):
            enc = tokenizer(
                list(texts[start : start + batch_size]), return_tensors="pt", padding=True
            ).to(device)
            out.append(model(**enc).logits.float().cpu().numpy())
    return np.concatenate(out)


def adapter_keys(path: str | Path) -> list[str]:
    """Tensor names in a saved adapter's ``adapter_model.safetensors``."""
    from safetensors import safe_open

    with safe_open(str(Path(path) / "adapter_model.safetensors"), framework="pt") as f:
        return list(f.keys())

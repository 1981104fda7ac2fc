"""Your own label set and prompt template, through loading, splitting, prompts and the head."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from phi2kit.data.files import DataError
from phi2kit.data.sentiment import (
    build_prompt,
    list_labels,
    load_financial_news,
    to_prompt_completion,
)
from phi2kit.data.sentiment_split import split_sentiment

TWO = ("complaint", "praise")


def test_default_prompt_is_unchanged():
    """The tiny model was tuned against this exact text; {labels} must reproduce it."""
    assert build_prompt("Sales  rose") == (
        "Classify the sentiment of this financial news headline as negative, neutral or "
        "positive.\nHeadline: Sales rose\nSentiment:"
    )


def test_labels_and_template_fill_the_prompt():
    assert list_labels(TWO) == "complaint or praise"
    assert list_labels(("a", "b", "c", "d")) == "a, b, c or d"
    template = 'Review {"json": 1}: {headline}\nIs it {labels}?\nAnswer:'
    assert build_prompt("Slow  delivery", template, TWO) == (
        'Review {"json": 1}: Slow delivery\nIs it complaint or praise?\nAnswer:'
    )  # other braces in the template are left alone
    with pytest.raises(ValueError, match="no {headline}"):
        build_prompt("x", "Classify: {text}")
    with pytest.raises(ValueError, match="two or more"):
        list_labels(("only",))


def test_own_file_with_two_labels(tmp_path):
    kaggle = tmp_path / "reviews.csv"
    kaggle.write_text('Complaint,Slow delivery\npraise,"Great, fast"\n', encoding="latin-1")
    df = load_financial_news(kaggle, labels=TWO)
    assert df.to_dict("list") == {"text": ["Slow delivery", "Great, fast"], "label": list(TWO)}
    phrasebank = tmp_path / "phrasebank.csv"
    phrasebank.write_text("sentence,label\nBroken,0\nNice,1\n")
    assert list(load_financial_news(phrasebank, labels=TWO)["label"]) == list(TWO)
    with pytest.raises(DataError, match=r"row 2.*unknown label 'praise' \(expected one of compl"):
        load_financial_news(kaggle, labels=("complaint", "neutral"))


def test_split_draws_each_of_the_given_labels():
    df = pd.DataFrame(
        {
            "text": [f"{y} text {i}" for y in TWO for i in range(12)],
            "label": [y for y in TWO for _ in range(12)],
        }
    )
    splits = split_sentiment(df, n_train=5, n_test=4, n_eval=2, labels=TWO)
    for part, n in [(splits.train, 5), (splits.test, 4), (splits.eval, 2)]:
        assert part["label"].value_counts().to_dict() == dict.fromkeys(TWO, n)
    with pytest.raises(DataError, match="not in the label set"):
        split_sentiment(df, n_train=5, n_test=4, n_eval=2)  # the default three labels
    ds = to_prompt_completion(splits.train, "Text: {headline}\nLabel ({labels}):", TWO)
    assert ds[0]["prompt"].endswith("Label (complaint or praise):")
    assert ds[0]["completion"] in (" complaint", " praise")


def test_classifier_head_takes_the_label_set(tiny_profile, tiny_tokenizer):
    from transformers import EvalPrediction

    from phi2kit.classifier import compute_metrics, load_classifier, tokenize_headlines

    head = load_classifier(tiny_profile, labels=TWO)
    assert head.score.out_features == 2 and head.config.id2label == dict(enumerate(TWO))

    df = pd.DataFrame({"text": ["Slow delivery", "Lovely"], "label": ["complaint", "praise"]})
    ds = tokenize_headlines(df, tiny_tokenizer, 64, labels=TWO, template="{headline} ({labels})")
    assert ds["labels"] == [0, 1]
    assert tiny_tokenizer.decode(ds[1]["input_ids"]).endswith("Lovely (complaint or praise)")
    logits = np.array([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
    out = compute_metrics(EvalPrediction(predictions=logits, label_ids=[0, 1, 1]))
    assert out["accuracy"] == pytest.approx(2 / 3)

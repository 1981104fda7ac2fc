"""Your own data, as lesson 02 reads it (its `DATA_PATH` and `LABELS` parameters): a two-label
file in the phrasebank form (a header, columns ``sentence`` and ``label``, integer labels
meaning ``LABELS[i]``), through the calls 02's cells make: load, split, prompts.

The lesson runs end to end once per profile (nbmake, test_course_t4_cpu); that its cells pass
``labels=LABELS`` to these calls is tests/test_notebooks.py's; that training learns a file of
your own is the take-home script's test (tests/test_example_02.py).
"""

from __future__ import annotations

import csv

from phi2kit.data import sample_path
from phi2kit.data.sentiment import build_prompt, load_financial_news
from phi2kit.data.sentiment_split import split_sentiment

LABELS = ["negative", "positive"]


def _two_label_file(path):
    words = {word: i for i, word in enumerate(LABELS)}
    df = load_financial_news(sample_path("financial_news"))
    df = df[df["label"].isin(LABELS)]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["sentence", "label"])
        rows = zip(df["text"], df["label"], strict=True)
        writer.writerows((text, words[label]) for text, label in rows)
    return len(df)


def test_a_two_label_file_flows_through_lesson_02s_calls(tmp_path):
    data = tmp_path / "stocks.csv"
    n = _two_label_file(data)
    df = load_financial_news(data, labels=LABELS)
    assert len(df) == n and sorted(df["label"].unique()) == LABELS  # 0/1 read as LABELS[i]

    splits = split_sentiment(df, n_train=120, n_test=40, n_eval=10, seed=42, labels=LABELS)
    for name in ("train", "eval", "test"):
        part = getattr(splits, name)
        assert set(part["label"]) == set(LABELS), name  # no third label anywhere
    assert not set(splits.train["text"]) & set(splits.test["text"])  # no leak

    prompt = build_prompt(splits.test["text"].iloc[0], labels=LABELS)
    assert "negative or positive" in prompt and "neutral" not in prompt

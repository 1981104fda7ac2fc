"""Tests for phi2kit.data.sentiment: both published file forms, duplicates, split, prompts.

Every file is written here from made-up headlines.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest

from phi2kit.data.files import DataError
from phi2kit.data.sentiment import (
    LABELS,
    PROMPT_TEMPLATE,
    build_prompt,
    load_financial_news,
    to_prompt_completion,
)
from phi2kit.data.sentiment_split import deduplicate, find_duplicates, split_sentiment

KAGGLE_ROWS = [
    ("neutral", "Café Oyj will hold its annual meeting in March"),
    ("positive", "Widget sales rose to £12 mn, up 8 % from a year earlier"),
    ("negative", '"Operating loss widened, the company said"'),
    ("positive", '"Rivet Corp calls the quarter ""exceptional"", raises outlook"'),
    ("neutral", "The plant employs 40 people"),
]
KAGGLE_TEXTS = [
    "Café Oyj will hold its annual meeting in March",
    "Widget sales rose to £12 mn, up 8 % from a year earlier",
    "Operating loss widened, the company said",
    'Rivet Corp calls the quarter "exceptional", raises outlook',
    "The plant employs 40 people",
]


def write_kaggle(path, rows, newline="\n", encoding="latin-1"):
    path.write_bytes(newline.join(f"{s},{h}" for s, h in rows).encode(encoding) + b"\n")
    return path


@pytest.mark.parametrize("newline", ["\r", "\n", "\r\n"])
def test_kaggle_form_latin1_line_endings_and_quotes(tmp_path, newline):
    path = write_kaggle(tmp_path / "all-data.csv", KAGGLE_ROWS, newline=newline)
    df = load_financial_news(path)
    assert list(df.columns) == ["text", "label"]
    assert list(df["text"]) == KAGGLE_TEXTS
    assert list(df["label"]) == [s for s, _ in KAGGLE_ROWS]
    assert df.attrs["skipped"] == 0


def test_kaggle_form_mixed_line_endings(tmp_path):
    lines = [f"{s},{h}".encode("latin-1") for s, h in KAGGLE_ROWS]
    path = tmp_path / "all-data.csv"
    path.write_bytes(
        lines[0] + b"\r" + lines[1] + b"\r\n" + lines[2] + b"\n" + b"\r".join(lines[3:])
    )
    assert list(load_financial_news(path)["text"]) == KAGGLE_TEXTS


def test_utf8_file_is_not_read_as_mojibake(tmp_path):
    path = write_kaggle(tmp_path / "utf8.csv", KAGGLE_ROWS, encoding="utf-8")
    assert list(load_financial_news(path)["text"]) == KAGGLE_TEXTS


def test_phrasebank_layout_and_own_text_label_csv(tmp_path):
    sentences = ["Lamp Oy cuts 20 jobs", "Board meets on Monday", "Orders grew 15 %"]
    phrasebank = pd.DataFrame({"sentence": sentences, "label": [0, 1, 2]})
    phrasebank.to_csv(tmp_path / "pb.csv", index=False)
    own = pd.DataFrame({"id": [7, 8, 9], "label": ["Negative", "neutral", 2], "text": sentences})
    own.to_csv(tmp_path / "own.csv", index=False)  # other columns ignored; words or ints
    for name in ("pb.csv", "own.csv"):
        df = load_financial_news(tmp_path / name)
        assert list(df["text"]) == sentences, name
        assert list(df["label"]) == ["negative", "neutral", "positive"], name


@pytest.mark.parametrize("name", ["pb.jsonl", "pb.parquet"])
def test_only_csv_is_read(tmp_path, name):
    """JSON lines and parquet are not published forms of this data: not read, refused in one line
    (JSON's first cell was once called an unknown label)."""
    frame = pd.DataFrame({"sentence": ["Orders grew", "Sales fell"], "label": [2, 0]})
    if name.endswith(".jsonl"):
        (tmp_path / name).write_text("\n".join(json.dumps(r) for r in frame.to_dict("records")))
    else:
        frame.to_parquet(tmp_path / name)
    said = ": a binary file, not CSV text" if name.endswith(".parquet") else ": JSON, not CSV: pass"
    with pytest.raises(DataError, match=said):
        load_financial_news(tmp_path / name)


def test_bad_label_names_file_row_and_field(tmp_path):
    rows = KAGGLE_ROWS[:2] + [("positve", "Margin improved")] + KAGGLE_ROWS[2:]
    path = write_kaggle(tmp_path / "all-data.csv", rows, newline="\r")
    with pytest.raises(
        DataError,
        match=r"all-data\.csv, row 3, field 'sentiment': unknown label "
        r"'positve' \(expected one of negative, neutral, positive",
    ) as info:
        load_financial_news(path)
    assert (info.value.row, info.value.field) == (3, "sentiment")
    assert info.value.path == str(path)


def test_a_header_with_other_column_names_is_named_as_a_header(tmp_path):
    """``headline,sentiment`` names neither ``text`` nor ``label``: read as the no-header form,
    row 1 fails, and the message says what a header needs (a bad label later does not)."""
    path = tmp_path / "mine.csv"
    path.write_text("headline,sentiment\nSales rose,positive\n")
    with pytest.raises(DataError, match=r"row 1: not a header with the columns 'label' and "
                       r"'text'.*if it is your header, name its columns label and text$"):
        load_financial_news(path)
    path.write_text("\n\nheadline,sentiment\nSales rose,positive\n")  # blank lines first
    with pytest.raises(DataError, match=r"row 3: not a header with the columns 'label' and"):
        load_financial_news(path)
    path.write_text("positive,Sales rose\nheadline,Profit fell\n")
    with pytest.raises(DataError, match=r"row 2, .*unknown label 'headline'") as info:
        load_financial_news(path)
    assert "not a header" not in str(info.value)


def test_skip_bad_counts_rows(tmp_path):
    rows = KAGGLE_ROWS + [("positve", "Margin improved"), ("neutral", "")]
    path = write_kaggle(tmp_path / "all-data.csv", rows)
    df = load_financial_news(path, skip_bad=True)
    assert len(df) == len(KAGGLE_ROWS)
    assert df.attrs["skipped"] == 2


def test_row_with_one_field(tmp_path):
    path = tmp_path / "all-data.csv"
    path.write_bytes(b"neutral,Board meets\npositive\nnegative,Loss widened\n")
    with pytest.raises(DataError, match=r"all-data\.csv, row 2, field 'headline': missing column"):
        load_financial_news(path)


def test_phrasebank_label_out_of_range(tmp_path):
    path = tmp_path / "pb.csv"
    path.write_text("sentence,label\nOrders grew,2\nSales fell,7\n")
    with pytest.raises(DataError, match=r"pb\.csv, row 3, field 'label': unknown label '7'"):
        load_financial_news(path)


@pytest.mark.parametrize("missing", ["sentence", "label"])
def test_phrasebank_missing_column(tmp_path, missing):
    frame = pd.DataFrame({"sentence": ["Orders grew", "Sales fell"], "label": [2, 0]})
    frame.drop(columns=missing).assign(other=1).to_csv(tmp_path / "pb.csv", index=False)
    field = "text" if missing == "sentence" else "label"  # a header without either: 'text'
    with pytest.raises(DataError, match=rf"pb\.csv, row 1, field '{field}': missing column"):
        load_financial_news(tmp_path / "pb.csv")


def test_empty_file(tmp_path):
    path = tmp_path / "all-data.csv"
    path.write_bytes(b"\r\n\n  ")
    with pytest.raises(DataError, match=r"all-data\.csv: empty file"):
        load_financial_news(path)


def test_only_one_class(tmp_path):
    path = write_kaggle(tmp_path / "all-data.csv", [("neutral", "A"), ("neutral", "B")])
    with pytest.raises(DataError, match=r"all-data\.csv: only one class \('neutral'\)"):
        load_financial_news(path)


def test_hub_offline_error_suggests_a_path(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match=r"no network.*pass its path"):
        load_financial_news()


def test_hub_script_dataset_falls_back_to_its_parquet_export(monkeypatch):
    import datasets

    calls = []

    def load(*args, **kwargs):
        calls.append((args, kwargs))
        if kwargs.get("revision") != "refs/convert/parquet":
            raise RuntimeError("Dataset scripts are no longer supported, but found x.py")
        return datasets.Dataset.from_dict({"sentence": ["Up", "Down"], "label": [2, 0]})

    monkeypatch.setattr(datasets, "load_dataset", load)
    df = load_financial_news()
    assert list(df["label"]) == ["positive", "negative"]
    assert calls[1] == (
        ("takala/financial_phrasebank",),
        {"revision": "refs/convert/parquet", "data_dir": "sentences_50agree", "split": "train"},
    )


def frame(rows):
    return pd.DataFrame(rows, columns=["label", "text"])[["text", "label"]]


def test_duplicates_and_conflicts():
    df = frame(
        [
            ("positive", "Sales  up"),  # same headline as the next, after collapsing whitespace
            ("positive", "Sales up"),
            ("neutral", "Sales up"),  # conflict, majority positive
            ("neutral", "Meeting held"),
            ("positive", "Meeting held"),  # conflict, tie: dropped
            ("negative", "Loss"),
            ("negative", "Loss"),
        ]
    )
    report = find_duplicates(df)
    assert (report.n_rows, report.n_unique_texts, report.n_duplicate_rows) == (7, 3, 4)
    assert report.n_conflicting_texts == 2
    assert report.examples[0] == {"text": "Sales up", "labels": {"positive": 2, "neutral": 1}}
    assert str(report).endswith("2 headlines with conflicting labels")  # nothing dropped yet
    deduped, report = deduplicate(df)
    assert list(deduped["text"]) == ["Sales  up", "Loss"]
    assert list(deduped["label"]) == ["positive", "negative"]
    assert report.n_dropped_ties == 1
    assert str(report).endswith("with conflicting labels (1 ties dropped)")


def synthetic(counts, dup_every=0):
    """A frame with ``counts[label]`` distinct headlines per label, plus some repeats."""
    rows = [
        (label, f"{label} headline number {i}") for label in LABELS for i in range(counts[label])
    ]
    if dup_every:
        rows += [(label, f"{text}  ") for label, text in rows[::dup_every]]
    return frame(rows)


def test_split_sizes_no_leakage_and_reproducible():
    df = synthetic({"negative": 40, "neutral": 90, "positive": 60}, dup_every=7)
    splits = split_sentiment(df, n_train=10, n_test=12, n_eval=5, seed=1)
    for part, n in ((splits.train, 10), (splits.test, 12), (splits.eval, 5)):
        assert part["label"].value_counts().to_dict() == dict.fromkeys(LABELS, n)
    seen = [
        set(p["text"].str.split().str.join(" ")) for p in (splits.train, splits.test, splits.eval)
    ]
    assert not seen[0] & seen[1] and not seen[0] & seen[2] and not seen[1] & seen[2]
    again = split_sentiment(df, n_train=10, n_test=12, n_eval=5, seed=1)
    assert again.train.equals(splits.train) and again.eval.equals(splits.eval)
    other = split_sentiment(df, n_train=10, n_test=12, n_eval=5, seed=2)
    assert not other.train.equals(splits.train)
    assert not any("replacement" in note for note in splits.notes)


def test_split_short_class_eval_with_replacement():
    # Like the real file: negatives barely cover train + test.
    df = synthetic({"negative": 23, "neutral": 90, "positive": 60})
    splits = split_sentiment(df, n_train=10, n_test=10, n_eval=5, seed=0)
    neg_eval = splits.eval[splits.eval["label"] == "negative"]
    assert len(neg_eval) == 5 and neg_eval["text"].nunique() <= 3
    assert not set(neg_eval["text"]) & (set(splits.train["text"]) | set(splits.test["text"]))
    assert any("'negative'" in n and "with replacement" in n for n in splits.notes)


def test_split_short_class_errors():
    df = synthetic({"negative": 19, "neutral": 90, "positive": 60})
    with pytest.raises(
        DataError,
        match=r"class 'negative' has 19 .* needs n_train \+ n_test = "
        r"10 \+ 10 = 20",
    ):
        split_sentiment(df, n_train=10, n_test=10, n_eval=5)
    df = synthetic({"negative": 20, "neutral": 90, "positive": 60})
    with pytest.raises(DataError, match=r"class 'negative'.*none is left.*Lower n_test"):
        split_sentiment(df, n_train=10, n_test=10, n_eval=5)
    assert len(split_sentiment(df, n_train=10, n_test=10, n_eval=0).eval) == 0


def test_a_short_split_suggests_numbers_that_fit_and_names_the_file(tmp_path):
    path = tmp_path / "mine.csv"
    rows = [("up", f"Rose {i}") for i in range(9)] + [("down", f"Fell {i}") for i in range(12)]
    path.write_text("label,text\n" + "".join(f"{y},{x}\n" for y, x in rows))
    df = load_financial_news(path, labels=("down", "up"))
    with pytest.raises(DataError) as info:
        split_sentiment(df, n_train=120, n_test=40, n_eval=40, labels=("down", "up"))
    # the class with the fewest (9 'up'), not the first in label order (12 'down')
    assert str(info.value).startswith(f"{path}: class 'up' has 9 headlines after deduplication "
                                      "(the fewest)")
    assert "for example n_train=7 n_test=1 n_eval=1" in str(info.value)  # from the smallest: 9 'up'
    assert "(a test split of 2 headlines is noisy: each moves the accuracy by 50 points)" in str(
        info.value)
    assert split_sentiment(df, n_train=7, n_test=1, n_eval=1, labels=("down", "up")).notes
    with pytest.raises(DataError) as info:  # your smaller n_train is kept; n_test is what fails
        split_sentiment(df, n_train=4, n_test=40, n_eval=1, labels=("down", "up"))
    assert "for example n_train=4 n_test=1 n_eval=1" in str(info.value)
    tiny = load_financial_news(_write(tmp_path, "label,text\nup,A\ndown,B\nup,C\n"),
                               labels=("down", "up"))  # fmt: skip
    with pytest.raises(DataError, match=r"the smallest class has 1: each needs 3"):
        split_sentiment(tiny, n_train=5, n_test=1, n_eval=1, labels=("down", "up"))


def test_a_short_class_says_how_many_tied_headlines_were_left_out(tmp_path):
    """A headline labelled once 'up' and once 'down' is in no class: the refusal counts it, so
    that the 10 'up' rows of the file and the 9 of the message agree."""
    rows = [("up", f"Rose {i}") for i in range(10)] + [("down", f"Fell {i}") for i in range(12)]
    rows.append(("down", "Rose 0"))  # the tie: 'Rose 0' is once up, once down
    path = tmp_path / "mine.csv"
    path.write_text("label,text\n" + "".join(f"{y},{x}\n" for y, x in rows))
    df = load_financial_news(path, labels=("down", "up"))
    with pytest.raises(DataError) as info:
        split_sentiment(df, n_train=120, n_test=40, n_eval=40, labels=("down", "up"))
    assert ("class 'up' has 9 headlines after deduplication (the fewest; 1 headline(s) whose "
            "labels tie were left out)") in str(info.value)


def _write(tmp_path, text):
    (tmp_path / "t.csv").write_text(text)
    return tmp_path / "t.csv"


def test_prompt_and_completion():
    prompt = build_prompt("Orders  grew\n15 %")
    assert prompt.endswith("Headline: Orders grew 15 %\nSentiment:")
    ds = to_prompt_completion(frame([("negative", "Loss"), ("neutral", "Meeting held")]),
                              PROMPT_TEMPLATE, LABELS)
    assert ds.column_names == ["prompt", "completion", "label"]
    assert ds[0] == {"prompt": build_prompt("Loss"), "completion": " negative", "label": "negative"}


def test_default_split_on_a_frame_shaped_like_the_real_file():
    # Class counts as in the Kaggle file (about 4,850 rows), with a few repeated negatives.
    df = synthetic({"negative": 602, "neutral": 2879, "positive": 1363})
    df = pd.concat([df, df[df["label"] == "negative"].head(2)], ignore_index=True)
    splits = split_sentiment(df)
    assert [len(splits.train), len(splits.test), len(splits.eval)] == [900, 900, 150]
    assert any("'negative' has only 2 headlines left" in note for note in splits.notes)


def test_train_and_test_do_not_depend_on_n_eval():
    import random

    from phi2kit.data.sentiment import LABELS
    from phi2kit.data.sentiment_split import split_sentiment

    rng = random.Random(0)
    rows = [(f"headline {lab} {i} {rng.random():.6f}", lab) for lab in LABELS for i in range(30)]
    df = pd.DataFrame(rows, columns=["text", "label"])
    a = split_sentiment(df, n_train=10, n_test=10, n_eval=0, seed=3)
    b = split_sentiment(df, n_train=10, n_test=10, n_eval=15, seed=3)  # eval by replacement
    assert set(a.train.text) == set(b.train.text)
    assert set(a.test.text) == set(b.test.text)
    assert any("with replacement" in n for n in b.notes)


@pytest.mark.parametrize(
    "make, said",
    [
        (lambda p: p.mkdir(), "a folder, not a file: pass the CSV file itself"),
        (lambda p: p.write_bytes("label,text\nup,Sales rose\n".encode("utf-16")),
         "a UTF-16 file; save it as UTF-8"),
        (lambda p: p.write_text("label;text\nup;Sales rose\ndown;Sales fell\n"),
         "row 1: one column with ';' in it: the file must be separated by commas"),
        (lambda p: p.write_text("positive\tSales rose\nnegative\tSales fell\n"),
         "one column with '\\t' in it"),
    ],
)  # fmt: skip
def test_a_file_in_another_shape_says_what_to_do(tmp_path, make, said):
    path = tmp_path / "mine.csv"
    make(path)
    with pytest.raises(DataError) as info:
        load_financial_news(path, labels=("down", "up"))
    assert said in str(info.value) and "\n" not in str(info.value), str(info.value)


def test_every_bad_row_is_named_in_one_go(tmp_path):
    """Three misspelt labels: the first is the error, the others are named with it, so one
    try shows them all (one row per try cost a user three runs)."""
    rows = [*KAGGLE_ROWS[:2], ("positve", "Margin improved"), *KAGGLE_ROWS[2:],
            ("negatve", "Orders fell"), ("nuetral", "Output flat")]  # fmt: skip
    path = write_kaggle(tmp_path / "all-data.csv", rows)
    n = len(rows)
    with pytest.raises(DataError, match=rf"row 3, field 'sentiment': unknown label 'positve' "
                       rf".*\(and 2 more bad row\(s\): row {n - 1}, row {n}\)$") as info:
        load_financial_news(path)
    assert info.value.row == 3
    assert len(load_financial_news(path, skip_bad=True).attrs["problems"]) == 3

"""examples/02_sentiment_qlora.py: lesson 02 as a script, without phi2kit.

- It learns on the tiny model and the shipped sample (tuned beats zero-shot by a margin).
- A wrong file is refused with one line naming file, row and field, exit code 2, before any
  model loads (the model path given does not exist).
- Its BitsAndBytesConfig, LoraConfig and SFTConfig equal notebook 02's ``recipe`` cells for
  the t4 profile.
"""

from __future__ import annotations

import json
import re

import pytest
from example_scripts import (
    ROOT,
    TINY,
    imported_packages,
    load_script,
    mismatch,
    notebook_recipe,
    run_script,
    script_path,
)

from phi2kit.profiles import get_profile
from phi2kit.recipes import get_recipe

NAME = "02_sentiment_qlora.py"
SAMPLE = ROOT / "data" / "financial_news" / "all-data.csv"


def run(*args: str, timeout: int = 300):
    return run_script(NAME, *args, timeout=timeout)


def test_script_imports_no_phi2kit_and_stays_short():
    assert "phi2kit" not in imported_packages(NAME)
    # 266 (was 264): the folder and too-few-per-label errors, the note example 05 reads, the
    # count of repeated headlines; 270: 4-bit on a CPU refused (it failed inside training);
    # 274: eval drawn with replacement where a class runs short (the real file's negatives);
    # 275: JSON refused in one line (its first cell was called an unknown label)
    assert len(script_path(NAME).read_text().splitlines()) < 276


def test_configs_equal_the_notebook_for_t4(tmp_path):
    ns = notebook_recipe("02_sentiment_finetuning.ipynb", "sentiment", tmp_path)
    script = load_script(NAME)
    args = script.parser().parse_args(["--data", "x.csv", "--output-dir", str(tmp_path)])
    quant, lora, sft, _ = script.build_configs(args, cuda=True, bf16=False)
    assert not (diff := mismatch(quant, ns["quant_config"])), diff
    assert not (diff := mismatch(lora, ns["peft_config"])), diff
    assert not (diff := mismatch(sft, ns["sft_args"])), diff
    t4 = get_recipe("sentiment", get_profile("t4", check=False))
    assert args.max_steps == t4.max_steps and args.learning_rate == t4.learning_rate
    quant, *_ = script.build_configs(script.parser().parse_args(
        ["--data", "x", "--output-dir", "y", "--no-4bit"]), cuda=True)
    assert quant is None


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"positive,Sales rose\nneutral,The board met\nposittive,Profit fell\n",
         r"bad\.csv, row 3, field 'sentiment': unknown label 'posittive'"),
        (b"text,sentiment\nSales rose,positive\n", r"row 1, field 'label': missing column"),
        (b"text,label\nSales rose,positive\n,negative\n", r"row 3, field 'text': empty text"),
        (b"label,text\n0,Sales fell\n7,Sales rose\n", r"row 3, field 'label': unknown label '7'"),
        (b"headline,sentiment\nSales rose,positive\n",
         r"row 1, .*a header row needs the columns 'text' and 'label' \(name yours with "
         r"--text-column and --label-column\)"),
        (b"text;label\nSales rose;positive\n",  # Excel's CSV in many locales
         r"bad\.csv, row 1: one column with ';' in it: save the file as CSV with commas"),
        (b"\n \n", r"bad\.csv: empty file"),  # was "fewer than two labels in 0 rows"
        (b"PAR1\x15\x04\x15\x00label", r"bad\.csv: a binary file, not CSV text"),  # Parquet
        (b'{"messages": [{"role": "user"}]}\n',  # chats: the first cell was an unknown label
         r"bad\.csv: JSON, not CSV: pass a CSV of headlines$"),
        ("text,label\nSales rose,positive\n".encode("utf-16"),  # Excel's "Unicode text"
         r"bad\.csv, row 1: a UTF-16 file; save it as UTF-8$"),  # as the library says
        (b"\nheadline,sentiment\nSales rose,positive\n",  # a blank line first
         r"row 2, .*a header row needs the columns 'text' and 'label'"),
    ],
)
def test_a_wrong_file_is_refused_before_the_model_loads(tmp_path, content, expected):
    bad = tmp_path / "bad.csv"
    bad.write_bytes(content)
    out = run("--model", str(tmp_path / "no-model"), "--data", str(bad), "--output-dir",
              str(tmp_path / "out"), timeout=60)
    assert out.returncode == 2, out.stderr
    assert re.search(expected, out.stderr), out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_labels_that_start_with_the_same_token_are_refused_before_the_model_loads(tmp_path):
    """Scoring compares each label's first token: 'very bad' and 'very good' would tie."""
    mine = tmp_path / "mine.csv"
    mine.write_text("text,label\n" + "".join(f"headline {w} {i},{w}\n" for i in range(12)
                                            for w in ("ok", "very bad", "very good")))
    out = run("--model", str(TINY), "--no-4bit", "--labels", "ok,very bad,very good", "--n-train",
              "6", "--n-test", "3", "--n-eval", "2", "--data", str(mine), "--output-dir",
              str(tmp_path / "out"), timeout=120)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "error: --labels ok,very bad,very good: two labels start with the same token" in (
        out.stderr), out.stderr[-2000:]
    assert not (tmp_path / "out" / "adapter").exists()


def test_reads_both_published_forms(tmp_path):
    script = load_script(NAME)
    labels = ["negative", "neutral", "positive"]
    kaggle = tmp_path / "all-data.csv"  # no header, Latin-1, CR line endings, quoted commas
    kaggle.write_bytes('neutral,"Sales, as planned"\rpositive,Vä rose\r\n'.encode("latin-1"))
    assert script.read_rows(kaggle, labels) == [("Sales, as planned", "neutral"),
                                                ("Vä rose", "positive")]
    phrasebank = tmp_path / "own.csv"  # a header; integer labels index LABELS
    phrasebank.write_text("sentence,label\nProfit fell,0\nProfit rose,2\n")
    rows = script.read_rows(phrasebank, labels, text_col="sentence")
    assert rows == [("Profit fell", "negative"), ("Profit rose", "positive")]


def test_it_learns_on_the_tiny_model(tmp_path):
    out = run("--model", str(TINY), "--no-4bit", "--max-steps", "40", "--learning-rate", "3e-3",
              "--batch-size", "16", "--grad-accum", "1", "--max-length", "96", "--n-train", "120",
              "--n-test", "40", "--n-eval", "12", "--data", str(SAMPLE), "--output-dir",
              str(tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    # the sample's repeats, as lesson 02's report counts them (36 rows, 6 conflicting)
    assert ("1526 rows, 1490 distinct headlines: 36 repeats, 6 headlines with two labels left "
            "out") in out.stdout, out.stdout[:2000]  # fmt: skip
    found = re.search(r"zero-shot ([\d.]+), tuned ([\d.]+)", out.stdout)
    assert found, out.stdout[-2000:]
    zero_shot, tuned = map(float, found.groups())
    assert tuned >= zero_shot + 0.15, (zero_shot, tuned)
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert abs(metrics["zero_shot"] - zero_shot) < 1e-3 and abs(metrics["tuned"] - tuned) < 1e-3
    assert metrics["n_test"] == 3 * 40 and metrics["best_step"] > 0, metrics
    assert f"adapter saved to {tmp_path}/adapter" in out.stdout
    note = tmp_path / "adapter" / "phi2kit_adapter.json"  # example 05 reads it
    assert json.loads(note.read_text()) == {"base_4bit": False}


@pytest.mark.parametrize("flags", [[], ["--n-test", "10", "--n-eval", "5"]])
def test_a_file_too_small_for_the_split_is_refused_before_the_model_loads(tmp_path, flags):
    """The defaults are the seed's split on Phi-2 (300 test headlines per class): a small file
    of your own is told which flags to lower, in one line, before any model loads; also when
    only the train split would come out short (40 = 10 + 5 + 25 of --n-train's 300)."""
    small = tmp_path / "small.csv"
    rows = [f"goal in match {i},sport\nrain on day {i},weather" for i in range(40)]
    small.write_text("text,label\n" + "\n".join(rows) + "\n")
    out = run("--model", str(tmp_path / "no-model"), "--data", str(small), "--labels",
              "sport,weather", "--output-dir", str(tmp_path / "out"), *flags, timeout=60)
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith("error: "), out.stderr
    assert "label 'sport' has 40 usable headlines" in out.stderr
    assert "--n-test 8 --n-eval 4 --n-train 28" in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert not (tmp_path / "out").exists()


def test_a_label_with_under_3_headlines_needs_more_rows_not_other_flags(tmp_path):
    """1 headline per label: no flags can split it; say each label needs 3, not '--n-test 1'."""
    tiny = tmp_path / "tiny.csv"
    tiny.write_text("text,label\nSales rose,positive\nSales fell,negative\nBoard met,neutral\n")
    out = run("--model", str(tmp_path / "no-model"), "--data", str(tiny), "--output-dir",
              str(tmp_path / "out"), timeout=60)
    assert out.returncode == 2, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "has 1 usable headlines" in out.stderr, out.stderr
    assert "each label needs at least 3 (one for each of test, eval and train)" in out.stderr
    assert "--n-test 1" not in out.stderr and not (tmp_path / "out").exists()


def test_the_suggested_flags_pass_the_split_check(tmp_path, capsys):
    """The flags it suggests fit the label with the fewest headlines (here weather's 12, not
    sport's 40): rerun with them, the split check passes and the run goes on to the model."""
    small = tmp_path / "small.csv"
    rows = [f"goal {i},sport" for i in range(40)] + [f"rain {i},weather" for i in range(12)]
    small.write_text("text,label\n" + "\n".join(rows) + "\n")
    argv = ["--model", str(tmp_path / "no-model"), "--data", str(small), "--labels",
            "sport,weather", "--output-dir", str(tmp_path / "out"), "--no-4bit"]  # fmt: skip
    with pytest.raises(SystemExit):
        load_script(NAME).main(argv)
    err = capsys.readouterr().err
    assert "label 'weather' has 12 usable headlines" in err, err
    flags = re.search(r"\(e\.g\. (--n-test \d+ --n-eval \d+ --n-train \d+)\)", err).group(1)
    assert flags == "--n-test 2 --n-eval 1 --n-train 9", err
    with pytest.raises(SystemExit) as exit_:
        load_script(NAME).main([*argv, *flags.split()])
    assert exit_.value.code == 2
    out = capsys.readouterr()
    assert "{'train': {'sport': 9, 'weather': 9}" in out.out, out  # every split full
    assert out.err.startswith("error: --model "), out.err  # past the split check: the model


@pytest.mark.parametrize("n_negative", [602, 600])
def test_the_real_files_shape_fits_the_default_split(tmp_path, capsys, n_negative):
    """Kaggle's all-data.csv keeps about 600 negatives after deduplication: the README's T4
    command (the defaults, 300 test + 300 train per class) leaves a few for eval, drawn with
    replacement as lesson 02 does; with none left, it is refused with the flags to lower."""
    rows = [f"{label},Headline {i} of {label}" for label, n in
            (("neutral", 700), ("positive", 700), ("negative", n_negative)) for i in range(n)]
    data = tmp_path / "all-data.csv"  # Kaggle's form: no header, label first, Latin-1
    data.write_bytes("\r\n".join(rows).encode("latin-1"))
    with pytest.raises(SystemExit) as exit_:
        load_script(NAME).main(["--model", str(tmp_path / "no-model"), "--data", str(data),
                                "--output-dir", str(tmp_path / "out"), "--no-4bit"])  # fmt: skip
    out = capsys.readouterr()
    assert exit_.value.code == 2 and len(out.err.strip().splitlines()) == 1, out.err
    if n_negative == 602:
        assert "label 'negative' has 2 headlines left after test and train: its 50 eval rows " \
            "are drawn from them with replacement" in out.out, out.out
        assert "'eval': {'negative': 50, 'neutral': 50, 'positive': 50}" in out.out, out.out
        assert out.err.startswith("error: --model "), out.err  # past the split check
    else:
        assert "label 'negative' has 600 usable headlines, too few for --n-test 300 + " \
            "--n-eval 50 + --n-train 300: lower them" in out.err, out.err


def test_an_output_dir_that_cannot_be_written_stops_before_the_model_loads(tmp_path):
    # /proc takes no new folders, even for root; the folder is made after the cheap checks (the
    # tokenizer: a refused run leaves no folder) and before the model loads
    out = run("--model", str(TINY), "--no-4bit", "--data", str(SAMPLE), "--n-train", "20",
              "--n-test", "5", "--n-eval", "5", "--output-dir", "/proc/phi2kit-out", timeout=60)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().startswith("error: --output-dir /proc/phi2kit-out: cannot write "
                                         "there ("), out.stderr

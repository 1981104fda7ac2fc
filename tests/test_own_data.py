"""Your own data: notebook 02 on a two-label file this test writes (papermill parameters
``DATA_PATH`` and ``LABELS``), end to end on the tiny profile. The file is in the phrasebank
form with integer labels, which mean ``LABELS[i]``."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]


def test_notebook_02_learns_a_two_label_file(tmp_path):
    import papermill

    from phi2kit.data import sample_path
    from phi2kit.data.sentiment import load_financial_news

    # The phrasebank form (header row, columns sentence and label); 0 and 1 mean LABELS[0], [1].
    words = {"negative": 0, "positive": 1}
    df = load_financial_news(sample_path("financial_news"))
    df = df[df["label"].isin(list(words))]
    data = tmp_path / "stocks.csv"
    with open(data, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["sentence", "label"])
        rows = zip(df["text"], df["label"], strict=True)
        writer.writerows((text, words[label]) for text, label in rows)

    out_dir = tmp_path / "outputs"
    executed = tmp_path / "02.ipynb"
    papermill.execute_notebook(
        str(ROOT / "notebooks" / "02_sentiment_finetuning.ipynb"),
        str(executed),
        parameters={
            "PROFILE": "tiny",
            "DATA_PATH": str(data),
            "LABELS": ["negative", "positive"],
            "MAX_STEPS": 120,
            "N_TRAIN": 120,
            "N_TEST": 40,
            "N_EVAL": 10,
            "OUTPUT_DIR": str(out_dir),
        },
        cwd=str(ROOT / "notebooks"),
        kernel_name="python3",
        progress_bar=False,
    )
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert metrics["labels"] == ["negative", "positive"]
    assert metrics["accuracy"] >= 0.5 + 0.15  # two balanced classes: the majority rate is 0.5
    assert (out_dir / "adapter" / "adapter_model.safetensors").is_file()

    nb = nbformat.read(executed, as_version=4)
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "headline as negative or positive." in text  # the prompt names the two labels
    assert "neutral" not in text  # no third label: not in the prompts, the predictions, the report
    assert "all checks passed" in text  # the notebook's own learning checks, on two labels

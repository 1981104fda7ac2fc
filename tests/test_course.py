"""`phi2kit course`: a real run's summary lists each notebook's key metrics."""

import json
import re
import sys
from pathlib import Path

import nbformat
import pytest

from phi2kit.commands.course import _figure, find_notebooks
from phi2kit.commands.main import main

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def _summary_row(summary: str, name: str) -> str:
    return next(line for line in summary.splitlines() if line.startswith(f"| {name} |"))


def test_relative_out_is_where_the_user_ran_the_command(tmp_path, monkeypatch):
    # The kernels run in notebooks/: a relative --out used to send the metrics to
    # notebooks/run/metrics/ and leave the summary's key-metrics column empty.
    monkeypatch.chdir(tmp_path)
    stem = "02_sentiment_finetuning"  # the cheapest training notebook
    assert main(["course", "--profile", "tiny", "--only", "02", "--out", "run"]) == 0
    run = tmp_path / "run"
    assert (run / f"{stem}.ipynb").exists()
    recorded = json.loads((run / "metrics" / f"{stem}.json").read_text())
    assert "tuned_accuracy" in recorded
    row = _summary_row((run / "summary.md").read_text(), stem)
    assert row.startswith(f"| {stem} | passed |")
    for key, value in recorded.items():
        assert f"{key}={_figure(value)}" in row, (key, row)  # 4 significant figures
    assert not (find_notebooks()[0].parent / "run").exists()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_notebook_records_metrics_under_its_own_name(path):
    # run_course reads <run>/metrics/<notebook stem>.json: any other name leaves a blank cell
    source = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells)
    names = re.findall(r"record_metrics\(\s*[\"']([^\"']+)[\"']", source)
    assert names == [path.stem], names


def test_course_without_papermill_names_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "papermill", None)  # as if the extra were not installed
    code = main(["course", "--profile", "tiny", "--only", "01", "--out", str(tmp_path / "r")])
    assert code == 2
    err = capsys.readouterr().err
    assert '".[course]"' in err and "phi2kit[course]" in err
    assert not (tmp_path / "r").exists()

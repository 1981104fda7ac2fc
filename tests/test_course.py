"""`phi2kit course`: a real run's summary lists each notebook's key metrics."""

import json
import re
import sys
from pathlib import Path

import nbformat
import pytest

from phi2kit.commands.course import _figure
from phi2kit.commands.main import main

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def _summary_row(summary: str, name: str) -> str:
    return next(line for line in summary.splitlines() if line.startswith(f"| {name} |"))


def _small_course(folder: Path) -> Path:
    """A one-lesson course that runs in seconds: parameters, a metric, the learning check's
    shape (the whole lessons run once per profile elsewhere: nbmake and test_course_t4_cpu)."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    params = nbformat.v4.new_code_cell('PROFILE = "auto"  # papermill sets it')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [
        params,
        nbformat.v4.new_code_cell(
            "from phi2kit.metrics import record_metrics\n"
            "from phi2kit.profiles import get_profile\n"
            "profile = get_profile(PROFILE)\n"
            'record_metrics("01_small", {"accuracy": 2 / 3, "merge_error": 7.1234e-06, '
            '"profile_is_tiny": profile.is_tiny})'
        ),
    ]
    folder.mkdir(parents=True)
    nbformat.write(nb, folder / "01_small.ipynb")
    return folder


def test_relative_out_is_where_the_user_ran_the_command(tmp_path, monkeypatch):
    # The kernels run in the notebooks' folder: a relative --out used to send the metrics to
    # notebooks/run/metrics/ and leave the summary's key-metrics column empty.
    lessons = _small_course(tmp_path / "lessons")
    monkeypatch.chdir(tmp_path)
    stem = "01_small"
    args = ["course", "--profile", "tiny", "--notebooks", "lessons", "--out", "run"]
    assert main(args) == 0
    run = tmp_path / "run"
    assert (run / f"{stem}.ipynb").exists()
    recorded = json.loads((run / "metrics" / f"{stem}.json").read_text())
    assert recorded["profile_is_tiny"] is True
    row = _summary_row((run / "summary.md").read_text(), stem)
    assert row.startswith(f"| {stem} | passed |")
    for key, value in recorded.items():
        assert f"{key}={_figure(value)}" in row, (key, row)  # 4 significant figures
    assert "merge_error=7.123e-06" in row  # not rounded to 0.0
    assert not (lessons / "run").exists()


def test_workdir_keeps_a_run_apart_from_the_notebooks_folder(tmp_path, monkeypatch):
    """--workdir: the lessons' outputs/ go there, and the samples are found from there."""
    lessons = _small_course(tmp_path / "lessons")
    nb = nbformat.read(lessons / "01_small.ipynb", as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(
        "import os\nfrom phi2kit.data import sample_path\n"
        "os.makedirs('outputs/01_small', exist_ok=True)\n"
        "assert sample_path('webglm').is_dir()"
    ))
    nbformat.write(nb, lessons / "01_small.ipynb")
    monkeypatch.chdir(tmp_path)
    args = ["course", "--profile", "tiny", "--notebooks", "lessons", "--out", "run",
            "--workdir", "work"]
    assert main(args) == 0
    assert (tmp_path / "work" / "lessons" / "outputs" / "01_small").is_dir()
    assert not (lessons / "outputs").exists()


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

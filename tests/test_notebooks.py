"""Notebook hygiene: outputs stripped, the conventions' cell order, pins that agree."""

import ast
import re
from pathlib import Path

import nbformat
import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def _pins_from_pyproject() -> dict[str, str]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return dict(d.split("==") for d in deps if "==" in d)


def test_there_are_notebooks():
    assert [p.name[:2] for p in NOTEBOOKS][:1] == ["01"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_outputs_are_stripped(path):
    nb = nbformat.read(path, as_version=4)
    dirty = [
        i
        for i, c in enumerate(nb.cells)
        if c.cell_type == "code" and (c.get("outputs") or c.get("execution_count") is not None)
    ]
    assert dirty == [], f"{path.name}: cells {dirty} have outputs; clear them before commit"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_cell_order_follows_conventions(path):
    nb = nbformat.read(path, as_version=4)
    first, install, params = nb.cells[0], nb.cells[1], nb.cells[2]
    assert first.cell_type == "markdown" and first.source.startswith(f"# {path.name[:2]}")
    assert "colab-badge.svg" in first.source and path.name in first.source
    assert "T4" in first.source
    assert 'if "google.colab" in sys.modules:' in install.source
    assert "parameters" in params.metadata.get("tags", [])
    assert 'PROFILE = "auto"' in params.source
    for line in params.source.splitlines():  # every knob has a trailing comment
        if re.match(r"^[A-Z_]+ = ", line):
            assert "#" in line, f"{path.name}: parameter without a comment: {line}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_colab_pins_match_pyproject(path):
    nb = nbformat.read(path, as_version=4)
    tree = ast.parse(nb.cells[1].source)
    pins = next(
        ast.literal_eval(n.value)
        for n in ast.walk(tree)
        if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "PINS"
    )
    expected = _pins_from_pyproject()
    for pin in pins:
        name, ver = pin.split("==")
        assert expected.get(name) == ver, f"{path.name}: {pin} but pyproject pins {expected}"
    assert {"transformers", "peft", "trl", "bitsandbytes"} <= {p.split("==")[0] for p in pins}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_last_code_cell_asserts_learning_or_behaviour(path):
    nb = nbformat.read(path, as_version=4)
    last = [c for c in nb.cells if c.cell_type == "code"][-1]
    assert "assert" in last.source and "is_tiny" in last.source


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_t4_estimate_matches_planner_and_readme(path):
    from phi2kit.plan import course_rows

    minutes, gb = next((m, g) for n, _, m, g in course_rows() if n == path.stem)
    first = nbformat.read(path, as_version=4).cells[0].source
    assert f"{minutes} minutes, {gb} GB peak GPU memory" in first


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_versions_cell_quiets_logs_first(path):
    cell = nbformat.read(path, as_version=4).cells[3]
    assert "quiet()" in cell.source and "version(pkg)" in cell.source


def test_colab_cell_works_from_the_clones_notebooks_folder(monkeypatch):
    """On Colab the install cell clones the repo and works from its notebooks/ folder; the
    data samples must be found from there (they are not part of the installed package)."""
    import phi2kit.data
    from phi2kit.data import SAMPLES, sample_path

    source = nbformat.read(NOTEBOOKS[0], as_version=4).cells[1].source
    assert "git" in source and 'os.chdir(f"{REPO}/notebooks")' in source
    # an installed (non-editable) package sits in site-packages, far from the clone's data/
    monkeypatch.setattr(phi2kit.data, "__file__", "/site-packages/phi2kit/data/__init__.py")
    monkeypatch.chdir(ROOT / "notebooks")
    for name in SAMPLES:
        assert sample_path(name).resolve().is_relative_to(ROOT / "data")
    monkeypatch.chdir("/")
    with pytest.raises(FileNotFoundError, match="clone the repository"):
        sample_path("financial_news")

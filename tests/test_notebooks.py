"""Notebook hygiene: outputs stripped, the conventions' cell order, pins that agree."""

import json
import re
from pathlib import Path

import nbformat
import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))



def test_there_are_notebooks():
    assert [p.name[:2] for p in NOTEBOOKS][:1] == ["01"]


@pytest.mark.parametrize(
    "path", [*NOTEBOOKS, *sorted((ROOT / "exercises").rglob("*.ipynb"))], ids=lambda p: p.stem)
def test_every_cell_has_its_own_id(path):
    """nbformat 4.5's cell ids, in the file: without one, every reader (papermill in
    ``phi2kit course``, JupyterLab) warns ``MissingIDFieldWarning`` and makes one up."""
    cells = json.loads(path.read_text())["cells"]
    ids = [c.get("id") for c in cells]
    assert None not in ids and len(set(ids)) == len(ids), f"{path}: cells without an id or twice"


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
    assert "colab-badge.svg" in first.source and "open-in-kaggle.svg" in first.source
    assert first.source.count(f"notebooks/{path.name})") == 2  # both badges open this notebook
    assert "T4" in first.source
    assert install.source == nbformat.read(NOTEBOOKS[0], as_version=4).cells[1].source
    assert 'if "google.colab" in sys.modules or "KAGGLE_KERNEL_RUN_TYPE" in os.environ:' in (
        install.source
    )
    assert "parameters" in params.metadata.get("tags", [])
    assert 'PROFILE = "auto"' in params.source
    for line in params.source.splitlines():  # every knob has a trailing comment
        if re.match(r"^[A-Z_]+ = ", line):
            assert "#" in line, f"{path.name}: parameter without a comment: {line}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_last_code_cell_asserts_learning_or_behaviour(path):
    nb = nbformat.read(path, as_version=4)
    last = [c for c in nb.cells if c.cell_type == "code"][-1]
    assert "assert" in last.source and "is_tiny" in last.source


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_t4_estimate_matches_planner_and_readme(path):
    from phi2kit.plan.course import course_rows

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
    assert "git" in source and 'os.chdir(f"{repo}/notebooks")' in SETUP.read_text()
    # an installed (non-editable) package sits in site-packages, far from the clone's data/
    monkeypatch.setattr(phi2kit.data, "__file__", "/site-packages/phi2kit/data/__init__.py")
    monkeypatch.chdir(ROOT / "notebooks")
    for name in SAMPLES:
        assert sample_path(name).resolve().is_relative_to(ROOT / "data")
    monkeypatch.chdir("/")
    with pytest.raises(FileNotFoundError, match="clone the repository"):
        sample_path("financial_news")


# --- the Colab/Kaggle set-up: one short cell that runs scripts/colab_setup.py ------------------

KERNEL_DISTS = {"ipykernel": "6.17.1", "ipython": "7.34.0", "traitlets": "5.7.1"}
SETUP = ROOT / "scripts" / "colab_setup.py"


def _install_cell() -> str:
    return nbformat.read(NOTEBOOKS[0], as_version=4).cells[1].source


def _run_install_cell(monkeypatch, tmp_path, platform: str, imported: tuple[str, ...] = ()):
    """Execute the install cell on a pretend Colab or Kaggle; return the commands it ran.

    The cell's clone is faked by pointing it at this checkout; the set-up script then runs
    for real, in this process, with pip faked. The pretend platform has the kernel packages
    above and ``oldlib`` 1.0, which the pip install upgrades; ``imported`` names modules this
    kernel has already imported.
    """
    import importlib.metadata as md
    import os
    import subprocess
    import sys
    import tempfile
    import types

    versions = {**KERNEL_DISTS, "oldlib": "1.0"}
    calls: list[list[str]] = []

    class Dist:
        def __init__(self, name, version):
            self.metadata, self.version = {"Name": name}, version

    def run(cmd, check):
        calls.append(list(cmd))
        if cmd[:2] == ["git", "clone"]:
            os.symlink(ROOT, cmd[-1])
        if cmd[1:4] == ["-m", "pip", "install"]:
            versions.update(oldlib="2.0", peft="0.21.2")  # an upgrade and a new package

    repo = tmp_path / "clone"
    cell = _install_cell()
    cell = cell.replace('"/content/phi2kit"', repr(str(repo))).replace(
        '"/kaggle/working/phi2kit"', repr(str(repo)))
    monkeypatch.setattr(md, "distributions", lambda: [Dist(n, v) for n, v in versions.items()])
    monkeypatch.setattr(md, "packages_distributions", lambda: {"oldlib_mod": ["OldLib"]})
    monkeypatch.setattr(subprocess, "run", run)
    monkeypatch.setattr(os, "chdir", lambda path: calls.append(["chdir", path]))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE", raising=False)
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    if platform == "colab":
        monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    elif platform == "kaggle":
        monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Interactive")
    for name in imported:
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    exec(compile(cell, "install cell", "exec"), {"__name__": "__main__"})
    return calls


def test_every_notebook_has_the_same_short_install_cell():
    cells = {p.name: nbformat.read(p, as_version=4).cells[1].source for p in NOTEBOOKS}
    assert len(set(cells.values())) == 1, sorted(cells)
    assert len(_install_cell().splitlines()) <= 15


@pytest.mark.parametrize("platform", ["colab", "kaggle"])
def test_install_cell_keeps_the_kernel_packages(platform, monkeypatch, tmp_path, capsys):
    import os
    import sys

    calls = _run_install_cell(monkeypatch, tmp_path, platform)
    repo = str(tmp_path / "clone")
    clone, pip, chdir = calls
    assert clone[:2] == ["git", "clone"] and clone[-1] == repo
    assert pip[:6] == [sys.executable, "-m", "pip", "install", "-q", "-c"]
    assert pip[-1] == repo and not any("[" in arg for arg in pip)  # no extra: no course extra
    kept = (tmp_path / pip[6].rsplit("/", 1)[-1]).read_text().split()
    assert sorted(kept) == sorted(f"{n}=={v}" for n, v in KERNEL_DISTS.items())
    assert chdir == ["chdir", f"{repo}/notebooks"]
    assert "no restart needed" in capsys.readouterr().out
    assert os.environ.get("CUDA_VISIBLE_DEVICES") == ("0" if platform == "kaggle" else None)


def test_install_cell_asks_for_a_restart_only_when_an_imported_package_changed(
    monkeypatch, tmp_path
):
    with pytest.raises(RuntimeError, match=r"restart the session .*\['oldlib'\]"):
        _run_install_cell(monkeypatch, tmp_path, "colab", imported=("oldlib_mod",))


def test_install_cell_does_nothing_elsewhere(monkeypatch, tmp_path):
    assert _run_install_cell(monkeypatch, tmp_path, "laptop") == []


def test_setup_script_run_as_a_script_elsewhere_does_nothing():
    import subprocess
    import sys

    env = {k: v for k, v in __import__("os").environ.items() if k != "KAGGLE_KERNEL_RUN_TYPE"}
    out = subprocess.run([sys.executable, str(SETUP)], capture_output=True, text=True, env=env,
                         check=True)
    assert "nothing to do" in out.stdout


def test_the_package_itself_pulls_no_kernel_package():
    """The set-up installs the project without extras: its main dependencies must leave the
    kernel's packages alone (papermill, nbclient, ipykernel live in the `course` extra)."""
    import runpy

    kernel = runpy.run_path(str(SETUP))["KERNEL"]
    assert {"ipykernel", "papermill", "nbclient"} <= set(kernel)
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.split(r"[<>=!~\[ ;]", d, maxsplit=1)[0].lower() for d in deps}
    assert not names & set(kernel), names & set(kernel)


# --- the knobs issue 14 added: own data, Drive, checkpoints ------------------------------


def _nb(stem: str):
    return nbformat.read(next(p for p in NOTEBOOKS if p.name.startswith(stem)), as_version=4)


def _code(stem: str) -> str:
    return "\n".join(c.source for c in _nb(stem).cells if c.cell_type == "code")


@pytest.mark.parametrize("stem", ["02", "03"])
def test_label_set_and_template_are_parameters(stem):
    params = _nb(stem).cells[2].source
    assert re.search(r"^LABELS = \[", params, re.M) and "PROMPT_TEMPLATE = None" in params
    code = _code(stem)
    assert "from phi2kit.data.sentiment import LABELS" not in code  # it would shadow the knob
    assert "labels=LABELS" in code


@pytest.mark.parametrize("stem", ["02", "03", "04", "05", "06"])
def test_outputs_can_live_on_drive(stem):
    assert "USE_DRIVE = False" in _nb(stem).cells[2].source
    assert "outputs_root(USE_DRIVE)" in _code(stem)


@pytest.mark.parametrize("stem", ["04", "06"])
def test_long_training_checkpoints_and_resumes(stem):
    params, code = _nb(stem).cells[2].source, _code(stem)
    assert "RESUME = True" in params
    assert "save_steps=eval_every" in code and "load_best_model_at_end=True" in code
    assert "/checkpoints/{profile.name}" in code  # a tiny and a t4-cpu run never share them
    assert "train_resumable(trainer, settings, resume=RESUME)" in code
    assert "trainer.train()" not in code  # every run goes through the resumable path


def test_readme_course_table_has_both_badges():
    readme = (ROOT / "README.md").read_text()
    github = "github/phi2kit/phi2kit/blob/main/notebooks/"
    for path in NOTEBOOKS:
        row = next(line for line in readme.splitlines() if line.startswith(f"| [{path.stem}]"))
        assert f"colab.research.google.com/{github}{path.name}" in row
        assert f"kaggle.com/kernels/welcome?src=https://github.com/{github[7:]}{path.name}" in row


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_fp32_attention_is_registered_where_it_is_used(path):
    """No cell depends on a name that only ``import phi2kit`` registers: a lesson that passes
    ``attn_implementation=`` registers phi2kit's fp32 attention itself, in view (lesson 01
    writes it), and importing phi2kit registers nothing."""
    code = _code(path.name[:2])
    if "attn_implementation=" in code:
        assert "AttentionInterface.register(" in code, path.name


def test_importing_phi2kit_registers_no_attention():
    import subprocess
    import sys

    probe = ("import phi2kit.models, phi2kit.training; from transformers import "
             "AttentionInterface; print('phi2kit_fp32' in AttentionInterface._global_mapping)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "False"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_code_cells_are_plain_python_a_script_can_hold(path):
    """A cell copied into a script must run: no IPython magics, no IPython's ``display``."""
    nb = nbformat.read(path, as_version=4)
    code = "\n\n".join(c.source for c in nb.cells if c.cell_type == "code")
    compile(code, path.name, "exec")  # a %magic or !shell line is a SyntaxError
    assert not re.search(r"(?<![\w.])display\(", code), f"{path.name}: display() needs IPython"

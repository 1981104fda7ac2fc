"""The README's numbers and commands come from the code; this keeps them from drifting."""

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
MEMORY = (ROOT / "docs" / "memory.md").read_text()  # the planner's tables, moved from the README


def test_course_table_matches_planner():
    from phi2kit.plan.course import course_rows

    for name, _, minutes, gb in course_rows():
        row = next(line for line in README.splitlines() if line.startswith(f"| [{name}]"))
        assert f"| {minutes} min | {gb} GB |" in row, row


def test_planner_totals_match():
    from phi2kit.plan import estimate
    from phi2kit.recipes import TASKS, get_recipe

    total_row = next(line for line in MEMORY.splitlines() if line.startswith("| **total** |"))
    for est in (estimate("t4", get_recipe(task, "t4")) for task in TASKS):
        assert f"**{est.total_gb:.2f}**" in total_row
        assert est.fits


def test_every_notebook_is_in_the_table():
    names = sorted(p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    assert names and all(f"[{n}](notebooks/{n}.ipynb)" in README for n in names)


def _quick_start() -> list[str]:
    """The lines of the Quick start's command block."""
    section = README.split("## Quick start", 1)[1]
    return section.split("```bash\n", 1)[1].split("```", 1)[0].splitlines()


def _extras(setup_line: str) -> set[str]:
    return set(re.search(r'-e "?\.\[([^\]]*)\]', setup_line).group(1).split(","))


def test_ci_runs_the_readme_commands_exactly():
    block = _quick_start()
    setup = next(line for line in block if line.startswith("python -m venv .venv"))
    assert "jupyter lab" in block and "phi2kit course --profile tiny" in block
    assert "pytest" in block  # the test command, alone on its line
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert setup in ci and "pytest" in ci
    assert ci.index(setup) < ci.index("pytest")


def test_setup_installs_jupyterlab_the_app_and_the_course_runner():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    setup = next(line for line in _quick_start() if line.startswith("python -m venv .venv"))
    extras = _extras(setup)
    assert extras <= set(project["optional-dependencies"])

    def names(reqs):
        return {re.split(r"[<>=!~\[ ;]", r, maxsplit=1)[0].lower() for r in reqs}

    installed = names(r for e in extras for r in project["optional-dependencies"][e])
    needed = {"jupyterlab", "gradio", "papermill", "nbclient", "ipykernel", "playwright"}
    assert needed | {"pexpect", "pytest", "nbmake"} <= installed
    # Colab pins its own kernel packages: the notebooks' install cell must not upgrade them
    assert not names(project["dependencies"]) & needed
    env = (ROOT / "environment.yml").read_text()
    assert _extras(env) == extras  # conda users get the same


def test_tiny_report_in_readme():
    from phi2kit.tiny import build_report

    assert str(build_report()["held_out_perplexity"]) in README


def test_t4_recipe_table_matches_skeleton():
    from meta_report import all_reports  # bench/

    for report in all_reports("t4"):
        row = next(line for line in MEMORY.splitlines() if line.startswith(f"| {report.task} |"))
        assert f"{report.trainable:,}" in row, row


def _run_snippet(block: int, task: str, out: str, tmp_path, monkeypatch, capsys) -> list:
    """Train ``task`` for 2 steps into ``tmp_path/out``, then run the README's ``block``-th
    Python block of "Use what you trained" there; the list its last line printed."""
    import ast

    from phi2kit.commands.train import main

    section = README.split("### Use what you trained", 1)[1]
    code = section.split("```python\n")[block + 1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    assert main([task, "--profile", "tiny", "--steps", "2", "--set", "n_train=30",
                 "--threads", "1", "--output-dir", out]) == 0  # fmt: skip
    capsys.readouterr()
    exec(compile(code, "README.md", "exec"), {})
    return ast.literal_eval(capsys.readouterr().out.strip().splitlines()[-1])


def test_the_use_what_you_trained_snippet_runs_on_a_trained_adapter(tmp_path, monkeypatch, capsys):
    """The README's Python block labels headlines with an adapter `phi2kit train` wrote."""
    printed = _run_snippet(0, "sentiment", "runs/mine", tmp_path, monkeypatch, capsys)
    assert len(printed) == 2 and set(printed) <= {"negative", "neutral", "positive"}, printed


def test_the_classifier_snippet_runs_on_a_trained_adapter(tmp_path, monkeypatch, capsys):
    """The README's second Python block: a classifier adapter, its labels read from the
    metrics.json that `phi2kit train classifier` writes."""
    section = README.split("### Use what you trained", 1)[1]
    assert "AutoPeftModelForSequenceClassification" in section.split("```python\n")[2]
    printed = _run_snippet(1, "classifier", "runs/labels", tmp_path, monkeypatch, capsys)
    labels = json.loads((tmp_path / "runs/labels/adapter/metrics.json").read_text())["labels"]
    assert labels == ["negative", "neutral", "positive"]
    assert len(printed) == 1 and set(printed) <= set(labels), printed

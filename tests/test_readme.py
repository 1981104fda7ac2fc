"""The README's numbers and commands come from the code; this keeps them from drifting."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_course_table_matches_planner():
    from phi2kit.plan import course_rows

    for name, _, minutes, gb in course_rows():
        row = next(line for line in README.splitlines() if line.startswith(f"| [{name}]"))
        assert f"| {minutes} min | {gb} GB |" in row, row


def test_planner_totals_match():
    from phi2kit.plan import plan_all_t4

    total_row = next(line for line in README.splitlines() if line.startswith("| **total** |"))
    for _, est in plan_all_t4():
        assert f"**{est.total_gb:.2f}**" in total_row
        assert est.fits


def test_every_notebook_is_in_the_table():
    names = sorted(p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    assert names and all(f"[{n}](notebooks/{n}.ipynb)" in README for n in names)


def test_three_commands_are_documented():
    assert 'pip install -e ".[dev]"' in README
    assert "phi2kit course --profile tiny" in README
    assert re.search(r"^pytest$", README, re.M)
    ci = (ROOT / ".ci" / "run").read_text()
    assert 'pip install -q -e ".[dev]"' in ci and "python -m pytest" in ci


def test_tiny_report_in_readme():
    from phi2kit.tiny import build_report

    assert str(build_report()["held_out_perplexity"]) in README


def test_t4_recipe_table_matches_skeleton():
    from phi2kit.skeleton import all_reports

    for report in all_reports("t4"):
        row = next(line for line in README.splitlines() if line.startswith(f"| {report.task} |"))
        assert f"{report.trainable:,}" in row, row

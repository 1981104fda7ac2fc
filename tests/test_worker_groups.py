"""The suite's worker groups (tests/conftest.py): a group's tests run on one xdist worker.

pytest 9.2 ignores xdist's own ``xdist_group`` marks (pytest-dev/pytest-xdist#1386), which let
the lessons run on two workers, each without the other's outputs/, and paid each costly
module fixture twice; conftest's scheduler groups by path instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import ONE_WORKER, worker_group

TESTS = Path(__file__).resolve().parent


def _outer_env() -> dict[str, str]:
    """This environment without what this run's pytest and xdist set for themselves."""
    return {k: v for k, v in os.environ.items()
            if k != "PYTEST_ADDOPTS" and not k.startswith("PYTEST_XDIST")}  # fmt: skip


def test_each_path_falls_in_its_group():
    assert worker_group("notebooks/04_webglm_qlora.ipynb::04_webglm_qlora.ipynb") == "lessons-tiny"
    t4 = "tests/test_course_t4_cpu.py::test_lesson_passes_under_t4_cpu[{}]"
    assert worker_group(t4.format("09_grpo_rewards")) == "t4-cpu-course"  # after 04, in order
    assert worker_group(t4.format("08_preference_dpo")) is None  # alone, in a folder of its own
    assert worker_group("tests/test_app.py::test_app_in_a_headless_browser") == "test_app"
    assert worker_group("tests/test_plan.py::test_fits") is None
    assert worker_group("exercises/test_app.py::test_x") is None
    assert all((TESTS / f"{m}.py").is_file() for m in ONE_WORKER)  # no stale name


def test_a_group_runs_on_one_worker(tmp_path):
    """Two workers, a grouped module and an ungrouped one: every test of the grouped module
    reports the same worker, and both workers ran tests."""
    tests = tmp_path / "tests"
    tests.mkdir()
    (tests / "conftest.py").write_text(  # the suite's conftest, loaded under another name
        "import importlib.util\n"
        f"spec = importlib.util.spec_from_file_location('suite', {str(TESTS / 'conftest.py')!r})\n"
        "suite = importlib.util.module_from_spec(spec)\nspec.loader.exec_module(suite)\n"
        "pytest_xdist_make_scheduler = suite.pytest_xdist_make_scheduler\n")  # fmt: skip
    body = "".join(f"def test_{i}():\n    record({i})\n\n\n" for i in range(8))
    record = ("import os\nfrom pathlib import Path\n\n\ndef record(i):\n"
              "    out = Path(__file__).with_suffix('.' + os.environ['PYTEST_XDIST_WORKER'])\n"
              "    with out.open('a') as f:\n        f.write(f'{i}\\n')\n\n\n")  # fmt: skip
    (tests / "test_app.py").write_text(record + body)  # in ONE_WORKER
    (tests / "test_plain.py").write_text(record + body)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2",
           "--dist", "loadgroup", "tests"]  # fmt: skip
    run = subprocess.run(cmd, cwd=tmp_path, env=_outer_env(), capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    grouped = sorted(p.suffix for p in tests.glob("test_app.gw*"))
    plain = sorted(p.suffix for p in tests.glob("test_plain.gw*"))
    assert len(grouped) == 1, f"test_app's tests ran on {grouped}"
    assert len(set(grouped + plain)) == 2, f"one worker ran everything: {grouped + plain}"


def test_the_suite_collects_without_xdist():
    """The scheduler is xdist's hook, marked optional: `pytest -p no:xdist` still runs."""
    cmd = [sys.executable, "-m", "pytest", "-p", "no:xdist", "-o", "addopts=", "-p",
           "no:cacheprovider", "--collect-only", "-q", str(TESTS / "test_worker_groups.py")]
    run = subprocess.run(cmd, cwd=TESTS.parent, env=_outer_env(), capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr

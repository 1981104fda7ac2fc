"""Shared fixtures: the shipped tiny model (offline) and a fresh copy per test."""

import os
import sys
from pathlib import Path

import pytest

# bench/'s tools (meta_report, measure_memory) are not part of the library; tests import them.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_profile():
    from phi2kit.profiles import get_profile

    return get_profile("tiny")


@pytest.fixture()
def tiny_model(tiny_profile):
    import torch

    from phi2kit.models import load_model

    torch.manual_seed(0)
    return load_model(tiny_profile, quantize_4bit=False)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_profile):
    from phi2kit.models import load_tokenizer

    return load_tokenizer(tiny_profile)


# --- running on 2 cores: two xdist workers, one thread each -----------------------------------
# pyproject's addopts run the suite with `-n 2 --dist loadgroup`. Each worker (and every Jupyter
# kernel it starts: they inherit the environment) computes on one thread: two processes of one
# thread each use a 2-core machine fully, where two processes of two threads each ran 3.3x
# slower (issue 22).
if os.environ.get("PYTEST_XDIST_WORKER"):
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_var] = "1"

# Which tests must share a worker, in collection order:
# - the lessons executed by nbmake (`notebooks/*.ipynb`, profile tiny), since later lessons read
#   earlier lessons' outputs/ (08 reads 06's adapter, 09 reads 04's);
# - the t4-cpu lessons that run in order in one folder (tests/test_course_t4_cpu.py: all but
#   T4_CPU_ALONE, which run each in a folder of its own);
# - modules whose module-scoped fixture costs seconds (a quick real-size run, a trained adapter,
#   the app's process), so that it runs once, not once per worker.
# xdist's own `xdist_group` marks do not group under pytest 9.2 (pytest-dev/pytest-xdist#1386:
# the group rides on a nodeid suffix that pytest 9.2 no longer takes), so the scheduler below
# groups by path instead (tests/test_worker_groups.py checks that it does).
T4_CPU_ALONE = ("05_adapter_merging", "07_export_gguf", "08_preference_dpo")
ONE_WORKER = ("test_phi2_real_size", "test_bench_gguf", "test_train_grpo", "test_app",
              "test_bench_train")  # fmt: skip


def worker_group(nodeid: str) -> str | None:
    """The group a test's nodeid belongs to (all of a group run on one worker), or None."""
    path = nodeid.split("::", 1)[0]
    if path.startswith("notebooks/") and path.endswith(".ipynb"):
        return "lessons-tiny"
    module = path.rpartition("/")[2].removesuffix(".py")
    if module == "test_course_t4_cpu" and not any(f"[{nb}]" in nodeid for nb in T4_CPU_ALONE):
        return "t4-cpu-course"
    return module if path.startswith("tests/") and module in ONE_WORKER else None


@pytest.hookimpl(optionalhook=True)  # xdist's hook: without xdist (-p no:xdist), not an error
def pytest_xdist_make_scheduler(config, log):
    """`--dist loadgroup` as xdist's, with the groups of :func:`worker_group`: each group is one
    work unit; xdist starts the largest first (its --loadscope-reorder default)."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ByGroup(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return worker_group(nodeid) or nodeid

    return ByGroup(config, log)

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
# slower (issue 22). The lessons executed by nbmake (`notebooks/*.ipynb`, profile tiny) stay on
# one worker, in order, since later lessons read earlier lessons' outputs/; the t4-cpu course
# runs on the other in a folder of its own (tests/test_course_t4_cpu.py).
if os.environ.get("PYTEST_XDIST_WORKER"):
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_var] = "1"


def pytest_collection_modifyitems(config, items):
    for item in items:
        if str(item.fspath).endswith(".ipynb"):
            item.add_marker(pytest.mark.xdist_group("lessons-tiny"))
        elif item.module is not None and item.module.__name__.endswith("test_course_t4_cpu"):
            item.add_marker(pytest.mark.xdist_group("lessons-t4-cpu"))

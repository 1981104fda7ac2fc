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

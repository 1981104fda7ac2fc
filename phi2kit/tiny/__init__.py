"""The tiny pretrained Phi shipped inside the package (1.3M parameters, Phi-2's architecture and
tokenizer); ``python scripts/build_tiny.py`` rebuilds it."""

from __future__ import annotations

import json
from pathlib import Path

TINY_DIR = Path(__file__).parent / "model"


def tiny_path() -> Path:
    """Folder of the shipped tiny model (``config.json``, safetensors, tokenizer)."""
    if not (TINY_DIR / "config.json").exists():
        raise FileNotFoundError(
            f"the tiny model is missing from {TINY_DIR}; rebuild it with "
            "`python scripts/build_tiny.py`"
        )
    return TINY_DIR


def tiny_config():
    """The tiny model's ``PhiConfig``, read from the shipped ``config.json``."""
    from transformers import PhiConfig

    return PhiConfig.from_pretrained(tiny_path())


def build_report() -> dict:
    """The report written when the model was built (perplexities, build time, seed)."""
    return json.loads((tiny_path() / "build_report.json").read_text())

"""Loaders for the published forms of the course's data sets (one submodule each)."""

from __future__ import annotations

from pathlib import Path

#: The project's own samples (see data/README.md), relative to the repository root.
SAMPLES = {
    "financial_news": "financial_news/all-data.csv",
    "webglm": "webglm",
    "oasst1": "oasst1/sample.trees.jsonl",
}


def sample_path(name: str) -> Path:
    """Path of a shipped sample set (``financial_news``, ``webglm`` or ``oasst1``)."""
    if name not in SAMPLES:
        raise ValueError(f"unknown sample {name!r}; choose one of {sorted(SAMPLES)}")
    for root in (Path.cwd(), Path.cwd().parent, Path(__file__).resolve().parents[2]):
        candidate = root / "data" / SAMPLES[name]
        if candidate.exists():
            return candidate
    raise FileNotFoundError(
        f"sample {name!r} not found: clone the repository (it lives in data/{SAMPLES[name]}), "
        "or pass DATA_PATH pointing at your own copy of the data set"
    )


def resolve_data(name: str, path: str | Path | None, profile) -> Path | None:
    """The data a notebook reads: ``path``; with none, the sample on the tiny profile, else
    ``None`` (the hub). ``path="sample"`` forces the sample on any profile."""
    if path == "sample" or (path in (None, "auto") and profile.is_tiny):
        return sample_path(name)
    if path in (None, "auto"):
        return None
    return Path(path)

"""Quiet notebooks: library progress bars and known-harmless messages off.

``quiet()`` is the first thing every notebook calls. It hides:

- transformers' and datasets' progress bars (weight loading, dataset mapping);
- bitsandbytes' note that an optional hub kernel could not be loaded (harmless offline:
  the built-in CPU kernel is used);
- tqdm's warning that Jupyter widgets are missing;
- deprecation warnings that libraries raise about *each other*, which a learner can do
  nothing about: peft calling transformers' ``is_gradient_checkpointing``, and trl's
  ``SFTConfig`` defaults still setting ``gradient_checkpointing`` (phi2kit's configs set its
  new name, ``activation_checkpointing``).

Errors and our own warnings still show. Long work still shows progress: the Trainer's own
bar on GPU profiles (``phi2kit.training``), and :func:`progress` in phi2kit's batched
evaluation loops when the model sits on a GPU.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

HARMLESS = [
    r".*is_gradient_checkpointing.*is deprecated.*",
    r"`gradient_checkpointing` is deprecated .* Use `activation_checkpointing` instead.*",
    r".*IProgress not found.*",
]


def quiet() -> None:
    """Turn off library progress bars and known-harmless warnings for this process."""
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    for pattern in HARMLESS:
        warnings.filterwarnings("ignore", message=pattern)
    import datasets
    import transformers

    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()


def on_gpu(model: Any) -> bool:
    """Whether ``model``'s parameters live on a CUDA device (long work: show progress)."""
    try:
        return next(model.parameters()).device.type == "cuda"
    except (AttributeError, StopIteration):
        return False


def progress(
    iterable: Iterable[T], *, total: int | None = None, desc: str = "", show: bool = True
) -> Iterator[T]:
    """``iterable`` with a ``tqdm.auto`` bar (a widget in Jupyter) when ``show``, else as is.

    phi2kit's batched loops pass ``show=on_gpu(model)``: on a T4 an evaluation takes
    minutes, while on the tiny CPU profile (and in CI) it takes seconds and stays quiet.
    """
    if not show:
        yield from iterable
        return
    from tqdm.auto import tqdm

    with tqdm(iterable, total=total, desc=desc, leave=False) as bar:
        yield from bar

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

Errors and our own warnings still show.
"""

from __future__ import annotations

import logging
import warnings

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

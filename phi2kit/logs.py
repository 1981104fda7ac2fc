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

The ``phi2kit`` commands call :func:`quiet_command` instead: the same, plus the libraries'
informational warnings (a shell user can act on none of them), and
:func:`one_progress_line` replaces the Trainer's loss line per step by one progress line.
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


def quiet_command() -> None:
    """:func:`quiet`, plus what a ``phi2kit`` command's user can do nothing about.

    Call it before the libraries are imported: bitsandbytes notes at import time that an
    optional CPU kernel (the ``kernels`` package) is missing; transformers' warnings about
    its own internals (e.g. file mtimes) go too. Errors still show.
    """
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    quiet()
    import transformers

    transformers.utils.logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|peft|trl)")


def one_progress_line(trainer: Any, desc: str = "training") -> Any:
    """Replace the Trainer's progress output (a loss dict per logged step) by one bar:
    ``training: 40%|####  | 48/120 [00:12<00:18, loss=0.91]``. Returns ``trainer``."""
    from tqdm.auto import tqdm
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    class OneLine(TrainerCallback):
        bar = None

        def on_train_begin(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc=desc,
                                unit="step", dynamic_ncols=True)  # fmt: skip

        def on_step_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.update(state.global_step - self.bar.n)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if self.bar is not None and logs and "loss" in logs:
                self.bar.set_postfix(loss=f"{float(logs['loss']):.4g}", refresh=False)

        def on_train_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.close()
                self.bar = None

    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(OneLine())
    return trainer

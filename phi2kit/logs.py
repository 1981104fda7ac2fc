"""Quiet notebooks and commands: library progress bars and known-harmless messages off."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable
from typing import Any, TypeVar

T = TypeVar("T")

#: Deprecations libraries raise about each other (peft about transformers, trl's defaults),
#: and tqdm's note that Jupyter widgets are missing: nothing a learner can act on.
HARMLESS = [
    r".*is_gradient_checkpointing.*is deprecated.*",
    r"`gradient_checkpointing` is deprecated .* Use `activation_checkpointing` instead.*",
    r".*IProgress not found.*",
]


def _not_mtime_note(record: logging.LogRecord) -> bool:
    """False for the Trainer's note that checkpoints saved within one second are sorted by
    step number instead of file time (it sorts them right either way)."""
    return "mtime may not be reliable" not in record.getMessage()


def quiet() -> None:
    """Turn off library progress bars, :data:`HARMLESS` warnings, bitsandbytes' missing-hub-kernel
    note and the Trainer's checkpoint-ordering note. Every notebook calls it first."""
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    logging.getLogger("transformers.trainer_utils").addFilter(_not_mtime_note)  # added once
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


def progress(iterable: Iterable[T], *, desc: str = "", show: bool = True) -> Iterable[T]:
    """``iterable`` with a ``tqdm.auto`` bar when ``show`` (loops pass ``on_gpu(model)``)."""
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, leave=False, disable=not show)


def quiet_command() -> None:
    """:func:`quiet`, plus the libraries' informational warnings (a shell user can act on
    none); call it before they are imported (bitsandbytes notes at import time)."""
    quiet()
    import transformers

    transformers.utils.logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|peft|trl)")


def one_progress_line(trainer: Any) -> Any:
    """Replace the Trainer's progress output (a loss dict per log) by one bar; returns it."""
    from tqdm.auto import tqdm
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    class OneLine(TrainerCallback):
        bar = None

        def on_train_begin(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc="training",
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

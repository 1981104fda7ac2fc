"""Checkpoints that outlive a recycled runtime (Colab, Kaggle): resume from the latest complete one
(a ``COMPLETE`` marker), refused under other settings (:class:`ResumeError`)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

COMPLETE = "COMPLETE"
#: Where :func:`train_resumable` notes the settings its checkpoints were written with.
SETTINGS = "settings.json"


def write_json_atomic(path: str | os.PathLike[str], data: object) -> None:
    """Write JSON to a temporary file in the same folder, then rename it over ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def checkpoint_step(checkpoint: str | os.PathLike[str]) -> int:
    """The optimizer step of a ``checkpoint-N`` folder: N."""
    return int(Path(checkpoint).name.rsplit("-", 1)[-1])


def latest_checkpoint(folder: str | os.PathLike[str]) -> Path | None:
    """The marked ``checkpoint-N`` with the highest N in ``folder``, or None (transformers'
    ``get_last_checkpoint`` looks at names only, and would pick one a crash cut short)."""
    from transformers.trainer_utils import sort_checkpoints

    complete = [c for c in sort_checkpoints(str(folder)) if (Path(c) / COMPLETE).is_file()]
    return Path(complete[-1]) if complete else None


def is_finished(checkpoint: str | os.PathLike[str], max_steps: int) -> bool:
    """Whether ``checkpoint``'s step reached ``max_steps`` (every caller trains by steps)."""
    return max_steps > 0 and checkpoint_step(checkpoint) >= max_steps


def load_finished(trainer, checkpoint: str | os.PathLike[str]):
    """Load a finished run instead of training it (``trainer.train`` would run one more
    step), the best checkpoint's weights with ``load_best_model_at_end``: a ``TrainOutput``."""
    from transformers.trainer_callback import TrainerState
    from transformers.trainer_utils import TrainOutput

    trainer._load_from_checkpoint(str(checkpoint))
    trainer.state = TrainerState.load_from_json(str(Path(checkpoint) / "trainer_state.json"))
    best = trainer.state.best_model_checkpoint
    if trainer.args.load_best_model_at_end and best and Path(best).is_dir():
        trainer._load_best_model()
    loss = run_loss(trainer.state)
    return TrainOutput(trainer.state.global_step, loss, {"train_loss": loss})


def run_loss(state) -> float:
    """The mean logged train loss of the whole run, resumed sessions included (a
    ``TrainOutput``'s covers only the session that produced it); NaN with none logged."""
    losses = [row["loss"] for row in state.log_history if "loss" in row]
    return sum(losses) / len(losses) if losses else float("nan")


def mark_complete():
    """A Trainer callback: once every process has saved its part of a checkpoint, rank 0
    writes the ``COMPLETE`` marker (built on first use: importing transformers is slow)."""
    from transformers import TrainerCallback

    class MarkComplete(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                dist.barrier()
            if state.is_world_process_zero:
                folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                write_json_atomic(folder / COMPLETE, {"step": state.global_step})

    return MarkComplete()


def _plain(settings: dict[str, Any]) -> dict[str, Any]:
    """Settings as JSON would store them (dataclasses as dicts, tuples as lists, paths as str)."""
    data = {k: asdict(v) if is_dataclass(v) else v for k, v in settings.items()}
    return json.loads(json.dumps(data, default=str))


def data_fingerprint(path: str | os.PathLike[str]) -> str:
    """``sha256 <16 hex>`` of a data file's bytes (a folder's files, by relative path): a
    resumed run checks the content it trains on, not the path as typed."""
    path = Path(path)
    files = sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for file in files:
        digest.update(str(file.relative_to(path)).encode())  # "." for a file
        with file.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return f"sha256 {digest.hexdigest()[:16]}"


class ResumeError(ValueError):
    """Checkpoints in the output folder belong to a run with other settings: ``changed``
    maps each to its (stored, asked) values."""

    def __init__(self, message: str, changed: dict[str, tuple[Any, Any]]):
        super().__init__(message)
        self.changed = changed


def save_settings(folder: str | os.PathLike[str], settings: dict[str, Any]) -> None:
    """Note the ``settings`` a run's checkpoints in ``folder`` are written with."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    write_json_atomic(Path(folder) / SETTINGS, _plain(settings))


def resume_point(
    folder: str | os.PathLike[str], settings: dict[str, Any], log: Callable[[str], Any] = print
) -> Path | None:
    """The checkpoint to resume from in ``folder`` (None: step 0), or :class:`ResumeError`
    when its checkpoints were written with other ``settings``: that would be another run."""
    folder = Path(folder)
    old = folder / SETTINGS
    before = json.loads(old.read_text()) if old.is_file() else None
    now = _plain(settings)
    if before is not None and before != now and list(folder.glob("checkpoint-*")):
        keys = dict.fromkeys([*now, *before])  # in the settings' order: the run's, then recipe's
        changed = {k: (before.get(k), now.get(k)) for k in keys
                   if before.get(k) != now.get(k)}  # fmt: skip
        raise ResumeError(
            f"{folder} holds checkpoints of a run with other {', '.join(changed)}: "
            "resume=False (RESUME = False in a notebook) deletes them and trains from step 0, "
            "or choose another output folder",
            changed,
        )
    latest = latest_checkpoint(folder)
    if latest is None:
        log(f"no complete checkpoint in {folder}: training from step 0")
    return latest


def train_resumable(trainer, settings: dict[str, Any], *, resume: bool = True,
                    log: Callable[[str], Any] = print):  # fmt: skip
    """``(trainer.train(), resumed_from)``: from the latest complete checkpoint when ``resume``
    (:func:`resume_point`; ``settings`` are stored with the checkpoints), else from step 0 with the
    old checkpoints deleted; a finished run is loaded, not trained again."""
    from transformers.trainer_utils import SaveStrategy

    if trainer.args.save_strategy != SaveStrategy.STEPS:
        raise ValueError('build the trainer with save_strategy="steps": it saves no checkpoints')
    if "MarkComplete" not in {type(cb).__name__ for cb in trainer.callback_handler.callbacks}:
        trainer.add_callback(mark_complete())
    from phi2kit.batching import group_by_length

    group_by_length(trainer)  # sft_trainer has done it already; a no-op then
    folder = Path(trainer.args.output_dir)
    if resume:
        resumed_from = resume_point(folder, settings, log)
    else:
        resumed_from = None
        for checkpoint in folder.glob("checkpoint-*"):
            shutil.rmtree(checkpoint)  # resume=False: start over, and leave no stale checkpoint
    total = trainer.args.max_steps
    finished = resumed_from is not None and is_finished(resumed_from, total)
    if resumed_from is not None:
        done = " (training had finished: loading its weights)" if finished else ""
        log(f"resuming from {resumed_from}: step {checkpoint_step(resumed_from)} of {total}{done}")
    save_settings(folder, settings)
    if finished:
        return load_finished(trainer, resumed_from), resumed_from
    result = trainer.train(resume_from_checkpoint=str(resumed_from) if resumed_from else None)
    return result, resumed_from

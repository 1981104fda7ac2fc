"""``phi2kit train TASK``: a notebook's recipe from the command line; resumable, multi-process.

    phi2kit train sentiment --profile t4 --output-dir runs/sentiment --save-every 25
    phi2kit train sentiment --profile t4 --output-dir runs/sentiment --resume   # after a crash
    accelerate launch --multi_gpu --num_processes 2 -m phi2kit.commands.train chat \
        --output-dir runs/chat
    python -m phi2kit.commands.train sentiment --profile tiny --steps 12 --output-dir /tmp/run

``--multi_gpu`` starts one process per device through torchrun; without CUDA the same
command runs 2 CPU processes over gloo (``--cpu`` would start a single process).

The task's data, model and trainer come from :mod:`phi2kit.commands.tasks` (the notebooks' code).
``OUTPUT_DIR`` is created only once the data has been read and checked, and holds:

- ``checkpoints/checkpoint-N/``: HF Trainer checkpoints every ``--save-every`` steps
  (adapter in safetensors, optimizer, scheduler, RNG states, ``trainer_state.json``) and a
  ``COMPLETE`` marker written after every process has finished its part;
- ``loss_log.jsonl``: one JSON object per logged step; ``run.json``: the settings;
- ``adapter/``: the final adapter, tokenizer and ``metrics.json``. It is written into a
  temporary folder and renamed into place, so it is complete or absent, never half-written.

``--resume`` restarts from the newest complete checkpoint: weights, optimizer, scheduler,
data order and RNG states are restored by the HF Trainer. Only rank 0 writes final outputs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

from phi2kit.checkpoints import (
    COMPLETE,
    checkpoint_args,
    checkpoint_step,
    latest_checkpoint,
    write_json_atomic,
)
from phi2kit.commands import add_profile_argument

__all__ = ["COMPLETE", "atomic_dir", "latest_checkpoint", "main", "write_json_atomic"]

CHECKPOINTS = "checkpoints"
ADAPTER = "adapter"
LOSS_LOG = "loss_log.jsonl"


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary folder next to ``path``; rename it to ``path`` if the block succeeds.

    On an exception the temporary folder is removed and ``path`` is left as it was. An
    existing ``path`` is replaced (moved aside, then deleted), so readers see the old
    folder or the new one, never a half-written one. A hard kill inside the block leaves
    only a hidden ``.NAME.tmp-*`` folder, which never looks like a finished output.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if path.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
        os.replace(path, old / path.name)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _callbacks(loss_log: Path):
    """Trainer callbacks: the loss log and the checkpoint marker (built lazily: imports)."""
    from transformers import TrainerCallback

    from phi2kit.checkpoints import mark_complete

    class LossLog(TrainerCallback):
        """Append ``{"step", "loss", ...}`` to ``loss_log.jsonl`` on rank 0."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs and "loss" in logs:
                keys = ("loss", "learning_rate", "grad_norm", "epoch")
                row = {"step": state.global_step, **{k: logs[k] for k in keys if k in logs}}
                with open(loss_log, "a") as f:
                    f.write(json.dumps(row) + "\n")

    return [LossLog(), mark_complete()]


def _trim_loss_log(path: Path, last_step: int) -> None:
    """Drop log rows after ``last_step``: the resumed run logs those steps again."""
    if not path.is_file():
        return
    rows = [line for line in path.read_text().splitlines() if line.strip()]
    kept = [r for r in rows if json.loads(r)["step"] <= last_step]
    path.write_text("".join(r + "\n" for r in kept))


def _add_arguments(p: argparse.ArgumentParser) -> None:
    from phi2kit.recipes import TASKS

    p.add_argument("task", choices=TASKS, help="the notebook recipe to run")
    add_profile_argument(p)
    p.add_argument("--data", default="auto", metavar="PATH",
                   help="your data, a file or folder (default: the shipped sample on tiny and "
                   "t4-cpu, the hub data set on a GPU); formats below")  # fmt: skip
    p.add_argument("--labels", default=None, metavar="A,B,...",
                   help="sentiment, classifier: your data's label words, in order "
                   "(default negative,neutral,positive); an integer label i means the "
                   "i-th word")  # fmt: skip
    p.add_argument("--output-dir", type=Path, default=None, help="default outputs/train_TASK")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default: recipe)")
    q = p.add_mutually_exclusive_group()
    q.add_argument("--lora", dest="quantize", action="store_false", help="full-precision base")
    q.add_argument("--qlora", dest="quantize", action="store_true", help="nf4 4-bit base")
    p.set_defaults(quantize=None)
    p.add_argument("--save-every", type=int, default=25, help="checkpoint every N steps")
    p.add_argument("--keep", type=int, default=3, help="checkpoints to keep (default 3)")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p.add_argument("--seed", type=int, default=0, help="seed of init, data order, dropout")
    p.add_argument("--log-every", type=int, default=1, help="log the loss every N steps")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--sampler", choices=("group_by_length", "random"), default=None)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting, e.g. --set lora_r=32 (repeatable); "
                   "keys below")  # fmt: skip
    p.add_argument("--no-eval", action="store_true", help="skip the final eval loss")
    p.add_argument("--push-to-hub", metavar="REPO", default=None, help="upload adapter (opt-in)")
    p.add_argument("--public", action="store_true", help="make the hub repo public")


DESCRIPTION = "Train a notebook's recipe from the shell; resumable (--resume)."

#: ``phi2kit train --help``'s closing text (plain text: argparse prints it as it is).
EPILOG = """\
data formats (--data PATH):
  sentiment, classifier  a CSV with no header, label then headline (Kaggle's all-data.csv;
                         UTF-8 or Latin-1); or a CSV, JSON lines or parquet file with the
                         columns sentence and label (financial_phrasebank). Labels are
                         words (--labels) or integers 0, 1, ... into --labels.
  webglm                 JSON lines {{"question", "answer", "references": [...]}}, answers
                         citing [1], [2], ...; a folder with train.jsonl and
                         validation.jsonl, or one file (its last examples, at most a
                         fifth, are the eval split).
  chat                   OASST1: its messages (parquet or JSON lines, one message a row)
                         or a *.trees.jsonl export; English threads are kept.

--set keys:
{keys}
  n_eval (sentiment, classifier): eval rows per class (default n_test; 0: no eval split).

examples:
  phi2kit train sentiment --profile tiny --steps 12 --output-dir runs/s
  phi2kit train classifier --data my.csv --labels bad,ok,good --set n_train=200
  phi2kit train sentiment --output-dir runs/s --resume    # after a crash
"""


def _make(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    from phi2kit.commands.tasks import setting_keys

    p.description = DESCRIPTION
    import textwrap

    keys = textwrap.fill(", ".join(setting_keys()), 88, initial_indent="  ", subsequent_indent="  ")
    p.epilog = EPILOG.format(keys=keys)
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    _add_arguments(p)
    return p


def add_train_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``train`` on the ``phi2kit`` command's subparsers."""
    p = _make(subparsers.add_parser("train", help="train a notebook recipe (resumable)"))
    p.set_defaults(func=run_train)
    return p


def make_parser() -> argparse.ArgumentParser:
    """A stand-alone parser for ``python -m phi2kit.commands.train``."""
    return _make(argparse.ArgumentParser(prog="phi2kit train"))


def _changed_settings(out: Path, task: str, profile: str, seed: int) -> list[str]:
    """Settings that differ from the run being resumed (``run.json``); these must match."""
    path = out / "run.json"
    if not path.is_file():
        return []
    before = json.loads(path.read_text())
    now = {"task": task, "profile": profile, "seed": seed}
    return [f"{k} ({before.get(k)!r} -> {v!r})" for k, v in now.items() if before.get(k) != v]


def _fail(message: str) -> int:
    from phi2kit.commands.hub import redact

    print(f"phi2kit train: error: {redact(message)}", file=sys.stderr)
    return 2


def _labels(args: argparse.Namespace) -> tuple[str, ...] | None:
    """``--labels a,b,c`` as a tuple (None when not given); ``ValueError`` if unusable."""
    from phi2kit.commands.tasks import LABELLED
    from phi2kit.data.sentiment import check_labels

    if args.labels is None:
        return None
    if args.task not in LABELLED:
        raise ValueError(f"--labels: {args.task} data has no labels (only {', '.join(LABELLED)})")
    try:
        return check_labels([w.strip() for w in args.labels.split(",")])
    except ValueError as err:
        raise ValueError(f"--labels {args.labels}: {err}; e.g. --labels bad,ok,good") from None


def run_train(args: argparse.Namespace) -> int:
    """Run the command; return the exit code (2 for bad input, nothing written then)."""
    import torch

    before = (
        torch.get_num_threads(),
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    try:
        return _run(args)
    finally:  # main() may run inside a notebook or a test: leave torch as it was
        torch.set_num_threads(before[0])
        torch.use_deterministic_algorithms(before[1], warn_only=before[2])


def _run(args: argparse.Namespace) -> int:
    from phi2kit.logs import one_progress_line, quiet_command

    quiet_command()  # before bitsandbytes and transformers load
    import torch
    from transformers import set_seed

    from phi2kit.checkpoints import is_finished, load_finished
    from phi2kit.commands.hub import HubError, push_adapter, require_token
    from phi2kit.commands.tasks import make_trainer, parse_overrides, prepare, shell_words
    from phi2kit.data.files import DataError
    from phi2kit.lora import save_adapter
    from phi2kit.profiles import ProfileError, get_profile
    from phi2kit.recipes import get_recipe

    out = args.output_dir or Path("outputs") / f"train_{args.task}"
    ckpt_dir = out / CHECKPOINTS
    try:
        profile = get_profile(args.profile)
        labels = _labels(args)
        overrides = parse_overrides(args.set)
        n_eval = overrides.pop("n_eval", None)
        if n_eval is not None and (n_eval < 0 or args.task not in ("sentiment", "classifier")):
            raise ValueError(f"--set n_eval={n_eval}: a count (0 or more) for sentiment and "
                             "classifier")  # fmt: skip
        if args.steps is not None:
            overrides["max_steps"] = args.steps
        if args.quantize is not None:
            overrides["quantize_4bit"] = args.quantize
        recipe = get_recipe(args.task, profile, **overrides)
        if args.save_every <= 0:
            raise ValueError("--save-every must be positive")
        token = require_token() if args.push_to_hub else None
    except ProfileError as err:
        return _fail(err.shell())
    except (ValueError, RuntimeError) as err:
        return _fail(str(err))
    resume_from = latest_checkpoint(ckpt_dir) if args.resume else None
    if not args.resume and (ckpt_dir.exists() or (out / ADAPTER).exists()):
        return _fail(f"{out} already holds a run: pass --resume, or another --output-dir")
    changed = _changed_settings(out, args.task, profile.name, args.seed) if args.resume else []
    if changed:
        return _fail(f"--resume with other {', '.join(changed)} than the run in {out}")
    if args.resume and resume_from is None:
        print(f"phi2kit train: no complete checkpoint in {ckpt_dir}: starting from step 0")
    finished = resume_from is not None and is_finished(resume_from, recipe.max_steps)
    if finished and (out / ADAPTER).is_dir():  # a finished run loads; it does not train again
        step = checkpoint_step(resume_from)
        print(f"phi2kit train: {out} holds a finished run ({step} of {recipe.max_steps} steps): "
              f"nothing to train; its adapter is {out / ADAPTER}")  # fmt: skip
        return 0

    # Bitwise-equal CPU runs need the same thread count (float sums depend on how work is
    # split; run.json records it) and deterministic kernels. On a GPU some backward kernels
    # use atomics: a resumed GPU run continues the same data, optimizer and RNG states but
    # is not bitwise equal to an uninterrupted one.
    if args.threads:
        torch.set_num_threads(args.threads)
    set_seed(args.seed)
    if not profile.requires_cuda:
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:  # data before any folder is made: a bad file leaves nothing behind
        model, tokenizer, train_ds, eval_ds = prepare(
            args.task, profile, recipe, args.data, labels=labels, n_eval=n_eval
        )
    except FileNotFoundError as err:  # no sample next to the package: a pip install
        return _fail(shell_words(str(err)))
    except DataError as err:
        if "unknown label" in str(err) and args.labels is None:
            return _fail(f"{err}; if your data uses other label words, pass them in order: "
                         "--labels WORD,WORD,...")  # fmt: skip
        return _fail(shell_words(str(err)))  # the loaders' advice names notebook parameters

    if _rank() == 0:
        out.mkdir(parents=True, exist_ok=True)
        _trim_loss_log(out / LOSS_LOG, checkpoint_step(resume_from) if resume_from else 0)
        settings = {k: v for k, v in vars(args).items() if k != "func"}
        settings |= {
            "profile": profile.name,
            "threads": torch.get_num_threads(),
            "recipe": asdict(recipe),
        }
        write_json_atomic(out / "run.json", settings)
    trainer_args = {
        **checkpoint_args(args.save_every, args.keep),
        "logging_steps": args.log_every,
        "seed": args.seed,
        "data_seed": args.seed,
        "ddp_find_unused_parameters": False,  # LoRA uses every trainable weight
    }
    if args.sampler:
        trainer_args["train_sampling_strategy"] = args.sampler
    trainer = make_trainer(
        args.task, model, tokenizer, train_ds, eval_ds, profile, recipe, ckpt_dir, **trainer_args
    )
    for callback in _callbacks(out / LOSS_LOG):
        trainer.add_callback(callback)
    one_progress_line(trainer)
    if finished:  # the run ended but its adapter was not written: load, write it
        result = load_finished(trainer, resume_from)
    else:
        result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    metrics = dict(result.metrics)
    if not args.no_eval and eval_ds is not None and len(eval_ds):
        metrics |= trainer.evaluate()
    if not trainer.is_world_process_zero():
        return 0
    with atomic_dir(out / ADAPTER) as tmp:
        save_adapter(trainer.accelerator.unwrap_model(trainer.model), tmp)
        tokenizer.save_pretrained(tmp)
        write_json_atomic(
            tmp / "metrics.json",
            metrics | {"global_step": result.global_step, "world_size": trainer.args.world_size},
        )
    shown = ", ".join(f"{k} {metrics[k]:.4g}" for k in ("train_loss", "eval_loss") if k in metrics)
    print(f"phi2kit train: adapter written to {out / ADAPTER} ({result.global_step} steps"
          + (f"; {shown})" if shown else ")"))  # fmt: skip
    if args.push_to_hub:
        try:
            url = push_adapter(
                out / ADAPTER, args.push_to_hub, token=token, private=not args.public
            )
        except HubError as err:
            return _fail(str(err))
        print(f"phi2kit train: pushed to {url} ({'public' if args.public else 'private'})")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m phi2kit.commands.train TASK ...``; returns the exit code."""
    return run_train(make_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

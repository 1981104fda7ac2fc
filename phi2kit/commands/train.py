"""``phi2kit train TASK``: a notebook's recipe from the shell; resumable, multi-process (README,
"Train on your own data from the shell"; ``--help``)."""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

from phi2kit.checkpoints import (
    ResumeError,
    checkpoint_step,
    data_fingerprint,
    is_finished,
    latest_checkpoint,
    load_finished,
    mark_complete,
    resume_point,
    run_loss,
    save_settings,
    write_json_atomic,
)
from phi2kit.commands import fail, it_holds
from phi2kit.commands.hub import HubError, push_adapter, redact, require_token
from phi2kit.commands.train_args import DATA_FORMATS, add_arguments, make_setup, shell_words
from phi2kit.data.files import DataError
from phi2kit.logs import one_progress_line, quiet_command

CHECKPOINTS, ADAPTER, TRAINER_STATE = "checkpoints", "adapter", "trainer_state.json"
RUN = "run.json"  # the arguments and settings: what marks a folder as one of our runs
BY_CONTENT = ("data", "adapter")  # settings stored as a fingerprint of the files


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary folder next to ``path``, renamed to ``path`` if the block succeeds:
    ``path`` is complete or absent (a hard kill leaves a hidden ``.NAME.tmp-*``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)


def _fail(message: str) -> int:
    return fail("train", redact(message))


def _say(message: str) -> None:
    print(f"phi2kit train: {message}")


def _shown(key: str, value) -> str:
    """A stored setting as the shell user set it: None is a flag left out (``--lang all``)."""
    if value is None:
        return repr("all") if key == "lang" else "default"
    return repr(value)


def _data_error(err: DataError, setup, args: argparse.Namespace) -> str:
    """A loader's error in the shell's words, with the fix where it names none."""
    if "unknown label" in str(err) and args.labels is None:
        return (f"{err}; if your data uses other label words, pass them in order: "
                "--labels WORD,WORD,...")  # fmt: skip
    said = shell_words(str(err))  # the loaders' advice names notebook parameters
    if not re.search(r"\b(pass|pick|[Ll]ower|[Rr]aise|save|name|need)", said):  # no fix named
        said += f"; --data for {setup.task}: {DATA_FORMATS[setup.task]}"
    return said


def _base(quantize_4bit: bool) -> str:
    """``--qlora``/``--lora``, the flags that set the recipe's ``quantize_4bit``."""
    return "--qlora, nf4" if quantize_4bit else "--lora, full precision"


def add_train_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``train`` on the ``phi2kit`` command's subparsers."""
    p = add_arguments(subparsers)
    p.set_defaults(func=run_train)
    return p


def run_train(args: argparse.Namespace) -> int:
    """Run the command; return the exit code (2 for bad input, nothing written then)."""
    import torch

    before = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
              torch.is_deterministic_algorithms_warn_only_enabled())  # fmt: skip
    try:
        return _run(args)
    finally:  # main() may run inside a notebook or a test: leave torch as it was
        torch.set_num_threads(before[0])
        if (torch.are_deterministic_algorithms_enabled(),
                torch.is_deterministic_algorithms_warn_only_enabled()) != before[1:]:  # fmt: skip
            torch.use_deterministic_algorithms(before[1], warn_only=before[2])  # imports inductor
        if torch.distributed.is_initialized():  # under `accelerate launch`: a clean exit, not
            torch.distributed.destroy_process_group()  # gloo's threads torn down at exit


def _run(args: argparse.Namespace) -> int:
    out = args.output_dir or Path("outputs") / f"train_{args.task}"
    ckpt_dir = out / CHECKPOINTS
    try:  # the arguments first: a typo is said at once, before the libraries load
        setup = make_setup(args)
        token = require_token() if args.push_to_hub else None
    except (ValueError, HubError) as err:  # a ProfileError: phi2kit.commands.main says it
        return _fail(str(err))
    data_path = setup.data not in (None, "auto", "sample") and Path(setup.data)  # by content
    if data_path and not data_path.exists():
        return _fail(str(DataError("no such file or folder (--data)", path=data_path)))
    quiet_command()  # before bitsandbytes and transformers load
    import torch
    from accelerate import PartialState
    from transformers import set_seed

    # under `accelerate launch` every rank looks for an earlier run before rank 0 writes
    state = PartialState(cpu=not setup.profile.requires_cuda)
    started = ckpt_dir.is_dir() and any(ckpt_dir.iterdir())  # empty: a build that failed
    if out.is_dir() and not (out / RUN).is_file():  # not a run of this command's
        if held := it_holds(out, skip=None if started else ckpt_dir):
            # e.g. a take-home script's output, or your data: nothing of it is touched
            return _fail(f"--output-dir {out}: not empty and not a phi2kit train run (no "
                         f"run.json; {held}): pass a new or empty folder")  # fmt: skip
    if not args.resume and (started or (out / ADAPTER).exists()):
        return _fail(f"{out} already holds a run: pass --resume, or another --output-dir")
    # what decides the run; --resume under other settings is refused (more steps are allowed)
    settings = {"task": setup.task, "profile": setup.profile.name, "seed": args.seed,
                "data": data_fingerprint(data_path) if data_path else setup.data,
                "labels": setup.labels, "n_eval": setup.n_eval,
                "adapter": setup.adapter and data_fingerprint(setup.adapter),  # by content too
                "sampler": args.sampler}  # the data order  # fmt: skip
    if setup.task in ("chat", "dpo"):  # the threads' language decides which data trains
        settings["lang"] = setup.lang
    settings |= {k: v for k, v in asdict(setup.recipe).items() if k != "max_steps"}
    resume_from = None
    if args.resume:
        try:
            resume_from = resume_point(ckpt_dir, settings, log=_say)
        except ResumeError as err:
            if "data" in err.changed and data_path:  # a changed file that is broken: say where
                from phi2kit.commands.train_tasks import load_data

                try:
                    load_data(setup)
                except DataError as bad:
                    return _fail(_data_error(bad, setup, args))
            diff = ", ".join(f"{k} (--{k}'s content is not the run's)" if k in BY_CONTENT else
                             f"the base (the run's {_base(was)}, now {_base(now)})"
                             if k == "quantize_4bit" else
                             f"{k} (the run's {_shown(k, was)}, now {_shown(k, now)})"
                             for k, (was, now) in err.changed.items())  # fmt: skip
            return _fail(f"--resume with other settings than the run in {out}: {diff}; "
                         "pass the same settings, or another --output-dir")  # fmt: skip
    max_steps = setup.recipe.max_steps
    finished = resume_from is not None and is_finished(resume_from, max_steps)
    if finished and (out / ADAPTER).is_dir():  # a finished run loads; it does not train again
        done = checkpoint_step(resume_from)
        steps = f"{done} of {max_steps} steps" if done == max_steps else \
            f"{done} steps, past --steps {max_steps}"  # fmt: skip
        _say(f"{out} holds a finished run ({steps}): nothing to train; its adapter is "
             f"{out / ADAPTER}")  # fmt: skip
        return 0
    if resume_from is not None and not finished:
        _say(f"resuming from {resume_from.name} (step {checkpoint_step(resume_from)} of "
             f"{max_steps})")  # fmt: skip
        every = getattr(setup.recipe, "generation_steps", 0)  # grpo: steps per generate call
        if every and checkpoint_step(resume_from) % every:
            _say(f"note: grpo generates every {every} steps and {resume_from.name} is between "
                 "two: the resumed run generates anew, so it will not equal the uninterrupted "
                 f"run (a --save-every multiple of {every} resumes exactly)")  # fmt: skip

    # Bitwise-equal CPU runs need the same thread count (run.json records it) and
    # deterministic kernels; on a GPU a resumed run continues the same data, optimizer and
    # RNG states but is not bitwise equal (some backward kernels use atomics).
    if args.threads:
        torch.set_num_threads(args.threads)
    set_seed(args.seed)
    if not setup.profile.requires_cuda:
        torch.use_deterministic_algorithms(True, warn_only=True)
    from phi2kit.commands.train_tasks import build_trainer, load_data  # trl: after the checks

    try:  # data before any folder is made: a bad file leaves nothing behind
        data = load_data(setup)
    except FileNotFoundError as err:  # no sample next to the package: a pip install
        return _fail(shell_words(str(err)))
    except DataError as err:
        return _fail(_data_error(err, setup, args))

    parts = {"train": data.train, "eval": data.eval, "test": data.test}
    _say("examples: " + ", ".join(f"{len(p)} {k}" for k, p in parts.items() if p is not None))
    trainer_args = {
        "save_strategy": "steps", "save_steps": args.save_every, "save_total_limit": args.keep,
        "logging_steps": args.log_every, "seed": args.seed, "data_seed": args.seed,
        "ddp_find_unused_parameters": False}  # LoRA uses every trainable weight
    if args.sampler:
        trainer_args["train_sampling_strategy"] = args.sampler
    try:  # the model and trainer before any file: a bad --set target_modules leaves nothing
        trainer = build_trainer(setup, data, ckpt_dir, **trainer_args)
    except ValueError as err:
        return _fail(f"{err} (check --set)")
    except OSError as err:  # the trainer makes its output folder: a read-only place fails here
        return _fail(f"--output-dir {out}: cannot write there ({err.strerror})")
    state.wait_for_everyone()  # every rank has looked (and built its trainer): rank 0 writes
    if state.is_main_process:
        save_settings(ckpt_dir, settings)
        record = {k: v for k, v in vars(args).items() if k != "func"}
        write_json_atomic(out / RUN, record | settings | {  # data, adapter: their fingerprints
            "threads": torch.get_num_threads(), "recipe": asdict(setup.recipe),
            "paths": {k: record[k] and str(record[k]) for k in BY_CONTENT}})  # fmt: skip
    trainer.add_callback(mark_complete())
    one_progress_line(trainer)
    has_eval = not args.no_eval and data.eval is not None and len(data.eval) > 0
    before = {}  # the eval loss before training, the baseline (a resumed run has none)
    if finished:  # the run ended but its adapter was not written: load, write it
        result = load_finished(trainer, resume_from)
    else:
        try:
            if has_eval and resume_from is None:
                before = {"eval_loss_before": trainer.evaluate()["eval_loss"]}
            result = trainer.train(resume_from_checkpoint=resume_from and str(resume_from))
        except KeyboardInterrupt:  # Ctrl-C: where the run can go on from, not a traceback
            last = latest_checkpoint(ckpt_dir)
            kept = f"its last complete checkpoint is {last.name}" if last else "no checkpoint yet"
            print(f"\nphi2kit train: interrupted at step {trainer.state.global_step}; {kept}: "
                  "the same command with --resume goes on from there", file=sys.stderr)
            return 130
    metrics = dict(result.metrics) | before
    if resume_from is not None and not finished:  # the whole run's mean, not this session's
        whole = run_loss(trainer.state)  # NaN when no step logged a loss: keep the session's
        metrics["train_loss"] = metrics["train_loss"] if math.isnan(whole) else whole
    if has_eval:
        metrics |= trainer.evaluate()
    if setup.task == "classifier" and data.test is not None:  # 03's head on the test split, once
        metrics["test_accuracy"] = trainer.evaluate(data.test, metric_key_prefix="test")[
            "test_accuracy"]  # fmt: skip
    if not trainer.is_world_process_zero():
        return 0
    trainer.state.save_to_json(str(out / TRAINER_STATE))  # the losses: its log_history
    model = trainer.accelerator.unwrap_model(trainer.model)
    if "ref" in getattr(model, "peft_config", {}):  # dpo: the reference copy stays out
        model.delete_adapter("ref")
    if data.test is not None:  # sentiment, classifier: the test split, read once
        from phi2kit.data.sentiment import LABELS

        labels = setup.labels or LABELS
        if setup.task == "sentiment":  # notebook 02's label scoring
            from phi2kit.evaluate.scoring import predict_by_scoring

            predicted = predict_by_scoring(model, data.tokenizer, data.test["prompt"], labels)
            right = sum(p == y for p, y in zip(predicted, data.test["label"], strict=True))
            metrics["test_accuracy"] = right / len(predicted)
        how = "label scoring" if setup.task == "sentiment" else "the score head"
        _say(f"test accuracy ({how}, {len(data.test)} headlines read once): "
             f"{metrics['test_accuracy']:.3f}; chance {1 / len(labels):.3f}")
        if metrics["test_accuracy"] <= 1 / len(labels):
            other = (", or try phi2kit train classifier (a score head: it needs fewer examples)"
                     if setup.task == "sentiment" else "")  # fmt: skip
            _say("no better than chance: the adapter did not learn these labels. Give it more "
                 f"headlines per class or more --steps{other}")
    with atomic_dir(out / ADAPTER) as tmp:
        from phi2kit.lora import save_adapter

        save_adapter(model, tmp, profile=setup.profile.name)
        data.tokenizer.save_pretrained(tmp)
        labels = {"labels": list(setup.labels or LABELS)} if data.test is not None else {}
        write_json_atomic(tmp / "metrics.json", metrics | labels | {  # labels: the head's rows
            "global_step": result.global_step, "world_size": trainer.args.world_size})  # fmt: skip
    shown = ", ".join(f"{k} {metrics[k]:.4g}" for k in ("train_loss", "eval_loss_before",
                      "eval_loss", "eval_accuracy") if k in metrics)  # accuracy: the classifier's
    _say(f"adapter written to {out / ADAPTER} ({result.global_step} steps"
         + (f"; {shown})" if shown else ")"))  # fmt: skip
    if args.push_to_hub:
        try:
            url = push_adapter(out / ADAPTER, args.push_to_hub, token=token,
                               private=not args.public)  # fmt: skip
        except HubError as err:
            return _fail(str(err))
        _say(f"pushed to {url} ({'public' if args.public else 'private'})")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m phi2kit.commands.train TASK ...`` (for ``accelerate launch``)."""
    from phi2kit.commands.main import main as phi2kit

    return phi2kit(["train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())

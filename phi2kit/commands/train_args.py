"""``phi2kit train``'s arguments and the checked :class:`Setup` they give; imports nothing heavy
(``--help`` loads no torch)."""

from __future__ import annotations

import argparse
import re
import textwrap
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from phi2kit import recipes
from phi2kit.commands import adapter_error, add_profile_argument
from phi2kit.profiles import Profile

TASK_NAMES = ("sentiment", "classifier", "webglm", "chat", "dpo", "grpo")
FROM_ADAPTER = {"dpo": "chat", "grpo": "webglm"}  # tasks that go on training an SFT adapter: whose
LABELLED = ("sentiment", "classifier")  # tasks whose data has label words (--labels)
#: What ``--data`` holds for each task, said after a data error that names no fix.
DATA_FORMATS = dict.fromkeys(("sentiment", "classifier"), "a CSV of label,headline rows (Kaggle's "
                             "all-data.csv) or with a header and the columns text and label")
DATA_FORMATS |= dict.fromkeys(("webglm", "grpo"), 'JSON lines {"question", "answer", '
                              '"references": [...]}, one file or a folder with train.jsonl and '
                              "validation.jsonl")  # fmt: skip
DATA_FORMATS |= dict.fromkeys(("chat", "dpo"), "OASST1 messages (parquet or JSON lines, one a row) "
                              "or the export's *.trees.jsonl")
DATA_FORMATS["chat"] += ', or your chats as JSON lines {"messages": [{"role", "content"}, ...]}'
DATA_FORMATS["dpo"] += (', or your pairs as JSON lines {"prompt", "chosen", "rejected"} (text or '
                        "trl's conversational form)")
#: ``--set`` keys that are the command's, not a recipe's (sentiment and classifier only).
COMMAND_KEYS = {"n_eval": "int"}
#: The LoRA settings: dpo and grpo train the adapter they start from, as it was made.
ADAPTER_KEYS = ("lora_r", "lora_alpha", "lora_dropout", "target_modules")
#: Phi-2 was trained on English text; the chat and dpo tasks keep English threads by default.
CHAT_LANG = "en"


@dataclass(frozen=True)
class Setup:
    """One run, resolved from the command line: all that the task functions read."""

    task: str
    profile: Profile
    recipe: recipes.Recipe  # a DPORecipe for dpo, a GrpoRecipe for grpo
    data: str | None = None  # --data: a file or folder; None/"auto": sample on a CPU, hub on a GPU
    labels: tuple[str, ...] | None = None  # sentiment, classifier: label words; None: LABELS
    n_eval: int | None = None  # sentiment, classifier: eval rows per class (None: n_test)
    adapter: Path | None = None  # dpo: the SFT (chat) adapter to start from; grpo: 04's
    lang: str | None = CHAT_LANG  # chat, dpo: the threads' language (--lang); None: all


def _recipe_fields(task: str | None = None) -> dict[str, str]:
    """``--set`` keys and their types: the task's recipe fields (dpo's and grpo's own only for
    them); every task's for ``None``."""
    sft, dpo, grpo = recipes.Recipe, recipes.DPORecipe, recipes.GrpoRecipe
    classes = {"dpo": [dpo], "grpo": [grpo], None: [sft, dpo, grpo]}.get(task, [sft])
    skip = ("task", *ADAPTER_KEYS) if task in FROM_ADAPTER else ("task",)
    return {f.name: str(f.type) for cls in classes for f in fields(cls)
            if f.name not in skip}  # fmt: skip


def setting_keys() -> list[str]:
    """Every ``--set`` key: the recipes' fields, then :data:`COMMAND_KEYS`."""
    return list(_recipe_fields()) + list(COMMAND_KEYS)


def parse_overrides(items: list[str], task: str | None = None) -> dict[str, Any]:
    """``["lora_r=32"]`` -> recipe overrides typed like the fields (tuples comma-separated);
    a ``ValueError`` names the item and lists the keys."""
    types = _recipe_fields(task) | (COMMAND_KEYS if task in (None, *LABELLED) else {})
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in types:
            what = "expected KEY=VALUE" if not sep else f"{key!r} is not a setting"
            if sep and key in COMMAND_KEYS:
                what = f"{key!r} is a setting of {' and '.join(LABELLED)} only"
            elif sep and key in ADAPTER_KEYS:  # and task in FROM_ADAPTER
                sft = FROM_ADAPTER[task]
                what = (f"{key!r} is the adapter's: {task} goes on training the {sft} adapter "
                        f"as it was made (set it when training {sft})")
            elif sep and key in _recipe_fields():
                tasks = [t for t in ("dpo", "grpo") if key in _recipe_fields(t)]
                what = f"{key!r} is a setting of {' and '.join(tasks)} only"
            keys = ", ".join(types) if task else ", ".join(setting_keys())  # the task's own
            example = "lora_r=32" if "lora_r" in types else "max_length=512"
            raise ValueError(f"--set {item}: {what}; the keys{f' of {task}' if task else ''} are "
                             f"{keys} (e.g. --set {example})")  # fmt: skip
        kind = types[key]
        try:
            if "bool" in kind:  # .index raises ValueError for another word
                out[key] = ("1", "true", "yes", "0", "false", "no").index(value.lower()) < 3
            elif "tuple" in kind:
                out[key] = tuple(v for v in value.split(",") if v)
            else:
                out[key] = {"i": int, "f": float}.get(kind[0], str)(value)
        except ValueError:
            name = {"b": "true or false", "t": "a comma-separated list", "i": "a whole number",
                    "f": "a number"}.get(kind[0], "a value")  # fmt: skip
            raise ValueError(f"--set {item}: {key} takes {name}") from None
    return out


def shell_words(message: str) -> str:
    """A library message in the shell's words: ``pass n_eval=0`` -> ``pass --set n_eval=0``,
    ``Lower n_test`` -> ``Lower --set n_test=N`` (in sentences that say what to change)."""
    keys = "|".join(setting_keys())

    def flags(sentence: re.Match) -> str:
        return re.sub(rf"(?<![-\w])({keys})\b(=[^\s,.;)]+)?",
                      lambda m: f"--set {m[1]}{m[2] or '=N'}", sentence[0])  # fmt: skip

    message = message.replace("DATA_PATH", "--data PATH")  # the notebooks' data parameter
    return re.sub(r"\b(?:[Ll]ower|pass|[Rr]aise|[Ss]et)\b[^.]*", flags, message)


def make_setup(args: argparse.Namespace):
    """The shell's arguments as a checked :class:`Setup`, or a ``ValueError`` for the shell."""
    from phi2kit.data.sentiment import LABELS, check_labels
    from phi2kit.profiles import get_profile

    profile = get_profile(args.profile)
    labels = LABELS if args.task in LABELLED else None  # run.json: no labels for webglm
    if args.labels is not None:
        if args.task not in LABELLED:
            raise ValueError(f"--labels: {args.task} data has no labels (only "
                             f"{', '.join(LABELLED)})")  # fmt: skip
        try:
            labels = check_labels([w.strip() for w in args.labels.split(",")])
        except ValueError as err:
            raise ValueError(f"--labels {args.labels}: {err}; e.g. --labels bad,ok,good") from None
    overrides = parse_overrides(args.set, args.task)
    n_eval = overrides.pop("n_eval", None)
    if n_eval is not None and n_eval < 0:
        raise ValueError(f"--set n_eval={n_eval}: a count of rows per class, 0 or more")
    if args.steps is not None:
        if args.steps < 1:
            raise ValueError(f"--steps {args.steps}: must be at least 1, e.g. --steps 20")
        overrides["max_steps"] = args.steps
    if args.quantize is not None:
        overrides["quantize_4bit"] = args.quantize
    if args.adapter is not None and args.task not in FROM_ADAPTER:
        raise ValueError(f"--adapter: only dpo and grpo start from an adapter, not {args.task}")
    try:
        recipe = recipes.get_recipe(args.task, profile, **overrides)
    except ValueError as err:  # a number out of range: from --set (or --steps)
        named = [item for item in args.set
                 if re.search(rf"\b{re.escape(item.partition('=')[0])}\b", str(err))]  # fmt: skip
        shown = " ".join(f"--set {item}" for item in named or args.set) or "the recipe"
        raise ValueError(f"{shown}: {err}") from None
    if args.task in FROM_ADAPTER:
        _check_adapter(args.adapter, args.task)
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads {args.threads}: must be at least 1 (or leave it out)")
    if args.save_every <= 0 or args.keep <= 0:
        raise ValueError("--save-every and --keep must be positive")
    if args.no_eval and args.task == "grpo":
        raise ValueError("--no-eval: grpo has no eval split, so no eval loss to skip")
    if args.public and not args.push_to_hub:
        raise ValueError("--public makes the hub repo of --push-to-hub public: add "
                         "--push-to-hub USER/REPO, or leave --public out")  # fmt: skip
    if args.lang is not None and args.task not in ("chat", "dpo"):
        raise ValueError(f"--lang: only chat and dpo read threads in a language, not {args.task}")
    lang = {None: CHAT_LANG, "all": None}.get(args.lang, args.lang)
    return Setup(args.task, profile, recipe, args.data, labels, n_eval, args.adapter, lang)


def _check_adapter(adapter: Path | None, task: str) -> None:
    sft = FROM_ADAPTER[task]  # the SFT task whose adapter this task goes on training
    how = (f"make one with: phi2kit train {sft} --output-dir runs/{sft} "
           f"(then --adapter runs/{sft}/adapter)")
    if adapter is None:
        raise ValueError(f"{task} needs --adapter PATH, the {sft} (SFT) adapter it starts from; "
                         f"{how}")  # fmt: skip
    if problem := adapter_error(adapter, how):
        raise ValueError(problem)
    from phi2kit.lora import trained_by  # torch: not for `phi2kit --help`

    run, made_by = trained_by(adapter)
    if made_by not in (None, sft, task):
        raise ValueError(f"--adapter {adapter}: a {made_by} adapter ({run} says so), not a {sft} "
                         f"adapter; {how}")  # fmt: skip


def add_arguments(subparsers) -> argparse.ArgumentParser:
    """``phi2kit train``'s parser on the ``phi2kit`` command's subparsers."""
    keys = textwrap.fill(", ".join(setting_keys()), 88, initial_indent="  ", subsequent_indent="  ")
    p = subparsers.add_parser(
        "train", help="train a notebook recipe (resumable)", epilog=EPILOG.format(keys=keys),
        description="Train a notebook's recipe from the shell; resumable (--resume).",
        formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("task", choices=TASK_NAMES, help="the notebook recipe to run")
    add_profile_argument(p)
    p.add_argument("--data", default="auto", metavar="PATH",
                   help="your data, a file or folder (default: the shipped sample on tiny and "
                   "t4-cpu, the hub data set on a GPU); formats below")  # fmt: skip
    p.add_argument("--labels", default=None, metavar="A,B,...",
                   help="sentiment, classifier: your data's label words, in order "
                   "(default negative,neutral,positive); an integer label i means the "
                   "i-th word")  # fmt: skip
    p.add_argument("--adapter", type=Path, default=None, metavar="PATH",
                   help="dpo: the chat (SFT) adapter to start from, e.g. the adapter/ "
                   "folder of phi2kit train chat; grpo: 04's (webglm) adapter, e.g. "
                   "the adapter/ folder of phi2kit train webglm")  # fmt: skip
    p.add_argument("--output-dir", type=Path, default=None, help="default outputs/train_TASK")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default: recipe)")
    q = p.add_mutually_exclusive_group()
    q.add_argument("--lora", dest="quantize", action="store_false", help="full-precision base")
    q.add_argument("--qlora", dest="quantize", action="store_true", help="nf4 4-bit base")
    p.add_argument("--save-every", type=int, default=25, help="checkpoint every N steps")
    p.add_argument("--keep", type=int, default=3, help="checkpoints to keep (default 3)")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p.add_argument("--seed", type=int, default=0, help="seed of init, data order, dropout")
    p.add_argument("--log-every", type=int, default=1, help="log the loss every N steps")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--sampler", choices=("group_by_length", "random"), default=None,
                   help="batch order (default: the recipe's, group_by_length: less padding)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting, e.g. --set lora_r=32 (repeatable); "
                   "keys below")  # fmt: skip
    p.add_argument("--no-eval", action="store_true", help="skip the eval loss (before and after)")
    p.add_argument("--lang", default=None, help="chat, dpo: the threads' language, e.g. de, or "
                   "all (default en: Phi-2 was trained on English)")  # fmt: skip
    p.add_argument("--push-to-hub", metavar="REPO", default=None, help="upload adapter (opt-in)")
    p.add_argument("--public", action="store_true", help="make the hub repo public")
    p.set_defaults(quantize=None)
    return p


#: ``phi2kit train --help``'s closing text (plain text: argparse prints it as it is); the
#: README's "Train on your own data from the shell" says more.
EPILOG = """\
data formats (--data PATH):
  sentiment, classifier  Kaggle's all-data.csv (no header: label, headline), or a CSV with
                         the columns text (or sentence) and label; integer labels index --labels
  webglm, grpo           JSON lines {{"question", "answer", "references": [...]}}: a folder
                         with train.jsonl and validation.jsonl, or one file
  chat, dpo              OASST1 messages (parquet or JSON lines) or a *.trees.jsonl export;
                         chat also your chats: JSON lines {{"messages": [{{"role", "content"}}]}};
                         dpo also your pairs: JSON lines {{"prompt", "chosen", "rejected"}}
                         (text, or trl's conversational form: lists of messages)
  dpo and grpo need --adapter: the chat (dpo) or webglm (grpo) adapter they go on training.

--set keys:
{keys}
  beta: dpo and grpo; precompute_ref_log_probs: dpo only; num_generations,
  max_completion_length, temperature, steps_per_generation: grpo only.
  n_eval (sentiment, classifier): eval rows per class (default n_test; 0: no eval split).
  lora_r, lora_alpha, lora_dropout, target_modules: not dpo or grpo (the adapter's own).

examples:
  phi2kit train classifier --data my.csv --labels bad,ok,good --set n_train=200
  phi2kit train sentiment --output-dir runs/s --resume    # after a crash
  phi2kit train chat --output-dir runs/chat && \\
    phi2kit train dpo --adapter runs/chat/adapter --output-dir runs/dpo
"""

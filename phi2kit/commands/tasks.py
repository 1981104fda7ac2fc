"""The notebooks' training recipes as command-line glue: data, model and trainer per task.

``phi2kit train TASK`` (see :mod:`phi2kit.commands.train`) runs the same code the notebooks run.
Nothing here is a second implementation: every step calls an existing phi2kit function.

========== ======================== ==================================================
task       data (``resolve_data``)  trainer
========== ======================== ==================================================
sentiment  financial_news           ``sft_trainer`` on prompt/completion pairs (02)
classifier financial_news           ``classifier_trainer``: a ``score`` head (03)
webglm     webglm                   ``sft_trainer``, references fitted to ``max_length`` (04)
chat       oasst1                   ``sft_trainer`` on one example per assistant turn (06)
========== ======================== ==================================================

    model, tokenizer, train_ds, eval_ds = prepare("sentiment", profile, recipe, None)
    trainer = make_trainer("sentiment", model, tokenizer, train_ds, eval_ds, profile, recipe, out)

The data is read (and checked) *before* the model loads, so a bad file fails in seconds.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple

from phi2kit.data.files import DataError
from phi2kit.data.sentiment import LABELS
from phi2kit.profiles import Profile
from phi2kit.recipes import TASKS, Recipe

#: Phi-2 was trained on English text; the chat task keeps English threads.
CHAT_LANG = "en"
#: Seed of the sentiment split (the notebooks' default of ``split_sentiment``).
SPLIT_SEED = 42


class Prepared(NamedTuple):
    """What :func:`prepare` returns: a LoRA model, its tokenizer and the two datasets."""

    model: Any
    tokenizer: Any
    train_ds: Any
    eval_ds: Any


def _sentiment_splits(path: Path | None, recipe: Recipe, labels=LABELS, n_eval=None):
    from phi2kit.data.sentiment import load_financial_news
    from phi2kit.data.sentiment_split import split_sentiment

    df = load_financial_news(path, labels=labels)
    # recipe.n_test is the per-class test split (held out for the notebooks' final scores);
    # the eval split used for the eval loss here (n_test per class unless --set n_eval=N)
    # is drawn from what is left.
    n_eval = recipe.n_test if n_eval is None else n_eval
    return split_sentiment(df, n_train=recipe.n_train, n_test=recipe.n_test, n_eval=n_eval,
                           seed=SPLIT_SEED, labels=labels)  # fmt: skip


def _webglm_examples(path: Path | None, recipe: Recipe) -> tuple[list, list]:
    """Train and eval examples: ``train``/``validation`` of a folder, or one file split."""
    from phi2kit.data.webglm import load_webglm

    if path is None or (path.is_dir() and (path / "validation.jsonl").is_file()):
        train = load_webglm(path, "train", limit=recipe.n_train)
        return list(train), list(load_webglm(path, "validation", limit=recipe.n_test))
    examples = list(load_webglm(path, "train", limit=recipe.n_train + recipe.n_test))
    if len(examples) < 2:
        raise DataError(f"{len(examples)} example(s): need at least 2 (train + eval)", path=path)
    n_eval = min(recipe.n_test, max(1, len(examples) // 5))
    return examples[:-n_eval], examples[-n_eval:]


def _webglm_dataset(examples: list, tokenizer, recipe: Recipe, path: Path | None):
    """``to_prompt_completion``, with the file named in the error of an over-long example."""
    from phi2kit.data.webglm import to_prompt_completion

    try:
        dataset, _ = to_prompt_completion(examples, tokenizer, recipe.max_length)
    except DataError as err:
        where = f"example {err.row}: " if err.row is not None else ""
        raise DataError(where + err.detail, path=path or "hub", field=err.field) from err
    return dataset


def _chat_datasets(path: Path | None, recipe: Recipe):
    """One prompt/completion per assistant turn; threads (not turns) split train/eval."""
    from datasets import Dataset

    from phi2kit.data.oasst import load_oasst, thread_to_examples

    threads = list(load_oasst(path, lang=CHAT_LANG))
    if len(threads) < 2:
        raise DataError(
            f"{len(threads)} usable thread(s) in language {CHAT_LANG!r}: need at least 2",
            path=path,
        )
    n_eval = min(recipe.n_test, max(1, len(threads) // 5))

    def to_ds(part: list, limit: int) -> Dataset:
        rows = [ex for thread in part for ex in thread_to_examples(thread)][:limit]
        return Dataset.from_list(rows)

    return to_ds(threads[:-n_eval], recipe.n_train), to_ds(threads[-n_eval:], recipe.n_test)


#: ``--set`` keys that are the command's, not the recipe's: the sentiment tasks' eval split
#: per class (default: ``n_test``; ``0`` trains without an eval split).
COMMAND_KEYS = {"n_eval": "int"}
#: Tasks whose data has label words (``--labels``).
LABELLED = ("sentiment", "classifier")


def setting_keys() -> list[str]:
    """Every ``--set`` key: the recipe's fields, then :data:`COMMAND_KEYS`."""
    from dataclasses import fields

    return [f.name for f in fields(Recipe) if f.name != "task"] + list(COMMAND_KEYS)


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["lora_r=32", "max_length=128"]`` -> ``get_recipe`` overrides, typed like the fields.

    Tuples are comma-separated (``target_modules=q_proj,v_proj``). Keys of
    :data:`COMMAND_KEYS` come back too: the caller pops them. Raises a ``ValueError`` that
    names the item and lists the valid keys.
    """
    from dataclasses import fields

    types = {f.name: str(f.type) for f in fields(Recipe) if f.name != "task"} | COMMAND_KEYS
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in types:
            what = "expected KEY=VALUE" if not sep else f"{key!r} is not a setting"
            raise ValueError(
                f"--set {item}: {what}; the keys are {', '.join(setting_keys())} "
                "(e.g. --set lora_r=32)"
            )
        kind = types[key]
        try:
            if "bool" in kind:
                if value.lower() not in ("1", "true", "yes", "0", "false", "no"):
                    raise ValueError(value)
                out[key] = value.lower() in ("1", "true", "yes")
            elif "tuple" in kind:
                out[key] = tuple(v for v in value.split(",") if v)
            elif kind.startswith("int"):
                out[key] = int(value)
            elif kind.startswith("float"):
                out[key] = float(value)
            else:
                out[key] = value
        except ValueError:
            name = {"b": "true or false", "t": "a comma-separated list", "i": "a whole number",
                    "f": "a number"}.get(kind[0], "a value")  # fmt: skip
            raise ValueError(f"--set {item}: {key} takes {name}") from None
    return out


def shell_words(message: str) -> str:
    """A library message in the shell's words: ``pass n_eval=0`` -> ``pass --set n_eval=0``,
    ``Lower n_test`` -> ``Lower --set n_test=N`` (in sentences that say what to change)."""
    import re

    keys = "|".join(setting_keys())

    def flags(sentence: re.Match) -> str:
        return re.sub(
            rf"(?<![-\w])({keys})\b(=[^\s,.;)]+)?",
            lambda m: f"--set {m[1]}{m[2] or '=N'}",
            sentence[0],
        )

    message = message.replace("DATA_PATH", "--data PATH")  # the notebooks' data parameter
    return re.sub(r"\b(?:[Ll]ower|pass|[Rr]aise|[Ss]et)\b[^.]*", flags, message)


def _sentiment_datasets(data, tokenizer, recipe: Recipe, path: Path | None, labels=LABELS):
    from phi2kit.data.sentiment import to_prompt_completion

    evals = to_prompt_completion(data.eval, labels=labels) if len(data.eval) else None
    return to_prompt_completion(data.train, labels=labels), evals


def _classifier_datasets(data, tokenizer, recipe: Recipe, path: Path | None, labels=LABELS):
    from phi2kit.classifier import tokenize_headlines

    def tokenize(df):  # None for an empty eval split (--set n_eval=0)
        if not len(df):
            return None
        return tokenize_headlines(df, tokenizer, recipe.max_length, labels=labels)

    return tokenize(data.train), tokenize(data.eval)


def _webglm_datasets(data, tokenizer, recipe: Recipe, path: Path | None):
    return tuple(_webglm_dataset(part, tokenizer, recipe, path) for part in data)


def _chat_ready(data, tokenizer, recipe: Recipe, path: Path | None):
    return data  # _chat_datasets built them: turns need no tokenizer to split


def _causal_lm(profile: Profile, recipe: Recipe):
    from phi2kit.models import load_model

    return load_model(profile, quantize_4bit=recipe.quantize_4bit)


def _classifier_model(profile: Profile, recipe: Recipe, labels=LABELS):
    from phi2kit.classifier import load_classifier  # notebook 03: the backbone + a `score` head

    return load_classifier(profile, quantize_4bit=recipe.quantize_4bit, labels=labels)


def _sft(model, tokenizer, train_ds, profile, recipe, output_dir, **kwargs):
    from phi2kit.training import sft_trainer

    return sft_trainer(model, tokenizer, train_ds, profile, recipe, output_dir, **kwargs)


def _head(model, tokenizer, train_ds, profile, recipe, output_dir, **kwargs):
    from phi2kit.classifier import classifier_trainer

    return classifier_trainer(model, tokenizer, train_ds, profile, recipe, output_dir, **kwargs)


class TaskSteps(NamedTuple):
    """How one task reads its data, builds its datasets, its model and its trainer."""

    data_name: str  # what ``resolve_data`` reads
    read: Any  # (path, recipe) -> raw data, checked
    datasets: Any  # (raw, tokenizer, recipe, path) -> (train_ds, eval_ds)
    model: Any  # (profile, recipe) -> the base model, before LoRA
    trainer: Any  # sft_trainer or classifier_trainer


#: The one dispatch table: the table of the module docstring, as code.
STEPS: dict[str, TaskSteps] = {
    "sentiment": TaskSteps("financial_news", _sentiment_splits, _sentiment_datasets,
                           _causal_lm, _sft),
    "classifier": TaskSteps("financial_news", _sentiment_splits, _classifier_datasets,
                            _classifier_model, _head),
    "webglm": TaskSteps("webglm", _webglm_examples, _webglm_datasets, _causal_lm, _sft),
    "chat": TaskSteps("oasst1", _chat_datasets, _chat_ready, _causal_lm, _sft),
}  # fmt: skip


def _steps(task: str) -> TaskSteps:
    if task not in STEPS:
        raise ValueError(f"unknown task {task!r}; choose one of {TASKS}")
    return STEPS[task]


def _options(step, options: dict[str, Any]) -> dict[str, Any]:
    """The ``options`` (``labels``, ``n_eval``) that ``step`` takes; None means its default."""
    import inspect

    names = inspect.signature(step).parameters
    return {k: v for k, v in options.items() if k in names and v is not None}


def load_data(task: str, profile: Profile, recipe: Recipe,
              data_path: str | os.PathLike | None, **options: Any):  # fmt: skip
    """Read and check the task's data without loading any model.

    ``options``: ``labels`` (the label words) and ``n_eval`` (eval rows per class) for the
    sentiment tasks. Returns ``(path, raw)``: sentiment splits, webglm example lists, or
    chat datasets. Raises ``DataError`` naming the file.
    """
    from phi2kit.data import resolve_data

    steps = _steps(task)
    path = resolve_data(steps.data_name, None if data_path is None else str(data_path), profile)
    if path is not None and not path.exists():
        raise DataError("no such file or folder (--data)", path=path)
    return path, steps.read(path, recipe, **_options(steps.read, options))


def prepare(
    task: str,
    profile: Profile,
    recipe: Recipe,
    data_path: str | os.PathLike | None = None,
    **options: Any,
) -> Prepared:
    """Data first (fails fast on a bad file), then tokenizer, model and LoRA adapter.

    Args:
        task: ``sentiment``, ``classifier``, ``webglm`` or ``chat``.
        profile: The hardware profile.
        recipe: ``get_recipe(task, profile, ...)``; ``recipe.quantize_4bit`` picks QLoRA.
        data_path: A file or folder; ``None``/``"auto"`` gives the shipped sample on the
            tiny profile and the hub data set on a GPU profile.
        options: ``labels`` and ``n_eval`` for the sentiment tasks (see :func:`load_data`).
    """
    from phi2kit.lora import add_lora
    from phi2kit.models import load_tokenizer

    steps = _steps(task)
    path, data = load_data(task, profile, recipe, data_path, **options)
    tokenizer = load_tokenizer(profile, padding_side="right")
    train_ds, eval_ds = steps.datasets(
        data, tokenizer, recipe, path, **_options(steps.datasets, options)
    )
    base = steps.model(profile, recipe, **_options(steps.model, options))
    model = add_lora(base, recipe, profile)
    return Prepared(model, tokenizer, train_ds, eval_ds)


def make_trainer(
    task: str,
    model,
    tokenizer,
    train_ds,
    eval_ds,
    profile: Profile,
    recipe: Recipe,
    output_dir: str | os.PathLike,
    **overrides: Any,
):
    """The notebook's trainer for ``task``; ``overrides`` go to the training arguments.

    The generative tasks use :func:`phi2kit.training.sft_trainer` (its seeded
    length-grouped sampler makes a resume exact); the classifier uses
    :func:`phi2kit.classifier.classifier_trainer` (HF ``Trainer``, dynamic padding, accuracy
    and macro F1).
    """
    build = _steps(task).trainer
    return build(
        model, tokenizer, train_ds, profile, recipe, output_dir, eval_dataset=eval_ds, **overrides
    )

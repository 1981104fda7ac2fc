"""What each ``phi2kit train`` task contributes: where its data is, how it is read, what trains.

Everything else (arguments, checkpoints, resume, the loss log, the final adapter, the hub)
is the one entry in :mod:`phi2kit.commands.train`. A task is two functions over a
:class:`Setup`, the notebooks' own calls:

========== =============== =============================================================
task       data            trainer
========== =============== =============================================================
sentiment  financial_news  trl ``SFTTrainer`` on prompt/completion pairs (02)
classifier financial_news  HF ``Trainer``: a ``score`` head (03)
webglm     webglm          trl ``SFTTrainer``, references fitted to ``max_length`` (04)
chat       oasst1          trl ``SFTTrainer``, one example per assistant turn (06)
dpo        oasst1          trl ``DPOTrainer`` on ranked replies, from a chat adapter (08)
grpo       webglm          trl ``GRPOTrainer`` on 04's prompts, rewards of 09 (09)
========== =============== =============================================================

    data = load_data(setup)                  # read and checked: no model loaded yet
    trainer = build_trainer(setup, data, "runs/x/checkpoints", seed=0)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from phi2kit.commands.train_grpo import grpo, read_prompts
from phi2kit.data.files import DataError
from phi2kit.data.sentiment import LABELS
from phi2kit.profiles import Profile
from phi2kit.recipes import Recipe

#: Phi-2 was trained on English text; the chat and dpo tasks keep English threads by default.
CHAT_LANG = "en"
#: Seed of the sentiment split (the notebooks' default of ``split_sentiment``).
SPLIT_SEED = 42


@dataclass(frozen=True)
class Setup:
    """One run, resolved from the command line: all that the task functions read."""

    task: str
    profile: Profile
    recipe: Recipe  # a DPORecipe for dpo, a GrpoRecipe for grpo
    data: str | None = None  # --data: a file or folder; None/"auto": sample on a CPU, hub on a GPU
    labels: tuple[str, ...] = LABELS  # sentiment, classifier: the label words, in order
    n_eval: int | None = None  # sentiment, classifier: eval rows per class (None: n_test)
    adapter: Path | None = None  # dpo: the SFT (chat) adapter to start from; grpo: 04's, or None
    lang: str | None = CHAT_LANG  # chat, dpo: the threads' language (--lang); None: all


@dataclass
class Data:
    """A task's data, read and checked: the tokenizer and the train and eval datasets."""

    path: Path | None
    tokenizer: Any
    train: Any
    eval: Any  # None: no eval split (--set n_eval=0)


@dataclass(frozen=True)
class Task:
    """What differs between tasks."""

    data: str  # resolve_data's name
    read: Callable[[Path | None, Setup, Any], tuple[Any, Any]]  # -> train, eval datasets
    trainer: Callable[..., Any]  # (setup, data, output_dir, **training_args) -> a Trainer


def _sentiment_splits(path: Path | None, setup: Setup):
    from phi2kit.data.sentiment import load_financial_news
    from phi2kit.data.sentiment_split import split_sentiment

    recipe = setup.recipe
    df = load_financial_news(path, labels=setup.labels)
    # recipe.n_test per class is the notebooks' test split; the eval split for the eval loss
    # here (n_test per class unless --set n_eval=N) is drawn from what is left
    n_eval = recipe.n_test if setup.n_eval is None else setup.n_eval
    return split_sentiment(df, n_train=recipe.n_train, n_test=recipe.n_test, n_eval=n_eval,
                           seed=SPLIT_SEED, labels=setup.labels)  # fmt: skip


def read_sentiment(path: Path | None, setup: Setup, tokenizer):
    from phi2kit.data.sentiment import to_prompt_completion

    splits = _sentiment_splits(path, setup)
    evals = to_prompt_completion(splits.eval, labels=setup.labels) if len(splits.eval) else None
    return to_prompt_completion(splits.train, labels=setup.labels), evals


def read_headlines(path: Path | None, setup: Setup, tokenizer):
    from phi2kit.classifier import tokenize_headlines

    def tokenize(df):  # None for an empty eval split (--set n_eval=0)
        if not len(df):
            return None
        return tokenize_headlines(df, tokenizer, setup.recipe.max_length, labels=setup.labels)

    splits = _sentiment_splits(path, setup)
    return tokenize(splits.train), tokenize(splits.eval)


def read_webglm(path: Path | None, setup: Setup, tokenizer):
    """``train``/``validation`` of a folder, or one file's last examples (a fifth at most) as
    eval; each example's references fitted to ``max_length``."""
    from phi2kit.data.webglm import load_webglm, to_prompt_completion

    recipe = setup.recipe
    if path is None or (path.is_dir() and (path / "validation.jsonl").is_file()):
        train = list(load_webglm(path, "train", limit=recipe.n_train))
        evals = list(load_webglm(path, "validation", limit=recipe.n_test))
    else:
        examples = list(load_webglm(path, "train", limit=recipe.n_train + recipe.n_test))
        if len(examples) < 2:
            raise DataError(f"{len(examples)} example(s): need at least 2 (train + eval)",
                            path=path)  # fmt: skip
        n_eval = min(recipe.n_test, max(1, len(examples) // 5))
        train, evals = examples[:-n_eval], examples[-n_eval:]
    try:
        return tuple(to_prompt_completion(part, tokenizer, recipe.max_length)[0]
                     for part in (train, evals))  # fmt: skip
    except DataError as err:  # name the file in the error of an over-long example
        where = f"example {err.row}: " if err.row is not None else ""
        raise DataError(where + err.detail, path=path or "hub", field=err.field) from err


def _say_not_ready(n: int) -> None:
    if n:  # the export's *_all files: trees still growing, or aborted
        print(f"phi2kit train: {n} unfinished trees (tree_state not ready_for_export) left out")


def read_chat(path: Path | None, setup: Setup, tokenizer):
    """One prompt/completion per assistant turn; threads (not turns) split train/eval."""
    from datasets import Dataset

    from phi2kit.data.oasst import load_oasst, thread_to_examples

    loaded = load_oasst(path, lang=setup.lang)
    _say_not_ready(loaded.not_ready)
    threads = list(loaded)
    if len(threads) < 2:
        other = "" if setup.lang is None else (
            "; pass --lang with your data's language (e.g. --lang de), or --lang all")
        raise DataError(f"{len(threads)} usable thread(s) in language {setup.lang or 'any'!r}: "
                        f"need at least 2{other}", path=path)  # fmt: skip
    n_eval = min(setup.recipe.n_test, max(1, len(threads) // 5))

    def to_ds(part: list, limit: int) -> Dataset:
        return Dataset.from_list([ex for t in part for ex in thread_to_examples(t)][:limit])

    n_train, n_test = setup.recipe.n_train, setup.recipe.n_test
    return to_ds(threads[:-n_eval], n_train), to_ds(threads[-n_eval:], n_test)


def read_pairs(path: Path | None, setup: Setup, tokenizer):
    """Notebook 08: chosen (rank 0) and rejected (a lower-ranked sibling) replies; whole
    conversation trees go to one split, so no prompt is in two."""
    from datasets import Dataset

    from phi2kit.data.oasst_pairs import load_pairs, split_by_tree

    recipe = setup.recipe
    pairs = load_pairs(path, lang=setup.lang, skip_bad=path is None, max_length=recipe.max_length,
                       count_tokens=lambda text: len(tokenizer(text)["input_ids"]))  # fmt: skip
    _say_not_ready(pairs.not_ready)
    if len(pairs) < 2:
        raise DataError(f"{len(pairs)} preference pair(s): need at least 2; {pairs.summary()}",
                        path=path)  # fmt: skip
    # notebook 08's splits: its test split stays unread here, as in the lesson
    train, evals, _ = split_by_tree(pairs, n_eval=recipe.n_test, n_test=recipe.n_test)
    if not train or not evals:
        raise DataError(f"{len(pairs)} preference pairs leave no train or eval pairs after the "
                        f"test split; lower n_test (now {recipe.n_test})", path=path)  # fmt: skip
    keys = ("prompt", "chosen", "rejected")
    to_ds = lambda ps: Dataset.from_list([{k: p[k] for k in keys} for p in ps])  # noqa: E731
    return to_ds(train[: recipe.n_train]), to_ds(evals)


def sft(setup: Setup, data: Data, output_dir, **args):
    from phi2kit.lora import add_lora
    from phi2kit.models import load_model
    from phi2kit.training import sft_trainer

    profile, recipe = setup.profile, setup.recipe
    model = add_lora(load_model(profile, quantize_4bit=recipe.quantize_4bit), recipe, profile)
    return sft_trainer(model, data.tokenizer, data.train, profile, recipe, output_dir,
                       eval_dataset=data.eval, **args)  # fmt: skip


def head(setup: Setup, data: Data, output_dir, **args):
    from phi2kit.classifier import classifier_trainer, load_classifier
    from phi2kit.lora import add_lora

    profile, recipe = setup.profile, setup.recipe
    base = load_classifier(profile, quantize_4bit=recipe.quantize_4bit, labels=setup.labels)
    model = add_lora(base, recipe, profile)
    return classifier_trainer(model, data.tokenizer, data.train, profile, recipe, output_dir,
                              eval_dataset=data.eval, **args)  # fmt: skip


def dpo(setup: Setup, data: Data, output_dir, **args):
    """Notebook 08's trainer: trl's ``DPOTrainer`` on a ``PeftModel`` carrying the SFT
    adapter; trl adds a frozen copy of it, ``ref``, as the reference."""
    import torch
    from peft import PeftModel
    from trl import DPOConfig, DPOTrainer

    from phi2kit.models import load_model
    from phi2kit.training import finish_trainer

    profile, recipe = setup.profile, setup.recipe
    config = DPOConfig(
        output_dir=str(output_dir), beta=recipe.beta,
        precompute_ref_log_probs=recipe.precompute_ref_log_probs, max_length=recipe.max_length,
        max_steps=recipe.max_steps, learning_rate=recipe.learning_rate, lr_scheduler_type="linear",
        warmup_steps=max(1, round(recipe.warmup_ratio * recipe.max_steps)),
        per_device_train_batch_size=recipe.batch_size, per_device_eval_batch_size=recipe.batch_size,
        gradient_accumulation_steps=recipe.grad_accum,
        fp16=profile.fp16, bf16=profile.bf16, optim=profile.optim,
        activation_checkpointing=profile.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False},
        report_to="none", use_cpu=not profile.requires_cuda, disable_tqdm=not profile.requires_cuda,
        **args,
    )  # fmt: skip
    base = load_model(profile, quantize_4bit=recipe.quantize_4bit)
    model = PeftModel.from_pretrained(base, str(setup.adapter), is_trainable=True)
    trainer = DPOTrainer(model=model, args=config, train_dataset=data.train,
                         eval_dataset=data.eval, processing_class=data.tokenizer)  # fmt: skip
    finish_trainer(trainer)  # fp32 trainable weights, fp16 AMP on the CPU twin, quiet log
    with torch.no_grad():  # on a 4-bit base trl rounded the adapter to bf16: take back the exact
        for name, p in model.named_parameters():  # fp32 SFT weights from its first copy, `ref`
            if ".default." in name:
                p.copy_(model.get_parameter(name.replace(".default.", ".ref.")))
    return trainer


TASKS: dict[str, Task] = {
    "sentiment": Task("financial_news", read_sentiment, sft),
    "classifier": Task("financial_news", read_headlines, head),
    "webglm": Task("webglm", read_webglm, sft),
    "chat": Task("oasst1", read_chat, sft),
    "dpo": Task("oasst1", read_pairs, dpo),
    "grpo": Task("webglm", read_prompts, grpo),
}


def load_data(setup: Setup) -> Data:
    """Read and check the task's data and load its tokenizer; no model is loaded. Raises
    ``DataError`` naming the file."""
    from phi2kit.data import resolve_data
    from phi2kit.models import load_tokenizer

    task = TASKS[setup.task]
    path = resolve_data(task.data, setup.data, setup.profile)
    if path is not None and not path.exists():
        raise DataError("no such file or folder (--data)", path=path)
    tokenizer = load_tokenizer(setup.profile, padding_side="right")
    return Data(path, tokenizer, *task.read(path, setup, tokenizer))


def build_trainer(setup: Setup, data: Data, output_dir, **args):
    """The task's model (LoRA on the profile's base) and trainer; ``args`` go to the
    training arguments (checkpoints, seed, logging)."""
    return TASKS[setup.task].trainer(setup, data, output_dir, **args)

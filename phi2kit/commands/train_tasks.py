"""What a ``phi2kit train`` task reads and trains: the training notebooks' own calls."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from peft import PeftModel, prepare_model_for_kbit_training
from transformers import TrainerCallback
from trl import DPOConfig, DPOTrainer, GRPOConfig, GRPOTrainer

from phi2kit.chat import to_examples
from phi2kit.classifier import classifier_trainer, load_classifier, tokenize_headlines
from phi2kit.commands.train_args import Setup
from phi2kit.data import resolve_data, sentiment, webglm
from phi2kit.data.files import DataError
from phi2kit.data.oasst import load_messages, load_oasst
from phi2kit.data.oasst_pairs import load_pairs, split_by_tree
from phi2kit.data.sentiment_split import split_sentiment
from phi2kit.lora import add_lora, is_quantized
from phi2kit.models import load_model, load_tokenizer
from phi2kit.recipes import get_recipe
from phi2kit.rewards import citations_in_range, citations_supported, guard, make_stops_on_eos
from phi2kit.training import CHECKPOINTING_KWARGS, common_args, finish_trainer, sft_trainer

#: The data set each task reads (``resolve_data``'s name).
DATA = {"sentiment": "financial_news", "classifier": "financial_news", "webglm": "webglm",
        "chat": "oasst1", "dpo": "oasst1", "grpo": "webglm"}  # fmt: skip


@dataclass
class Data:
    """A task's data, read and checked: the tokenizer and the train and eval datasets."""

    path: Path | None
    tokenizer: Any
    train: Any
    eval: Any  # None: no eval split (--set n_eval=0, grpo)
    test: Any = None  # sentiment, classifier: the test split, read once at the end


def load_data(setup: Setup) -> Data:
    """Read and check the task's data and load its tokenizer; no model is loaded. Raises
    ``DataError`` naming the file (a missing ``--data`` is :mod:`phi2kit.commands.train`'s)."""
    path = resolve_data(DATA[setup.task], setup.data, setup.profile)
    tokenizer = load_tokenizer(setup.profile, padding_side="right")
    if setup.task in ("sentiment", "classifier"):
        splits = read_news(path, setup, tokenizer)
    elif setup.task == "webglm":
        splits = read_webglm(path, setup, tokenizer)
    elif setup.task == "chat":
        splits = read_chat(path, setup, tokenizer)
    elif setup.task == "dpo":
        splits = read_pairs(path, setup, tokenizer)
    else:
        splits = read_prompts(path, setup, tokenizer)
    return Data(path, tokenizer, *splits)


def read_news(path: Path | None, setup: Setup, tokenizer):
    """Notebook 02's split as prompt/completion pairs (sentiment) or tokenized headlines
    (classifier); eval (``--set n_eval=N`` per class) is drawn from what train and test leave."""
    recipe, labels = setup.recipe, setup.labels or sentiment.LABELS
    if setup.task == "sentiment":  # 02's label scoring sums each label's tokens: no prefixes
        ids = {w: tokenizer(" " + w, add_special_tokens=False)["input_ids"] for w in labels}
        for a, b in ((a, b) for a in labels for b in labels if a != b):
            if ids[b][: len(ids[a])] == ids[a]:
                raise DataError(f"--labels: {b!r} starts with the tokens of {a!r}, so label "
                                f"scoring always ranks {b!r} below {a!r}; pick labels of which "
                                "none starts with another's tokens")  # fmt: skip
    df = sentiment.load_financial_news(path, labels=labels)
    n_eval = recipe.n_test if setup.n_eval is None else setup.n_eval
    splits = split_sentiment(df, n_train=recipe.n_train, n_test=recipe.n_test, n_eval=n_eval,
                             seed=42, labels=labels)  # the notebooks' split  # fmt: skip
    for note in splits.notes:  # the duplicates dropped, an eval class sampled with replacement
        print(f"phi2kit train: {note}")

    def convert(part):  # None for an empty eval split (--set n_eval=0)
        if not len(part):
            return None
        if setup.task == "sentiment":
            return sentiment.to_prompt_completion(part, sentiment.PROMPT_TEMPLATE, labels)
        return tokenize_headlines(part, tokenizer, recipe.max_length, labels=labels)

    return convert(splits.train), convert(splits.eval), convert(splits.test)  # test: read once


def read_webglm(path: Path | None, setup: Setup, tokenizer):
    """``train``/``validation`` of a folder, or one file's last examples (a fifth at most) as
    eval; each example's references fitted to ``max_length``."""
    recipe = setup.recipe
    if path is None or (path.is_dir() and (path / "validation.jsonl").is_file()):
        train = list(webglm.load_webglm(path, "train", limit=recipe.n_train))
        evals = list(webglm.load_webglm(path, "validation", limit=recipe.n_test))
    else:
        examples = list(webglm.load_webglm(path, "train", limit=recipe.n_train + recipe.n_test))
        if len(examples) < 2:
            raise DataError(f"{len(examples)} example(s): need at least 2, train + eval", path=path)
        n_eval = min(recipe.n_test, max(1, len(examples) // 5))
        train, evals = examples[:-n_eval][: recipe.n_train], examples[-n_eval:]
    try:
        fitted = [webglm.to_prompt_completion(part, tokenizer, recipe.max_length)
                  for part in (train, evals)]  # fmt: skip
    except DataError as err:  # name the file in the error of an over-long example
        where = f"example {err.row}: " if err.row is not None else ""
        raise DataError(where + err.detail, path=path or "hub", field=err.field) from err
    stats = {k: sum(st[k] for _, st in fitted) for k in ("n", "n_trimmed", "n_dangling_citations")}
    if stats["n_trimmed"]:  # an answer that cites a dropped reference teaches a citation it lost
        print(f"phi2kit train: {stats['n_trimmed']} of {stats['n']} examples lost references to "
              f"fit max_length={recipe.max_length} (whole references, from the last), and "
              f"{stats['n_dangling_citations']} citation(s) in their answers now point at a "
              "dropped one; a larger --set max_length=N keeps more")  # fmt: skip
    return tuple(dataset for dataset, _ in fitted)


def _say_not_ready(n: int) -> None:
    if n:  # the export's *_all files: trees still growing, or aborted
        print(f"phi2kit train: {n} unfinished trees (tree_state not ready_for_export) left out")


def read_chat(path: Path | None, setup: Setup, tokenizer):
    """Notebook 06's examples: one prompt/completion per assistant turn, the oldest turns
    dropped to fit ``max_length`` (never the reply); threads that open alike in one split."""
    loaded = load_oasst(path, lang=setup.lang)
    _say_not_ready(loaded.not_ready)
    if loaded.repeated:  # a repeat could land in train and in eval
        print(f"phi2kit train: {loaded.repeated} repeated threads left out")
    threads = list(loaded)
    if len(threads) < 2:
        other = "" if setup.lang is None else _languages(path)
        if loaded.not_ready and not threads and not len(load_oasst(path, lang=None)):
            # every tree is unfinished, in any language: --lang is not the fix
            other = (f"; all {loaded.not_ready} trees are unfinished (tree_state not "
                     "ready_for_export): pass a file with finished trees")
        raise DataError(f"{len(threads)} usable thread(s) in language {setup.lang or 'any'!r}: "
                        f"need at least 2{other}", path=path)  # fmt: skip
    n_eval = min(setup.recipe.n_test, max(1, len(threads) // 5))
    groups: dict[str, list] = {}  # as notebook 06: threads that open alike go to one split
    for t in threads:
        groups.setdefault(t[0][1].strip(), []).append(t)
    held = [q for q in list(groups)[1:] if len(groups[q]) <= max(1, len(threads) // 5)]
    while held and sum(len(groups[q]) for q in held[1:]) >= n_eval:  # the last groups to eval
        held.pop(0)
    if not held:
        raise DataError("every thread opens with the same question: need two", path=path)
    n_train, n_test, max_length = setup.recipe.n_train, setup.recipe.n_test, setup.recipe.max_length
    made = {name: [ex for t in threads if (t[0][1].strip() in held) == is_eval
                   for ex in to_examples(t, tokenizer, max_length)]
            for name, is_eval in (("train", False), ("eval", True))}  # in the file's order
    replies = sum(role == "assistant" for t in threads for role, _ in t)
    trimmed = sum(ex["dropped_turns"] > 0 for rows in made.values() for ex in rows)
    left_out = replies - sum(map(len, made.values()))
    if trimmed or left_out:  # notebook 06's to_examples: the reply is never cut
        print(f"phi2kit train: to fit max_length {max_length}, {trimmed} examples lost their "
              f"oldest turns and {left_out} (a last question and reply too long) were left out")
    seen = {ex["prompt"] for ex in made["train"]}  # a prompt that lost its oldest turns may
    made["eval"] = [ex for ex in made["eval"] if ex["prompt"] not in seen]  # match a train one
    if not made["train"] or not made["eval"]:
        raise DataError(f"no {'train' if not made['train'] else 'eval'} example fits max_length "
                        f"{max_length}: raise it (--set max_length=N; eval keeps what train lacks)",
                        path=path)  # fmt: skip
    return tuple(Dataset.from_list(rows[:limit]).remove_columns("dropped_turns")
                 for rows, limit in ((made["train"], n_train), (made["eval"], n_test)))


def _languages(path: Path | None) -> str:
    """The advice after too few threads in ``--lang``: the languages the messages hold."""
    counts = Counter(m["lang"] for m in load_messages(path, skip_bad=True) if m["lang"])
    if not counts:  # no message has a language: --lang kept them all
        return ""
    held = ", ".join(f"{lang} ({n})" for lang, n in counts.most_common(5) if lang is not None)
    return f"; the messages' languages: {held}: pass --lang with one of them, or --lang all"


def read_pairs(path: Path | None, setup: Setup, tokenizer):
    """Notebook 08: chosen (rank 0) and rejected (a lower-ranked sibling) replies; whole
    trees, and trees that share a prompt, go to one split, so no prompt is in two."""
    recipe = setup.recipe
    pairs = load_pairs(path, lang=setup.lang, skip_bad=path is None, max_length=recipe.max_length,
                       count_tokens=lambda text: len(tokenizer(text)["input_ids"]))  # fmt: skip
    _say_not_ready(pairs.not_ready)
    if len(pairs) < 2:
        raise DataError(f"{len(pairs)} preference pair(s): need at least 2; {pairs.summary()}",
                        path=path)  # fmt: skip
    # notebook 08's splits, so that its test split stays unseen by this adapter too
    train, evals, test = split_by_tree(pairs, n_eval=recipe.n_test, n_test=recipe.n_test)
    if not train or not evals:
        trees = len({p["tree"] for p in pairs})
        raise DataError(f"{len(pairs)} preference pairs in {trees} conversation(s) leave no train "
                        "or eval pairs after the test split (whole conversations per split): "
                        "give more pairs", path=path)  # fmt: skip
    print(f"phi2kit train: {len(pairs)} preference pairs; {len(test)} held back as lesson 08's "
          "test split, not read here (--set n_test=N sizes eval and test, each at most a fifth "
          "of the pairs)")  # fmt: skip
    keys = ("prompt", "chosen", "rejected")
    to_ds = lambda ps: Dataset.from_list([{k: p[k] for k in keys} for p in ps])  # noqa: E731
    return to_ds(train[: recipe.n_train]), to_ds(evals)


def read_prompts(path: Path | None, setup: Setup, tokenizer):
    """Notebook 09's prompts: 04's prompt (references dropped from the last until it fits
    ``max_length - max_completion_length``) and the ``references`` the rewards read; the
    train split after the prompts 04's SFT trained on, as far as the data allows."""
    recipe = setup.recipe
    skip = get_recipe("webglm", setup.profile).n_train  # the prompts 04's SFT trained on
    examples = list(webglm.load_webglm(path, "train", limit=skip + recipe.n_train))
    start = max(0, min(skip, len(examples) - recipe.n_train))
    budget = recipe.max_length - recipe.max_completion_length
    rows, trimmed, chosen = [], 0, examples[start : start + recipe.n_train]
    for e in chosen:
        refs = list(e["references"])
        prompt = webglm.build_qa_prompt(e["question"], refs)
        while refs and len(tokenizer(prompt).input_ids) > budget:
            refs.pop()  # whole references, from the last; never the question (as 04 and 09)
            prompt = webglm.build_qa_prompt(e["question"], refs)
        trimmed += len(refs) < len(e["references"])
        if refs:  # a question alone over the budget has nothing to cite: left out
            rows.append({"prompt": prompt, "references": refs})
    if trimmed:  # the rewards read the references kept: a citation of a dropped one scores 0
        gone = len(chosen) - len(rows)  # not one reference fits beside the question
        print(f"phi2kit train: {trimmed} of {len(chosen)} prompts lost references to fit "
              f"max_length - max_completion_length = {budget} tokens (whole references, from the "
              f"last{f'; {gone} kept none and were left out' if gone else ''}); a larger "
              "--set max_length=N keeps more")  # fmt: skip
    if len(rows) < recipe.num_generations:
        raise DataError(f"{len(rows)} prompt(s) fit max_length - max_completion_length = "
                        f"{budget} tokens with a reference: need more (raise max_length)",
                        path=path or "hub")  # fmt: skip
    return Dataset.from_list(rows), None  # GRPO has no eval loss


def build_trainer(setup: Setup, data: Data, output_dir, **args):
    """The task's model (LoRA on the profile's base, or the ``--adapter`` it goes on training)
    and trainer; ``args``: the training arguments (checkpoints, seed, logging)."""
    profile, recipe = setup.profile, setup.recipe
    if setup.task == "dpo":
        return dpo(setup, data, output_dir, **args)
    if setup.task == "grpo":
        return grpo(setup, data, output_dir, **args)
    if setup.task == "classifier":
        labels = setup.labels or sentiment.LABELS
        base = load_classifier(profile, quantize_4bit=recipe.quantize_4bit, labels=labels)
        return classifier_trainer(add_lora(base, recipe, profile), data.tokenizer, data.train,
                                  profile, recipe, output_dir, eval_dataset=data.eval,
                                  **args)  # fmt: skip
    model = add_lora(load_model(profile, quantize_4bit=recipe.quantize_4bit), recipe, profile)
    return sft_trainer(model, data.tokenizer, data.train, profile, recipe, output_dir,
                       eval_dataset=data.eval, **args)  # fmt: skip


def _exact_sft_weights(model) -> None:
    """trl rounds a 4-bit base's adapter to bf16: copy back the exact fp32 weights from ``ref``."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".default." in name:
                p.copy_(model.get_parameter(name.replace(".default.", ".ref.")))


def dpo(setup: Setup, data: Data, output_dir, **args):
    """Notebook 08's trainer: trl's ``DPOTrainer`` on a ``PeftModel`` carrying the SFT
    adapter; trl adds a frozen copy of it, ``ref``, as the reference."""
    recipe = setup.recipe
    config = DPOConfig(**common_args(setup.profile, recipe, output_dir) | {
        "beta": recipe.beta, "precompute_ref_log_probs": recipe.precompute_ref_log_probs,
        "max_length": recipe.max_length} | args)  # fmt: skip
    base = load_model(setup.profile, quantize_4bit=recipe.quantize_4bit)
    model = PeftModel.from_pretrained(base, str(setup.adapter), is_trainable=True)
    trainer = DPOTrainer(model=model, args=config, train_dataset=data.train,
                         eval_dataset=data.eval, processing_class=data.tokenizer)  # fmt: skip
    finish_trainer(trainer)  # fp32 trainable weights, fp16 AMP on the CPU twin, quiet log
    _exact_sft_weights(model)
    return trainer


def grpo(setup: Setup, data: Data, output_dir, **args):
    """Notebook 09's trainer: ``GRPOTrainer``, 09's rewards, on 04's adapter (and its ``ref``)."""
    profile, recipe = setup.profile, setup.recipe
    # reward_weights: 09's; the in-range and EOS rewards are logged, not trained on
    config = GRPOConfig(**common_args(profile, recipe, output_dir) | {
        "use_vllm": False, "num_generations": recipe.num_generations,
        "max_completion_length": recipe.max_completion_length, "beta": recipe.beta,
        "temperature": recipe.temperature, "steps_per_generation": recipe.steps_per_generation,
        "reward_weights": [1.0, 0.0, 0.0, 1.0]} | args)  # fmt: skip
    base = load_model(profile, quantize_4bit=recipe.quantize_4bit)
    base.config.pad_token_id = base.generation_config.pad_token_id = data.tokenizer.pad_token_id
    if is_quantized(base):  # 09's cells: 04's LoRA weights, trainable, on the prepared nf4 base
        base = prepare_model_for_kbit_training(
            base, use_gradient_checkpointing=profile.gradient_checkpointing,
            gradient_checkpointing_kwargs=CHECKPOINTING_KWARGS)  # fmt: skip
    model = PeftModel.from_pretrained(base, str(setup.adapter), is_trainable=True)
    rewards = [citations_supported, citations_in_range,
               make_stops_on_eos(data.tokenizer.eos_token_id), guard]  # fmt: skip
    data.tokenizer.padding_side = "left"  # GRPO generates
    trainer = GRPOTrainer(model=model, reward_funcs=rewards, args=config,
                          train_dataset=data.train, processing_class=data.tokenizer)  # fmt: skip
    trainer.add_callback(WarnIfNeverSupported())
    finish_trainer(trainer, seeded_sampler=False)  # as 09: fp32 trainables, fp16 AMP on t4-cpu
    if "ref" in model.peft_config:
        _exact_sft_weights(model)
    return trainer


class WarnIfNeverSupported(TrainerCallback):
    """A warning at the end when no logged step had a supported citation (nothing learned)."""

    key = f"rewards/{citations_supported.__name__}/mean"  # trl's log of each reward's mean

    def on_train_end(self, args, state, control, **kwargs):
        supported = [h[self.key] for h in state.log_history if self.key in h]
        if state.is_world_process_zero and supported and max(supported) == 0:
            from tqdm.auto import tqdm  # its write: on a line of its own, not after the bar

            tqdm.write("phi2kit train: warning: no completion had a supported citation at any "
                       "logged step, so GRPO had nothing to reinforce: the --adapter does not "
                       "cite yet; train it longer (phi2kit train webglm with more --steps, or "
                       "lesson 04), then run grpo from it")  # fmt: skip

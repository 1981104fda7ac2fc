"""P1: training throughput of phi2kit's pipeline against the seed 003's and trl's defaults.

    python bench/bench_train.py                 # tiny model, 50 steps of 8, about 3 minutes
    python bench/bench_train.py --steps 24 --pad-factor 8

Every pipeline trains the same LoRA (QLoRA with the tiny recipe) on the tiny Phi, with the
same seed, for the same number of steps, on the same ``steps * batch_size`` WebGLM sample
examples: exactly one epoch, so all see the same tokens. By default that epoch is lesson 04's
train split on the tiny profile (its recipe's ``n_train``, 400: 50 steps of 8), so the sampler
sorts what the lesson sorts and the fixed cost of starting a run weighs what it weighs there.

- **seed** (seed 003): every example padded to ``max_length``, truncated from the left,
  ``labels = input_ids`` (loss on the prompt and on padding), a plain HF ``Trainer``.
- **trl defaults**: what a user writes after reading trl's docs, ``SFTTrainer(model,
  args=SFTConfig(...), train_dataset=prompt_completion_data)``: trl's default sampling
  (random batches) and collation (pad each batch to its longest row), its default
  ``max_length``, completion-only loss. The training settings a user must choose (steps,
  batch, learning rate, precision, optimizer, checkpointing) are phi2kit's, so that the
  ratio measures how the batches are built, not another recipe.
- **phi2kit**: trl ``SFTTrainer`` through ``phi2kit.training.sft_trainer``: the same loss and
  collation, with phi2kit's length-grouped batches (``phi2kit.batching``).
- **padding-free** (for reference): the same, with trl's ``padding_free=True``: each batch
  is one row, sequence boundaries come from ``position_ids``. With eager-style attention
  (``phi2kit_fp32``) the attention still spans the whole row, masked block-diagonally, so it
  saves the padding but computes attention scores over ``rows x`` longer sequences.

``max_length`` mimics the seed: it padded WebGLM (a few hundred tokens per example) to
2,048. Here it is ``pad_factor`` (default 4) times the 95th percentile of the sample's token
lengths, rounded up to a multiple of 64.

Definitions (counted on the batches the model actually computed, by wrapping the collator):

- **useful tokens** = non-pad tokens (``attention_mask == 1``); the useful-token fraction is
  useful tokens over tokens computed (rows x columns).
- **answer tokens** = tokens phi2kit supervises (the answer and its EOS). The same examples
  pass through both pipelines once, so both process the same answer tokens.

Wall time is ``trainer.train()``: one run for the seed (long, so it averages out load
spikes); for the short runs, ``repeats`` rounds of fresh runs, one per pipeline in turn (so
that a load spike hits all of them alike), and the median of each. The range of the
round-by-round ratios shows the noise. The CPU may be shared: read the ratios, not the
seconds.
``phi2kit bench`` calls :func:`run`.
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time

#: The SFTConfig fields that decide how batches are built; the trl pipeline keeps trl's
#: own defaults for these (read from SFTConfig, so they follow trl's releases).
TRL_DATA_FIELDS = ("train_sampling_strategy", "max_length", "padding_free", "packing",
                   "completion_only_loss", "pad_to_multiple_of")  # fmt: skip
#: The pipelines timed ``repeats`` times, in this order within each round.
SHORT_RUNS = ("trl_default", "phi2kit", "padding_free")


def _examples(n: int, data_path: str | None):
    from phi2kit.data import sample_path
    from phi2kit.data.webglm import load_webglm

    examples = load_webglm(data_path or sample_path("webglm"), split="train", limit=n)
    if len(examples) < n:
        raise ValueError(f"need {n} examples, the data has {len(examples)}")
    return examples


def seed_dataset(examples, tokenizer, max_length: int):
    """The seed's tokenization: full prompt + answer, left-truncated, padded to max_length."""
    from datasets import Dataset

    from phi2kit.data.webglm import build_qa_prompt

    texts = [build_qa_prompt(e["question"], e["references"]) + " " + e["answer"] for e in examples]
    side = tokenizer.truncation_side
    tokenizer.truncation_side = "left"  # the seed's choice: it can cut the question away
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=max_length)
    tokenizer.truncation_side = side
    return Dataset.from_dict(
        {
            "input_ids": enc["input_ids"],
            "attention_mask": enc["attention_mask"],
            "labels": [list(ids) for ids in enc["input_ids"]],  # loss everywhere, pads too
        }
    )


def _train_timed(trainer) -> tuple[float, dict]:
    """Train; count every batch the collator builds with lesson 04's ``token_counts`` (a
    padding-free batch has no attention mask: no padding)."""
    import torch

    from phi2kit.batching import token_counts

    collate, counts = trainer.data_collator, [0, 0, 0, 0]

    def counting_collator(features):
        batch = collate(features)
        mask = batch.get("attention_mask", torch.ones_like(batch["input_ids"]))
        counted = token_counts([{"attention_mask": mask, "labels": batch["labels"]}])
        counts[:] = [a + b for a, b in zip(counts, counted, strict=True)]
        return batch

    trainer.data_collator = counting_collator
    start = time.perf_counter()
    trainer.train()
    names = ("non_pad", "computed", "supervised", "supervised_pad")
    return time.perf_counter() - start, dict(zip(names, counts, strict=True))


def _lora_model(profile, recipe):
    import torch

    from phi2kit.lora import add_lora
    from phi2kit.models import load_model

    torch.manual_seed(0)
    return add_lora(load_model(profile, quantize_4bit=recipe.quantize_4bit), recipe, profile)


def trl_default_trainer(model, tokenizer, dataset, profile, recipe, output_dir, **overrides):
    """``SFTTrainer`` with trl's defaults for sampling and collation (see the module doc).

    The training arguments are :func:`phi2kit.training.sft_config`'s, except the fields in
    :data:`TRL_DATA_FIELDS`, which get ``SFTConfig``'s defaults.
    """
    from dataclasses import fields

    from trl import SFTConfig, SFTTrainer

    from phi2kit.training import finish_trainer, sft_config

    defaults = {f.name: f.default for f in fields(SFTConfig) if f.name in TRL_DATA_FIELDS}
    args = sft_config(profile, recipe, output_dir, **{**defaults, **overrides})
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    return finish_trainer(trainer, seeded_sampler=False)  # as phi2kit's, minus the sampler


def run(
    steps: int | None = None,
    batch_size: int = 8,
    pad_factor: float = 4.0,
    quantize_4bit: bool | None = None,
    data_path: str | None = None,
    repeats: int = 3,
) -> dict:
    """Train every pipeline for ``steps`` steps of ``batch_size`` (default: one epoch of lesson
    04's tiny ``n_train``); return flat measurements."""
    import numpy as np
    from transformers import Trainer, TrainingArguments, default_data_collator

    from phi2kit.data.webglm import build_qa_prompt, to_prompt_completion
    from phi2kit.models import load_tokenizer
    from phi2kit.profiles import get_profile
    from phi2kit.recipes import get_recipe
    from phi2kit.training import common_args, finish_trainer, sft_trainer

    profile = get_profile("tiny")
    tokenizer = load_tokenizer(profile, padding_side="right")
    if steps is None:
        steps = get_recipe("webglm", profile).n_train // batch_size
    examples = _examples(steps * batch_size, data_path)
    texts = [build_qa_prompt(e["question"], e["references"]) + " " + e["answer"] for e in examples]
    lengths = [len(ids) + 1 for ids in tokenizer(texts)["input_ids"]]  # + EOS
    p95 = float(np.percentile(lengths, 95))
    max_length = 64 * math.ceil(pad_factor * p95 / 64)
    overrides = {"max_steps": steps, "batch_size": batch_size, "grad_accum": 1}
    if quantize_4bit is not None:
        overrides["quantize_4bit"] = quantize_4bit
    recipe = get_recipe("webglm", profile, max_length=max_length, **overrides)

    with tempfile.TemporaryDirectory() as out:
        seed = finish_trainer(
            Trainer(
                model=_lora_model(profile, recipe),
                args=TrainingArguments(
                    **common_args(profile, recipe, out) | {"logging_steps": steps}
                ),
                train_dataset=seed_dataset(examples, tokenizer, max_length),
                data_collator=default_data_collator,
            )
        )
        seed_s, seed_counts = _train_timed(seed)

        dataset, _ = to_prompt_completion(examples, tokenizer, max_length)
        builders = {
            "trl_default": lambda: trl_default_trainer(
                _lora_model(profile, recipe), tokenizer, dataset, profile, recipe, out,
                logging_steps=steps,
            ),
            "phi2kit": lambda: sft_trainer(
                _lora_model(profile, recipe), tokenizer, dataset, profile, recipe, out,
                logging_steps=steps,
            ),
            # trl's padding-free batches: one row per batch, boundaries from position_ids
            "padding_free": lambda: sft_trainer(
                _lora_model(profile, recipe), tokenizer, dataset, profile, recipe, out,
                logging_steps=steps, padding_free=True, max_length=None,
            ),
        }  # fmt: skip
        rounds = [{name: _train_timed(builders[name]()) for name in SHORT_RUNS}
                  for _ in range(repeats)]  # fmt: skip

    answer_tokens = rounds[0]["phi2kit"][1]["supervised"]
    result = {"n_examples": len(examples), "steps": steps, "batch_size": batch_size,
              "p95_length": p95, "max_length": max_length, "repeats": repeats,
              "quantize_4bit": recipe.quantize_4bit}  # fmt: skip
    timed = {"seed": (seed_s, seed_counts)}
    for name in SHORT_RUNS:
        timed[name] = (statistics.median(r[name][0] for r in rounds), rounds[0][name][1])
    for name, (secs, c) in timed.items():
        result.update({
            f"{name}_wall_s": secs,
            f"{name}_tokens_computed": c["computed"],
            f"{name}_useful_tokens": c["non_pad"],
            f"{name}_useful_fraction": c["non_pad"] / c["computed"],
            f"{name}_useful_tokens_per_s": c["non_pad"] / secs,
            f"{name}_answer_tokens_per_s": answer_tokens / secs,
            f"{name}_loss_positions_on_pad": c["supervised_pad"],
        })  # fmt: skip
    result["answer_tokens"] = answer_tokens
    ours = result["phi2kit_useful_tokens_per_s"]
    result["useful_tokens_per_s_ratio"] = ours / result["seed_useful_tokens_per_s"]
    result["vs_trl_default"] = ours / result["trl_default_useful_tokens_per_s"]
    result["vs_padding_free"] = ours / result["padding_free_useful_tokens_per_s"]
    for peer in ("trl_default", "padding_free"):  # round by round: the noise
        ratios = [
            (r["phi2kit"][1]["non_pad"] / r["phi2kit"][0]) / (r[peer][1]["non_pad"] / r[peer][0])
            for r in rounds
        ]
        result[f"vs_{peer}_range"] = (min(ratios), max(ratios))
    result["speedup"] = seed_s / result["phi2kit_wall_s"]
    result["padding_free_speedup"] = seed_s / result["padding_free_wall_s"]
    return result


def format_result(r: dict) -> str:
    """The measurements as a small text table."""
    rows = [
        ("wall time (s)", "wall_s", "{:.1f}"),
        ("tokens computed", "tokens_computed", "{:,}"),
        ("useful (non-pad) tokens", "useful_tokens", "{:,}"),
        ("useful-token fraction", "useful_fraction", "{:.1%}"),
        ("useful tokens / s", "useful_tokens_per_s", "{:,.0f}"),
        ("answer tokens / s", "answer_tokens_per_s", "{:,.0f}"),
        ("loss positions on padding", "loss_positions_on_pad", "{:,}"),
    ]
    names = ("seed", "trl_default", "phi2kit", "padding_free")
    heads = ("seed 003", "trl defaults", "phi2kit", "padding-free")
    lines = [
        f"{r['n_examples']} WebGLM sample examples, {r['steps']} steps x {r['batch_size']}, "
        f"nf4={r['quantize_4bit']}; p95 length {r['p95_length']:.0f} tokens, "
        f"seed max_length {r['max_length']}; {r['answer_tokens']:,} answer tokens; "
        f"short runs: median of {r['repeats']}",
        "",
        f"{'':28s}" + "".join(f"{h:>14s}" for h in heads),
    ]
    for label, key, fmt in rows:
        lines.append(f"{label:28s}" + "".join(f"{fmt.format(r[f'{n}_{key}']):>14s}" for n in names))
    lo, hi = r["vs_trl_default_range"]
    flo, fhi = r["vs_padding_free_range"]
    lines += [
        "",
        f"phi2kit useful tokens/s: {r['useful_tokens_per_s_ratio']:.1f}x the seed's, "
        f"{r['vs_trl_default']:.2f}x trl defaults' (rounds: {lo:.2f}-{hi:.2f}x), "
        f"{r['vs_padding_free']:.2f}x padding-free's ({flo:.2f}-{fhi:.2f}x)",
        f"wall-time speedup over the seed on the same examples: {r['speedup']:.1f}x "
        f"(padding-free: {r['padding_free_speedup']:.1f}x)",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None,
                        help="optimizer steps (default: one epoch of lesson 04's tiny train split, "
                        "400 examples: 50 steps of 8)")  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=8, help="examples per step")
    parser.add_argument("--pad-factor", type=float, default=4.0,
                        help="seed max_length: pad_factor x p95 token length")  # fmt: skip
    parser.add_argument("--no-4bit", action="store_true", help="LoRA on the fp32 base")
    parser.add_argument("--data", default=None, help="WebGLM JSON-lines folder or file")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of the short runs (median)")
    args = parser.parse_args(argv)
    result = run(args.steps, args.batch_size, args.pad_factor,
                 quantize_4bit=False if args.no_4bit else None, data_path=args.data,
                 repeats=args.repeats)  # fmt: skip
    print(format_result(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

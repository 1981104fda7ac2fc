"""Benchmark: classifier evaluation by batched label scoring against the seed's generate loop.

    python bench/bench_eval.py                        # tiny profile, 40 test headlines per class
    python bench/bench_eval.py --n-test 60 --adapter notebooks/outputs/02_sentiment/adapter

The seed evaluated one headline at a time: tokenize one prompt, ``model.generate`` (greedy,
a few new tokens), decode, parse. Notebook 02 scores the three labels instead, in batches
(:func:`phi2kit.evaluate.scoring.predict_by_scoring`): one row per headline when every
label is one token, the prompts' shared instruction run once per batch, prompts batched by
length. This script measures both on
the same tuned model and the same test set, once, and prints examples/s, the ratio and both
accuracies. The goal is a ratio of at least 10 with an accuracy that is not lower. Both
methods run on the same model (the tuned adapter merged into the base, as deployed), each
timed as the fastest of three runs; scoring uses the notebook's batch size, 32.

The tuned model is trained first with the tiny sentiment recipe (10-20 s on 2 cores),
unless ``--adapter`` names a saved LoRA adapter. It is a benchmark, not a test: timings
depend on the machine and its load; ``tests/test_bench.py`` only checks that it runs.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

GOAL_RATIO = 10.0


def load_test_set(profile: Any, n_train: int, n_test: int, seed: int = 42):
    """The sentiment splits of the data the profile reads (the shipped sample on tiny)."""
    from phi2kit.data import resolve_data
    from phi2kit.data.sentiment import load_financial_news, split_sentiment

    df = load_financial_news(resolve_data("financial_news", "auto", profile))
    # The train rows depend only on (seed, n_train): an adapter saved by notebook 02 (same
    # seed and n_train) never saw these test rows. n_eval=50 as in the notebook.
    return split_sentiment(df, n_train=n_train, n_test=n_test, n_eval=50, seed=seed)


def tuned_model(profile: Any, recipe: Any, train_df, adapter: str | Path | None = None):
    """The base model with a LoRA adapter: loaded from ``adapter``, else trained now.

    Returns ``(model, tokenizer, train_seconds)``; ``train_seconds`` is 0 for a loaded one.
    """
    import torch

    from phi2kit.data.sentiment import to_prompt_completion
    from phi2kit.models import load_model, load_tokenizer
    from phi2kit.training import add_lora, sft_trainer

    torch.manual_seed(0)
    tokenizer = load_tokenizer(profile, padding_side="right")
    model = load_model(profile, quantize_4bit=recipe.quantize_4bit)
    if adapter is not None:
        from peft import PeftModel

        return PeftModel.from_pretrained(model, str(adapter)), tokenizer, 0.0
    model = add_lora(model, recipe, profile)
    with tempfile.TemporaryDirectory() as out:
        trainer = sft_trainer(
            model, tokenizer, to_prompt_completion(train_df), profile, recipe, out
        )
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
    return model, tokenizer, seconds


def generate_one_at_a_time(
    model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int = 4
) -> list[str]:
    """The seed's loop: per prompt, tokenize it alone, greedy ``generate``, decode."""
    import torch

    model.eval()
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    texts = []
    for prompt in prompts:
        enc = tokenizer(prompt, return_tensors="pt").to(device)
        with torch.no_grad():
            out = model.generate(
                **enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad_id
            )
        texts.append(
            tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        )
    return texts


def seed_loop(model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int = 4):
    """The seed's evaluation: :func:`generate_one_at_a_time`, then parse each output.

    Returns the parsed labels (``None`` when the output names no label).
    """
    from phi2kit.evaluate.classification import parse_label

    return [
        parse_label(t) for t in generate_one_at_a_time(model, tokenizer, prompts, max_new_tokens)
    ]


def run(
    n_test_per_class: int = 40,
    *,
    profile: str = "tiny",
    adapter: str | Path | None = None,
    n_train_per_class: int | None = None,
    max_steps: int | None = None,
    batch_size: int = 32,
    max_new_tokens: int = 4,
    log=print,
) -> dict:
    """Train (or load) a tuned model, then time both evaluations on the same test set.

    Args:
        n_test_per_class: Test headlines per class.
        profile: Profile name (``tiny`` on a CPU).
        adapter: A saved LoRA adapter folder; ``None`` trains one with the recipe first.
        n_train_per_class: Train headlines per class (default: the recipe's ``n_train``).
        max_steps: Training steps (default: the recipe's).
        batch_size: Rows per forward pass in label scoring (a row per headline when every
            label is one token).
        max_new_tokens: The seed loop's generation budget.

    Returns:
        ``n``, ``train_seconds``, and for ``scoring`` and ``seed_loop``: ``*_seconds``,
        ``*_examples_per_s``, ``*_accuracy``; ``seed_loop_unparsed``; ``ratio`` (scoring
        examples/s over the loop's); ``goal_met``.
    """
    from phi2kit.data.sentiment import build_prompt
    from phi2kit.evaluate.classification import classification_metrics
    from phi2kit.evaluate.scoring import predict_by_scoring
    from phi2kit.profiles import get_profile
    from phi2kit.recipes import get_recipe

    prof = get_profile(profile)
    overrides = {"max_steps": max_steps, "n_train": n_train_per_class}
    recipe = get_recipe("sentiment", prof, **{k: v for k, v in overrides.items() if v is not None})
    splits = load_test_set(prof, recipe.n_train, n_test_per_class)
    model, tokenizer, train_seconds = tuned_model(prof, recipe, splits.train, adapter)
    log(f"tuned model ready ({'loaded' if adapter else f'trained in {train_seconds:.1f} s'})")
    if hasattr(model, "merge_and_unload"):  # evaluate what you would deploy: the merged model
        model = model.merge_and_unload()
    prompts = [build_prompt(text) for text in splits.test["text"]]
    y_true = list(splits.test["label"])

    def best_of(repeats: int, fn):  # the fastest of a few repeats damps scheduler noise
        times, out = [], None
        for _ in range(repeats):
            start = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - start)
        return out, min(times)

    loop_pred, loop_seconds = best_of(
        3, lambda: seed_loop(model, tokenizer, prompts, max_new_tokens)
    )
    score_pred, score_seconds = best_of(
        3, lambda: predict_by_scoring(model, tokenizer, prompts, batch_size=batch_size)
    )

    loop, score = (
        classification_metrics(y_true, loop_pred),
        classification_metrics(y_true, score_pred),
    )
    n = len(prompts)
    result = {
        "n": n,
        "batch_size": batch_size,
        "train_seconds": train_seconds,
        "scoring_seconds": score_seconds,
        "scoring_examples_per_s": n / score_seconds,
        "scoring_accuracy": score["accuracy"],
        "seed_loop_seconds": loop_seconds,
        "seed_loop_examples_per_s": n / loop_seconds,
        "seed_loop_accuracy": loop["accuracy"],
        "seed_loop_unparsed": loop["n_unparsed"],
    }
    result["ratio"] = result["scoring_examples_per_s"] / result["seed_loop_examples_per_s"]
    result["goal_met"] = bool(
        result["ratio"] >= GOAL_RATIO and score["accuracy"] >= loop["accuracy"]
    )
    return result


def format_table(r: dict) -> str:
    """The result of :func:`run` as a plain-text table."""
    rows = [
        ("method", "examples/s", "seconds", "accuracy", "unparsed"),
        (
            "seed loop: generate, 1 at a time",
            f"{r['seed_loop_examples_per_s']:.1f}",
            f"{r['seed_loop_seconds']:.2f}",
            f"{r['seed_loop_accuracy']:.3f}",
            str(r["seed_loop_unparsed"]),
        ),
        (
            f"label scoring, batches of {r['batch_size']}",
            f"{r['scoring_examples_per_s']:.1f}",
            f"{r['scoring_seconds']:.2f}",
            f"{r['scoring_accuracy']:.3f}",
            "0",
        ),
    ]
    lines = [f"{a:<34}{b:>12}{c:>10}{d:>10}{e:>10}" for a, b, c, d, e in rows]
    verdict = "met" if r["goal_met"] else "NOT met"
    lines += [
        "",
        f"{r['n']} test headlines; speed-up {r['ratio']:.1f}x "
        f"(goal >= {GOAL_RATIO:.0f}x with accuracy not lower: {verdict})",
    ]
    return "\n".join(lines)


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bench_eval", description=__doc__.splitlines()[0] if __doc__ else None
    )
    p.add_argument("--n-test", type=int, default=40, help="test headlines per class")
    p.add_argument("--profile", default="tiny", help="tiny (default), t4, ampere or auto")
    p.add_argument("--adapter", type=Path, default=None, help="saved LoRA adapter to load")
    p.add_argument("--steps", type=int, default=None, help="training steps (recipe default)")
    p.add_argument("--batch-size", type=int, default=32, help="headlines per scoring forward pass")
    return p


def main(argv: list[str] | None = None) -> int:
    from phi2kit.logs import quiet

    quiet()  # progress bars and known-harmless warnings off
    args = make_parser().parse_args(argv)
    adapter = args.adapter if args.adapter is not None and args.adapter.exists() else None
    if args.adapter is not None and adapter is None:
        print(f"no adapter at {args.adapter}; training one first")
    result = run(
        args.n_test,
        profile=args.profile,
        adapter=adapter,
        max_steps=args.steps,
        batch_size=args.batch_size,
    )
    print(format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: classifier evaluation by batched label scoring against generate-and-parse.

    python bench/bench_eval.py                        # tiny profile, 40 test headlines per class
    python bench/bench_eval.py --n-test 60 --adapter notebooks/outputs/02_sentiment/adapter

Three ways to read a label out of the tuned model, on the same model (the tuned adapter
merged into the base, as deployed) and the same test set:

- **seed loop**: the seed evaluated one headline at a time: tokenize one prompt,
  ``model.generate`` (greedy, a few new tokens), decode, parse.
- **batched generate**: what a user writes after the transformers docs on batched
  generation: left-padded batches (the notebook's 16 prompts), greedy ``generate`` of the
  same few new tokens, the text parsed as notebook 02 parses it
  (:func:`predict_by_generation`).
- **label scoring** (phi2kit, notebook 02): score the three labels in batches
  (:func:`phi2kit.evaluate.scoring.predict_by_scoring`): one row per headline when every
  label is one token, the prompts' shared instruction run once per batch, prompts batched
  by length; the notebook's batch size, 32.

Each of ``repeats`` rounds times all three in turn (a load spike hits all alike); the
script prints the median examples/s of each, phi2kit's ratio against each peer with the
range over the rounds, and the accuracies. The goal is a ratio of at least 10 against the
seed loop with an accuracy that is not lower than either peer's.

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
    from phi2kit.data.sentiment import load_financial_news
    from phi2kit.data.sentiment_split import split_sentiment

    df = load_financial_news(resolve_data("financial_news", "auto", profile))
    # The train rows depend only on (seed, n_train): an adapter saved by notebook 02 (same
    # seed and n_train) never saw these test rows. n_eval=50 as in the notebook.
    return split_sentiment(df, n_train=n_train, n_test=n_test, n_eval=50, seed=seed)


def tuned_model(profile: Any, recipe: Any, train_df, adapter: str | Path | None = None):
    """The base model with a LoRA adapter: loaded from ``adapter``, else trained now.

    Returns ``(model, tokenizer, train_seconds)``; ``train_seconds`` is 0 for a loaded one.
    """
    import torch

    from phi2kit.data.sentiment import LABELS, PROMPT_TEMPLATE, to_prompt_completion
    from phi2kit.lora import add_lora
    from phi2kit.models import load_model, load_tokenizer
    from phi2kit.training import sft_trainer

    torch.manual_seed(0)
    tokenizer = load_tokenizer(profile, padding_side="right")
    model = load_model(profile, quantize_4bit=recipe.quantize_4bit)
    if adapter is not None:
        from peft import PeftModel

        return PeftModel.from_pretrained(model, str(adapter)), tokenizer, 0.0
    model = add_lora(model, recipe, profile)
    with tempfile.TemporaryDirectory() as out:
        train_ds = to_prompt_completion(train_df, PROMPT_TEMPLATE, LABELS)
        trainer = sft_trainer(model, tokenizer, train_ds, profile, recipe, out)
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
    from phi2kit_exercises.classification import parse_label

    return [
        parse_label(t) for t in generate_one_at_a_time(model, tokenizer, prompts, max_new_tokens)
    ]


def predict_by_generation(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    max_new_tokens: int = 4,
    batch_size: int = 16,
    labels: tuple[str, ...] | None = None,
) -> list[str | None]:
    """The batched peer: greedy :func:`phi2kit.generation.generate`, parsed as notebook 02
    parses (``parse_label``); an output that names no label is ``None``."""
    from phi2kit.data.sentiment import LABELS
    from phi2kit.generation import generate
    from phi2kit_exercises.classification import parse_label

    out = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)
    return [parse_label(text, labels or LABELS) for text in out.texts]


def run(
    n_test_per_class: int = 40,
    *,
    profile: str = "tiny",
    adapter: str | Path | None = None,
    n_train_per_class: int | None = None,
    max_steps: int | None = None,
    batch_size: int = 32,
    gen_batch_size: int = 16,
    max_new_tokens: int = 4,
    repeats: int = 5,
    log=print,
) -> dict:
    """Train (or load) a tuned model, then time the three evaluations on the same test set.

    Args:
        n_test_per_class: Test headlines per class.
        profile: Profile name (``tiny`` on a CPU).
        adapter: A saved LoRA adapter folder; ``None`` trains one with the recipe first.
        n_train_per_class: Train headlines per class (default: the recipe's ``n_train``).
        max_steps: Training steps (default: the recipe's).
        batch_size: Rows per forward pass in label scoring (a row per headline when every
            label is one token).
        gen_batch_size: Prompts per ``generate`` call in batched generation (notebook 02's).
        max_new_tokens: The generation budget of both generating peers.
        repeats: Rounds of timing (each method once per round); medians are reported.

    Returns:
        ``n``, ``train_seconds``, ``repeats``, and for ``scoring``, ``batched_generate`` and
        ``seed_loop``: ``*_seconds`` (median), ``*_examples_per_s``, ``*_accuracy``; the
        peers' ``*_unparsed``; ``ratio`` (scoring examples/s over the seed loop's) and
        ``ratio_vs_batched_generate``, each with a ``*_range`` (min, max over the rounds);
        ``goal_met``.
    """
    import statistics

    from phi2kit.data.sentiment import build_prompt
    from phi2kit.evaluate.scoring import predict_by_scoring
    from phi2kit.profiles import get_profile
    from phi2kit.recipes import get_recipe
    from phi2kit_exercises.classification import classification_metrics

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

    methods = {
        "seed_loop": lambda: seed_loop(model, tokenizer, prompts, max_new_tokens),
        "batched_generate": lambda: predict_by_generation(
            model, tokenizer, prompts, max_new_tokens, batch_size=gen_batch_size
        ),
        "scoring": lambda: predict_by_scoring(model, tokenizer, prompts, batch_size=batch_size),
    }
    seconds: dict[str, list[float]] = {name: [] for name in methods}
    predictions: dict[str, list] = {}
    for _ in range(repeats):  # round by round, so that a load spike hits all three
        for name, fn in methods.items():
            start = time.perf_counter()
            predictions[name] = fn()
            seconds[name].append(time.perf_counter() - start)

    n = len(prompts)
    result: dict[str, Any] = {"n": n, "batch_size": batch_size, "gen_batch_size": gen_batch_size,
                              "repeats": repeats, "train_seconds": train_seconds}  # fmt: skip
    for name in methods:
        metrics = classification_metrics(y_true, predictions[name])
        secs = statistics.median(seconds[name])
        result[f"{name}_seconds"] = secs
        result[f"{name}_examples_per_s"] = n / secs
        result[f"{name}_accuracy"] = metrics["accuracy"]
        if name != "scoring":
            result[f"{name}_unparsed"] = metrics["n_unparsed"]
    for peer, key in (("seed_loop", "ratio"), ("batched_generate", "ratio_vs_batched_generate")):
        result[key] = result["scoring_examples_per_s"] / result[f"{peer}_examples_per_s"]
        rounds = [p / s for p, s in zip(seconds[peer], seconds["scoring"], strict=True)]
        result[f"{key}_range"] = (min(rounds), max(rounds))
    result["goal_met"] = bool(
        result["ratio"] >= GOAL_RATIO
        and result["scoring_accuracy"] >= result["seed_loop_accuracy"]
        and result["scoring_accuracy"] >= result["batched_generate_accuracy"]
    )
    return result


def format_table(r: dict) -> str:
    """The result of :func:`run` as a plain-text table."""
    rows = [("method", "examples/s", "seconds", "accuracy", "unparsed")]
    for name, label in (
        ("seed_loop", "seed loop: generate, 1 at a time"),
        ("batched_generate", f"batched generate, {r['gen_batch_size']} at a time"),
        ("scoring", f"label scoring, batches of {r['batch_size']}"),
    ):
        rows.append((
            label,
            f"{r[f'{name}_examples_per_s']:.1f}",
            f"{r[f'{name}_seconds']:.2f}",
            f"{r[f'{name}_accuracy']:.3f}",
            str(r.get(f"{name}_unparsed", 0)),
        ))  # fmt: skip
    lines = [f"{a:<36}{b:>12}{c:>10}{d:>10}{e:>10}" for a, b, c, d, e in rows]
    verdict = "met" if r["goal_met"] else "NOT met"
    lo, hi = r["ratio_range"]
    glo, ghi = r["ratio_vs_batched_generate_range"]
    lines += [
        "",
        f"{r['n']} test headlines, median of {r['repeats']} rounds; label scoring is "
        f"{r['ratio']:.1f}x the seed loop (rounds: {lo:.1f}-{hi:.1f}x) and "
        f"{r['ratio_vs_batched_generate']:.1f}x batched generate ({glo:.1f}-{ghi:.1f}x)",
        f"goal >= {GOAL_RATIO:.0f}x the seed loop with accuracy not lower: {verdict}",
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
    p.add_argument("--gen-batch-size", type=int, default=16, help="prompts per generate() call")
    p.add_argument("--repeats", type=int, default=5, help="timing rounds (median)")
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
        gen_batch_size=args.gen_batch_size,
        repeats=args.repeats,
    )
    print(format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

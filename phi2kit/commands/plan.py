"""``phi2kit plan``: the memory planner (:mod:`phi2kit.plan`) from the shell."""

from __future__ import annotations

import argparse
import math
from typing import Any

from phi2kit.commands import add_profile_argument, fail
from phi2kit.plan import estimate, format_table
from phi2kit.recipes import PREFERENCE_TASKS, TASKS

#: The largest ``--batch`` planned: beyond it the planner's advice (grad_accum) means nothing.
MAX_BATCH = 1024


def add_plan_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``phi2kit plan``, e.g. ``phi2kit plan --task chat --max-length 2048``."""
    p = subparsers.add_parser(
        "plan", help="predict whether a recipe fits in GPU memory",
        description="Predict the peak GPU memory of one training step of a recipe, part by "
        "part, and name the lever to pull when it does not fit. Exit code: 0 when it fits, 1 "
        "when it does not (a lever is named), 2 for a bad option or a --device-gb too small "
        "for any setting.")
    add_profile_argument(p, default="t4")
    p.add_argument("--task", default="webglm", choices=TASKS + PREFERENCE_TASKS + ("grpo",),
                   help="the recipe to plan (default webglm, lesson 04)")
    p.add_argument("--max-length", type=int, default=None, help="override the recipe's")
    p.add_argument("--batch", type=int, default=None, help="per-device micro-batch")
    p.add_argument("--grad-ckpt", action=argparse.BooleanOptionalAction, default=None,
                   help="gradient checkpointing (default: the profile's)")  # fmt: skip
    p.add_argument("--4bit", dest="quantize_4bit", action=argparse.BooleanOptionalAction,
                   default=None, help="QLoRA on an nf4 base, or (--no-4bit) LoRA on the fp16 "
                   "base as lesson 03's first run (default: the recipe's)")  # fmt: skip
    p.add_argument("--device-gb", type=float, default=15.0, help="GPU memory in GB")
    p.add_argument("--reference", choices=("adapter", "base", "model"), default=None,
                   help="dpo: the reference is a frozen copy of the SFT adapter (default), "
                        "the base with adapters off, or a second model")
    p.add_argument("--precompute-ref", action=argparse.BooleanOptionalAction, default=None,
                   help="dpo: compute the reference's log-probs before training "
                        "(default: the recipe's)")
    p.set_defaults(func=run_plan)
    return p


def _bad_value(args: argparse.Namespace) -> str | None:
    """What is wrong with the flags, with the fix, or None."""
    for flag, value, e_g in (("--batch", args.batch, 2), ("--max-length", args.max_length, 1024)):
        if value is not None and value < 1:
            return f"{flag} {value}: must be a whole number of at least 1, e.g. {flag} {e_g}"
    if args.batch is not None and args.batch > MAX_BATCH:  # larger: grad_accum, not memory
        return (f"--batch {args.batch}: at most {MAX_BATCH} sequences per micro-batch; a larger "
                "effective batch is micro-batch x grad_accum, e.g. --batch 2")  # fmt: skip
    if not math.isfinite(args.device_gb) or args.device_gb <= 0:
        return (f"--device-gb {args.device_gb:g}: must be a positive number of GB, e.g. "
                "--device-gb 15 (a T4)")
    for flag, value in (("--reference", args.reference), ("--precompute-ref", args.precompute_ref)):
        if value is not None and args.task != "dpo":
            return f"{flag} is a setting of dpo only: add --task dpo, or leave {flag} out"
    return None


def _past_context(args: argparse.Namespace) -> str | None:
    """``--max-length`` beyond what the profile's model reads (Phi-2: 2,048), or None."""
    from phi2kit.plan import _resolve  # the planner's own profile -> model config

    config, profile = _resolve(args.profile)
    context = config.max_position_embeddings
    if args.max_length is None or args.max_length <= context:
        return None
    name = "the tiny Phi" if profile.is_tiny else "Phi-2"
    return (f"--max-length {args.max_length}: {name} reads at most {context:,} tokens "
            f"(max_position_embeddings); e.g. --max-length {context}")


def run_plan(args: argparse.Namespace) -> int:
    """Print the planner table; exit 0 if it fits, 1 if not, 2 for a bad flag or no fit at all."""
    from phi2kit.plan.dpo import estimate_dpo
    from phi2kit.plan.grpo import estimate_grpo
    from phi2kit.profiles import get_profile
    from phi2kit.recipes import get_recipe

    if problem := _bad_value(args) or _past_context(args):
        return fail("plan", problem)
    flags = {"max_length": args.max_length, "batch_size": args.batch,
             "quantize_4bit": args.quantize_4bit}  # fmt: skip
    overrides = {k: v for k, v in flags.items() if v is not None}
    kw = {"device_gb": args.device_gb, "gradient_checkpointing": args.grad_ckpt}
    try:  # a ValueError: e.g. grpo's --max-length not above max_completion_length
        recipe = get_recipe(args.task, args.profile, **overrides)
        if args.task == "dpo":
            pre = args.precompute_ref
            est = estimate_dpo(args.profile, recipe, reference=args.reference or "adapter",
                               precompute=recipe.precompute_ref_log_probs if pre is None else pre,
                               **kw)  # fmt: skip
        elif args.task == "grpo":  # notebook 09: generation batch, reference pass, training step
            est = estimate_grpo(args.profile, recipe, **kw)
        else:
            est = estimate(args.profile, recipe, **kw)
    except ValueError as err:
        return fail("plan", str(err))
    if not est.possible:
        return fail("plan", f"--device-gb {args.device_gb:g}: {est.verdict} (a T4 has 15: "
                    "--device-gb 15)")  # fmt: skip
    profile = get_profile(args.profile, check=False)
    print(f"{args.task} on {profile.name}")
    print(format_table(est))
    if not profile.requires_cuda:
        print(f"({profile.name} trains on the CPU: this is the GPU memory the same step would "
              f"take; the device is --device-gb, {args.device_gb:g} GB)")
    from phi2kit.plan import _resolve
    from phi2kit.plan.course import EVAL_GENERATION, eval_generation_gb

    cfg = _resolve(args.profile)[0]
    gen = eval_generation_gb(est, recipe, cfg)
    if gen:  # 04 and 06 then generate on the trained model: its KV cache can take more
        calls, new = EVAL_GENERATION[args.task]
        n = next((n for n in range(calls, 0, -1)
                  if eval_generation_gb(est, recipe, cfg, n) <= args.device_gb), 0)  # fmt: skip
        fewer = (f"does not fit; {n} at a time would (04: GEN_BATCH = {n}; 06: generate(..., "
                 f"batch_size={n}))" if n else "does not fit one at a time: lower --max-length")
        fits = "fits" if n == calls else fewer
        print(f"the lesson's evaluation generate ({calls} prompts of up to {recipe.max_length} "
              f"tokens, {new} new, at a time): {gen:.2f} GB, {fits}")
    return 0 if est.fits and gen <= args.device_gb else 1

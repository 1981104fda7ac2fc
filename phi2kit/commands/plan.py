"""``phi2kit plan``: the memory planner (:mod:`phi2kit.plan`) from the shell."""

from __future__ import annotations

import argparse
from typing import Any

from phi2kit.commands import add_profile_argument
from phi2kit.plan import estimate, format_table
from phi2kit.recipes import TASKS


def add_plan_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``phi2kit plan``, e.g. ``phi2kit plan --task chat --max-length 2048``."""
    p = subparsers.add_parser("plan", help="predict whether a recipe fits in GPU memory")
    add_profile_argument(p, default="t4")
    p.add_argument("--task", default="webglm", choices=TASKS)
    p.add_argument("--max-length", type=int, default=None, help="override the recipe's")
    p.add_argument("--batch", type=int, default=None, help="per-device micro-batch")
    p.add_argument("--grad-ckpt", action=argparse.BooleanOptionalAction, default=None,
                   help="gradient checkpointing (default: the profile's)")  # fmt: skip
    p.add_argument("--device-gb", type=float, default=15.0, help="GPU memory in GB")
    p.set_defaults(func=run_plan)
    return p


def run_plan(args: argparse.Namespace) -> int:
    """Print the planner table and verdict; return 0 if it fits, else 1."""
    from phi2kit.recipes import get_recipe

    overrides = {k: v for k, v in (("max_length", args.max_length), ("batch_size", args.batch))
                 if v is not None}  # fmt: skip
    recipe = get_recipe(args.task, args.profile, **overrides)
    est = estimate(args.profile, recipe, device_gb=args.device_gb,
                   gradient_checkpointing=args.grad_ckpt)  # fmt: skip
    print(f"{args.task} on {args.profile}")
    print(format_table(est))
    return 0 if est.fits else 1

"""The ``phi2kit`` command.

    phi2kit course --profile tiny                 # run every notebook, write summary.md
    phi2kit plan --profile t4 --task webglm --max-length 1024 --batch 2
    phi2kit chat --profile tiny --adapter notebooks/outputs/06_chat/adapter
    phi2kit train sentiment --profile tiny --save-every 25 [--resume]
    phi2kit bench                                 # the performance report
    phi2kit app --profile tiny --adapter notebooks/outputs/06_chat/adapter   # Gradio

Subcommands import their heavy dependencies inside ``main`` functions, so ``--help`` is
fast.
"""

from __future__ import annotations

import argparse
import sys

from phi2kit.commands.app import add_app_parser
from phi2kit.commands.bench import add_bench_parser
from phi2kit.commands.chat import add_chat_parser
from phi2kit.commands.course import add_course_parser
from phi2kit.commands.exercises import add_exercises_parser
from phi2kit.commands.plan import add_plan_parser
from phi2kit.commands.train import add_train_parser


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="phi2kit", description="Fine-tune Phi-2 with LoRA/QLoRA: the course's commands."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    add_course_parser(sub)
    add_plan_parser(sub)
    add_train_parser(sub)
    add_chat_parser(sub)
    add_bench_parser(sub)
    add_exercises_parser(sub)
    add_app_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; return its exit code (2: bad input, said in one line on stderr)."""
    from phi2kit.profiles import ProfileError, UnknownProfileError

    args = make_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ProfileError, UnknownProfileError) as err:  # e.g. PHI2KIT_PROFILE=bogus
        text = err.shell() if isinstance(err, ProfileError) else str(err)
        print(f"phi2kit {args.command}: error: {text}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

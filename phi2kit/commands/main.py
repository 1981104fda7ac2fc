"""The ``phi2kit`` command. Subcommands import their heavy dependencies when they run, so ``--help``
is fast."""

from __future__ import annotations

import argparse
import sys

from phi2kit.commands import fail
from phi2kit.commands.app import add_app_parser
from phi2kit.commands.bench import add_bench_parser
from phi2kit.commands.chat import add_chat_parser
from phi2kit.commands.course import add_course_parser
from phi2kit.commands.plan import add_plan_parser
from phi2kit.commands.train import add_train_parser
from phi2kit_exercises.cli import add_exercises_parser


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="phi2kit", description="Fine-tune Phi-2 with "
                                     "LoRA/QLoRA: the course's commands.")  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (add_course_parser, add_plan_parser, add_train_parser, add_chat_parser,
                add_bench_parser, add_exercises_parser, add_app_parser):  # fmt: skip
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; return its exit code (2: bad input, said in one line on stderr)."""
    from phi2kit.profiles import ProfileError, UnknownProfileError

    args = make_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ProfileError, UnknownProfileError) as err:  # e.g. PHI2KIT_PROFILE=bogus
        return fail(args.command, err.shell() if isinstance(err, ProfileError) else str(err))


if __name__ == "__main__":
    sys.exit(main())

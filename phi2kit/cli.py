"""The ``phi2kit`` command.

    phi2kit course --profile tiny                 # run every notebook, write summary.md
    phi2kit plan --profile t4 --task webglm --max-length 1024 --batch 2
    phi2kit chat --profile tiny --adapter notebooks/outputs/06_chat/adapter
    phi2kit train sentiment --profile tiny --save-every 25 [--resume]
    phi2kit bench                                 # the performance report

Subcommands import their heavy dependencies inside ``main`` functions, so ``--help`` is
fast.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path

from phi2kit.bench import add_bench_parser
from phi2kit.chat import add_chat_parser
from phi2kit.exercises.cli import add_exercises_parser
from phi2kit.plan import add_plan_parser
from phi2kit.train import add_train_parser


def _course_parser(sub) -> None:
    p = sub.add_parser(
        "course",
        help="execute every notebook in order and write summary.md",
        description="Execute notebooks 01-06 on a profile and write the "
        "executed copies and summary.md to a run folder.",
    )
    p.add_argument("--profile", default="auto", help="tiny, t4, ampere or auto (default)")
    p.add_argument("--out", type=Path, default=None, help="run folder (default runs/<time>)")
    p.add_argument("--notebooks", type=Path, default=None, help="folder of NN_*.ipynb")
    p.add_argument("--only", nargs="*", default=None, help="notebook numbers, e.g. 01 02")
    p.add_argument("--timeout", type=int, default=1200, help="seconds per cell")
    p.set_defaults(func=_course_main)


def _course_main(args: argparse.Namespace) -> int:
    from phi2kit.course import CourseDependencyError, find_notebooks, import_papermill, run_course
    from phi2kit.profiles import get_profile

    try:
        import_papermill()  # before any work: without the extra, say which one to install
    except CourseDependencyError as exc:
        print(f"phi2kit course: {exc}", file=sys.stderr)
        return 2
    profile = get_profile(args.profile).name
    notebooks = find_notebooks(args.notebooks)
    if args.only:
        notebooks = [n for n in notebooks if n.name[:2] in set(args.only)]
    # relative to where the command runs (run_course makes it absolute before the kernels start)
    out = (args.out or Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")).resolve()
    runs = run_course(profile, out, notebooks, timeout=args.timeout)
    print(f"\nsummary: {out / 'summary.md'}")
    print((out / "summary.md").read_text())
    return 0 if all(r.status == "passed" for r in runs) else 1


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="phi2kit", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _course_parser(sub)
    add_plan_parser(sub)
    add_train_parser(sub)
    add_chat_parser(sub)
    add_bench_parser(sub)
    add_exercises_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

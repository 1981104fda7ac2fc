"""``phi2kit exercises``: list the exercises, grade a learner's copy of one
(:mod:`phi2kit_exercises.grader` runs its code cells, the grading cell left out)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path


def add_exercises_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "exercises", help="list the exercises, or grade a notebook",
        description="List the exercises, or grade a learner's copy of one. check runs the "
        "notebook's code cells (the grading cell left out) and prints what passed, what "
        "failed and a hint; the exit code is 0 only when every check passed.",
        epilog="examples: phi2kit exercises list; phi2kit exercises check 02_b; "
        "phi2kit exercises check 02_b my_copy.ipynb; "
        "phi2kit exercises check exercises/02_b_label_scoring.ipynb")  # fmt: skip
    p.set_defaults(func=run_list)  # `phi2kit exercises` alone lists them
    sub = p.add_subparsers(dest="action")
    sub.add_parser("list", help="every exercise: id, kind, lesson section")  # func: run_list
    c = sub.add_parser("check", help="run a notebook and grade it")
    c.add_argument("id", help="exercise id, e.g. 02_b, or alone the notebook's path, when its "
                   "name starts with the id (02_b_*.ipynb)")
    c.add_argument("path", nargs="?", type=Path, default=None,
                   help="the notebook (default: exercises/<id>_*.ipynb)")  # fmt: skip
    c.add_argument("--verbose", action="store_true", help="show the notebook's printed output")
    c.set_defaults(func=run_check)
    return p


def run_list(args: argparse.Namespace) -> int:
    from phi2kit_exercises.grader import EXERCISES, _load_checks

    _load_checks()
    for ex in EXERCISES.values():
        print(f"{ex.id}  {ex.kind:13s}  lesson {ex.lesson:14s}  {ex.title}")
    return 0


def _looks_like_a_path(arg: str) -> bool:
    return arg.endswith(".ipynb") or "/" in arg or "\\" in arg or Path(arg).is_file()


def run_check(args: argparse.Namespace) -> int:
    import nbformat

    from phi2kit.logs import quiet
    from phi2kit_exercises.grader import find_notebook, get_exercise, grade_notebook

    try:  # the file and the id first: a wrong one is said before the libraries load
        if args.path is None and _looks_like_a_path(args.id):  # check exercises/02_b_x.ipynb
            path = Path(args.id)
            named = re.match(r"(\d\d_[a-z])(?![a-z0-9])", path.name)
            if not named:
                raise FileNotFoundError(f"{path}: its name does not start with an exercise id; "
                                        f"name the exercise first: phi2kit exercises check "
                                        f"02_b {path}")
            args.id, args.path = named[1], path
        get_exercise(args.id)
        path = Path(args.path or find_notebook(args.id))
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such notebook")
        try:
            nb = nbformat.read(path, as_version=4)
        except Exception as err:  # noqa: BLE001 - NotJSONError, a validation error, bad bytes
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:120]
            raise FileNotFoundError(f"{path}: not a Jupyter notebook ({first}); pass the .ipynb "
                                    f"you worked in, e.g. exercises/{args.id}_*.ipynb") from None
        title = next((c.source for c in nb.cells if c.cell_type == "markdown"), "")
        other = re.match(r"# (\d\d_[a-z]) ", title)  # an exercise's title: "# 02_b · ..."
        if other and other[1] != args.id:
            raise FileNotFoundError(f"{path} is exercise {other[1]}'s notebook (its title), not "
                                    f"{args.id}'s: phi2kit exercises check {other[1]} {path}")
    except (KeyError, FileNotFoundError) as err:  # on stdout, where tests/test_exercises.py reads
        print(f"phi2kit exercises: error: {err.args[0] if err.args else err}")
        return 2
    quiet()
    print(f"running {path} ...")
    report = grade_notebook(path, args.id, quiet=not args.verbose)
    print(report.text())
    return 0 if report.passed else 1

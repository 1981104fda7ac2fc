"""``phi2kit bench``: the benchmarks in ``bench/`` in one go (docs/performance.md). Standard output
holds only the report: whatever the benchmarks print goes to standard error."""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import sys
import tempfile
from datetime import date
from pathlib import Path
from types import ModuleType


def bench_dir() -> Path:
    """The repository's ``bench/`` folder (from the working directory or the package)."""
    for root in (Path.cwd(), Path(__file__).resolve().parents[2]):
        if (root / "bench" / "bench_train.py").exists():
            return root / "bench"
    raise FileNotFoundError("bench/ not found: run `phi2kit bench` from the repository root")


def load_script(name: str) -> ModuleType:
    """Import ``bench/<name>.py`` as a module."""
    path = bench_dir() / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"phi2kit_bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses (and pickling) look the module up by name
    spec.loader.exec_module(module)
    return module


def run_bench(args: argparse.Namespace) -> int:
    import platform

    import torch

    from phi2kit.commands import fail
    from phi2kit.commands.course import papermill_missing
    from phi2kit.logs import quiet

    if args.notebooks and (missing := papermill_missing()):
        return fail("bench", f"--notebooks: {missing}")
    quiet()
    with contextlib.redirect_stdout(sys.stderr):  # stdout: the report, nothing else
        p1 = load_script("bench_train").run()
        p2 = load_script("bench_eval").run(log=lambda *a: print(*a, file=sys.stderr))
        notebooks = None
        if args.notebooks:
            from phi2kit.commands.course import find_notebooks, run_course

            with tempfile.TemporaryDirectory() as out:
                runs = run_course("tiny", Path(out), find_notebooks())
            notebooks = {r.name: f"{r.seconds:.0f} s ({r.status})" for r in runs}
    print(f"\nphi2kit bench, {date.today()}, {platform.machine()}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}\n")  # fmt: skip
    report = load_script("report")
    print(report.summary_table(p1, p2, notebooks))
    if args.json:
        print(json.dumps(report.summary_json(p1, p2)))
    return 0


def add_bench_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("bench", help="run the benchmarks and print the ratios",
                              description="The performance report: runs the benchmarks in "
                              "bench/ in one go and prints the ratios.")  # fmt: skip
    p.add_argument("--notebooks", action="store_true",
                   help="also time every notebook on the tiny profile")  # fmt: skip
    p.add_argument("--json", action="store_true",
                   help="after the table, print one JSON object of the ratios")  # fmt: skip
    p.set_defaults(func=run_bench)
    return p

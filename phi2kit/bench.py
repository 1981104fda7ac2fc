"""The performance report: ``phi2kit bench`` runs the benchmarks in ``bench/`` in one go.

    phi2kit bench                 # P1 + P2 on the tiny model, this CPU (about 2 minutes)
    phi2kit bench --notebooks     # also the wall time of every notebook (tiny profile)

- **P1** (``bench/bench_train.py``): training useful-tokens/s of phi2kit's pipeline against
  the seed-003 pipeline (pad to ``max_length``, ``labels = input_ids``).
- **P2** (``bench/bench_eval.py``): evaluation examples/s of batched label scoring against the
  seed-002 loop (one ``generate`` call per example), with both accuracies.

It prints ratios measured in one run, on one machine; it is not a timed test.
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
from pathlib import Path
from types import ModuleType


def bench_dir() -> Path:
    """The repository's ``bench/`` folder (from the working directory or the package)."""
    for root in (Path.cwd(), Path(__file__).resolve().parents[1]):
        if (root / "bench" / "bench_train.py").exists():
            return root / "bench"
    raise FileNotFoundError("bench/ not found: run `phi2kit bench` from the repository root")


def load_script(name: str) -> ModuleType:
    """Import ``bench/<name>.py`` as a module."""
    path = bench_dir() / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"phi2kit_bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def report_table(results: dict[str, dict]) -> str:
    """One markdown table: a row per benchmark, its scalar measurements as text."""
    lines = ["| benchmark | measurements |", "|---|---|"]
    for name, result in results.items():
        shown = ", ".join(
            f"{k}={_fmt(v)}" for k, v in result.items() if isinstance(v, (int, float, str))
        )
        lines.append(f"| {name} | {shown} |")
    return "\n".join(lines)


def run_bench(args: argparse.Namespace) -> int:
    import platform

    import torch

    results: dict[str, dict] = {}
    results["P1 training (bench_train)"] = load_script("bench_train").run()
    results["P2 evaluation (bench_eval)"] = load_script("bench_eval").run()
    if args.notebooks:
        from phi2kit.course import find_notebooks, run_course

        with tempfile.TemporaryDirectory() as out:
            runs = run_course("tiny", Path(out), find_notebooks())
        results["notebook wall time (tiny)"] = {
            r.name: f"{r.seconds:.0f} s ({r.status})" for r in runs
        }
    print(
        f"\nphi2kit bench on {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}\n"
    )
    print(report_table(results))
    return 0


def add_bench_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "bench", help="run the benchmarks and print the ratios", description=__doc__.splitlines()[0]
    )
    p.add_argument(
        "--notebooks", action="store_true", help="also time every notebook on the tiny profile"
    )
    p.set_defaults(func=run_bench)
    return p

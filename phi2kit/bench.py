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
import sys
import tempfile
from datetime import date
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
    sys.modules[spec.name] = module  # dataclasses (and pickling) look the module up by name
    spec.loader.exec_module(module)
    return module


def summary_table(p1: dict, p2: dict, notebooks: dict[str, str] | None = None) -> str:
    """The performance report as one markdown table: P1, P2 and notebook wall times."""
    lines = [
        "| measurement | seed pipeline | phi2kit | ratio |",
        "|---|---:|---:|---:|",
        f"| P1 training: useful tokens/s | {p1['seed_useful_tokens_per_s']:,.0f} | "
        f"{p1['phi2kit_useful_tokens_per_s']:,.0f} | {p1['useful_tokens_per_s_ratio']:.1f}x |",
        f"| P1 useful-token fraction | {p1['seed_useful_fraction']:.2f} | "
        f"{p1['phi2kit_useful_fraction']:.2f} | |",
        f"| P1 loss positions on padding | {p1['seed_loss_positions_on_pad']:,} | "
        f"{p1['phi2kit_loss_positions_on_pad']:,} | |",
        f"| P2 evaluation: examples/s | {p2['seed_loop_examples_per_s']:,.0f} | "
        f"{p2['scoring_examples_per_s']:,.0f} | {p2['ratio']:.1f}x |",
        f"| P2 accuracy | {p2['seed_loop_accuracy']:.3f} | {p2['scoring_accuracy']:.3f} | |",
    ]
    for name, shown in (notebooks or {}).items():
        lines.append(f"| wall time, {name} (tiny) | | {shown} | |")
    return "\n".join(lines)


def run_bench(args: argparse.Namespace) -> int:
    import platform

    import torch

    from phi2kit.logs import quiet

    quiet()
    p1 = load_script("bench_train").run()
    p2 = load_script("bench_eval").run()
    notebooks = None
    if args.notebooks:
        from phi2kit.course import find_notebooks, run_course

        with tempfile.TemporaryDirectory() as out:
            runs = run_course("tiny", Path(out), find_notebooks())
        notebooks = {r.name: f"{r.seconds:.0f} s ({r.status})" for r in runs}
    print(
        f"\nphi2kit bench, {date.today()}, {platform.machine()}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}\n"
    )
    print(summary_table(p1, p2, notebooks))
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

"""The performance report: ``phi2kit bench`` runs the benchmarks in ``bench/`` in one go.

    phi2kit bench                 # P1 + P2 on the tiny model, this CPU (about 3 minutes)
    phi2kit bench --json          # the table, then one JSON object with the ratios
    phi2kit bench --notebooks     # also the wall time of every notebook (tiny profile)

- **P1** (``bench/bench_train.py``): training useful-tokens/s of phi2kit's pipeline against
  the seed-003 pipeline (pad to ``max_length``, ``labels = input_ids``) and against trl's
  ``SFTTrainer`` with its default sampling and collation; padding-free batches for reference.
- **P2** (``bench/bench_eval.py``): evaluation examples/s of batched label scoring against the
  seed-002 loop (one ``generate`` call per example) and against batched, left-padded
  ``generate``, with the accuracy of each.

It prints ratios measured in one run, on one machine; it is not a timed test. Standard
output holds the table (and with ``--json`` one JSON object after it) and nothing else:
whatever the benchmarks print goes to standard error.
"""

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


def summary_table(p1: dict, p2: dict, notebooks: dict[str, str] | None = None) -> str:
    """The performance report as one markdown table: P1, P2 and notebook wall times.

    The peer column is what a user would run without phi2kit: trl's ``SFTTrainer`` with its
    defaults (P1) and batched, left-padded ``generate`` (P2).
    """
    lo, hi = p1["vs_trl_default_range"]
    glo, ghi = p2["ratio_vs_batched_generate_range"]
    slo, shi = p2["ratio_range"]
    lines = [
        "| measurement | seed pipeline | peer | phi2kit | phi2kit / seed | phi2kit / peer |",
        "|---|---:|---:|---:|---:|---:|",
        f"| P1 training: useful tokens/s (peer: trl `SFTTrainer` defaults) "
        f"| {p1['seed_useful_tokens_per_s']:,.0f} | {p1['trl_default_useful_tokens_per_s']:,.0f} "
        f"| {p1['phi2kit_useful_tokens_per_s']:,.0f} | {p1['useful_tokens_per_s_ratio']:.1f}x "
        f"| {p1['vs_trl_default']:.2f}x ({lo:.2f}-{hi:.2f}) |",
        f"| P1 useful-token fraction | {p1['seed_useful_fraction']:.2f} "
        f"| {p1['trl_default_useful_fraction']:.2f} | {p1['phi2kit_useful_fraction']:.2f} | | |",
        f"| P1 loss positions on padding | {p1['seed_loss_positions_on_pad']:,} "
        f"| {p1['trl_default_loss_positions_on_pad']:,} "
        f"| {p1['phi2kit_loss_positions_on_pad']:,} | | |",
        f"| P1 reference: padding-free useful tokens/s (fraction 1.00) | | "
        f"{p1['padding_free_useful_tokens_per_s']:,.0f} | "
        f"{p1['phi2kit_useful_tokens_per_s']:,.0f} | | {p1['vs_padding_free']:.2f}x |",
        f"| P2 evaluation: examples/s (peer: batched `generate`) "
        f"| {p2['seed_loop_examples_per_s']:,.0f} | {p2['batched_generate_examples_per_s']:,.0f} "
        f"| {p2['scoring_examples_per_s']:,.0f} | {p2['ratio']:.1f}x ({slo:.1f}-{shi:.1f}) "
        f"| {p2['ratio_vs_batched_generate']:.1f}x ({glo:.1f}-{ghi:.1f}) |",
        f"| P2 accuracy | {p2['seed_loop_accuracy']:.3f} | {p2['batched_generate_accuracy']:.3f} "
        f"| {p2['scoring_accuracy']:.3f} | | |",
    ]
    for name, shown in (notebooks or {}).items():
        lines.append(f"| wall time, {name} (tiny) | | | {shown} | | |")
    return "\n".join(lines)


def summary_json(p1: dict, p2: dict) -> dict:
    """The headline ratios and accuracies of one run (``phi2kit bench --json``).

    Ratios are phi2kit over the peer (> 1: phi2kit is faster); ``*_range`` are the
    lowest and highest round-by-round ratios behind the median.
    """
    return {
        "p1_vs_seed": p1["useful_tokens_per_s_ratio"],
        "p1_vs_trl_default": p1["vs_trl_default"],
        "p1_vs_trl_default_range": list(p1["vs_trl_default_range"]),
        "p1_vs_padding_free": p1["vs_padding_free"],
        "p1_useful_fraction": p1["phi2kit_useful_fraction"],
        "p1_useful_fraction_trl_default": p1["trl_default_useful_fraction"],
        "p1_useful_fraction_seed": p1["seed_useful_fraction"],
        "p1_loss_positions_on_pad": p1["phi2kit_loss_positions_on_pad"],
        "p1_repeats": p1["repeats"],
        "p2_vs_seed_loop": p2["ratio"],
        "p2_vs_seed_loop_range": list(p2["ratio_range"]),
        "p2_vs_batched_generate": p2["ratio_vs_batched_generate"],
        "p2_vs_batched_generate_range": list(p2["ratio_vs_batched_generate_range"]),
        "p2_accuracy_phi2kit": p2["scoring_accuracy"],
        "p2_accuracy_seed_loop": p2["seed_loop_accuracy"],
        "p2_accuracy_batched_generate": p2["batched_generate_accuracy"],
        "p2_repeats": p2["repeats"],
        "p2_goal_met": p2["goal_met"],
    }


def run_bench(args: argparse.Namespace) -> int:
    import platform

    import torch

    from phi2kit.logs import quiet

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
    print(
        f"\nphi2kit bench, {date.today()}, {platform.machine()}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}\n"
    )
    print(summary_table(p1, p2, notebooks))
    if args.json:
        print(json.dumps(summary_json(p1, p2)))
    return 0


def add_bench_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "bench",
        help="run the benchmarks and print the ratios",
        description="The performance report: runs the benchmarks in bench/ in one go and "
        "prints the ratios.",
    )
    p.add_argument(
        "--notebooks", action="store_true", help="also time every notebook on the tiny profile"
    )
    p.add_argument(
        "--json", action="store_true", help="after the table, print one JSON object of the ratios"
    )
    p.set_defaults(func=run_bench)
    return p

"""``phi2kit bench``: what goes to standard output (the table, then one JSON object).

The benchmarks themselves are replaced by stubs that return fixed measurements and print
junk, as a Trainer's PrinterCallback does; the real ones are smoke-tested in
``test_bench_train.py`` and ``test_bench.py``.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from phi2kit.commands import bench
from phi2kit.commands.main import main

P1 = {
    "seed_useful_tokens_per_s": 460.0, "trl_default_useful_tokens_per_s": 3600.0,
    "phi2kit_useful_tokens_per_s": 5000.0, "padding_free_useful_tokens_per_s": 4000.0,
    "useful_tokens_per_s_ratio": 10.9, "vs_trl_default": 1.39, "vs_trl_default_range": (1.3, 1.5),
    "vs_padding_free": 1.25, "seed_useful_fraction": 0.17, "trl_default_useful_fraction": 0.73,
    "phi2kit_useful_fraction": 0.96, "seed_loss_positions_on_pad": 71208,
    "trl_default_loss_positions_on_pad": 0, "phi2kit_loss_positions_on_pad": 0, "repeats": 3,
}  # fmt: skip
P2 = {
    "seed_loop_examples_per_s": 94.0, "batched_generate_examples_per_s": 400.0,
    "scoring_examples_per_s": 1155.0, "ratio": 12.3, "ratio_range": (10.1, 13.0),
    "ratio_vs_batched_generate": 2.9, "ratio_vs_batched_generate_range": (2.5, 3.1),
    "seed_loop_accuracy": 0.9, "batched_generate_accuracy": 0.9, "scoring_accuracy": 0.908,
    "repeats": 5, "goal_met": True,
}  # fmt: skip
KEYS = {"p1_vs_seed", "p1_vs_trl_default", "p1_useful_fraction", "p2_vs_seed_loop",
        "p2_vs_batched_generate", "p2_accuracy_phi2kit", "p2_accuracy_seed_loop"}  # fmt: skip


@pytest.fixture()
def noisy_benchmarks(monkeypatch):
    """Stub benchmarks that print to stdout, like a Trainer logging its metrics."""

    real = bench.load_script

    def script(name: str):
        if name == "report":  # the table and JSON are the real ones
            return real(name)

        def run(**kwargs):
            print({"loss": 2.5, "grad_norm": 1.0, "epoch": 1.0})  # PrinterCallback's output
            if "log" in kwargs:
                kwargs["log"]("tuned model ready")
            return dict(P1 if name == "bench_train" else P2)

        return SimpleNamespace(run=run)

    monkeypatch.setattr(bench, "load_script", script)


def _table_and_json(out: str) -> tuple[list[str], dict]:
    lines = out.strip().splitlines()
    header, table, last = lines[0], lines[1:-1], lines[-1]
    assert header.startswith("phi2kit bench, "), header
    assert all(line.startswith("|") or not line for line in table), table
    return [line for line in table if line], json.loads(last)


def test_json_mode_prints_the_table_then_one_json_object(noisy_benchmarks, capsys):
    assert main(["bench", "--json"]) == 0
    captured = capsys.readouterr()
    table, summary = _table_and_json(captured.out)
    assert "'loss'" in captured.err and "tuned model ready" in captured.err  # not in stdout
    assert KEYS <= set(summary)
    assert summary["p1_vs_trl_default"] == 1.39 and summary["p1_useful_fraction"] == 0.96
    assert summary["p2_vs_batched_generate"] == 2.9 and summary["p2_accuracy_phi2kit"] == 0.908
    assert summary["p1_vs_trl_default_range"] == [1.3, 1.5]
    assert any("trl `SFTTrainer` defaults" in line and "1.39x" in line for line in table)
    assert any("batched `generate`" in line and "2.9x" in line for line in table)


def test_plain_mode_prints_the_table_only(noisy_benchmarks, capsys):
    assert main(["bench"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("phi2kit bench, ")
    assert all(line.startswith("|") for line in lines[1:] if line)


def test_notebooks_without_papermill_names_the_extra_before_any_benchmark(
    noisy_benchmarks, monkeypatch, capsys
):
    import sys

    monkeypatch.setitem(sys.modules, "papermill", None)  # as if the extra were not installed
    assert main(["bench", "--notebooks"]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("phi2kit bench: error: --notebooks: "), captured.err
    assert '".[course]"' in captured.err and len(captured.err.strip().splitlines()) == 1
    assert "'loss'" not in captured.err  # no benchmark ran

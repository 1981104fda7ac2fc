"""Smoke test of bench/bench_eval.py on a tiny subset (no timing is asserted)."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_eval", ROOT / "bench" / "bench_eval.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _load_bench()


@pytest.fixture(scope="module")
def result():
    return bench.run(3, n_train_per_class=8, max_steps=2, repeats=2, log=lambda *a: None)


def test_run_returns_both_methods_on_the_same_test_set(result):
    assert result["n"] == 9  # 3 per class
    for method in ("scoring", "seed_loop"):
        assert 0.0 <= result[f"{method}_accuracy"] <= 1.0
        assert result[f"{method}_examples_per_s"] > 0
    assert result["ratio"] == pytest.approx(
        result["scoring_examples_per_s"] / result["seed_loop_examples_per_s"]
    )
    assert result["train_seconds"] > 0
    assert 0 <= result["seed_loop_unparsed"] <= 9
    assert isinstance(result["goal_met"], bool)


def test_batched_generate_is_timed_on_the_same_test_set(result):
    assert result["repeats"] == 2
    assert 0.0 <= result["batched_generate_accuracy"] <= 1.0
    assert 0 <= result["batched_generate_unparsed"] <= 9
    assert result["ratio_vs_batched_generate"] == pytest.approx(
        result["scoring_examples_per_s"] / result["batched_generate_examples_per_s"]
    )
    for key in ("ratio_range", "ratio_vs_batched_generate_range"):
        lo, hi = result[key]
        assert 0 < lo <= hi
    # batched, left-padded generation reads the same labels as the one-at-a-time loop
    assert result["batched_generate_accuracy"] == result["seed_loop_accuracy"]
    assert result["batched_generate_unparsed"] == result["seed_loop_unparsed"]


def test_format_table_names_both_methods_and_the_verdict(result):
    table = bench.format_table(result)
    assert "seed loop" in table and "label scoring" in table and "batched generate" in table
    assert f"{result['ratio']:.1f}x" in table


def test_seed_loop_matches_batched_generation():
    """One prompt at a time and batched, left-padded generation write the same text."""
    from phi2kit.data.sentiment import build_prompt
    from phi2kit.generation import generate
    from phi2kit.models import load_model, load_tokenizer

    model, tokenizer = load_model("tiny"), load_tokenizer("tiny")
    headlines = ["Acme Oyj profit rose 12 %", "Norvik AB to cut 40 jobs in Turku and Oulu", "CFO"]
    prompts = [build_prompt(h) for h in headlines]
    lengths = {len(tokenizer(p).input_ids) for p in prompts}
    assert len(lengths) == 3  # different lengths, so the batch really is padded
    loop = bench.generate_one_at_a_time(model, tokenizer, prompts, max_new_tokens=6)
    assert loop == generate(model, tokenizer, prompts, max_new_tokens=6, batch_size=3).texts
    assert any(text.strip() for text in loop)


def test_main_help_exits_cleanly(capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(["--help"])
    assert exc.value.code == 0
    assert "--n-test" in capsys.readouterr().out

"""Smoke test of bench/bench_train.py (P1) on a tiny subset: what it counts, not how fast."""

import pytest

from phi2kit.bench import load_script


@pytest.fixture(scope="module")
def bench():
    return load_script("bench_train")


@pytest.fixture(scope="module")
def result(bench):
    return bench.run(steps=2, batch_size=4, pad_factor=2.0, quantize_4bit=False, repeats=1)


def test_seed_pads_to_max_length_and_trains_on_padding(result):
    n, max_length = result["n_examples"], result["max_length"]
    assert n == 8
    assert max_length % 64 == 0 and max_length >= 2.0 * result["p95_length"]
    assert result["seed_tokens_computed"] == n * max_length
    assert result["seed_loss_positions_on_pad"] > 0


def test_phi2kit_pads_less_and_never_trains_on_padding(result):
    assert result["phi2kit_loss_positions_on_pad"] == 0
    assert result["padding_free_loss_positions_on_pad"] == 0
    assert result["seed_useful_fraction"] < result["phi2kit_useful_fraction"] <= 1.0
    assert result["padding_free_useful_fraction"] == 1.0
    # same examples in every pipeline; trl appends one EOS per example, the seed does not
    assert result["phi2kit_useful_tokens"] == result["padding_free_useful_tokens"]
    assert result["phi2kit_useful_tokens"] == result["seed_useful_tokens"] + result["n_examples"]
    assert 0 < result["answer_tokens"] < result["phi2kit_useful_tokens"]
    for key in ("speedup", "useful_tokens_per_s_ratio", "seed_wall_s", "phi2kit_wall_s"):
        assert result[key] > 0


def test_format_result_and_help(bench, result, capsys):
    text = bench.format_result(result)
    assert "seed 003" in text and "useful-token fraction" in text
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--help"])
    assert exit_info.value.code == 0
    assert "--pad-factor" in capsys.readouterr().out


def test_seed_truncates_from_the_left(bench, tiny_tokenizer):
    """The seed's bug: with left truncation a long prompt loses its start, not its end."""
    example = {"question": "Where does the otter live?", "answer": "In rivers [1].",
               "references": ["The otter lives in rivers. " * 20]}  # fmt: skip
    ds = bench.seed_dataset([example], tiny_tokenizer, max_length=24)
    ids, mask = ds[0]["input_ids"], ds[0]["attention_mask"]
    assert len(ids) == 24 and sum(mask) == 24
    text = tiny_tokenizer.decode(ids)
    assert text.endswith("In rivers [1].") and not text.startswith("References")
    assert ds[0]["labels"] == ids

"""Smoke test of bench/bench_train.py (P1) on a tiny subset: what it counts, not how fast."""

import pytest

from phi2kit.commands.bench import load_script


@pytest.fixture(scope="module")
def bench():
    return load_script("bench_train")


@pytest.fixture(scope="module")
def printed_and_result(bench):
    import contextlib
    import io

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        result = bench.run(steps=2, batch_size=4, pad_factor=2.0, quantize_4bit=False, repeats=1)
    return printed.getvalue(), result


@pytest.fixture(scope="module")
def result(printed_and_result):
    return printed_and_result[1]


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


def test_trl_defaults_train_the_same_tokens_in_random_batches(result):
    assert result["trl_default_useful_tokens"] == result["phi2kit_useful_tokens"]
    assert result["trl_default_loss_positions_on_pad"] == 0
    # 8 examples in 2 batches: length-grouped batches pad no more than random ones
    assert result["trl_default_useful_fraction"] <= result["phi2kit_useful_fraction"]
    assert result["vs_trl_default"] == pytest.approx(
        result["phi2kit_useful_tokens_per_s"] / result["trl_default_useful_tokens_per_s"]
    )
    lo, hi = result["vs_trl_default_range"]
    assert lo <= hi and lo > 0


def test_the_trainers_print_nothing(printed_and_result):
    """The seed's HF Trainer logged each metrics dict to stdout (its PrinterCallback)."""
    printed, _ = printed_and_result
    assert printed == ""


def test_trl_default_trainer_keeps_trls_data_defaults(bench, tiny_model, tiny_tokenizer, tmp_path):
    from datasets import Dataset
    from torch.utils.data import RandomSampler
    from trl import SFTConfig

    from phi2kit.profiles import get_profile
    from phi2kit.recipes import get_recipe

    profile = get_profile("tiny")
    recipe = get_recipe("webglm", profile, quantize_4bit=False, max_length=96, batch_size=2)
    data = Dataset.from_list([{"prompt": "Q: why?\nA:", "completion": " because."}] * 4)
    defaults = SFTConfig(str(tmp_path), use_cpu=True)  # before the trainer: it resets state
    trainer = bench.trl_default_trainer(tiny_model, tiny_tokenizer, data, profile, recipe, tmp_path)
    assert trainer.args.train_sampling_strategy == "random"
    assert trainer.args.max_length == 1024 != recipe.max_length
    for name in bench.TRL_DATA_FIELDS:
        assert getattr(trainer.args, name) == getattr(defaults, name), name
    # the training settings are phi2kit's, not trl's (bf16, learning rate 2e-5)
    assert trainer.args.bf16 is False and trainer.args.learning_rate == recipe.learning_rate
    sampler = trainer.get_train_dataloader().batch_sampler.sampler
    assert isinstance(sampler, RandomSampler)  # accelerate's seedable RandomSampler


def test_format_result_and_help(bench, result, capsys):
    text = bench.format_result(result)
    assert "seed 003" in text and "useful-token fraction" in text
    assert "trl defaults" in text and f"{result['vs_trl_default']:.2f}x" in text
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

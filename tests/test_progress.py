"""Long work shows progress on GPU profiles; the tiny CPU run (CI) stays quiet."""

from __future__ import annotations

import pytest

from phi2kit.logs import on_gpu, progress


def test_progress_bar_only_when_asked(capsys):
    assert list(progress(range(3), desc="quiet", show=False)) == [0, 1, 2]
    assert capsys.readouterr().err == ""
    assert list(progress(range(3), desc="scoring", show=True)) == [0, 1, 2]
    err = capsys.readouterr().err
    assert "scoring" in err and "/3 [" in err  # total known: time left is shown


def test_trainer_progress_follows_the_profile(tiny_profile, tmp_path):
    """The CPU profile keeps the Trainer quiet; the T4 one is checked in test_meta_phi2."""
    from phi2kit.recipes import get_recipe
    from phi2kit.training import sft_config

    args = sft_config(tiny_profile, get_recipe("sentiment", tiny_profile), tmp_path)
    assert args.disable_tqdm is True


@pytest.mark.parametrize("where", ["cpu", "gpu"])
def test_label_scoring_shows_a_bar_on_a_gpu(where, tiny_model, tiny_tokenizer, monkeypatch, capsys):
    import phi2kit.evaluate.scoring as scoring
    from phi2kit.data.sentiment import build_prompt

    assert not on_gpu(tiny_model)
    if where == "gpu":  # no GPU here: pretend the model sits on one
        monkeypatch.setattr(scoring, "on_gpu", lambda model: True)
    prompts = [build_prompt(h) for h in ["Sales rose", "Profit fell", "The board met"]]
    scoring.score_labels(tiny_model, tiny_tokenizer, prompts, batch_size=2)
    err = capsys.readouterr().err
    assert ("label scoring" in err and "/2 [" in err) == (where == "gpu"), err

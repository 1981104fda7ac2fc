"""Checkpoints the notebooks resume from (``phi2kit.checkpoints``), on the tiny model.

A run stopped after its first checkpoint and resumed with :func:`train_resumable` ends with
the weights of an uninterrupted run; a finished run resumed trains nothing and keeps its
loss history; checkpoints written with other settings are not resumed.
"""

from __future__ import annotations

import json

import pytest
import torch

from phi2kit.checkpoints import (
    COMPLETE,
    SETTINGS,
    ResumeError,
    latest_checkpoint,
    resume_point,
    train_resumable,
)

STEPS, SAVE_EVERY = 6, 2


@pytest.fixture(scope="module")
def train_ds(tiny_profile):
    from phi2kit.data import sample_path
    from phi2kit.data.sentiment import (
        LABELS,
        PROMPT_TEMPLATE,
        load_financial_news,
        to_prompt_completion,
    )
    from phi2kit.data.sentiment_split import split_sentiment

    splits = split_sentiment(load_financial_news(sample_path("financial_news")), 8, 4, 0)
    return to_prompt_completion(splits.train, PROMPT_TEMPLATE, LABELS)


def _trainer(tiny_profile, train_ds, folder, stop_at=None, steps=STEPS, **overrides):
    from transformers import TrainerCallback

    from phi2kit.lora import add_lora
    from phi2kit.models import load_model, load_tokenizer
    from phi2kit.recipes import get_recipe
    from phi2kit.training import sft_trainer

    recipe = get_recipe("sentiment", tiny_profile, max_steps=steps, batch_size=4)
    torch.manual_seed(0)
    model = add_lora(load_model(tiny_profile, quantize_4bit=False), recipe, tiny_profile)
    tokenizer = load_tokenizer(tiny_profile, padding_side="right")
    args = {"save_strategy": "steps", "save_steps": SAVE_EVERY, "save_total_limit": 2,
            "logging_steps": 1} | overrides
    trainer = sft_trainer(model, tokenizer, train_ds, tiny_profile, recipe, folder, **args)

    class Session(TrainerCallback):
        """Counts the steps this session trains; `stop_at`: the runtime dies after that step."""

        def on_step_end(self, args, state, control, **kwargs):
            trainer.steps_this_session += 1
            if state.global_step == stop_at:
                control.should_training_stop = True

    trainer.steps_this_session = 0
    trainer.add_callback(Session())
    return trainer, recipe


def _lora_weights(trainer):
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}


def test_interrupted_run_resumes_to_the_uninterrupted_weights(tiny_profile, train_ds, tmp_path):
    messages = []
    whole, recipe = _trainer(tiny_profile, train_ds, tmp_path / "whole")
    settings = {"profile": "tiny", "recipe": recipe}
    _, resumed = train_resumable(whole, settings, log=messages.append)
    assert resumed is None and messages == [f"no complete checkpoint in {tmp_path / 'whole'}: "
                                            "training from step 0"]  # fmt: skip
    expected = _lora_weights(whole)

    folder = tmp_path / "interrupted"
    first, _ = _trainer(tiny_profile, train_ds, folder, stop_at=SAVE_EVERY + 1)
    train_resumable(first, settings, log=messages.append)
    assert first.state.global_step == SAVE_EVERY + 1
    assert latest_checkpoint(folder) == folder / f"checkpoint-{SAVE_EVERY}"
    assert json.loads((folder / SETTINGS).read_text())["recipe"]["max_steps"] == STEPS

    again, _ = _trainer(tiny_profile, train_ds, folder)  # a new session: fresh model
    result, resumed = train_resumable(again, settings, log=messages.append)
    assert resumed == folder / f"checkpoint-{SAVE_EVERY}"
    assert messages[-1] == f"resuming from {resumed}: step {SAVE_EVERY} of {STEPS}"
    assert result.global_step == STEPS and again.steps_this_session == STEPS - SAVE_EVERY
    got = _lora_weights(again)
    assert got.keys() == expected.keys()
    for name, weight in expected.items():
        torch.testing.assert_close(got[name], weight, rtol=0, atol=1e-6, msg=name)

    # Run once more: the training had finished; its weights and loss history come back.
    done, _ = _trainer(tiny_profile, train_ds, folder)
    result, resumed = train_resumable(done, settings, log=messages.append)
    assert resumed == folder / f"checkpoint-{STEPS}"
    assert messages[-1].endswith("(training had finished: loading its weights)")
    assert done.steps_this_session == 0
    steps = [h["step"] for h in done.state.log_history if "loss" in h]
    assert steps == list(range(1, STEPS + 1))  # the loss plot is whole again
    for name, weight in expected.items():
        torch.testing.assert_close(_lora_weights(done)[name], weight, rtol=0, atol=1e-6)


def _fake_checkpoints(folder, steps, settings):
    for step in steps:
        (folder / f"checkpoint-{step}").mkdir(parents=True)
        (folder / f"checkpoint-{step}" / COMPLETE).write_text("{}")
    (folder / SETTINGS).write_text(json.dumps(settings))


def test_checkpoints_of_other_settings_are_refused_not_deleted(tmp_path):
    _fake_checkpoints(tmp_path, [2, 4], {"profile": "tiny", "recipe": {"max_steps": 6}})
    messages = []
    same = resume_point(tmp_path, {"profile": "tiny", "recipe": {"max_steps": 6}}, messages.append)
    assert same == tmp_path / "checkpoint-4" and messages == []
    with pytest.raises(ResumeError, match=r"a run with other recipe: resume=False \(RESUME = "):
        resume_point(tmp_path, {"profile": "tiny", "recipe": {"max_steps": 9}}, messages.append)
    assert len(list(tmp_path.glob("checkpoint-*"))) == 2  # nothing deleted without asking


def test_a_trainer_that_saves_nothing_is_refused(tiny_profile, train_ds, tmp_path):
    trainer, _ = _trainer(tiny_profile, train_ds, tmp_path, save_strategy="no")
    with pytest.raises(ValueError, match='save_strategy="steps"'):
        train_resumable(trainer, {})


def test_resume_false_starts_over_and_leaves_no_stale_checkpoint(tiny_profile, train_ds, tmp_path):
    _fake_checkpoints(tmp_path, [50], {"profile": "tiny"})  # from a longer, older run
    trainer, _ = _trainer(tiny_profile, train_ds, tmp_path, steps=SAVE_EVERY)
    result, resumed = train_resumable(trainer, {"profile": "tiny"}, resume=False, log=print)
    assert resumed is None and result.global_step == SAVE_EVERY
    assert latest_checkpoint(tmp_path) == tmp_path / f"checkpoint-{SAVE_EVERY}"
    assert not (tmp_path / "checkpoint-50").exists()

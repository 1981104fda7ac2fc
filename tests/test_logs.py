import logging
import warnings


def test_quiet_hides_known_noise_only():
    import transformers

    from phi2kit.logs import quiet

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet()
        warnings.warn(
            "`is_gradient_checkpointing` is deprecated and will be removed in v6.",
            FutureWarning,
            stacklevel=1,
        )
        warnings.warn(  # transformers 5.23, when trl's SFTConfig defaults set the old name
            "`gradient_checkpointing` is deprecated and will be removed in v6. "
            "Use `activation_checkpointing` instead.",
            FutureWarning,
            stacklevel=1,
        )
        warnings.warn("something else", UserWarning, stacklevel=1)
        warnings.warn("`other_arg` is deprecated and will be removed in v6.", FutureWarning, 1)
    messages = [str(w.message) for w in caught]
    assert messages == ["something else", "`other_arg` is deprecated and will be removed in v6."]
    assert not transformers.utils.logging.is_progress_bar_enabled()
    assert logging.getLogger("bitsandbytes").level == logging.ERROR
    transformers.utils.logging.enable_progress_bar()


def test_commands_show_one_progress_line_not_a_loss_dict_per_step(tmp_path):
    import transformers
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from phi2kit.logs import one_progress_line, quiet_command

    with warnings.catch_warnings():  # leave this process's warning filters as they were
        quiet_command()
    assert logging.getLogger("bitsandbytes.backends.cpu.ops").getEffectiveLevel() == logging.ERROR
    assert transformers.utils.logging.get_verbosity() == transformers.logging.ERROR
    trainer = transformers.Trainer(
        model=transformers.PhiForCausalLM(transformers.PhiConfig(
            vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
            num_attention_heads=2)),
        args=transformers.TrainingArguments(tmp_path, report_to="none", disable_tqdm=False),
    )  # fmt: skip
    one_progress_line(trainer)
    kinds = {type(cb).__name__ for cb in trainer.callback_handler.callbacks}
    assert "OneLine" in kinds
    assert not kinds & {ProgressCallback.__name__, PrinterCallback.__name__}
    transformers.utils.logging.set_verbosity_warning()
    transformers.utils.logging.enable_progress_bar()


def test_quiet_drops_the_trainers_checkpoint_ordering_note_only():
    from phi2kit.logs import quiet

    quiet()
    quiet()  # notebooks call it once each; the filter is added once
    logger = logging.getLogger("transformers.trainer_utils")
    note = "mtime may not be reliable on this filesystem, falling back to numerical ordering"
    make = lambda msg: logger.makeRecord(logger.name, logging.WARNING, __file__, 1, msg, (), None)  # noqa: E731
    assert not logger.filter(make(note))
    assert logger.filter(make("Deleting older checkpoint [checkpoint-10]"))
    assert len(logger.filters) == len(set(logger.filters))

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

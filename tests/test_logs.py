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
        warnings.warn("something else", UserWarning, stacklevel=1)
    messages = [str(w.message) for w in caught]
    assert messages == ["something else"]
    assert not transformers.utils.logging.is_progress_bar_enabled()
    assert logging.getLogger("bitsandbytes").level == logging.ERROR
    transformers.utils.logging.enable_progress_bar()

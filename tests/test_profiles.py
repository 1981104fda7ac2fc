from dataclasses import replace
from unittest import mock

import pytest

from phi2kit.profiles import ENV_VAR, PROFILES, Profile, ProfileError, get_profile


def _cuda(available: bool, bf16: bool = False):
    """A fake GPU. ``bf16=False`` is a T4: like torch on a real T4, ``is_bf16_supported()``
    says True by default (emulated bf16) and False with ``including_emulation=False``."""

    def is_bf16_supported(including_emulation: bool = True) -> bool:
        return available and (bf16 or including_emulation)

    return mock.patch.multiple(
        "torch.cuda",
        is_available=mock.Mock(return_value=available),
        is_bf16_supported=is_bf16_supported,
        get_device_name=mock.Mock(return_value="Tesla T4"),
    )


@pytest.mark.parametrize(
    ("available", "bf16", "expected"),
    [(False, False, "tiny"), (True, False, "t4"), (True, True, "ampere")],
)
def test_auto_detects_from_hardware(monkeypatch, available, bf16, expected):
    monkeypatch.delenv(ENV_VAR, raising=False)
    with _cuda(available, bf16):
        assert get_profile("auto").name == expected
        assert get_profile(None).name == expected


def test_env_var_overrides_auto_and_argument_overrides_env(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "t4")
    with _cuda(True, False):
        assert get_profile("auto").name == "t4"
        assert get_profile("tiny").name == "tiny"  # the notebook parameter wins


def test_gpu_profile_on_cpu_is_a_clear_error(monkeypatch):
    with _cuda(False), pytest.raises(ProfileError, match="needs a CUDA GPU.*PROFILE='tiny'"):
        get_profile("t4")


def test_bf16_refused_on_gpu_without_it():
    with _cuda(True, bf16=False), pytest.raises(ProfileError, match="bfloat16.*Tesla T4.*'t4'"):
        get_profile("ampere")


def test_check_false_skips_hardware_check():
    with _cuda(False):
        assert get_profile("t4", check=False).model_id == "microsoft/phi-2"


def test_unknown_profile():
    with pytest.raises(ValueError, match="unknown profile 'v100'; choose one of 'tiny', 't4-cpu'"):
        get_profile("v100")


def test_unknown_profile_in_the_environment_names_the_variable(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "bogus")
    with pytest.raises(ValueError) as err:  # what a notebook sees
        get_profile("auto")
    assert str(err.value) == (
        f"unknown profile 'bogus' in {ENV_VAR}; choose one of 'tiny', 't4-cpu', 't4', "
        f"'ampere', 'auto' (or unset {ENV_VAR})"
    )


def test_profile_error_in_shell_words():
    with _cuda(False), pytest.raises(ProfileError) as err:
        get_profile("t4")
    assert err.value.shell() == (
        "profile 't4' needs a CUDA GPU, and none is visible: pass --profile tiny "
        "(or --profile t4-cpu, the T4's CPU twin)"
    )


def test_t4_recipe_is_fp16_never_bf16():
    t4 = PROFILES["t4"]
    assert (t4.fp16, t4.bf16) == (True, False)
    assert t4.optim == "paged_adamw_8bit" and t4.quantize_4bit
    assert t4.attn_implementation == "phi2kit_fp32"
    assert PROFILES["ampere"].bf16 and not PROFILES["ampere"].fp16
    assert not PROFILES["tiny"].fp16 and not PROFILES["tiny"].bf16


def test_cross_field_rules():
    with pytest.raises(ValueError, match="dtype='bfloat16' needs requires_cuda=True"):
        Profile(name="tiny", dtype="bfloat16")
    with pytest.raises(ValueError, match="paged.*use 'adamw_torch'"):
        replace(PROFILES["tiny"], optim="paged_adamw_8bit")

"""Hardware profiles: which model, precision and optimizer a run uses (docs/profiles.md)."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Literal

ProfileName = Literal["tiny", "t4-cpu", "t4", "ampere"]
ENV_VAR = "PHI2KIT_PROFILE"
PHI2_ID = "microsoft/phi-2"


class ProfileError(RuntimeError):
    """A profile was asked for on hardware that cannot run it: ``str(err)`` speaks to a notebook
    (``PROFILE='tiny'``), :meth:`shell` to the shell (``--profile tiny``)."""

    def __init__(self, reason: str, use: str, notebook_hint: str = "") -> None:
        self.reason, self.use = reason, use
        super().__init__(f"{reason}. Use PROFILE={use!r} (or {ENV_VAR}={use}){notebook_hint}.")

    def shell(self) -> str:
        """The message in shell words: the flag to pass."""
        also = " (or --profile t4-cpu, the T4's CPU twin)" if self.use == "tiny" else ""
        return f"{self.reason}: pass --profile {self.use}{also}"


class UnknownProfileError(ValueError):
    """A profile name (``PROFILE``, ``PHI2KIT_PROFILE`` or ``get_profile``'s argument) that
    is not one of :data:`PROFILES`; the message lists the valid names."""


@dataclass(frozen=True)
class Profile:
    """Everything that differs between hardware targets. ``model_id``: the base's hub id or folder
    (``None``: the tiny Phi); ``attn_implementation`` ``phi2kit_fp32`` keeps attention scores in
    fp32 (fp16 overflows on a T4); ``requires_cuda`` fails early without a GPU."""

    name: ProfileName
    model_id: str | None = None
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    quantize_4bit: bool = False
    attn_implementation: str = "phi2kit_fp32"
    optim: str = "adamw_torch"
    gradient_checkpointing: bool = False
    requires_cuda: bool = False

    def __post_init__(self) -> None:
        if self.bf16 and not self.requires_cuda:
            raise ValueError(
                f"profile {self.name!r}: dtype='bfloat16' needs requires_cuda=True (a GPU with "
                "native bf16); a GPU without it, such as a T4, is refused up front"
            )
        if self.optim.startswith("paged") and not self.requires_cuda:
            raise ValueError(
                f"profile {self.name!r}: optim={self.optim!r} pages optimizer state to CUDA "
                "memory; use 'adamw_torch' for a CPU profile"
            )

    @property
    def fp16(self) -> bool:
        """Trainer ``fp16`` flag: mixed precision with a grad scaler (T4)."""
        return self.dtype == "float16"

    @property
    def bf16(self) -> bool:
        """Trainer ``bf16`` flag (always set explicitly: trl's SFTConfig defaults to bf16); such
        a profile needs a GPU with native bf16."""
        return self.dtype == "bfloat16"

    @property
    def is_tiny(self) -> bool:
        """Whether the run uses the shipped tiny Phi (``tiny`` and ``t4-cpu``): the sample
        data, the CPU-sized counts and the notebooks' learning checks apply."""
        return self.model_id is None


_T4 = Profile("t4", model_id=PHI2_ID, dtype="float16", quantize_4bit=True,
              optim="paged_adamw_8bit", gradient_checkpointing=True, requires_cuda=True)
PROFILES: dict[str, Profile] = {
    # the shipped tiny Phi in fp32 (reproducible), AdamW
    # (paged 8-bit AdamW needs CUDA), no checkpointing: 1.3M parameters need none
    "tiny": Profile("tiny"),
    # the T4's twin: every "t4" setting a CPU can run (fp16 AMP with a grad scaler, nf4 +
    # double quant, checkpointing) on the tiny Phi; plain AdamW stands in for paged AdamW, and
    # fp16 matrix products run through fp32 BLAS (phi2kit.twin; get_profile registers it)
    "t4-cpu": replace(_T4, name="t4-cpu", model_id=None, optim="adamw_torch", requires_cuda=False),
    "t4": _T4,  # fp32 attention: fp16 QK^T overflows in Phi-2 -> NaN loss
    # bf16 has fp32's exponent range: sdpa does not overflow
    "ampere": replace(_T4, name="ampere", dtype="bfloat16", attn_implementation="sdpa"),
}


def native_bf16() -> bool:
    """Whether the GPU computes in bfloat16 natively (Ampere on): by default
    ``torch.cuda.is_bf16_supported()`` counts a T4's slow emulated bf16 too."""
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)


def detect_profile_name() -> ProfileName:
    """Pick a profile from the hardware: no CUDA -> tiny, no native bf16 -> t4, else ampere."""
    import torch

    if not torch.cuda.is_available():
        return "tiny"
    return "ampere" if native_bf16() else "t4"


def check_hardware(profile: Profile) -> None:
    """Raise :class:`ProfileError` if this machine cannot run ``profile``."""
    import torch

    if profile.requires_cuda and not torch.cuda.is_available():
        raise ProfileError(
            f"profile {profile.name!r} needs a CUDA GPU, and none is visible",
            "tiny",
            " to run on the CPU, or switch the Colab runtime to a GPU "
            "(Runtime > Change runtime type > T4 GPU)",
        )
    if profile.bf16 and not native_bf16():
        name = torch.cuda.get_device_name(0)
        raise ProfileError(
            f"profile {profile.name!r} uses bfloat16, which this GPU ({name}) does not support",
            "t4",
            ": fp16 compute with fp32 trainable weights",
        )


def get_profile(name: str | None = "auto", *, check: bool = True) -> Profile:
    """Profile ``name`` (``auto``: ``PHI2KIT_PROFILE``, else detected); ``check``: on this
    hardware, where ``t4-cpu`` also registers :func:`phi2kit.twin.fast_cpu_fp16_products`."""
    requested = (name or "auto").strip().lower()
    where = ""
    if requested == "auto":
        requested = os.environ.get(ENV_VAR, "").strip().lower()
        where = f" in {ENV_VAR}" if requested else ""
        requested = requested or detect_profile_name()
    if requested not in PROFILES:
        valid = ", ".join(repr(n) for n in [*PROFILES, "auto"])
        fix = f" (or unset {ENV_VAR})" if where else ""
        raise UnknownProfileError(
            f"unknown profile {requested!r}{where}; choose one of {valid}{fix}"
        )
    profile = PROFILES[requested]
    if check:  # the profile runs here: the twin's fp16 products at fp32 speed
        check_hardware(profile)
        if profile.name == "t4-cpu":
            from phi2kit.twin import fast_cpu_fp16_products

            fast_cpu_fp16_products()
    return profile

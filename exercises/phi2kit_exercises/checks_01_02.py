"""Criteria of the exercises that go with lessons 01 and 02.

Every criterion either recomputes the learner's figure with ``phi2kit``'s own functions
(on the learner's models or on data it makes), or runs the learner's function on data it
makes and compares it with the package's version. Write-it checks run on the tiny profile.
"""

from __future__ import annotations

import functools
import math
from typing import Any

from phi2kit_exercises.grader import (
    NOT_CHECKED,
    Fail,
    call,
    criterion,
    exercise,
    expect,
    need,
    tiny_model,
)

# --- 01_a: nf4 with and without double quantization (Try it) -------------------------------

exercise("01_a", "nf4 with and without double quantization", "Try it", "01 §1.4")

#: Phi-2's quantized weights: 32 layers x (4 attention projections + fc1 + fc2).
PHI2_LINEAR_SIZES = [2560 * 2560] * 4 * 32 + [2560 * 10240] * 2 * 32


def _linear4bit(model) -> list:
    return [m for m in model.modules() if type(m).__name__ == "Linear4bit"]


def constant_bytes(n_weights: int, double_quant: bool) -> int:
    """Bytes of quantization constants of one nf4 Linear (bitsandbytes' block sizes)."""
    blocks = math.ceil(n_weights / 64)
    if not double_quant:
        return 4 * blocks + 16 * 4  # one fp32 absmax per 64 weights; nf4's 16-level code
    # uint8 absmax, fp32 per 256, the nested code table, nf4's code and the offset
    return blocks + 4 * math.ceil(blocks / 256) + 256 * 4 + 16 * 4 + 4


def _nested(model) -> set[bool]:
    """Whether each 4-bit layer's constants are quantized again (empty: no 4-bit layers)."""
    if not hasattr(model, "modules"):
        return set()
    return {bool(m.weight.quant_state.nested) for m in _linear4bit(model)}


def _measured(model) -> int:
    """The quantization constants' bytes (every quant_state tensor), as describe() counts them."""
    from phi2kit.models import describe

    return describe(model).bytes_by_dtype.get("quant constants", 0)


@functools.cache
def _grader_nf4(double_quant: bool):
    """The tiny model in nf4, with or without double quantization, loaded once by the grader."""
    from transformers import AutoModelForCausalLM

    from phi2kit.models import load_kwargs, model_source
    from phi2kit.profiles import get_profile

    profile = get_profile("tiny")
    kwargs = {**load_kwargs(profile, True), "attn_implementation": "eager", "device_map": "cpu"}
    kwargs["quantization_config"].bnb_4bit_use_double_quant = double_quant
    return AutoModelForCausalLM.from_pretrained(model_source(profile), **kwargs)


def _cases(ns) -> list[tuple[str, bool, Any]]:
    """(which, double_quant, model) measured: the learner's models where they are what they
    should be, else the tiny model loaded by the grader."""
    cases = []
    for name, double in [("with_dq", True), ("without_dq", False)]:
        model = ns.get(name)
        if model is None or _nested(model) != {double}:
            name, model = "the tiny model", _grader_nf4(double)
        cases.append((name, double, model))
    return cases


@criterion(
    "01_a",
    "`without_dq` is the model in nf4 without double quantization",
    "one field of the BitsAndBytesConfig turns double quantization on: print(config) lists "
    "them by name; a misspelled name only adds an attribute that nothing reads. Load with "
    "quantization_config=that config",
)
def _01a_model(ns):
    nested = _nested(need(ns, "without_dq"))
    expect(nested, "`without_dq` has no 4-bit Linear layers: load it with a quantization_config")
    expect(nested == {False}, "`without_dq` still uses double quantization (nested constants)")


@criterion(
    "01_a",
    "`constants` holds the measured bytes of both models",
    "add up the bytes of each Linear4bit weight's quant_state tensors (absmax, code; with "
    "double quantization offset, state2.absmax, state2.code), or take describe(model)."
    "bytes_by_dtype['quant constants']; keep both, under 'double' and 'single'",
)
def _01a_constants(ns):
    constants = need(ns, "constants")
    expect(
        isinstance(constants, dict) and {"double", "single"} <= set(constants),
        "`constants` should be a dict with keys 'double' and 'single'",
    )
    for key, name in [("double", "with_dq"), ("single", "without_dq")]:
        model = need(ns, name)
        if _nested(model) != {key == "double"}:  # the check above fails
            raise Fail(NOT_CHECKED)
        held = _measured(model)
        expect(constants[key] == held,
               f"constants[{key!r}] = {constants[key]}, but {name} holds {held} bytes of "
               "quantization constants (describe's count)")
    return f"single {constants['single']:,} B, double {constants['double']:,} B"


@criterion(
    "01_a",
    "`phi2_saved_mb`: what double quantization saves on Phi-2, in MB",
    "apply your per-layer formula (checked against the tiny model) to Phi-2's 192 "
    "quantized Linear layers (PHI2_LINEAR_SIZES) and divide by 1e6",
)
def _01a_phi2(ns):
    got = need(ns, "phi2_saved_mb")
    sizes = need(ns, "PHI2_LINEAR_SIZES")
    expect(sorted(sizes) == sorted(PHI2_LINEAR_SIZES), "PHI2_LINEAR_SIZES was changed")
    for name, double, model in _cases(ns):  # the formula against the measurements first
        layers = [m.weight.quant_state.shape.numel() for m in _linear4bit(model)]
        mine = sum(call(ns, "constant_bytes", n, double) for n in layers)
        held = _measured(model)
        table = (" Are the nested code table (256 x 4 bytes), nf4's code (16 x 4) and the offset "
                 "(4) counted once per layer?" if double
                 else " Is nf4's code (16 x 4 bytes) counted once per layer?")  # fmt: skip
        expect(mine == held, f"your constant_bytes does not reproduce the measurement with"
               f"{'' if double else 'out'} double quantization: over the {len(layers)} layers "
               f"of {name} it gives {mine:,} bytes, describe() counts {held:,}.{table}")
    want = sum(constant_bytes(n, False) - constant_bytes(n, True) for n in sizes) / 1e6
    mine = sum(call(ns, "constant_bytes", n, False) - call(ns, "constant_bytes", n, True)
               for n in sizes) / 1e6  # fmt: skip
    expect(abs(mine - want) < 1e-9, "your constant_bytes reproduces the tiny model's layers "
           "but not bitsandbytes' block sizes on Phi-2's larger ones: is every count rounded "
           "up (ceil), per 64 weights and per 256 blocks?")
    if abs(got * 2**20 / 1e6 - mine) < 0.001 * want:
        raise Fail(f"phi2_saved_mb = {got:.1f}: that is in MiB (2**20 bytes); MB here is 1e6 "
                   "bytes")
    expect(abs(got - mine) < 0.001 * want, f"phi2_saved_mb = {got:.1f}, but your constant_bytes "
           f"gives {mine:.1f}: compute it from the formula, do not type it in")
    return f"{got:.1f} MB ({8e6 * got / sum(sizes):.3f} bits per weight)"


# --- 01_b: bf16 on a GPU without it (Break and fix) -----------------------------------------

exercise("01_b", "bf16 on a GPU without it", "Break and fix", "01 §1.1, 02 §2.9")


def _simulate(ns, cuda: bool, native: bool, emulated: bool = True) -> tuple[Any, Any]:
    """The learner's pick_profile() and phi2kit's choice on simulated hardware (a T4 is
    compute capability 7.5, an A100 8.0; a CPU has none)."""
    from unittest import mock

    import torch

    from phi2kit.profiles import detect_profile_name

    def bf16(including_emulation: bool = True) -> bool:
        return native or (emulated and including_emulation)

    def capability(*args: Any, **kwargs: Any) -> tuple[int, int]:
        if not cuda:
            raise AssertionError("Torch not compiled with CUDA enabled")  # as on a CPU
        return (8, 0) if native else (7, 5)

    with (
        mock.patch.object(torch.cuda, "is_available", lambda: cuda),
        mock.patch.object(torch.cuda, "is_bf16_supported", bf16),
        mock.patch.object(torch.cuda, "get_device_capability", capability),
        mock.patch.object(torch.cuda, "get_device_name", lambda *a: "simulated"),
    ):
        return call(ns, "pick_profile"), detect_profile_name()


@criterion(
    "01_b",
    "the error was caught and says what to do instead",
    "wrap get_profile('ampere') in try/except ProfileError and keep the error in `error`",
)
def _01b_error(ns):
    import torch

    from phi2kit.profiles import ProfileError, native_bf16

    err = need(ns, "error")
    if torch.cuda.is_available() and native_bf16():
        expect(err is None, "this GPU has bf16: get_profile('ampere') should not fail here")
        return "this GPU runs bf16 natively: nothing to break"
    expect(isinstance(err, ProfileError), f"`error` is {type(err).__name__}, not a ProfileError")
    expect("PROFILE=" in str(err), "the message should name the profile to use instead")
    return str(err)[:90] + "..."


@criterion(
    "01_b",
    "pick_profile() chooses right on a CPU, a T4 and an A100 (simulated)",
    "a T4 says torch.cuda.is_bf16_supported() is True because it counts emulated bf16: "
    "read that function's parameters (or the GPU's compute capability: bf16 needs 8.0)",
)
def _01b_pick(ns):
    for name, cuda, native in [("CPU", False, False), ("T4", True, False), ("A100", True, True)]:
        got, want = _simulate(ns, cuda, native)
        expect(got == want, f"on a simulated {name} pick_profile() says {got!r}; want {want!r}")


@criterion(
    "01_b",
    "trainer_config() sets fp16, bf16 and optim from the profile, here and for a T4",
    "pass fp16=profile.fp16, bf16=profile.bf16 and optim=profile.optim to SFTConfig: left "
    "out, trl's defaults ask for bf16 and plain AdamW",
)
def _01b_args(ns):
    import tempfile

    from transformers import TrainingArguments

    from phi2kit.profiles import get_profile

    shown = []
    for profile in dict.fromkeys([need(ns, "fixed_profile"), get_profile("t4", check=False)]):
        with tempfile.TemporaryDirectory() as folder:
            args = call(ns, "trainer_config", profile, folder)
        expect(isinstance(args, TrainingArguments),
               f"trainer_config() returned {type(args).__name__}, not an SFTConfig")  # fmt: skip
        got = (args.fp16, args.bf16, str(getattr(args.optim, "value", args.optim)))
        want = (profile.fp16, profile.bf16, profile.optim)
        expect(got == want, f"for {profile.name}: fp16={got[0]}, bf16={got[1]}, optim={got[2]}; "
               f"the profile says fp16={want[0]}, bf16={want[1]}, optim={want[2]}")  # fmt: skip
        shown.append(f"{profile.name}: fp16={got[0]} bf16={got[1]} optim={got[2]}")
    return "; ".join(shown)


# --- 02_a: rank and alpha (Try it) -----------------------------------------------------------

exercise("02_a", "LoRA rank and alpha: adapter size and accuracy", "Try it", "02 §2.8")


@criterion(
    "02_a",
    "`sizes[r]` is the trainable parameter count for every r in RANKS",
    "wrap phi2_on_meta() with peft's get_peft_model and a LoraConfig of that r and alpha, "
    "then ask the PEFT model how many parameters it trains (get_nb_trainable_parameters)",
)
def _02a_sizes(ns):
    from phi2kit.footprint import lora_parameters
    from phi2kit.recipes import get_recipe

    sizes, ranks, config = need(ns, "sizes"), need(ns, "RANKS"), need(ns, "base_config")
    expect(set(sizes) == set(ranks), f"sizes has ranks {sorted(sizes)}, RANKS is {ranks}")
    for r in ranks:
        want = lora_parameters(config, get_recipe("sentiment", "tiny", lora_r=r))
        expect(sizes[r] == want, f"sizes[{r}] = {sizes[r]:,}; the adapter holds {want:,}")
    return ", ".join(f"r={r}: {sizes[r]:,}" for r in ranks)


@criterion(
    "02_a",
    "`per_rank`: parameters added by one unit of rank (sizes grow linearly)",
    "per_rank = sizes[r] / r is the same for every r: compute it from your table",
)
def _02a_linear(ns):
    sizes, per_rank = need(ns, "sizes"), need(ns, "per_rank")
    expect(
        all(sizes[r] == per_rank * r for r in sizes),
        f"per_rank = {per_rank}, but sizes[r] / r = {[sizes[r] / r for r in sizes]}",
    )


@criterion(
    "02_a",
    "`accuracy[r]` is the eval accuracy of the adapter trained with rank r",
    "train one adapter per r in TRAIN_RANKS, keep it in models[r], and score the eval "
    "prompts with predict_by_scoring",
)
def _02a_accuracy(ns):
    from phi2kit.evaluate.scoring import predict_by_scoring
    from phi2kit_exercises.classification import classification_metrics

    acc, models = need(ns, "accuracy"), need(ns, "models")
    prompts, y = need(ns, "eval_prompts"), need(ns, "y_eval")
    alpha = need(ns, "ALPHA_PER_R")
    expect(set(acc) == set(need(ns, "TRAIN_RANKS")), "accuracy needs one entry per TRAIN_RANKS")
    for r, value in acc.items():
        config = models[r].peft_config["default"]
        expect(
            config.r == r and config.lora_alpha == alpha * r,
            f"models[{r}] has r={config.r}, alpha={config.lora_alpha}",
        )
        pred = predict_by_scoring(models[r], need(ns, "tokenizer"), prompts)
        want = classification_metrics(y, pred)["accuracy"]
        expect(abs(value - want) < 1e-9, f"accuracy[{r}] = {value}; the model scores {want}")
        chance = 1 / len(set(y))  # an untrained adapter scores about this
        expect(want >= chance + 0.1, f"models[{r}] scores {want:.3f}, within 0.1 of chance "
               f"({chance:.3f}): train it for the recipe's steps (MAX_STEPS)")  # fmt: skip
    return ", ".join(f"r={r}: {v:.3f}" for r, v in acc.items())


# --- 02_b: label scoring for one batch (Write it) ---------------------------------------------

exercise("02_b", "Label scoring for one batch", "Write it", "02 §2.6")


@criterion(
    "02_b",
    "score_batch() equals phi2kit's score_labels on prompts of mixed lengths",
    "tokenize each prompt and each ' ' + label separately, pad by hand with an attention "
    "mask, and sum log_softmax over the label's tokens, read one position earlier",
)
def _02b_scores(ns):
    import numpy as np

    from phi2kit.data.sentiment import build_prompt
    from phi2kit.evaluate.scoring import score_labels

    model, tokenizer = tiny_model()
    heads = ["Sales rose", "Profit fell sharply in the third quarter of the year", "Orders flat",
             "Shares up"]  # 4 prompts x 3 labels: a transposed table has the wrong shape
    prompts = [build_prompt(h) for h in heads]
    for labels in [("negative", "neutral", "positive"), ("up", "down sharply", "flat")]:
        got = np.asarray(call(ns, "score_batch", model, tokenizer, prompts, list(labels)))
        want = score_labels(model, tokenizer, prompts, labels, share_prefix=False)
        expect(got.shape == want.shape, f"shape {got.shape}; want {want.shape}")
        err = float(np.abs(got - want).max())
        expect(err < 1e-3, f"labels {labels}: scores differ by up to {err:.4f}")
    return "max difference below 1e-3 on single- and multi-token labels"

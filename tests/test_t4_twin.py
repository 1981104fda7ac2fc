"""The ``t4-cpu`` profile: the T4's settings, run on the CPU, and the bugs they expose.

A profile that switches a T4 setting off hides the bugs that live in it. These tests check
that the twin really is the T4 profile (and recipes) with only CPU-bound numbers shrunk,
that each twinned setting really runs inside ``trainer.train()``, and that the two T4 bugs
it found stay fixed: generation right after training, and fp32 attention under fp16 AMP.
"""

from dataclasses import fields

import pytest
import torch

from phi2kit.profiles import PROFILES, get_profile
from phi2kit.recipes import TASKS, get_recipe

# The only fields in which the twin may differ from the T4, and why.
PROFILE_MAY_DIFFER = {
    "name",
    "model_id",  # the shipped tiny Phi instead of microsoft/phi-2
    "optim",  # paged 8-bit AdamW needs CUDA; AdamW stands in
    "requires_cuda",
}
RECIPE_MAY_DIFFER = {  # numbers that must shrink for a CPU
    "max_steps",
    "max_length",
    "batch_size",
    "grad_accum",  # stays > 1 (checked below)
    "n_train",
    "n_test",
    "learning_rate",  # the tiny model's: 1.3M parameters learn in CI-sized step counts
}


def test_profile_is_the_t4_but_for_cuda_only_settings():
    twin, t4 = PROFILES["t4-cpu"], PROFILES["t4"]
    differ = {f.name for f in fields(twin) if getattr(twin, f.name) != getattr(t4, f.name)}
    assert differ <= PROFILE_MAY_DIFFER, differ - PROFILE_MAY_DIFFER
    assert twin.fp16 and twin.quantize_4bit and twin.gradient_checkpointing
    assert twin.attn_implementation == "phi2kit_fp32"
    assert twin.is_tiny and not twin.requires_cuda
    assert get_profile("t4-cpu").name == "t4-cpu"  # runs here, no GPU needed


@pytest.mark.parametrize("task", TASKS)
def test_recipes_are_the_t4_recipes_with_cpu_numbers(task):
    twin, t4 = get_recipe(task, "t4-cpu"), get_recipe(task, "t4")
    differ = {f.name for f in fields(twin) if getattr(twin, f.name) != getattr(t4, f.name)}
    assert differ <= RECIPE_MAY_DIFFER, differ - RECIPE_MAY_DIFFER
    assert twin.quantize_4bit and twin.lora_dropout > 0 and twin.grad_accum > 1
    tiny = get_recipe(task, "tiny")
    assert (twin.max_length, twin.n_train, twin.n_test) == (
        tiny.max_length,
        tiny.n_train,
        tiny.n_test,
    )


@pytest.fixture(scope="module")
def trained_twin(tmp_path_factory):
    """The T4 sentiment recipe on the twin, trained a few steps, with a spy on attention."""
    from datasets import Dataset
    from transformers import AttentionInterface

    import phi2kit.models as models
    from phi2kit.lora import add_lora
    from phi2kit.training import sft_trainer

    seen: list[tuple] = []

    def spy(module, query, *args, **kwargs):
        out = models.fp32_attention_forward(module, query, *args, **kwargs)
        seen.append(
            (
                module.training,
                torch.is_autocast_enabled("cpu"),
                torch.get_autocast_dtype("cpu"),
                bool(torch.isfinite(out[0]).all()),
            )
        )
        return out  # fmt: skip

    profile = get_profile("t4-cpu")
    recipe = get_recipe("sentiment", profile, max_steps=4)
    torch.manual_seed(0)
    tok = models.load_tokenizer(profile)
    model = add_lora(models.load_model(profile), recipe, profile)
    rows = [{"prompt": f"Headline {i}: shares", "completion": " up" if i % 2 else " down"}
            for i in range(32)]  # fmt: skip
    out = tmp_path_factory.mktemp("twin")
    trainer = sft_trainer(model, tok, Dataset.from_list(rows), profile, recipe, out)
    AttentionInterface.register(models.FP32_ATTENTION, spy)
    try:
        trainer.train()
    finally:
        AttentionInterface.register(models.FP32_ATTENTION, models.fp32_attention_forward)
    return trainer, tok, seen


def test_fp16_amp_really_runs_in_training(trained_twin):
    """accelerate alone trains fp16=True on a CPU in fp32; the twin must not."""
    trainer, _, seen = trained_twin
    in_training = [s for s in seen if s[0]]
    assert in_training, "attention never ran in train mode"
    assert all(amp and dtype == torch.float16 for _, amp, dtype, _ in in_training)
    assert all(finite for *_, finite in in_training)
    assert isinstance(trainer.accelerator.scaler, torch.amp.GradScaler)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses and all(map(torch.isfinite, torch.tensor(losses)))
    trainable = {p.dtype for p in trainer.model.parameters() if p.requires_grad}
    assert trainable == {torch.float32}


def test_checkpointing_is_on_and_non_reentrant(trained_twin):
    trainer, _, _ = trained_twin
    layer = trainer.model.base_model.model.model.layers[0]
    assert layer.gradient_checkpointing
    assert layer._gradient_checkpointing_func.keywords == {"use_reentrant": False}
    assert trainer.args.gradient_accumulation_steps > 1


def test_generate_right_after_train_equals_generate_after_eval(trained_twin):
    """trainer.train() leaves train mode: checkpointed layers drop the KV cache, dropout is on."""
    from phi2kit.generation import generate

    trainer, tok, _ = trained_twin
    model = trainer.model
    prompts = ["Headline 3: shares", "Headline 4: shares", "The lynx"]
    model.train()  # where trainer.train() leaves it
    after_train = generate(model, tok, prompts, max_new_tokens=8)
    assert model.training  # the mode is restored
    model.eval()
    after_eval = generate(model, tok, prompts, max_new_tokens=8)
    model.train()
    assert after_train.texts == after_eval.texts


def test_label_scoring_right_after_train_equals_after_eval(trained_twin):
    from phi2kit.evaluate.scoring import score_labels

    trainer, tok, _ = trained_twin
    model = trainer.model
    prompts = ["Headline 3: shares", "Headline 4: shares"]
    model.train()
    a = score_labels(model, tok, prompts, labels=["up", "down"])
    model.eval()
    b = score_labels(model, tok, prompts, labels=["up", "down"])
    model.train()
    assert a.ravel().tolist() == pytest.approx(b.ravel().tolist())


FP16_PRODUCTS = r"""
import json, torch
from phi2kit import twin
torch.manual_seed(0)
h = lambda *s: torch.randn(*s).half()
a, b, bias, A, B, C = h(64, 128), h(128, 256), h(256), h(3, 64, 128), h(3, 128, 256), h(3, 64, 256)
big = torch.full((2, 2), 300.0).half()  # 300 * 300 * 2 = 180,000: past fp16's 65,504
f = lambda t: t.float()
fp16 = {  # each fp16 product, and the fp32 product of its inputs rounded to fp16
    "mm": (lambda: torch.mm(a, b), lambda: (f(a) @ f(b)).half()),
    "addmm": (lambda: torch.addmm(bias, a, b, beta=0.5, alpha=2),
              lambda: torch.addmm(f(bias), f(a), f(b), beta=0.5, alpha=2).half()),
    "bmm": (lambda: torch.bmm(A, B), lambda: torch.bmm(f(A), f(B)).half()),
    "baddbmm": (lambda: torch.baddbmm(C, A, B, alpha=0.3),
                lambda: torch.baddbmm(f(C), f(A), f(B), alpha=0.3).half()),
    "addbmm": (lambda: torch.addbmm(bias, A, B), lambda: torch.addbmm(f(bias), f(A), f(B)).half()),
    "linear": (lambda: torch.nn.functional.linear(a, b.t(), bias),
               lambda: torch.nn.functional.linear(f(a), f(b.t()), f(bias)).half()),
}
other = {"fp32": lambda: f(a) @ f(b), "bf16": lambda: a.bfloat16() @ b.bfloat16(),
         "overflow": lambda: big @ big}
cases = {k: got for k, (got, _) in fp16.items()} | other
before = {k: got() for k, got in cases.items()}  # the CPU's own kernels
from phi2kit.profiles import get_profile
get_profile("t4-cpu", check=False)  # a look at the profile (the planner's): nothing registered
unchecked = twin._registered is None
get_profile("t4-cpu")
after = {k: got() for k, got in cases.items()}
x = torch.randn(4, 5, requires_grad=True)
w = torch.randn(5, 3, requires_grad=True)
with torch.autocast("cpu", dtype=torch.float16):
    y = x @ w
y.float().sum().backward()
print(json.dumps({
    "unchecked": unchecked, "registered": twin._registered is not None,
    "dtype": {k: str(v.dtype) for k, v in after.items()},
    "same_dtype": all(before[k].dtype == after[k].dtype for k in cases),
    "as_fp32_rounded": {k: torch.equal(after[k], want()) for k, (_, want) in fp16.items()},
    "from_before": {k: (before[k].float() - after[k].float()).abs().max().item() for k in cases},
    "ulp": {k: (before[k].float().abs().max() / 1024).item() for k in cases},
    "overflow": torch.isinf(after["overflow"]).all().item(),
    "autocast": [str(y.dtype), str(x.grad.dtype),
                 (x.grad - torch.ones(4, 3) @ w.t()).abs().max().item()],
}))
"""


def test_the_twin_runs_fp16_products_through_fp32_and_changes_nothing_else():
    """``get_profile("t4-cpu")`` (not a look with ``check=False``) registers CPU kernels that give
    each fp16 product as the fp32 product of its inputs rounded to fp16, which is what torch's own
    CPU fp16 kernels compute, in reference loops (docs/maintainers.md gives the cost): at most an
    fp16 ulp from before. fp32 and bf16 products stay bitwise the same."""
    import json
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", FP16_PRODUCTS], capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Overriding" not in proc.stderr  # torch's warning: expected, and kept quiet
    got = json.loads(proc.stdout.splitlines()[-1])
    assert got["unchecked"], "get_profile(check=False) registered the kernels"
    assert got["registered"], "get_profile('t4-cpu') did not register the kernels"
    assert got["same_dtype"] and got["dtype"]["mm"] == "torch.float16", got["dtype"]
    assert all(got["as_fp32_rounded"].values()), got["as_fp32_rounded"]
    for case in got["as_fp32_rounded"]:  # at most an fp16 ulp from the stock kernel
        assert got["from_before"][case] <= got["ulp"][case], (case, got)
    assert got["from_before"]["fp32"] == 0 and got["from_before"]["bf16"] == 0, got
    assert got["overflow"], "an fp16 product past 65,504 must still be inf"
    assert got["autocast"][:2] == ["torch.float16", "torch.float32"] and got["autocast"][2] < 1e-2

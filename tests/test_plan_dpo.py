"""The dpo recipe (phi2kit.recipes) and DPO's memory (phi2kit.plan.dpo.estimate_dpo)."""

from dataclasses import replace

import pytest

from phi2kit.plan import estimate
from phi2kit.plan.dpo import estimate_dpo
from phi2kit.recipes import DPORecipe, get_recipe


@pytest.mark.parametrize("profile", ["tiny", "t4-cpu", "t4", "ampere"])
def test_dpo_recipe_continues_the_chat_adapter(profile):
    dpo, chat = get_recipe("dpo", profile), get_recipe("chat", profile)
    lora = ("lora_r", "lora_alpha", "lora_dropout", "target_modules", "quantize_4bit")
    same = {k: (getattr(dpo, k), getattr(chat, k)) for k in lora}  # the adapter's own base
    assert all(a == b for a, b in same.values()), same
    assert dpo.task == "dpo" and dpo.beta == 0.1 and not dpo.precompute_ref_log_probs
    assert get_recipe("dpo", profile, beta=0.3).beta == 0.3


def test_dpo_recipe_rejects_bad_values():
    with pytest.raises(ValueError, match="beta=0 must be positive"):
        DPORecipe("dpo", quantize_4bit=True, beta=0)
    with pytest.raises(ValueError, match="not one of"):
        DPORecipe("chat", quantize_4bit=True)
    with pytest.raises(ValueError, match="target_modules is empty"):
        DPORecipe("dpo", quantize_4bit=True, target_modules=())


def test_dpo_memory_parts():
    r = get_recipe("dpo", "t4")
    adapter, base = estimate_dpo("t4", r), estimate_dpo("t4", r, reference="base")
    assert adapter.parts["reference"] == pytest.approx(adapter.parts["LoRA weights (fp32)"])
    assert base.parts["reference"] == 0 and adapter.total_gb > base.total_gb
    # chosen + rejected: the policy's activations are those of a batch twice as large
    sft = estimate("t4", replace(get_recipe("chat", "t4"), batch_size=2 * r.batch_size,
                                 max_length=r.max_length))  # fmt: skip
    assert adapter.parts["activations"] == pytest.approx(sft.parts["activations"])
    model = estimate_dpo("t4", r, reference="model")
    pre = estimate_dpo("t4", r, reference="model", precompute=True)
    assert model.parts["reference"] > 1.5 and pre.parts["reference"] == 0  # nf4 Phi-2 ~1.8 GB
    assert model.total_gb - pre.total_gb > 1.5
    assert adapter.fits and "fits" in adapter.verdict
    assert estimate_dpo("tiny", get_recipe("dpo", "tiny")).total_gb < 1


def test_dpo_t4_minutes():
    r = get_recipe("dpo", "t4")
    assert 60 < r.t4_minutes() < 120
    assert replace(r, max_steps=2 * r.max_steps).t4_minutes() == pytest.approx(2 * r.t4_minutes())

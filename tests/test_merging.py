"""Merging LoRA/QLoRA adapters: logits match, the save/reload round trip, adapter switching.

Adapters are freshly initialised with ``init_lora_weights=False`` (non-zero B), so every
merge changes the weights and a broken merge shows up in the logits.
"""

import pytest
import torch

from phi2kit.lora import adapter_base_4bit, adapter_profile, save_adapter
from phi2kit.models import load_model
from phi2kit.twin import keep_nf4_layout_on_cpu
from phi2kit_exercises.merging import dequantize_into, merge_error, probe_logits

TEXTS = [
    "### Human: Where does the otter live?\n### Assistant:",
    "def add(a, b):",
    "The heron feeds mainly on fish and",
]
TARGETS = ["q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"]


def _save_random_adapter(profile, path, seed, targets=TARGETS, r=8):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    config = LoraConfig(r=r, lora_alpha=2 * r, target_modules=targets, init_lora_weights=False)
    model = get_peft_model(load_model(profile, quantize_4bit=False), config)
    model.save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory, tiny_profile):
    return _save_random_adapter(tiny_profile, tmp_path_factory.mktemp("a") / "lora", seed=1)


def test_lora_merge_keeps_logits(tiny_profile, tiny_tokenizer, adapter_dir):
    from peft import PeftModel

    base_logits = probe_logits(load_model(tiny_profile, quantize_4bit=False), tiny_tokenizer, TEXTS)
    model = PeftModel.from_pretrained(load_model(tiny_profile, quantize_4bit=False), adapter_dir)
    unmerged = probe_logits(model, tiny_tokenizer, TEXTS)
    merged = probe_logits(model.merge_and_unload(), tiny_tokenizer, TEXTS)
    assert merge_error(base_logits, unmerged).max_abs > 0.1  # the adapter does something
    err = merge_error(unmerged, merged)
    assert err.max_abs < 1e-4 and err.token_agreement == 1.0, err


def test_merge_error_measures_what_it_says():
    ref = torch.tensor([[0.0, 1.0, 2.0], [3.0, 0.0, 0.0]])
    other = torch.tensor([[0.0, 1.5, 1.0], [3.0, 0.0, 0.0]])
    err = merge_error(ref, other)
    assert err.max_abs == pytest.approx(1.0)
    assert err.mean_abs == pytest.approx(1.5 / 6)
    assert err.token_agreement == pytest.approx(0.5) and err.n_tokens == 2
    with pytest.raises(ValueError, match="same texts"):
        merge_error(ref, other[:1])


def test_save_and_reload_round_trip(tiny_profile, tiny_tokenizer, adapter_dir, tmp_path):
    from peft import PeftModel

    model = PeftModel.from_pretrained(load_model(tiny_profile, quantize_4bit=False), adapter_dir)
    merged = model.merge_and_unload()
    path = tmp_path / "merged"
    merged.save_pretrained(path)  # notebook 05's save
    tiny_tokenizer.save_pretrained(path)
    assert list(path.glob("*.safetensors")) and not list(path.glob("*.bin"))
    reloaded = load_model(tiny_profile, quantize_4bit=False, source=str(path))
    assert torch.equal(
        probe_logits(merged, tiny_tokenizer, TEXTS), probe_logits(reloaded, tiny_tokenizer, TEXTS)
    )


def test_dequantize_then_merge_beats_naive_qlora_merge(tiny_profile, tiny_tokenizer, adapter_dir):
    from peft import PeftModel

    qlora = PeftModel.from_pretrained(load_model(tiny_profile, quantize_4bit=True), adapter_dir)
    assert keep_nf4_layout_on_cpu(qlora) == 6 * 4  # six projections in four layers
    trained = probe_logits(qlora, tiny_tokenizer, TEXTS)  # what QLoRA training computes
    naive = PeftModel.from_pretrained(load_model(tiny_profile, quantize_4bit=False), adapter_dir)
    naive_err = merge_error(trained, probe_logits(naive.merge_and_unload(), tiny_tokenizer, TEXTS))
    base = load_model(tiny_profile, quantize_4bit=False)
    dequantize_into(base, load_model(tiny_profile, quantize_4bit=True))
    deq = PeftModel.from_pretrained(base, adapter_dir)
    deq_err = merge_error(trained, probe_logits(deq.merge_and_unload(), tiny_tokenizer, TEXTS))
    assert deq_err.max_abs < 1e-4, deq_err
    assert naive_err.max_abs > 100 * deq_err.max_abs, (naive_err, deq_err)


def test_dequantize_into_refuses_repacked_weights(tiny_profile, tiny_tokenizer):
    quantized = load_model(tiny_profile, quantize_4bit=True)
    target = load_model(tiny_profile, quantize_4bit=False)
    assert dequantize_into(target, quantized) == 24
    w = target.model.layers[0].mlp.fc1.weight
    original = load_model(tiny_profile, quantize_4bit=False).model.layers[0].mlp.fc1.weight
    assert 0 < (w - original).abs().max() < 0.2 * original.abs().max()  # nf4 rounding only
    state = quantized.model.layers[0].mlp.fc1.weight.quant_state
    state.packing_format_for_cpu = True  # what bitsandbytes' CPU bf16 kernel leaves behind
    with pytest.raises(RuntimeError, match="keep_nf4_layout_on_cpu"):
        dequantize_into(target, quantized)


def test_switch_adapters_without_reloading_base(tiny_profile, tiny_tokenizer, tmp_path):
    a = _save_random_adapter(tiny_profile, tmp_path / "a", seed=1)
    b = _save_random_adapter(tiny_profile, tmp_path / "b", seed=2, targets=["q_proj", "v_proj"])
    from peft import PeftModel

    model = PeftModel.from_pretrained(load_model(tiny_profile, quantize_4bit=False), a,
                                      adapter_name="a")  # fmt: skip
    model.load_adapter(b, adapter_name="b")  # notebook 05's named adapters
    base_weight = model.get_base_model().model.layers[0].self_attn.q_proj.base_layer.weight
    logits = {}
    for name in ["a", "b", "a"]:
        model.set_adapter(name)
        logits[name] = probe_logits(model, tiny_tokenizer, TEXTS)
    with model.disable_adapter():
        logits["base"] = probe_logits(model, tiny_tokenizer, TEXTS)
    assert model.get_base_model().model.layers[0].self_attn.q_proj.base_layer.weight is base_weight
    assert merge_error(logits["a"], logits["b"]).max_abs > 0.1
    alone = _logits_alone(tiny_profile, tiny_tokenizer, b)
    assert merge_error(alone, logits["b"]).max_abs < 1e-5  # same as loading b by itself


def _logits_alone(profile, tokenizer, path):
    from peft import PeftModel

    model = PeftModel.from_pretrained(load_model(profile, quantize_4bit=False), path)
    return probe_logits(model, tokenizer, TEXTS)


def test_save_adapter_notes_the_base_precision(tiny_profile, tmp_path):
    """Notebook 05 must not merge a QLoRA adapter as if it were LoRA (a T4 run of 02 is QLoRA)."""
    from peft import PeftModel

    from phi2kit.lora import add_lora
    from phi2kit.recipes import get_recipe

    recipe = get_recipe("sentiment", tiny_profile)
    paths = {}
    for four_bit in (False, True):
        model = add_lora(load_model(tiny_profile, quantize_4bit=four_bit), recipe, tiny_profile)
        paths[four_bit] = save_adapter(model, tmp_path / f"bits4_{four_bit}", profile="t4-cpu")
        assert adapter_base_4bit(paths[four_bit]) is four_bit
        assert adapter_profile(paths[four_bit]) == "t4-cpu"  # tiny's share the base: 07-09 check
        assert (paths[four_bit] / "adapter_model.safetensors").is_file()
    plain = _save_random_adapter(tiny_profile, tmp_path / "plain", seed=3)  # no note
    assert adapter_base_4bit(plain) is None and adapter_profile(plain) is None
    # the note does not get in PEFT's way
    PeftModel.from_pretrained(load_model(tiny_profile, quantize_4bit=False), paths[False])


def test_notebook_05_writes_what_this_module_holds():
    """probe_logits, LogitGap, merge_error and dequantize_into are written in 05's cells."""
    from lesson_source import assert_cells_define

    assert_cells_define("05_adapter_merging", "exercises/phi2kit_exercises/merging.py",
                        ["probe_logits", "LogitGap", "merge_error", "dequantize_into"])  # fmt: skip

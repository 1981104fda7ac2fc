"""Notebook 09's GRPO recipe (phi2kit.recipes) and its planner (phi2kit.plan)."""

from dataclasses import replace

import pytest

from phi2kit.plan import estimate
from phi2kit.plan.grpo import estimate_grpo, grpo_course_row, grpo_minutes
from phi2kit.recipes import TASKS, GrpoRecipe, get_recipe

PROFILES = ["tiny", "t4-cpu", "t4", "ampere"]


@pytest.mark.parametrize("profile", PROFILES)
def test_every_profile_has_a_grpo_recipe_with_whole_groups(profile):
    r = get_recipe("grpo", profile)
    assert r.task == "grpo" and r.quantize_4bit
    assert r.generation_batch % r.num_generations == 0 and r.generation_batch >= r.num_generations
    assert 0 < r.max_completion_length < r.max_length


def test_the_t4_twin_keeps_the_t4_settings_and_shrinks_the_cpu_bound_numbers():
    t4, twin = get_recipe("grpo", "t4"), get_recipe("grpo", "t4-cpu")
    assert (twin.lora_r, twin.lora_alpha, twin.lora_dropout, twin.beta, twin.temperature) == (
        t4.lora_r, t4.lora_alpha, t4.lora_dropout, t4.beta, t4.temperature)  # fmt: skip
    assert twin.max_length < t4.max_length
    assert twin.max_steps <= get_recipe("grpo", "tiny").max_steps


def test_the_grpo_recipe_continues_04s_adapter_shape():
    for profile in PROFILES:
        grpo, sft = get_recipe("grpo", profile), get_recipe("webglm", profile)
        assert (grpo.lora_r, grpo.lora_alpha, grpo.target_modules) == (
            sft.lora_r, sft.lora_alpha, sft.target_modules)  # fmt: skip


def test_the_other_recipes_are_unchanged():
    assert TASKS == ("sentiment", "classifier", "webglm", "chat")
    assert get_recipe("webglm", "t4").max_steps == 100


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"num_generations": 3}, r"the generation batch \(batch_size x grad_accum = 16 "
         r"completions\) must be a multiple of num_generations=3: num_generations one of 2, 4, "
         r"8, 16$"),
        ({"steps_per_generation": 1, "num_generations": 8}, "batch_size x steps_per_generation"),
        ({"num_generations": 1}, r"^num_generations \(1\) must be at least 2: GRPO compares"),
        ({"max_completion_length": 768}, "below max_length"),
        ({"task": "webglm"}, "for task 'grpo'"),
        ({"max_steps": 0}, "max_steps"),
    ],
)
def test_bad_grpo_recipes_are_refused(change, message):
    with pytest.raises(ValueError, match=message):
        replace(get_recipe("grpo", "t4"), **change)


def test_overrides_apply():
    assert get_recipe("grpo", "tiny", max_steps=3).max_steps == 3
    assert isinstance(get_recipe("grpo", "t4"), GrpoRecipe)


def test_the_planner_counts_generation_and_the_reference_pass():
    r = get_recipe("grpo", "t4")
    est = estimate_grpo("t4", r)
    assert est.fits and 4 < est.total_gb < 15
    # the training step alone is what estimate() predicts for the same recipe
    train = estimate("t4", r, overhead_gb=0.0)
    step = train.parts["activations"] + train.parts["logits + grads"]
    assert est.parts["training step"] == pytest.approx(step)
    # more completions per step: a bigger generation batch (KV cache)
    big = estimate_grpo("t4", replace(r, grad_accum=16))
    assert big.parts["generation (extra)"] > est.parts["generation (extra)"]
    # beta = 0: no reference adapter and no reference pass
    no_ref = estimate_grpo("t4", replace(r, beta=0.0))
    assert no_ref.parts["ref adapter (beta>0)"] == 0 and no_ref.total_gb < est.total_gb
    assert grpo_minutes(replace(r, beta=0.0))["reference pass"] == 0
    minutes = grpo_minutes(r)
    assert minutes["reference pass"] == pytest.approx(minutes["training"] / 3)
    assert grpo_minutes(replace(r, max_completion_length=384))["generation"] == pytest.approx(
        2 * minutes["generation"])
    # the learning check: one group per validation question, sampled before and after training
    assert grpo_minutes(r, check_prompts=0)["learning check"] == 0
    calls = 2 * 40 * r.num_generations / r.generation_batch  # 4 prompts a call on a T4
    assert minutes["learning check"] == pytest.approx(calls * r.max_completion_length * 0.08 / 60)
    assert grpo_minutes(r, check_prompts=41)["learning check"] > minutes["learning check"]


def test_the_course_row_matches_the_planner():
    name, _, minutes, gb = grpo_course_row()
    r = get_recipe("grpo", "t4")
    assert name == "09_grpo_rewards"
    assert gb == f"{estimate_grpo('t4', r).total_gb:.1f}"
    assert int(minutes.strip("~")) >= sum(grpo_minutes(r).values())


def test_the_planner_counts_the_kv_cache_generate_really_fills():
    """The base as 04, 06 and 09 generate on it: nf4, prepared for k-bit training (the
    embeddings go to fp32), no autocast. Its KV cache is fp32, not the fp16 compute dtype (2x
    the bytes), and ``generation_gb`` counts what the cache holds."""
    from peft import prepare_model_for_kbit_training

    from phi2kit.models import load_model, load_tokenizer
    from phi2kit.plan import GB, cache_bytes, generation_gb
    from phi2kit.profiles import get_profile

    profile, recipe = get_profile("t4-cpu"), get_recipe("grpo", "t4-cpu")
    model = prepare_model_for_kbit_training(load_model(profile, quantize_4bit=True),
                                            use_gradient_checkpointing=False)  # fmt: skip
    tokenizer = load_tokenizer(profile, padding_side="left")
    batch = tokenizer(["Where do otters live?", "Why?"], return_tensors="pt", padding=True)
    out = model.generate(**batch, max_new_tokens=3, min_new_tokens=3, do_sample=False,
                         return_dict_in_generate=True, pad_token_id=tokenizer.pad_token_id)
    cache = out.past_key_values.layers
    assert cache[0].keys.element_size() == cache_bytes(recipe, profile.dtype) == 4
    assert cache_bytes(replace(recipe, quantize_4bit=False), "float16") == 2
    held = sum(t.numel() * t.element_size() for layer in cache for t in (layer.keys, layer.values))
    prompt, cfg = batch["input_ids"].shape[1], model.config
    planned = generation_gb(cfg, 2, prompt, 3, 4, "sdpa") * GB - 2 * 2 * 4 * cfg.vocab_size
    assert (prompt + 2) / (prompt + 3) * planned <= held <= planned, (held, planned)  # the last
    # new token is never fed back, so the cache holds one position fewer than prompt + new

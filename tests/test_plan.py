"""The memory planner and its counting (footprint), against Phi-2 and CPU measurements.

Measured on a small Phi in fp32 on the CPU: weight bytes (fp32, fp16, nf4 with and without
double quantization, including every bitsandbytes quant_state tensor), LoRA parameters,
AdamW state, and the peak of live tensor bytes during one forward + backward.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from measure_memory import live_bytes_tracker, model_bytes, optimizer_state_bytes  # bench/

from phi2kit.commands.plan import add_plan_parser, run_plan
from phi2kit.footprint import (
    activation_bytes_per_token,
    count_parameters,
    dequant_bytes,
    lora_parameters,
    phi2_config,
    weight_bytes,
)
from phi2kit.plan import Estimate, estimate, format_table
from phi2kit.plan.course import (
    T4_CALIBRATION_LENGTH,
    T4_CALIBRATIONS,
    T4_EFFECTIVE_FLOPS,
    course_minutes,
    course_rows,
    train_minutes,
)
from phi2kit.recipes import PHI_LORA_TARGETS, TASKS, Recipe, get_recipe

PHI2_PARAMS = 2_779_683_840  # Phi-2 model card config.json, summed by shape


def test_phi2_parameter_count_matches_meta_model():
    from transformers import PhiForCausalLM

    cfg = phi2_config()
    assert cfg.rope_parameters["partial_rotary_factor"] == 0.4
    assert count_parameters(cfg) == PHI2_PARAMS
    with torch.device("meta"):
        model = PhiForCausalLM(cfg)
    assert model.model.layers[0].self_attn.rotary_ndims == 32  # 0.4 * head dim 80
    assert sum(p.numel() for p in model.parameters()) == PHI2_PARAMS


def test_fp16_inference_weights_match_model_card():
    # Model card: 2.7B parameters in fp16 -> about 5.56 GB.
    assert 5.4e9 < weight_bytes(phi2_config(), "float16") < 5.7e9


def _save_small_phi(path, vocab_size: int):
    from transformers import PhiConfig, PhiForCausalLM

    cfg = PhiConfig(
        vocab_size=vocab_size, hidden_size=128, intermediate_size=512, num_hidden_layers=4,
        num_attention_heads=4, max_position_embeddings=256,
        rope_parameters={"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.4},
    )  # fmt: skip
    torch.manual_seed(0)
    PhiForCausalLM(cfg).save_pretrained(path, safe_serialization=True)
    return cfg, path


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return _save_small_phi(tmp_path_factory.mktemp("small_phi"), 2048)


@pytest.fixture(scope="module")
def small_vocab(tmp_path_factory):
    """Vocabulary 256: the layers, not the logits, set the peak under checkpointing."""
    return _save_small_phi(tmp_path_factory.mktemp("small_vocab_phi"), 256)


@pytest.mark.parametrize(
    "dtype, nf4, double_quant",
    [("float32", False, False), ("float16", False, False), ("float32", True, False),
     ("float32", True, True)],
)  # fmt: skip
def test_weight_bytes_match_loaded_model(small, dtype, nf4, double_quant):
    from transformers import BitsAndBytesConfig, PhiForCausalLM

    cfg, path = small
    kwargs = {}
    if nf4:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32,
            bnb_4bit_use_double_quant=double_quant,
        )  # fmt: skip
        kwargs["device_map"] = "cpu"
    model = PhiForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype), **kwargs)
    if nf4:
        assert type(model.model.layers[0].mlp.fc1).__name__ == "Linear4bit"
        assert type(model.lm_head) is torch.nn.Linear  # lm_head stays unquantized
    predicted = weight_bytes(cfg, dtype, quantize_4bit=nf4, double_quant=double_quant)
    # The planner leaves out only the rotary inv_freq buffers (a few hundred bytes), so the
    # check is far tighter than 5 %: 1e-3 catches a miscounted absmax or code tensor.
    assert predicted == pytest.approx(model_bytes(model), rel=1e-3)
    if nf4:  # much smaller than fp32, and double quantization shrinks absmax further
        assert predicted < 0.6 * weight_bytes(cfg, "float32")


def _lora_model(path, recipe, attn="eager", ckpt=False):
    from peft import LoraConfig, get_peft_model
    from transformers import BitsAndBytesConfig, PhiForCausalLM

    from phi2kit.twin import keep_nf4_layout_on_cpu

    kwargs = {}
    if recipe.quantize_4bit:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32,
            bnb_4bit_use_double_quant=True,
        )  # fmt: skip
        kwargs["device_map"] = "cpu"
    model = PhiForCausalLM.from_pretrained(path, attn_implementation=attn, **kwargs)
    keep_nf4_layout_on_cpu(model)
    if ckpt:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    lora = LoraConfig(
        r=recipe.lora_r, lora_alpha=recipe.lora_alpha, lora_dropout=recipe.lora_dropout,
        target_modules=list(recipe.target_modules), task_type="CAUSAL_LM",
    )  # fmt: skip
    return get_peft_model(model, lora).train()


def test_lora_parameters_and_adamw_state(small):
    cfg, path = small
    recipe = Recipe("webglm", quantize_4bit=False, lora_r=8, target_modules=PHI_LORA_TARGETS)
    model = _lora_model(path, recipe)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert sum(p.numel() for p in trainable) == lora_parameters(cfg, recipe)
    opt = torch.optim.AdamW(trainable, lr=1e-3)
    ids = torch.randint(0, cfg.vocab_size, (2, 16))
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    # exp_avg + exp_avg_sq are fp32 (8 B/param). The per-tensor fp32 `step` scalars are
    # counted here and left out of the estimate: 4 B per tensor, under 0.1 % of the state.
    state = optimizer_state_bytes(opt)
    est = estimate(cfg, recipe, optim="adamw_torch")
    assert est.parts["optimizer state"] * 1e9 == pytest.approx(state, rel=0.05)


@pytest.mark.parametrize("ckpt", [False, True])
@pytest.mark.parametrize("dropout", [0.0, 0.05])
@pytest.mark.parametrize("model", ["small", "small_vocab"])
def test_activation_estimate_matches_live_tensor_peak(request, model, ckpt, dropout):
    cfg, path = request.getfixturevalue(model)
    recipe = Recipe("webglm", quantize_4bit=False, lora_r=8, lora_dropout=dropout,
                    batch_size=2, max_length=48)  # fmt: skip
    model = _lora_model(path, recipe, ckpt=ckpt)
    ids = torch.randint(0, cfg.vocab_size, (recipe.batch_size, recipe.max_length))
    tracker = live_bytes_tracker()
    with tracker:
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss  # logits are dropped
        loss.backward()
    est = estimate(cfg, recipe, attn="eager", gradient_checkpointing=ckpt)
    predicted = (est.parts["activations"] + est.parts["logits + grads"]) * 1e9
    # Measured agreement is within 2.5 %; 5 % (not 25 %) keeps the check able to catch a
    # dropped part such as the dropout masks or the logits' gradient buffers.
    assert predicted == pytest.approx(tracker.peak, rel=0.05)


@pytest.mark.parametrize("ckpt", [False, True])
def test_qlora_estimate_counts_the_dequantized_weight(small_vocab, ckpt, monkeypatch):
    """A 4-bit matmul dequantizes its whole weight while it runs: the planner counts it."""
    cfg, path = small_vocab
    recipe = Recipe("webglm", quantize_4bit=True, lora_r=8, lora_dropout=0.0, batch_size=1,
                    max_length=16)  # fmt: skip
    model = _lora_model(path, recipe, ckpt=ckpt)
    ids = torch.randint(0, cfg.vocab_size, (recipe.batch_size, recipe.max_length))
    tracker = live_bytes_tracker()
    with tracker:
        model(input_ids=ids, labels=ids, use_cache=False).loss.backward()

    def bounds() -> tuple[float, float]:
        # The LoRA gradients appear during backward; at this size they are a large share, so
        # the peak lies between the step's terms without them and with them.
        parts = estimate(cfg, recipe, attn="eager", gradient_checkpointing=ckpt).parts
        low = (parts["activations"] + parts["logits + grads"]) * 1e9
        return 0.95 * low, 1.05 * (low + parts["LoRA gradients (fp32)"] * 1e9)

    largest = 128 * 512  # fc1 / fc2 of the small Phi, dequantized to fp32 + its fp32 absmax
    assert dequant_bytes(cfg, "float32") == largest * 4 + largest // 64 * 4
    low, high = bounds()
    assert low <= tracker.peak <= high, (low, tracker.peak, high)
    if ckpt:  # without the dequantized weight the estimate falls short of the measured peak
        import phi2kit.plan

        monkeypatch.setattr(phi2kit.plan, "dequant_bytes", lambda *a, **k: 0)
        assert bounds()[1] < tracker.peak


def test_sdpa_has_no_quadratic_term():
    cfg, recipe = phi2_config(), get_recipe("webglm", "t4")
    eager = [activation_bytes_per_token(cfg, recipe, s, attn="eager") for s in (512, 1024)]
    sdpa = [activation_bytes_per_token(cfg, recipe, s, attn="sdpa") for s in (512, 1024)]
    assert sdpa[0] == sdpa[1] and eager[1] - eager[0] == 32 * 512 * 4  # heads * dS * fp32


def test_default_t4_recipes_fit():
    results = [(t, estimate("t4", get_recipe(t, "t4"))) for t in TASKS]  # as `phi2kit plan`
    assert [task for task, _ in results] == ["sentiment", "classifier", "webglm", "chat"]
    for task, est in results:
        assert est.fits, f"{task}: {est.verdict}"
        assert 3.0 < est.total_gb < 15.0 and est.verdict.startswith("fits")


def test_impossible_recipe_names_levers():
    recipe = get_recipe("webglm", "t4", quantize_4bit=False, max_length=2048, batch_size=16)
    est = estimate("t4", recipe, gradient_checkpointing=False)
    assert isinstance(est, Estimate) and not est.fits
    assert est.levers and "does not fit" in est.verdict
    for lever in ("gradient checkpointing on", "batch 1"):
        assert lever in est.verdict
    fp16_base = estimate("t4", get_recipe("sentiment", "t4", quantize_4bit=False), device_gb=7.0)
    assert not fp16_base.fits and any("4-bit" in lv for lv in fp16_base.levers)
    one = estimate("t4", get_recipe("webglm", "t4", max_length=2048, batch_size=4),
                   gradient_checkpointing=False)  # fmt: skip
    assert not one.fits and any("gradient checkpointing" in lv for lv in one.levers)
    assert any(lv.startswith("max_length") for lv in one.levers)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="phi2kit")
    add_plan_parser(parser.add_subparsers(dest="command"))
    return parser


def test_cli_prints_table_and_verdict(capsys):
    args = _parser().parse_args(["plan", "--task", "chat", "--max-length", "512"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "total" in out and "fits:" in out and "max_length=512" in out
    args = _parser().parse_args(["plan", "--batch", "16", "--max-length", "2048", "--no-grad-ckpt"])
    assert run_plan(args) == 1
    assert "does not fit" in capsys.readouterr().out


def test_cli_says_when_the_lessons_evaluation_generate_does_not_fit(capsys):
    """04 and 06 generate on the trained model after training: at 2,048 tokens the training
    step fits a T4, their 8 prompts at a time do not; the command says how many would."""
    args = _parser().parse_args(["plan", "--task", "webglm"])
    assert run_plan(args) == 0
    assert "evaluation generate (8 prompts of up to 1024 tokens, 256 new, at a time): 11.46 GB, " \
        "fits" in capsys.readouterr().out
    args = _parser().parse_args(["plan", "--task", "webglm", "--max-length", "2048"])
    assert run_plan(args) == 1
    out = capsys.readouterr().out
    assert "fits: 7.64 GB of 15 GB" in out
    assert "does not fit; 4 at a time would (04: GEN_BATCH = 4" in out
    args = _parser().parse_args(["plan", "--task", "sentiment"])
    assert run_plan(args) == 0 and "evaluation generate" not in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, said",
    [
        (["--batch", "0"], "--batch 0: must be a whole number of at least 1, e.g. --batch 2"),
        (["--max-length", "-5"], "--max-length -5: must be a whole number of at least 1"),
        (["--device-gb", "0"], "--device-gb 0: must be a positive number of GB, e.g."),
        (["--device-gb", "nan"], "--device-gb nan: must be a positive number of GB, e.g."),
        (["--device-gb", "inf"], "--device-gb inf: must be a positive number of GB, e.g."),
        (["--batch", "10000000000"], "--batch 10000000000: at most 1024 sequences per micro-"),
        (["--reference", "base"], "--reference is a setting of dpo only: add --task dpo"),
        (["--max-length", "4096"], "--max-length 4096: Phi-2 reads at most 2,048 tokens"),
        (["--profile", "tiny", "--max-length", "600"], "the tiny Phi reads at most 512 tokens"),
        (["--task", "chat", "--no-precompute-ref"], "--precompute-ref is a setting of dpo only"),
    ],
)
def test_cli_refuses_nonsense_in_one_line(argv, said, capsys):
    args = _parser().parse_args(["plan", *argv])
    assert run_plan(args) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and said in captured.err
    assert len(captured.err.strip().splitlines()) == 1


def test_cpu_profile_says_the_device_is_the_flag(capsys):
    """On a CPU profile the table's device row is --device-gb, not a device the run uses."""
    for profile, note in (("tiny", True), ("t4-cpu", True), ("t4", False)):
        args = _parser().parse_args(["plan", "--profile", profile, "--device-gb", "12"])
        assert run_plan(args) == 0  # 12: the T4 recipe's evaluation generate fits (11.46 GB)
        out = capsys.readouterr().out
        assert out.startswith(f"webglm on {profile}\n")
        assert (f"({profile} trains on the CPU" in out) is note
        assert ("the device is --device-gb, 12 GB" in out) is note


def test_a_device_smaller_than_the_weights_fits_at_no_setting(capsys):
    est = estimate("t4", get_recipe("webglm", "t4"), device_gb=1.0)
    assert not est.possible and not est.levers
    assert est.verdict.startswith("cannot fit at any setting: in 4-bit with gradient checkpointing")
    assert "(the base weights alone 2.35 GB)" in est.verdict
    assert est.total_gb > 1.0  # the table still shows every part
    assert estimate("t4", get_recipe("webglm", "t4"), device_gb=4.0).possible  # levers then
    args = _parser().parse_args(["plan", "--device-gb", "1"])
    assert run_plan(args) == 2
    err = capsys.readouterr().err
    assert "--device-gb 1: cannot fit at any setting" in err and "--device-gb 15" in err


def test_the_floor_counts_more_than_the_weights():
    """A device above the 4-bit weights but below the smallest step fits at no setting either:
    no lever may be offered that the planner itself would then refuse."""
    recipe = get_recipe("webglm", "t4")
    floor = estimate("t4", replace(recipe, batch_size=1, max_length=1), gradient_checkpointing=True)
    assert floor.parts["base weights"] + 0.5 < 3.0 < floor.total_gb  # between the two
    est = estimate("t4", recipe, device_gb=3.0)
    assert not est.possible and not est.levers
    assert f"it takes {floor.total_gb:.2f} GB" in est.verdict and "3 GB device" in est.verdict
    # just above the floor: the levers named fit when applied (none is "all of  and ...")
    est = estimate("t4", replace(recipe, batch_size=1), device_gb=floor.total_gb + 0.05)
    assert est.possible and not est.fits and est.levers
    (lever,) = est.levers
    length = int(lever.split("max_length ")[1].split()[0])
    assert estimate("t4", replace(recipe, batch_size=1, max_length=length),
                    device_gb=floor.total_gb + 0.05).fits  # fmt: skip


def test_estimate_refuses_a_length_below_one():
    with pytest.raises(ValueError, match=r"max_length \(-5\).*must be positive"):
        estimate("t4", get_recipe("webglm", "t4", max_length=-5))


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        _parser().parse_args(["plan", "--help"])
    assert exit_info.value.code == 0
    assert "--max-length" in capsys.readouterr().out


def test_format_table_lists_every_part():
    est = estimate("t4", get_recipe("sentiment", "t4"))
    table = format_table(est)
    assert all(part in table for part in est.parts) and f"{est.total_gb:.2f}" in table


# --- the clock: seed 003's 10 h per epoch, read at 1,024 or 2,048 tokens -----------------------

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_two_readings_of_seed_003():
    # 5,000 examples x 1,024 tokens x 6 x 2,779,683,840 FLOPs in 36,000 s = 2.37 TFLOP/s
    assert T4_CALIBRATIONS[1024] == pytest.approx(6 * PHI2_PARAMS * 5000 * 1024 / 36_000)
    assert T4_CALIBRATIONS[1024] / 1e12 == pytest.approx(2.372, abs=1e-3)
    assert T4_CALIBRATIONS[2048] == 2 * T4_CALIBRATIONS[1024]
    # seed 003's text: anything above 1,024 ran out of memory on the T4
    assert T4_CALIBRATION_LENGTH == 1024 and T4_EFFECTIVE_FLOPS == T4_CALIBRATIONS[1024]
    with pytest.raises(ValueError, match="calibration"):
        train_minutes("webglm", calibration=512)


def test_train_minutes_by_hand():
    # webglm: 100 steps x 16 examples x 600 tokens; per token 6N FLOPs at the calibration's rate
    tokens = 100 * 16 * 600
    assert train_minutes("webglm") == pytest.approx(tokens * 36_000 / (5000 * 1024) / 60)
    assert train_minutes("webglm") == pytest.approx(112.5)
    for task in ("sentiment", "classifier", "webglm", "chat"):
        assert train_minutes(task, calibration=2048) == pytest.approx(train_minutes(task) / 2)


def test_course_table_uses_the_1024_reading_and_readme_gives_both():
    rows = {name: minutes for name, _, minutes, _ in course_rows()}
    assert rows["04_webglm_qlora"] == course_minutes("webglm") == "~115"
    assert rows["03_classification_head"] == course_minutes("classifier")  # two runs
    assert "the table reads that run at 1,024 tokens" in README
    other = ", ".join(
        f"{n} {course_minutes(t, calibration=2048)}"
        for n, t in (("02", "sentiment"), ("03", "classifier"), ("04", "webglm"), ("06", "chat"))
    )
    assert f"training time halves: {other} min" in " ".join(README.split())


@pytest.mark.parametrize(
    "name, task, template",
    [
        ("03_classification_head", "classifier",
         "`phi2kit.plan.course.train_minutes`: {a:.1f} per run)"),
        ("03_classification_head", "classifier", "would halve: {b:.1f} minutes per run"),
        ("04_webglm_qlora", "webglm", "about {a:.0f} minutes of training (100 steps"),
        ("04_webglm_qlora", "webglm", "would halve: {b:.0f} minutes of training"),
        ("06_chat_oasst1", "chat", "about {a:.0f} minutes of training (120 steps"),
        ("06_chat_oasst1", "chat", "and this estimate halves: {b:.0f} minutes of training."),
    ],
)  # fmt: skip
def test_notebook_first_cells_state_the_planners_training_minutes(name, task, template):
    import nbformat

    path = Path(__file__).resolve().parents[1] / "notebooks" / f"{name}.ipynb"
    first = nbformat.read(path, as_version=4).cells[0].source
    a, b = train_minutes(task), train_minutes(task, calibration=2048)
    assert template.format(a=a, b=b) in first


def test_the_course_tables_generation_is_the_lessons():
    """04 and 06 generate on their trained nf4 model with EVAL_GENERATION's sizes on a GPU;
    their T4 peak is then the generation's (its fp32 KV cache), above the training step's."""
    import inspect
    import json
    import re

    from phi2kit.generation import generate
    from phi2kit.plan.course import EVAL_GENERATION, course_rows

    def source(name: str) -> str:
        path = Path(__file__).resolve().parents[1] / "notebooks" / f"{name}.ipynb"
        cells = json.loads(path.read_text())["cells"]
        return "".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")

    s04, s06 = source("04_webglm_qlora"), source("06_chat_oasst1")
    assert re.search(r"^GEN_BATCH = (\d+)", s04, re.M)[1] == str(EVAL_GENERATION["webglm"][0])
    assert "batch_size=" not in re.search(r"tuned_gen = generate\(.*", s06)[0]
    default = inspect.signature(generate).parameters["batch_size"].default
    assert default == EVAL_GENERATION["chat"][0]
    for src, task in ((s04, "webglm"), (s06, "chat")):
        assert f"if profile.is_tiny else {EVAL_GENERATION[task][1]})" in src
    peaks = {row[0][:2]: float(row[3]) for row in course_rows()}
    for lesson, task in (("04", "webglm"), ("06", "chat")):
        assert peaks[lesson] > estimate("t4", get_recipe(task, "t4")).total_gb + 3, peaks

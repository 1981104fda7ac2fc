"""bench/phi2_real_size.py in ``--quick`` mode: the T4 recipes' code path on a shrunken Phi-2.

The quick model is Phi-2 at a quarter of its width with 2 layers (Phi-2's vocabulary, head
dimension and rotary settings), saved as a sharded hub-style snapshot, then loaded in nf4,
trained one step per recipe, saved, reloaded, merged, generated from; every count and memory
term is checked against the planner. The full-size run is documented in the README (it takes
minutes and about 11 GB of RAM, too much for CI).
"""

import json
import subprocess
import sys

import pytest

from phi2kit.commands.bench import bench_dir, load_script

R = 16  # the T4 recipes' rank for sentiment and classifier
HIDDEN, INTER, LAYERS, LABELS = 640, 2560, 2, 3  # --quick


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory):
    return tmp_path_factory.mktemp("phi2_quick") / "snapshot"


@pytest.fixture(scope="module")
def quick(snapshot, tmp_path_factory):
    out = tmp_path_factory.mktemp("phi2_quick_json") / "result.json"
    script = bench_dir() / "phi2_real_size.py"
    cmd = [sys.executable, str(script), "--quick", "--snapshot", str(snapshot), "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    return proc, json.loads(out.read_text()) if out.exists() else {}


def _rows(result, task):
    return {row["name"]: row for row in result["recipes"][task]["rows"]}


def test_quick_run_passes(quick):
    proc, result = quick
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert result["failures"] == [] and "all checks passed" in proc.stdout
    assert "2,779,683,840" in proc.stdout  # Phi-2's parameter count is named, even in quick mode
    assert set(result["recipes"]) == {"sentiment", "classifier", "merge", "dpo", "grpo"}


def test_snapshot_is_laid_out_like_a_hub_download(quick, snapshot):
    names = {p.name for p in snapshot.iterdir()}
    assert {"config.json", "model.safetensors.index.json", "tokenizer.json"} <= names
    shards = sorted(n for n in names if n.startswith("model-") and n.endswith(".safetensors"))
    assert len(shards) >= 2 and shards[0].endswith(f"-of-{len(shards):05d}.safetensors")
    config = json.loads((snapshot / "config.json").read_text())
    assert config["vocab_size"] == 51200 and config["model_type"] == "phi"
    assert config["hidden_size"] == HIDDEN and config["num_hidden_layers"] == LAYERS


def test_trainable_counts_by_hand(quick):
    _, result = quick
    # r x (in + out) per adapted Linear: q, k, v, dense (640 -> 640), fc1, fc2 (640 <-> 2560)
    per_layer = R * (4 * (HIDDEN + HIDDEN) + 2 * (HIDDEN + INTER))
    expected = {"sentiment": LAYERS * per_layer, "classifier": LAYERS * per_layer + HIDDEN * LABELS,
                "dpo": 4 * LAYERS * per_layer,  # 06's chat adapter: r=64
                "grpo": LAYERS * per_layer}  # 04's shape: r=16
    assert expected == {"sentiment": 368_640, "classifier": 370_560, "dpo": 1_474_560,
                        "grpo": 368_640}
    for task, n in expected.items():
        rows = _rows(result, task)
        for name in ("trainable parameters vs meta skeleton", "trainable parameters vs planner"):
            assert rows[name]["measured"] == rows[name]["planned"] == n, (task, name)


def test_each_recipe_trained_saved_reloaded_and_merged(quick):
    _, result = quick
    for task in ("sentiment", "classifier"):
        info = result["recipes"][task]
        assert info["adapter_identical"] and info["lora_b_moved"] and info["use_ok"], task
        assert 40 <= info["seq"] <= 120, info["seq"]  # the planner's typical length, not 8 tokens
        assert all(row["ok"] for row in info["rows"]), task
    merge = result["recipes"]["merge"]
    assert merge["reload identical"] is True and merge["finite"] is True


def test_a_wrong_count_or_term_fails(snapshot, monkeypatch, capsys):
    """Off by one LoRA parameter in the planner, and 1 % more weight bytes: exit code 1."""
    from phi2kit import footprint, plan

    bench = load_script("phi2_real_size")
    lora, weights = footprint.lora_parameters, plan.weight_bytes
    monkeypatch.setattr(footprint, "lora_parameters", lambda *a, **k: lora(*a, **k) + 1)
    monkeypatch.setattr(plan, "weight_bytes", lambda *a, **k: int(weights(*a, **k) * 1.01))
    code = bench.main(["--quick", "--snapshot", str(snapshot), "--recipes", "sentiment"])
    out = capsys.readouterr().out
    assert code == 1
    assert "sentiment: trainable parameters vs planner" in out
    assert "sentiment: model bytes, after add_lora" in out
    assert "trainable parameters vs meta skeleton" not in out.split("FAILED:")[1]


def test_dpo_and_grpo_train_against_the_reference_adapter(quick):
    """trl's frozen `ref` copy of the starting adapter is the reference, its bytes the planner's."""
    _, result = quick
    for task in ("dpo", "grpo"):
        info, rows = result["recipes"][task], _rows(result, task)
        assert info["adapters"] == ["default", "ref"] and info["ref_frozen"], task
        assert info["steps"] >= 1 and not info["skipped"] and info["loss"] is not None, task
        ref = rows["reference: trl's `ref` adapter"]
        trainable = rows["trainable parameters vs planner"]["measured"]
        assert ref["measured"] == 4 * trainable and ref["ok"], task  # fp32, like the trained copy
        assert rows["LoRA gradients"]["ok"] and rows["optimizer state (adamw_torch)"]["ok"], task
        assert all(row["ok"] for row in info["rows"]), task
    dpo, grpo = result["recipes"]["dpo"], result["recipes"]["grpo"]
    assert 100 <= dpo["seq"] <= 200, dpo["seq"]  # --dpo-tokens 128: prompt + the longer reply
    assert grpo["num_generations"] == 4 and grpo["completion_tokens"] == 8


def test_a_wrong_dpo_reference_term_fails(snapshot, monkeypatch, capsys):
    """The planner counting the reference adapter twice: the DPO check names it, exit code 1."""
    from phi2kit.plan import dpo

    bench = load_script("phi2_real_size")
    original = dpo.estimate_dpo

    def doubled(*args, **kwargs):
        est = original(*args, **kwargs)
        est.parts["reference"] *= 2
        return est

    monkeypatch.setattr(dpo, "estimate_dpo", doubled)
    code = bench.main(["--quick", "--snapshot", str(snapshot), "--recipes", "dpo"])
    out = capsys.readouterr().out
    assert code == 1
    assert "dpo: reference: trl's `ref` adapter" in out.split("FAILED:")[1]
    assert "snapshot: reusing" in out  # the quick run's snapshot, from another process


def test_recipe_batch_trains_the_recipes_micro_batch_at_max_length(quick, snapshot, tmp_path):
    """``--recipe-batch``: the classifier's T4 micro-batch (8) with every row at its max_length
    (256), checked against the planner at that size (the live-tensor term to 25 %)."""
    from phi2kit.recipes import get_recipe

    bench = load_script("phi2_real_size")
    out = tmp_path / "result.json"
    code = bench.main(["--quick", "--snapshot", str(snapshot), "--recipes", "classifier",
                       "--recipe-batch", "--json", str(out)])  # fmt: skip
    info = json.loads(out.read_text())["recipes"]["classifier"]
    recipe = get_recipe("classifier", "t4")
    assert code == 0 and info["batch"] == recipe.batch_size == 8
    assert recipe.max_length - 8 <= info["seq"] <= recipe.max_length, info["seq"]
    live = _rows({"recipes": {"classifier": info}}, "classifier")
    assert live["step: live tensors (acts + logits + grads)"]["ok"]


def test_free_releases_the_embedding_an_8bit_optimizer_registered(tmp_path):
    """transformers' Trainer registers the embedding with bitsandbytes' global optimizer manager
    when the optimizer is 8-bit (a T4's paged AdamW) and never takes it out: the model's
    embedding outlives ``del model, trainer``. The bench's ``free()`` lets it go."""
    import gc
    import weakref

    from datasets import Dataset
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    from phi2kit.tiny import tiny_path

    bench = load_script("phi2_real_size")
    model = AutoModelForCausalLM.from_pretrained(str(tiny_path()))
    for name, p in model.named_parameters():
        p.requires_grad = name.startswith("lm_head")
    rows = Dataset.from_list([{"input_ids": [1, 2, 3, 4], "labels": [1, 2, 3, 4]}] * 2)
    args = TrainingArguments(str(tmp_path), max_steps=1, per_device_train_batch_size=2,
                             optim="adamw_bnb_8bit", use_cpu=True, report_to="none",
                             save_strategy="no", disable_tqdm=True)  # fmt: skip
    trainer = Trainer(model=model, args=args, train_dataset=rows)
    trainer.create_optimizer()
    embedding = weakref.ref(model.get_input_embeddings().weight)
    del model, trainer
    gc.collect()
    assert embedding() is not None  # held by bitsandbytes' GlobalOptimManager
    bench.free()
    assert embedding() is None

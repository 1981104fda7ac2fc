"""``phi2kit train grpo`` (issue 25): notebook 09's GRPO from the shell, on 04's adapter.

A short ``train webglm`` gives the adapter (04's SFT): it cites, so the groups' rewards
differ and GRPO has a gradient (from the base model's LoRA, which never cites, every reward
is 0 and nothing moves). The runs are cut small (4 completions of 16 tokens per prompt, a
generation every 2 steps) to take seconds.

Resume: GRPO samples its completions, but from the global torch RNG, which the checkpoint
saves and the resumed run restores; a checkpoint where a generation starts (every
``steps_per_generation / grad_accum`` optimizer steps) resumes to the same adapter as the
uninterrupted run. A checkpoint inside a generation block would make the resumed run
generate anew for the rest of the block: still GRPO, not the same completions.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from phi2kit.commands.train import ADAPTER, main

TINY = ["--profile", "tiny", "--threads", "1"]
SMALL = ["--set", "num_generations=4", "--set", "batch_size=4", "--set", "steps_per_generation=2",
         "--set", "max_completion_length=16", "--set", "n_train=16"]  # fmt: skip


def _adapter(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / ADAPTER / "adapter_model.safetensors"))


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys() and a
    return max((a[k] - b[k]).abs().max().item() for k in a)


def _log(folder: Path) -> dict[int, dict]:
    rows = [r for r in json.loads((folder / "trainer_state.json").read_text())["log_history"]
            if "loss" in r]  # fmt: skip
    return {r["step"]: r for r in rows}


@pytest.fixture(scope="module")
def sft_adapter(tmp_path_factory) -> Path:
    """04's SFT, short: an adapter that cites (``[k]`` after a sentence)."""
    out = tmp_path_factory.mktemp("webglm") / "run"
    assert main(["webglm", *TINY, "--steps", "20", "--save-every", "20", "--no-eval",
                 "--output-dir", str(out)]) == 0  # fmt: skip
    return out / ADAPTER


def test_grpo_needs_04s_adapter_and_checks_it(tmp_path, capsys):
    out = ["--output-dir", str(tmp_path / "run")]
    for adapter in ([], ["--adapter", str(tmp_path / "missing")]):
        assert main(["grpo", *TINY, *adapter, *out]) == 2
        err = capsys.readouterr().err
        assert "phi2kit train webglm --output-dir" in err, err
        assert len(err.strip().splitlines()) == 1, err
    assert main(["chat", *TINY, "--set", "num_generations=4", *out]) == 2
    assert "'num_generations' is a setting of grpo only" in capsys.readouterr().err
    assert main(["grpo", *TINY, "--set", "precompute_ref_log_probs=true", *out]) == 2
    assert "'precompute_ref_log_probs' is a setting of dpo only" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_grpo_refuses_an_adapter_phi2kit_train_made_for_another_task(tmp_path, capsys):
    made = tmp_path / "sentiment"  # a `phi2kit train sentiment` run: run.json beside its adapter
    (made / ADAPTER).mkdir(parents=True)
    (made / ADAPTER / "adapter_config.json").write_text(json.dumps({"task_type": "CAUSAL_LM"}))
    (made / "run.json").write_text(json.dumps({"command": "train", "task": "sentiment"}))
    out = ["--output-dir", str(tmp_path / "run")]
    assert main(["grpo", *TINY, "--adapter", str(made / ADAPTER), *out]) == 2
    err = capsys.readouterr().err
    assert "a sentiment adapter" in err and "phi2kit train webglm --output-dir" in err, err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "run").exists()
    (made / "run.json").write_text(json.dumps({"command": "train", "task": "webglm"}))
    assert main(["grpo", *TINY, "--adapter", str(made), *out]) == 2  # the run, not its adapter
    err = capsys.readouterr().err
    assert f"--adapter {made}: a run folder; pass its adapter, --adapter {made / ADAPTER}" in err


def test_grpo_from_an_adapter_that_never_cites_warns(tmp_path, sft_adapter, capsys):
    """A LoRA that writes no citation (a fresh one: the base model's answers) never earns the
    supported reward: GRPO has nothing to reinforce, and the run says so. 04's adapter cites:
    no warning."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from phi2kit.tiny import tiny_path

    fresh = tmp_path / "fresh"
    model = AutoModelForCausalLM.from_pretrained(tiny_path())
    lora = LoraConfig(r=4, target_modules=["fc1"], task_type="CAUSAL_LM")
    get_peft_model(model, lora).save_pretrained(fresh)
    for adapter, warned in ((fresh, True), (sft_adapter, False)):
        run = tmp_path / f"run-{warned}"
        assert main(["grpo", *TINY, *SMALL, "--adapter", str(adapter), "--steps", "2",
                     "--log-every", "1", "--output-dir", str(run)]) == 0  # fmt: skip
        out = capsys.readouterr().out
        assert ("warning: no completion had a supported citation" in out) is warned, out
        assert ("the --adapter does not cite yet; train it longer" in out) is warned, out


@pytest.mark.parametrize("data", ["oasst1/sample.trees.jsonl", "financial_news/all-data.csv"])
def test_grpo_refuses_a_wrong_data_file_and_writes_nothing(data, sft_adapter, tmp_path, capsys):
    from phi2kit.data import sample_path

    sample = sample_path(data.split("/")[0])
    path = sample / data.split("/")[1] if sample.is_dir() else sample
    assert path.is_file(), path
    out = tmp_path / "run"
    assert main(["grpo", *TINY, "--adapter", str(sft_adapter), "--data", str(path),
                 "--output-dir", str(out)]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and str(path.name) in err, err
    assert not out.exists()


def test_grpo_trains_resumes_to_the_same_adapter_and_refuses_other_settings(
    sft_adapter, tmp_path, capsys
):
    whole, crashed = tmp_path / "whole", tmp_path / "crashed"
    args = ["grpo", *TINY, *SMALL, "--adapter", str(sft_adapter), "--save-every", "2"]
    assert main([*args, "--steps", "4", "--output-dir", str(whole)]) == 0
    log = _log(whole)
    assert sorted(log) == [1, 2, 3, 4] and "reward" in log[1] and "reward" in log[3]  # generated
    assert any(r["grad_norm"] > 0 for r in log.values()), log  # the groups' rewards differed
    start = _adapter(whole)
    from safetensors.torch import load_file

    sft = load_file(str(sft_adapter / "adapter_model.safetensors"))
    assert _max_diff(start, sft) > 0  # it trained: the adapter moved from 04's
    meta = json.loads((whole / ADAPTER / "metrics.json").read_text())
    assert meta["global_step"] == 4

    # a crash after checkpoint-2 (a generation starts there): resume, same adapter
    shutil.copytree(whole, crashed)
    shutil.rmtree(crashed / ADAPTER)
    shutil.rmtree(crashed / "checkpoints" / "checkpoint-4")
    capsys.readouterr()
    assert main([*args, "--steps", "4", "--output-dir", str(crashed), "--resume"]) == 0
    assert "between two" not in capsys.readouterr().out  # a generation starts at step 3
    diff = _max_diff(_adapter(whole), _adapter(crashed))
    assert diff <= 1e-6, f"resumed adapter differs from the uninterrupted one by {diff}"
    assert sorted(_log(crashed)) == [1, 2, 3, 4]
    assert all(abs(_log(crashed)[s]["reward"] - log[s]["reward"]) <= 1e-6 for s in (1, 3))

    # more --steps continue the finished run; another setting is refused
    assert main([*args, "--steps", "6", "--output-dir", str(whole), "--resume"]) == 0
    assert json.loads((whole / ADAPTER / "metrics.json").read_text())["global_step"] == 6
    assert sorted(_log(whole)) == [1, 2, 3, 4, 5, 6] and _max_diff(start, _adapter(whole)) > 0
    capsys.readouterr()
    argv = [*args, "--set", "temperature=0.5", "--steps", "6", "--output-dir", str(whole)]
    assert main([*argv, "--resume"]) == 2
    err = capsys.readouterr().err
    assert "--resume with other settings than the run in" in err, err
    assert "temperature (the run's 1.0, now 0.5)" in err, err
    assert len(err.strip().splitlines()) == 1


def test_a_resume_between_two_generations_says_it_will_differ(sft_adapter, tmp_path, capsys):
    args = ["grpo", *TINY, *SMALL, "--adapter", str(sft_adapter), "--save-every", "1"]
    assert main([*args, "--steps", "1", "--output-dir", str(tmp_path)]) == 0
    capsys.readouterr()
    assert main([*args, "--steps", "2", "--output-dir", str(tmp_path), "--resume"]) == 0
    assert "note: grpo generates every 2 steps and checkpoint-1 is between two: the resumed run " \
        "generates anew" in capsys.readouterr().out


def test_prompts_that_lose_references_to_fit_are_said(capsys):
    """``train grpo`` fits each prompt to ``max_length - max_completion_length`` by dropping
    whole references, as 04 and 09 do; when any are dropped it says how many, with the fix."""
    from phi2kit.commands.train_args import Setup
    from phi2kit.commands.train_tasks import load_data
    from phi2kit.profiles import get_profile
    from phi2kit.recipes import get_recipe

    profile = get_profile("tiny")
    for max_length, said in ((256, False), (160, True)):
        recipe = get_recipe("grpo", profile, max_length=max_length, n_train=16)
        data = load_data(Setup("grpo", profile, recipe))
        out = capsys.readouterr().out
        note = re.search(rf"(\d+) of 16 prompts lost references to fit max_length - "
                         rf"max_completion_length = {max_length - 32} tokens .*; a larger "
                         r"--set max_length=N keeps more", out)  # fmt: skip
        assert bool(note) is said, out
        if said:
            assert 0 < int(note[1]) <= 16 and len(data.train) <= 16

"""``phi2kit train dpo`` (issue 24): notebook 08's DPO from the shell, on 06's chat adapter.

A short ``train chat`` gives the adapter; ``train dpo --adapter`` goes on training it with
trl's ``DPOTrainer`` (the reference: a frozen copy of the adapter, ``ref``). At step 1 the
policy equals its reference, so every implicit reward is 0: the DPO loss is log 2 and the
reward accuracy 0 (chosen must beat rejected strictly). The learning check: held-out reward
accuracy at least 0.6 after 6 steps (measured: 0.89; 0.96 after the tiny recipe's 24), and
the mean loss of the last 3 steps below log 2 - 0.1 (measured: 0.37).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from example_scripts import adapter_stub

from phi2kit.commands.train import ADAPTER, main

TINY = ["--profile", "tiny", "--threads", "1"]


@pytest.mark.parametrize("adapter", [None, "missing", "classifier", "sentiment run"])
def test_dpo_without_a_chat_adapter_says_how_to_make_one(adapter, tmp_path, capsys):
    argv = ["dpo", *TINY, "--output-dir", str(tmp_path / "run")]
    if adapter == "classifier":  # 03's adapter: a score head, not a chat model
        folder = adapter_stub(tmp_path / "cls", "SEQ_CLS")
        argv += ["--adapter", str(folder)]
    elif adapter == "sentiment run":  # a causal LM adapter, but `phi2kit train sentiment` made it
        folder = adapter_stub(tmp_path / "sentiment" / ADAPTER)
        (folder.parent / "run.json").write_text(json.dumps({"task": "sentiment"}))
        argv += ["--adapter", str(folder)]
    elif adapter:
        argv += ["--adapter", str(tmp_path / adapter)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "phi2kit train chat --output-dir" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


def test_dpo_settings_only_for_dpo(tmp_path, capsys):
    assert main(["chat", *TINY, "--set", "beta=0.2", "--output-dir", str(tmp_path / "r")]) == 2
    assert "'beta' is a setting of dpo and grpo only" in capsys.readouterr().err
    out = ["--output-dir", str(tmp_path / "r")]
    assert main(["chat", *TINY, "--adapter", str(tmp_path), *out]) == 2
    assert "--adapter: only dpo and grpo start from an adapter" in capsys.readouterr().err


def test_pairs_of_one_conversation_cannot_be_split_and_say_so(tmp_path, capsys):
    adapter = adapter_stub(tmp_path / "adapter")  # a chat adapter as far as the checks go
    data = tmp_path / "pairs.jsonl"  # one prompt, three rejected replies: one conversation
    data.write_text("".join(json.dumps({"prompt": "Hi", "chosen": "Hello!", "rejected": r}) + "\n"
                            for r in ("Go.", "No.", "What?")))  # fmt: skip
    argv = ["dpo", *TINY, "--adapter", str(adapter), "--output-dir", str(tmp_path / "run")]
    assert main([*argv, "--data", str(data)]) == 2
    err = capsys.readouterr().err
    assert "3 preference pairs in 1 conversation(s) leave no train or eval pairs after the test " \
        "split (whole conversations per split): give more pairs" in err, err
    assert not (tmp_path / "run").exists()


def test_a_bad_row_of_your_own_pairs_is_one_line(tmp_path, capsys):
    adapter = adapter_stub(tmp_path / "adapter")  # a chat adapter as far as the checks go
    data = tmp_path / "pairs.jsonl"
    data.write_text('{"prompt": "Q", "chosen": "A", "rejected": "B"}\n{"prompt": "Q"}\n')
    argv = ["dpo", *TINY, "--adapter", str(adapter), "--output-dir", str(tmp_path / "run")]
    assert main([*argv, "--data", str(data)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"phi2kit train: error: {data}, row 2, field 'chosen': missing, empty or "
                          "not text") and "\n" not in err, err
    assert not (tmp_path / "run").exists()


def _losses(folder: Path) -> dict[int, float]:
    rows = [r for r in json.loads((folder / "trainer_state.json").read_text())["log_history"]
            if "loss" in r]  # fmt: skip
    return {r["step"]: r["loss"] for r in rows}


def test_chat_then_dpo_learns_and_a_finished_run_loads(tmp_path, capsys):
    from safetensors.torch import load_file

    chat, dpo = tmp_path / "chat", tmp_path / "dpo"
    assert main(["chat", *TINY, "--steps", "30", "--save-every", "30", "--no-eval",
                 "--output-dir", str(chat)]) == 0  # fmt: skip
    args = ["dpo", *TINY, "--adapter", str(chat / ADAPTER), "--steps", "6", "--save-every", "3"]
    args += ["--set", "n_test=16", "--output-dir", str(dpo)]
    assert main(args) == 0
    metrics = json.loads((dpo / ADAPTER / "metrics.json").read_text())
    losses = _losses(dpo)
    with capsys.disabled():
        print(f"dpo: losses {losses}, eval reward acc {metrics['eval_rewards/accuracies']:.2f}")
    assert abs(losses[1] - math.log(2)) < 1e-3  # step 1: the policy is its reference
    assert metrics["global_step"] == 6 and metrics["eval_rewards/accuracies"] >= 0.6
    assert sum(losses[s] for s in (4, 5, 6)) / 3 < math.log(2) - 0.1
    saved = sorted(p.name for p in (dpo / ADAPTER).iterdir())
    assert "adapter_model.safetensors" in saved and "ref" not in saved  # the policy only
    first = load_file(str(dpo / ADAPTER / "adapter_model.safetensors"))

    capsys.readouterr()
    assert main([*args, "--resume"]) == 0
    assert "holds a finished run (6 of 6 steps): nothing to train" in capsys.readouterr().out
    again = load_file(str(dpo / ADAPTER / "adapter_model.safetensors"))
    assert all((first[k] == again[k]).all() for k in first)
    assert sorted(_losses(dpo)) == [1, 2, 3, 4, 5, 6]

    moved = tmp_path / "moved_chat_adapter"  # the adapter is compared by content, not by path
    shutil.copytree(chat / ADAPTER, moved)
    moved_args = [str(moved) if a == str(chat / ADAPTER) else a for a in [*args, "--resume"]]
    assert main(moved_args) == 0, capsys.readouterr().err
    (moved / "metrics.json").write_text("{}")  # another adapter now, at the same path
    assert main(moved_args) == 2
    assert "adapter (--adapter's content is not the run's)" in capsys.readouterr().err

    assert main([*args, "--resume", "--set", "beta=0.5"]) == 2  # one resume policy
    err = capsys.readouterr().err
    assert "--resume with other settings than the run in" in err, err
    assert "beta (the run's 0.1, now 0.5)" in err, err

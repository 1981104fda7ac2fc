"""Lesson 07 exports chat adapters only (``chat_adapter_problem``, its 7.1 check): a classifier
adapter (its head would be lost) and an adapter ``phi2kit train`` trained for another task are
refused, with the path, what it is and what to pass instead; the cell raises before it writes
anything to ``OUTPUT_DIR``."""

import json

import pytest

from phi2kit_exercises import export


def _adapter(folder, task_type="CAUSAL_LM", task=None, profile="tiny"):
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"task_type": task_type}))
    note = {"base_4bit": True, "profile": profile}
    (folder / "phi2kit_adapter.json").write_text(json.dumps(note))
    if task:
        (folder.parent / "run.json").write_text(json.dumps({"task": task}))
    return folder


def test_chat_adapters_pass(tmp_path):
    for task in (None, "chat", "dpo"):  # no run.json (notebook 06's), or a chat model's run
        assert export.chat_adapter_problem(_adapter(tmp_path / str(task) / "adapter", task=task),
                                           "tiny") is None  # fmt: skip


@pytest.mark.parametrize("task", ["sentiment", "classifier", "webglm", "grpo"])
def test_an_adapter_trained_for_another_task_is_refused(tmp_path, task):
    path = _adapter(tmp_path / "run" / "adapter", task=task)
    problem = export.chat_adapter_problem(path, "tiny")
    assert problem.startswith(f"CHAT_ADAPTER {path} was trained by `phi2kit train {task}` "
                              f"({tmp_path / 'run' / 'run.json'} says so), not on chats")
    assert "pass a chat adapter instead" in problem


def test_a_classifier_adapter_is_refused_for_its_head(tmp_path):
    run = tmp_path / "run" / "adapter"
    for path in (_adapter(tmp_path / "03"), _adapter(run, task="classifier")):
        (path / "adapter_config.json").write_text(json.dumps({"task_type": "SEQ_CLS"}))
        problem = export.chat_adapter_problem(path, "tiny")
        assert problem.startswith(f"CHAT_ADAPTER {path} is a classifier adapter (task_type SEQ_CLS")
        assert "the export would lose the head; pass a chat adapter instead" in problem


def test_missing_folders_run_folders_and_profiles(tmp_path):
    check = export.chat_adapter_problem
    missing = tmp_path / "nope"
    assert check(missing, "tiny").startswith(f"CHAT_ADAPTER {missing} does not exist; pass a chat")
    _adapter(tmp_path / "run" / "adapter", task="chat")
    assert check(tmp_path / "run", "tiny") == (
        f"CHAT_ADAPTER {tmp_path / 'run'} holds no adapter_config.json, its adapter/ folder does: "
        f"pass {tmp_path / 'run' / 'adapter'}")  # fmt: skip
    assert "holds no adapter_config.json, so it is no PEFT adapter" in check(tmp_path, "tiny")
    file = tmp_path / "run" / "adapter" / "adapter_config.json"
    assert "is a file, not a folder" in check(file, "tiny")
    assert check(tmp_path / "run" / "adapter", "t4-cpu").endswith(
        "trained under the tiny profile, not t4-cpu: run this notebook with PROFILE 'tiny'")

"""examples/06_chat_sft.py: the take-home chat script learns on the tiny model, refuses a bad
file before any model loads, and builds notebook 06's configurations for the t4 profile."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from example_scripts import (
    TINY,
    imported_packages,
    load_script,
    mismatch,
    notebook_recipe,
    run_script,
)

from phi2kit.data import sample_path

NAME = "06_chat_sft.py"


def run(tmp_path: Path, *argv: str, timeout: int = 300):
    return run_script(NAME, "--output-dir", str(tmp_path / "out"), *argv, timeout=timeout)


def test_script_imports_no_phi2kit():
    assert "phi2kit" not in imported_packages(NAME)


def test_learns_on_the_tiny_model(tmp_path):
    # the tiny recipe's numbers (06 on the tiny profile), LoRA on the fp32 base
    args = ["--model", str(TINY), "--data", str(sample_path("oasst1")), "--no-4bit",
            "--max-steps", "30", "--n-eval", "16", "--lora-r", "16", "--lora-alpha", "32",
            "--lora-dropout", "0", "--learning-rate", "3e-3", "--batch-size", "8",
            "--grad-accum", "1", "--max-length", "256"]  # fmt: skip
    result = run(tmp_path, *args)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    # measured 2026-12-04: about 0.21 -> 0.03; the check leaves a wide margin
    assert metrics["eval_loss_best"] < 0.5 * metrics["eval_loss_before"], metrics
    assert (tmp_path / "out" / "adapter" / "adapter_model.safetensors").is_file()
    note = tmp_path / "out" / "adapter" / "phi2kit_adapter.json"  # example 05 reads it
    assert json.loads(note.read_text()) == {"base_4bit": False}
    last = result.stdout.strip().splitlines()[-1]  # the figures and the folder, as 02 ends
    assert last == (f"eval loss {metrics['eval_loss_before']:.3f} -> "
                    f"{metrics['eval_loss_best']:.3f} (best checkpoint, step "
                    f"{metrics['best_step']}); adapter saved to {tmp_path / 'out'}/adapter"), last


@pytest.mark.parametrize(
    ("line", "expect"),
    [
        ('{"message_id": "m1", "role": "prompter"}', "line 2, field 'text'"),
        ('{"message_id": "m1", "text": "hi", "role": "user"}', "line 2, field 'role'"),
        ("not json", "line 2: not JSON (Expecting value at column 1)"),
        ('{"message_id": "m1", "text": "hi', "line 2: not JSON (Unterminated string starting at "
                                              "column 30)"),
        ("[1, 2]", "line 2: not a JSON object"),
        ('{"message_id": "m1", "text": "hi", "role": "prompter", "parent_id": "x"}',
         "line 2, field 'parent_id'"),
        ('{"message_tree_id": "t", "prompt": {"message_id": "p", "text": "hi", "role": "prompter",'
         ' "replies": [{"message_id": "r", "role": "assistant"}]}}', "line 2, field 'text'"),
        ('{"messages": []}', "line 2, field 'messages': not a list"),
        ('{"messages": [{"role": "user", "content": " "}]}',
         "field 'messages[0]': content missing"),
        ('{"messages": [{"role": "user", "content": "Hi"}, {"role": "user", "content": "Hey"}]}',
         "field 'messages[1]': role 'user': user and assistant take turns, a user first"),
        ('{"conversations": [{"from": "human", "value": "Hi"}]}',  # ShareGPT's form
         "line 2: the fields conversations: not a form this reads; pass OASST1 rows or trees"),
        ('{"messages": [{"role": "system", "content": "Be brief."}]}',
         "field 'messages[0]': a system message alone: it must be followed by a user turn"),
        ('{"messages": [{"role": "system", "content": "Be brief."}, {"role": "assistant", '
         '"content": "Yo"}]}', "field 'messages[1]': role 'assistant': a system message must be "
         "followed by a user turn"),
        ('{"prompt": "Hi", "chosen": "Yo", "rejected": "No"}',  # pairs: a text prompt, no tree
         "line 2: the fields prompt, chosen, rejected: not a form this reads"),
    ],
)  # fmt: skip
def test_a_bad_row_is_one_line_exit_2_before_any_model(tmp_path, capsys, line, expect):
    good = json.dumps({"message_id": "m0", "text": "Hello?", "role": "prompter", "parent_id": None})
    data = tmp_path / "bad.jsonl"
    data.write_text(f"{good}\n{line}\n")
    # a model folder that does not exist: reaching the model would fail differently
    argv = ["--model", str(tmp_path / "no-model"), "--data", str(data)]
    with pytest.raises(SystemExit) as exit_:
        load_script(NAME).main([*argv, "--output-dir", str(tmp_path / "out")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(f"error: {data}, ") and expect in err, err
    assert "field '-'" not in err and not err.endswith(" at)"), err  # no stubs, no cut sentence


def test_a_missing_file_is_one_line(tmp_path, capsys):
    argv = ["--model", str(tmp_path / "no-model"), "--data", str(tmp_path / "nope.jsonl")]
    with pytest.raises(SystemExit) as exit_:
        load_script(NAME).main([*argv, "--output-dir", str(tmp_path / "out")])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'nope.jsonl'}: no such file"
    assert not (tmp_path / "out").exists()


def test_too_few_threads_is_one_line_without_stubs(tmp_path, capsys):
    argv = ["--model", str(tmp_path / "no-model"), "--data", str(sample_path("oasst1"))]
    with pytest.raises(SystemExit) as exit_:
        load_script(NAME).main([*argv, "--n-eval", "100000", "--output-dir", str(tmp_path / "o")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {sample_path('oasst1')}: ") and "need more than --n-eval " \
        "100000: lower it (e.g. --n-eval " in err, err
    assert "line -" not in err and "field" not in err, err


def test_configs_equal_the_notebooks_for_t4(tmp_path):
    ns = notebook_recipe("06_chat_oasst1.ipynb", "chat", tmp_path, EVAL_EVERY=None)
    script = load_script(NAME)
    args = script.parse_args(["--data", "x.jsonl", "--output-dir", str(tmp_path)])
    quant, lora, sft = script.build_configs(args, gpu="t4")
    assert not (diff := mismatch(quant, ns["quant_config"])), diff
    assert not (diff := mismatch(lora, ns["peft_config"])), diff
    assert not (diff := mismatch(sft, ns["sft_args"])), diff
    assert sft.fp16 and not sft.bf16 and sft.optim == "paged_adamw_8bit"


def test_unfinished_trees_are_left_out(tmp_path):
    """The export's ``*_all`` files hold trees still growing or aborted: not trained on."""
    lines = sample_path("oasst1").read_text().splitlines()[:6]
    trees = [json.loads(line) for line in lines]
    for tree in trees[:3]:
        tree["tree_state"] = "growing"
    data = tmp_path / "all.trees.jsonl"
    data.write_text("".join(json.dumps(t) + "\n" for t in trees))
    script = load_script(NAME)
    kept = {m["message_id"] for m in script.read_messages(str(data))}
    assert {t["prompt"]["message_id"] for t in trees} & kept == {
        t["prompt"]["message_id"] for t in trees[3:]}


def test_a_file_that_is_not_utf8_text_is_one_line(tmp_path, capsys):
    # the export's *.trees.jsonl.gz as downloaded: this script reads plain JSON lines
    data = tmp_path / "oasst.trees.jsonl.gz"
    data.write_bytes(gzip.compress(sample_path("oasst1").read_bytes()))
    argv = ["--model", str(tmp_path / "no-model"), "--data", str(data)]
    with pytest.raises(SystemExit) as exit_:
        load_script(NAME).main([*argv, "--output-dir", str(tmp_path / "out")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {data}: not UTF-8 text; pass plain JSON lines (unpack a .gz first)", err
    assert not (tmp_path / "out").exists()


def test_own_chats_read_as_the_lesson_and_phi2kit_train_read_them(tmp_path):
    """{"messages": [...]} chats (trl's and OpenAI's format): the same threads as the library's
    loader gives; no language, so --lang en keeps them; a system message joins the first turn."""
    from phi2kit.data.oasst import load_oasst

    threads = load_oasst(sample_path("oasst1"), lang="en")
    role = {"prompter": "user", "assistant": "assistant"}
    chats = tmp_path / "chats.jsonl"
    chats.write_text("".join(json.dumps({"messages": [{"role": "system", "content": "Be kind."}] * (
        i % 2) + [{"role": role[r], "content": t} for r, t in thread]}) + "\n"
        for i, thread in enumerate(threads)))  # fmt: skip
    script = load_script(NAME)
    mine = script.build_threads(script.read_messages(str(chats)), "en")
    assert mine == list(load_oasst(chats, lang="en")) and len(mine) == len(threads)
    assert mine[1][0] == ("prompter", "Be kind.\n\n" + threads[1][0][1])


def test_a_repeated_conversation_is_left_out_and_counted(tmp_path, capsys):
    """The same chat twice could land in train and in eval: it is kept once, and said."""
    def chat(question, answer):
        return {"messages": [{"role": "user", "content": question},
                             {"role": "assistant", "content": answer}]}  # fmt: skip

    hi, bye = chat("Hi", "Yo"), chat("Bye", "!")
    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps(c) + "\n" for c in (hi, bye, hi)))
    argv = ["--model", str(tmp_path / "no-model"), "--data", str(data), "--n-eval", "1"]
    with pytest.raises(SystemExit):
        load_script(NAME).main([*argv, "--output-dir", str(tmp_path / "out")])
    assert "3 threads, 1 repeats left out" in capsys.readouterr().out


def test_eval_opens_with_no_question_train_opens_with(tmp_path, monkeypatch):
    """Threads that open with the same question go to one split: eval scores no prompt that
    train holds (on the sample, split thread by thread, most eval examples were train ones)."""
    def chat(question, answer):
        return {"messages": [{"role": "user", "content": question},
                             {"role": "assistant", "content": answer}]}  # fmt: skip

    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps(chat(q, f"A{i}")) + "\n"
                            for i, q in enumerate(["Hi", "Yo", "Hi", "Hi"])))  # fmt: skip
    script, made = load_script(NAME), []

    class Built(Exception):  # both splits made: stop before any model loads
        pass

    def from_list(rows):
        made.append([r["completion"] for r in rows])
        if len(made) == 2:
            raise Built

    monkeypatch.setattr(script.Dataset, "from_list", staticmethod(from_list))
    argv = ["--model", str(TINY), "--data", str(data), "--n-eval", "1", "--no-4bit"]
    with pytest.raises(Built):
        script.main([*argv, "--output-dir", str(tmp_path / "out")])
    assert made == [[" A0", " A2", " A3"], [" A1"]]  # the old split scored "Hi" (A3) on eval


def test_chat_sets_with_a_prompt_text_read_as_phi2kit_train_reads_them(tmp_path):
    """ultrachat_200k's and no_robots' rows: "prompt" (text), "prompt_id" and "messages" (a
    system message first in some): chats, as the library reads them; a leading byte order mark
    (a file saved by Windows Notepad) is dropped."""
    from phi2kit.data.oasst import load_oasst

    threads = load_oasst(sample_path("oasst1"), lang="en")
    role = {"prompter": "user", "assistant": "assistant"}
    data = tmp_path / "ultrachat.jsonl"
    data.write_text("\ufeff" + "".join(json.dumps({"prompt": t[0][1], "prompt_id": str(i),
        "messages": [{"role": "system", "content": "Be kind."}] * (i % 2) + [
            {"role": role[r], "content": text} for r, text in t]}) + "\n"
        for i, t in enumerate(threads)), encoding="utf-8")  # fmt: skip
    script = load_script(NAME)
    mine = script.build_threads(script.read_messages(str(data)), "en")
    assert mine == list(load_oasst(data, lang="en")) and len(mine) == len(threads)
    assert mine[1][0] == ("prompter", "Be kind.\n\n" + threads[1][0][1])


def test_a_byte_order_mark_is_dropped_as_the_library_drops_it(tmp_path):
    chat = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]}
    data = tmp_path / "bom.jsonl"
    data.write_bytes(b"\xef\xbb\xbf" + json.dumps(chat).encode() + b"\n")
    script = load_script(NAME)
    assert script.build_threads(script.read_messages(str(data))) == [
        [("prompter", "Hi"), ("assistant", "Yo")]]

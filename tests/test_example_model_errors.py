"""Every example, given a ``--model`` folder that does not exist (a typo), stops with one line
naming the flag, exit 2, after its data was read and before anything is written; a --data
that is a folder is named a folder."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch
from example_scripts import ROOT, TINY, adapter_stub, load_script, script_path

from phi2kit.data import sample_path

NEWS = str(ROOT / "data" / "financial_news" / "all-data.csv")


def _argv(name: str, model: str, out: Path) -> list[str]:
    small = ["--n-train", "20", "--n-test", "5", "--n-eval", "5"]
    return {
        "02_sentiment_qlora.py": ["--data", NEWS, "--output-dir", str(out), *small, "--no-4bit"],
        "03_classifier.py": ["--data", NEWS, "--output-dir", str(out)],
        "04_qa_qlora.py": ["--data", str(sample_path("webglm") / "train.jsonl"),
                           "--output-dir", str(out), "--no-4bit"],
        "05_merge_adapter.py": ["--adapter", str(out), "--output-dir", str(out / "merged"),
                                "--trained-on", "full"],
        "06_chat_sft.py": ["--data", str(sample_path("oasst1")), "--output-dir", str(out),
                           "--no-4bit"],
        "08_dpo.py": ["--data", str(sample_path("oasst1")), "--adapter", str(out.parent / "sft"),
                      "--output-dir", str(out), "--no-4bit"],
    }[name] + ["--model", model]  # fmt: skip


@pytest.mark.parametrize("name", ["02_sentiment_qlora.py", "03_classifier.py", "04_qa_qlora.py",
                                  "05_merge_adapter.py", "06_chat_sft.py",
                                  "08_dpo.py"])  # fmt: skip
def test_a_mistyped_model_folder_is_one_line(name, tmp_path, capsys):
    model = str(TINY.parent / "modle")  # phi2kit/tiny/modle
    out = tmp_path / "out"
    if name == "08_dpo.py":  # 08's --adapter: only its config is read before the model
        adapter_stub(tmp_path / "sft")
    if name == "05_merge_adapter.py":
        out.mkdir()  # 05's adapter folder: only its config is read before the model
        (out / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    with pytest.raises(SystemExit) as exit_:
        load_script(name).main(_argv(name, model, out))
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: --model {model}: no such folder") and "\n" not in err, err
    assert not (out / "adapter").exists() and not (out / "merged").exists()
    if name != "05_merge_adapter.py":  # not even an empty --output-dir (02 made one first)
        assert not out.exists()


@pytest.mark.parametrize(("name", "kind"), [("02_sentiment_qlora.py", ".csv"),
                                            ("03_classifier.py", ".csv"),
                                            ("04_qa_qlora.py", ".jsonl"),
                                            ("06_chat_sft.py", ".jsonl"),
                                            ("08_dpo.py", ".jsonl")])  # fmt: skip
def test_a_data_folder_is_named_a_folder(name, kind, tmp_path, capsys):
    """--data given a folder: one line saying so and which file to pass; a missing path says
    'no such file' (each script's own tests). Nothing is written."""
    folder, out = tmp_path / "data", tmp_path / "out"
    folder.mkdir()
    argv = _argv(name, "no/such-model", out)
    argv[argv.index("--data") + 1] = str(folder)
    try:
        code = load_script(name).main(argv)
    except SystemExit as exit_:
        code = exit_.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {folder}: a folder, not a file: pass the {kind} file", err
    assert not out.exists()


@pytest.mark.parametrize("name", ["02_sentiment_qlora.py", "03_classifier.py", "04_qa_qlora.py",
                                  "06_chat_sft.py", "08_dpo.py"])  # fmt: skip
def test_an_earlier_run_is_never_overwritten(name, tmp_path, capsys):
    """A rerun into a folder that holds an earlier run stops with one line, before any data or
    model is read, and leaves the earlier adapter as it was."""
    out = tmp_path / "out"
    (out / "adapter").mkdir(parents=True)
    (out / "adapter" / "adapter_model.safetensors").write_bytes(b"earlier run")
    try:
        code = load_script(name).main(_argv(name, "no/such-model", out))
    except SystemExit as exit_:
        code = exit_.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: --output-dir {out} is not empty: pass another, or remove it", err
    assert (out / "adapter" / "adapter_model.safetensors").read_bytes() == b"earlier run"


@pytest.mark.parametrize(("name", "flag"), [("02_sentiment_qlora.py", "--max-steps"),
                                            ("02_sentiment_qlora.py", "--grad-accum"),
                                            ("02_sentiment_qlora.py", "--n-train"),
                                            ("02_sentiment_qlora.py", "--n-test"),
                                            ("02_sentiment_qlora.py", "--n-eval"),
                                            ("03_classifier.py", "--max-steps"),
                                            ("04_qa_qlora.py", "--max-length"),
                                            ("06_chat_sft.py", "--max-steps"),
                                            ("06_chat_sft.py", "--lora-r"),
                                            ("06_chat_sft.py", "--n-eval"),
                                            ("08_dpo.py", "--max-steps"),
                                            ("08_dpo.py", "--n-eval")])  # fmt: skip
@pytest.mark.parametrize("value", ["0", "-3"])
def test_a_count_below_one_is_refused_before_anything_runs(name, flag, value, tmp_path, capsys):
    """argparse takes 0 and -3 as ints: ``--max-steps 0`` trained one step and wrote an adapter
    with a "tuned" accuracy; 02's ``--n-eval 0`` failed in trl (StopIteration), ``--n-test 0``
    divided by zero after training, ``--n-test -2`` tested on train headlines; 06's ``--n-eval 0``
    said every thread opens alike. Now argparse's own error, exit 2, and nothing is written."""
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_:
        load_script(name).main(_argv(name, str(TINY), out) + [flag, value])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f": error: {flag} {value}: must be above 0\n" in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is a CPU's")
@pytest.mark.parametrize("name", ["02_sentiment_qlora.py", "04_qa_qlora.py", "06_chat_sft.py",
                                  "08_dpo.py"])  # fmt: skip
def test_4bit_on_a_cpu_is_one_line_before_any_model(name, tmp_path, capsys):
    """bitsandbytes' CPU 4-bit layer fails in training (02 and 06 stopped inside
    ``trainer.train()`` with a RuntimeError, leaving checkpoints behind): now one line, exit 2,
    before the model loads. 03 trains on a 4-bit CPU base and is not refused."""
    out = tmp_path / "out"
    if name == "08_dpo.py":
        adapter_stub(tmp_path / "sft")
    argv = [a for a in _argv(name, str(TINY.parent / "modle"), out) if a != "--no-4bit"]
    with pytest.raises(SystemExit) as exit_:
        load_script(name).main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: 4-bit training needs a CUDA GPU (bitsandbytes); on a CPU pass --no-4bit"
    assert not out.exists()  # not even an empty --output-dir (02 made one first)


@pytest.mark.parametrize("name", ["02_sentiment_qlora.py", "03_classifier.py", "04_qa_qlora.py",
                                  "06_chat_sft.py", "08_dpo.py"])  # fmt: skip
def test_a_t4_is_not_taken_for_a_bf16_gpu(name):
    """``torch.cuda.is_bf16_supported()`` counts a T4's emulated bf16: the scripts then took the
    bf16 path (sdpa, bf16 compute) on the course's GPU. Every call must leave emulation out."""
    calls = [n for n in ast.walk(ast.parse(script_path(name).read_text()))
             if isinstance(n, ast.Call) and getattr(n.func, "attr", "") == "is_bf16_supported"]
    assert calls, name
    for call in calls:
        kw = {k.arg: k.value for k in call.keywords}
        assert getattr(kw.get("including_emulation"), "value", None) is False, ast.unparse(call)


@pytest.mark.parametrize(("name", "reader", "row"), [
    ("04_qa_qlora.py", "read_rows",
     {"question": "Why\u2028now?", "answer": "So\x85it is [1].", "references": ["It\u2029is."]}),
    ("06_chat_sft.py", "read_messages",
     {"message_id": "m1", "parent_id": None, "text": "Hi\u2028there", "role": "prompter"}),
    ("08_dpo.py", "read_pairs", {"prompt": "Hi\u2028there", "chosen": "Yes\x85", "rejected": "No"}),
])  # fmt: skip
def test_a_line_separator_inside_a_json_string_is_text(name, reader, row, tmp_path):
    """JSON written with ensure_ascii=False may hold U+2028, U+2029 or NEL (U+0085) raw inside
    a string: one line of the file, not three (str.splitlines would cut it there)."""
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
    read = getattr(load_script(name), reader)(str(data))
    rows = read[0] if isinstance(read, tuple) else read  # 08: (pairs, trees)
    assert len(rows) == 1 and any("\u2028" in str(v) or "\x85" in str(v) for v in rows[0].values())

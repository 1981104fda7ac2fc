"""examples/08_dpo.py: the take-home DPO script learns on the tiny model, reads lesson 08's pairs
from OASST1 trees and trl's prompt/chosen/rejected rows, refuses a bad file or adapter before any
model loads, and builds notebook 08's configuration for the t4 profile."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from example_scripts import (
    TINY,
    adapter_stub,
    imported_packages,
    load_script,
    mismatch,
    notebook_recipe,
    run_script,
    script_path,
)

from phi2kit.data import sample_path
from phi2kit.data.oasst_pairs import load_pairs
from phi2kit.recipes import PHI_LORA_TARGETS

NAME = "08_dpo.py"


def make_adapter(path: Path, task_type: str = "CAUSAL_LM", note: dict | None = None) -> Path:
    """A fresh LoRA adapter on the tiny model (its B is zero: the policy starts as the base)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(TINY)
    config = LoraConfig(r=16, lora_alpha=32, target_modules=list(PHI_LORA_TARGETS),
                        task_type=task_type)
    get_peft_model(model, config).save_pretrained(path)
    if note is not None:
        (path / "phi2kit_adapter.json").write_text(json.dumps(note))
    return path


def main_exit(tmp_path: Path, *argv: str) -> int:
    """Run ``main`` with a model folder that does not exist (reaching it would fail otherwise)."""
    with pytest.raises(SystemExit) as exit_:
        load_script(NAME).main(["--model", str(tmp_path / "no-model"), *argv,
                                "--output-dir", str(tmp_path / "out")])  # fmt: skip
    assert not (tmp_path / "out").exists()
    return exit_.value.code


def test_script_imports_no_phi2kit_and_stays_short():
    assert "phi2kit" not in imported_packages(NAME)
    # two input forms (trl's rows, OASST1 trees), each with its bad-row errors; the adapter's
    assert len(script_path(NAME).read_text().splitlines()) < 320


def test_learns_on_the_tiny_model(tmp_path):
    adapter = make_adapter(tmp_path / "sft", note={"base_4bit": False})
    args = ["--model", str(TINY), "--adapter", str(adapter), "--no-4bit",
            "--data", str(sample_path("oasst1")), "--max-steps", "12", "--n-eval", "16",
            "--learning-rate", "1e-3", "--batch-size", "8", "--grad-accum", "1",
            "--max-length", "160", "--output-dir", str(tmp_path / "out")]  # fmt: skip
    result = run_script(NAME, *args)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    # the policy starts as its reference: log 2 and no pair ordered. Measured 2026-12-06 with
    # these flags: eval loss 0.693 -> 0.303, reward accuracy 0 -> 0.875 (at 20 steps: 0.134
    # and 0.96)
    assert metrics["eval_loss_before"] == pytest.approx(0.6931, abs=1e-3), metrics
    assert metrics["reward_accuracy_before"] == 0.0, metrics
    assert metrics["eval_loss_best"] < 0.45, metrics
    assert metrics["reward_accuracy_best"] >= 0.75, metrics
    saved = tmp_path / "out" / "adapter"
    assert (saved / "adapter_model.safetensors").is_file()
    assert not (saved / "ref").exists()  # the reference copy is not saved
    assert json.loads((saved / "phi2kit_adapter.json").read_text()) == {"base_4bit": False}


def test_tree_pairs_are_lesson_08s():
    script = load_script(NAME)
    key = lambda p: (p["prompt"], p["chosen"], p["rejected"])  # noqa: E731
    for lang in ("en", None):
        mine, trees = script.read_pairs(str(sample_path("oasst1")), lang)
        theirs = load_pairs(sample_path("oasst1"), lang=lang)
        assert trees and len(mine) > 1000 and sorted(map(key, mine)) == sorted(map(key, theirs))
        train, evals = script.split(mine, n_eval=40)  # whole trees: one line of the file each
        assert {p["group"] for p in train} & {p["group"] for p in evals} == set()


def test_unfinished_trees_of_the_all_export_are_left_out(tmp_path):
    """The export's *_all.trees.jsonl also holds trees still growing or aborted, and the
    schema lets such a tree have no prompt yet (null): both are left out, as the lesson does."""
    sample = sample_path("oasst1").read_text(encoding="utf-8")
    first = json.loads(sample.splitlines()[0])
    extra = [{"message_tree_id": "t-aborted", "tree_state": "aborted_low_grade", "prompt": None},
             {**first, "message_tree_id": "t-growing", "tree_state": "growing"}]  # fmt: skip
    data = tmp_path / "2023-04-12_oasst_all.trees.jsonl"
    data.write_text(sample + "".join(json.dumps(t) + "\n" for t in extra), encoding="utf-8")
    script = load_script(NAME)
    key = lambda p: (p["prompt"], p["chosen"], p["rejected"])  # noqa: E731
    mine, trees = script.read_pairs(str(data), "en")
    assert trees and sorted(map(key, mine)) == sorted(map(key, load_pairs(data, lang="en")))
    assert len(mine) == len(script.read_pairs(str(sample_path("oasst1")), "en")[0])


PREAMBLE = "### Human: Be brief.\n### Assistant: OK.\n"


def test_rows_in_trls_format_and_the_split(tmp_path):
    rows = [{"prompt": "What is 2 + 2?", "chosen": "4.", "rejected": "5."},
            {"prompt": "### Human: Hi\n### Assistant:", "chosen": " Hello!", "rejected": "Go."},
            {"prompt": "### Human: Hi\n### Assistant: Hello!\n### Human: Name?\n### Assistant:",
             "chosen": "Phi.", "rejected": "No."},
            {"prompt": "### Human: Name?", "chosen": "Phi.", "rejected": "No."},  # no answer tag
            *({"prompt": PREAMBLE + f"### Human: {q}\n### Assistant:", "chosen": "2",
               "rejected": "3"} for q in ("1 + 1?", "4 / 2?"))]  # fmt: skip
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")  # a blank line too
    script = load_script(NAME)
    pairs, trees = script.read_pairs(str(data))
    assert not trees and pairs[0] == {"prompt": "### Human: What is 2 + 2?\n### Assistant:",
                                      "chosen": " 4.", "rejected": " 5.",
                                      "group": "### Human: What is 2 + 2?\n### Assistant:"}
    assert pairs[1]["prompt"] == rows[1]["prompt"] and pairs[2]["chosen"] == " Phi."
    assert pairs[3]["prompt"] == "### Human: Name?\n### Assistant:"  # not wrapped twice
    # a chat's later turn goes with its first (the prompt continues it); a shared preamble
    # does not make two questions one conversation
    assert pairs[1]["group"] == pairs[2]["group"] and len({p["group"] for p in pairs}) == 5
    train, evals = script.split(pairs[:3], n_eval=1)
    assert train == pairs[:1] and evals == pairs[1:3]


@pytest.mark.parametrize(
    ("line", "expect"),
    [
        ('{"prompt": "Q", "chosen": "A"}', "line 2, field 'rejected': missing"),
        ('{"prompt": "Q", "chosen": "A", "rejected": " A "}', "line 2, field 'rejected': the same"),
        ('{"prompt": "Q", "chosen": [{"role": "assistant", "content": "A"}], "rejected": "B"}',
         "line 2, field 'chosen': a list of messages (trl's conversational form): this script "
         "reads text (lesson 08 and phi2kit train dpo read both)"),
        ('{"chosen": "Q A", "rejected": "Q B"}', "line 2, field 'prompt': missing (trl's "
         "implicit-prompt form, the prompt inside chosen and rejected, is not read)"),
        ('{"message_id": "m", "text": "hi", "role": "prompter"}', "line 2: an OASST1 message row"),
        ("not json", "line 2: not JSON (Expecting value at column 1); --data needs one JSON "
         "object a line"),
        ("[1, 2]", "line 2: not a JSON object"),
        ('{"message_tree_id": "t", "prompt": {"text": "hi", "role": "prompter", "lang": "en", '
         '"replies": [{"role": "assistant", "rank": 0}]}}', "line 2, field 'text'"),
        ('{"message_tree_id": "t", "prompt": {"text": "hi", "role": "prompter", "lang": "en", '
         '"replies": [{"text": "a", "role": "assistant", "rank": "first"}]}}',
         "line 2, field 'rank'"),
        ('{"message_tree_id": "t", "tree_state": "ready_for_export", "prompt": null}',
         "line 2, field 'prompt': expected a tree with a 'prompt' object"),  # as the library
        ('{"message_id": "m", "message_tree_id": "t", "tree_state": "ready_for_export", '
         '"text": "hi", "role": "prompter"}', "line 2: an OASST1 message row"),  # the hub's
    ],
)  # fmt: skip
def test_a_bad_row_is_one_line_exit_2_before_any_model(tmp_path, capsys, line, expect):
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps({"prompt": "Q", "chosen": "A", "rejected": "B"}) + f"\n{line}\n")
    adapter = str(tmp_path / "no-adapter")  # the data is read first
    assert main_exit(tmp_path, "--adapter", adapter, "--data", str(data)) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(f"error: {data}, ") and expect in err, err


@pytest.mark.parametrize(
    ("rows", "flags", "expect"),
    [([], [], "no pairs: the file holds no JSON lines"),
     ([{"prompt": "Q", "chosen": "A " * 200, "rejected": "B"}] * 1, ["--max-length", "64"],
      "none of the 1 pairs fits --max-length 64 (prompt and reply, in tokens): raise it"),
     ([{"prompt": "Hi", "chosen": "A", "rejected": "B"}, {"prompt": "Hi", "chosen": "A",
       "rejected": "C"}], [], "the 2 pairs that fit are one conversation: add another"),
     ([{"prompt": f"Q{i}", "chosen": "A", "rejected": "B"} for i in range(10)],
      ["--n-eval", "10"], "--n-eval 10 leaves no pair to train: lower it (e.g. --n-eval 2)")],
)  # fmt: skip
def test_nothing_left_to_train_names_the_fix(tmp_path, capsys, rows, flags, expect):
    adapter = adapter_stub(tmp_path / "sft")  # a chat adapter as far as the checks go
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    argv = ["--model", str(TINY), "--adapter", str(adapter), "--data", str(data), "--no-4bit"]
    with pytest.raises(SystemExit) as exit_:  # the tokenizer loads (lengths), not the model
        load_script(NAME).main([*argv, *flags, "--output-dir", str(tmp_path / "out")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {data}: {expect}") and "\n" not in err, err
    assert not (tmp_path / "out").exists()


def test_repeated_pairs_are_left_out_and_counted(tmp_path, capsys):
    from transformers import AutoTokenizer

    script = load_script(NAME)
    pairs = [{"prompt": f"Q{i}", "chosen": "A", "rejected": "B", "group": i} for i in (1, 2, 1)]
    args = script.parse_args(["--adapter", "a", "--data", "d.jsonl", "--n-eval", "1"])
    train, evals = script.fit_and_split(pairs, False, AutoTokenizer.from_pretrained(TINY), args)
    assert (len(train), len(evals)) == (1, 1)
    assert "3 pair(s): 1 repeated and 0 longer than --max-length 1024 left out; 1 train, 1 eval" \
        in capsys.readouterr().out


def test_a_missing_file_is_one_line(tmp_path, capsys):
    missing = tmp_path / "nope.jsonl"
    assert main_exit(tmp_path, "--adapter", str(tmp_path), "--data", str(missing)) == 2
    assert capsys.readouterr().err.strip() == f"error: {missing}: no such file"


@pytest.mark.parametrize(
    ("kind", "flags", "expect"),
    [
        ("none", ["--no-4bit"], "no adapter_config.json: pass the adapter folder of examples/06"),
        ("missing", ["--no-4bit"], "no such folder"),
        ("classifier", ["--no-4bit"], "a SEQ_CLS adapter (a classifier's?): DPO trains a chat "
         "adapter"),
        pytest.param("4bit", ["--no-4bit"], "trained on the 4-bit (nf4) base: 4-bit trains on a "
                     "CUDA GPU only; on a CPU use an adapter trained with --no-4bit",
                     marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a CPU's")),
    ],
)
def test_a_wrong_adapter_is_one_line_before_the_model(tmp_path, capsys, kind, flags, expect):
    adapter = tmp_path / "adapter"
    if kind == "none":
        adapter.mkdir()
    elif kind == "missing":
        pass
    else:
        make_adapter(adapter, "SEQ_CLS" if kind == "classifier" else "CAUSAL_LM",
                     note={"base_4bit": kind == "4bit"})
    argv = ["--adapter", str(adapter), "--data", str(sample_path("oasst1")), *flags]
    capsys.readouterr()  # transformers' load report while the adapter was made
    assert main_exit(tmp_path, *argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(f"error: {adapter}: {expect}"), err


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is a CPU's")
def test_4bit_on_a_cpu_is_one_line_before_the_model(tmp_path, capsys):
    adapter = make_adapter(tmp_path / "sft", note={"base_4bit": False})
    capsys.readouterr()
    assert main_exit(tmp_path, "--adapter", str(adapter), "--data", str(sample_path("oasst1"))) == 2
    assert capsys.readouterr().err.strip() == ("error: 4-bit training needs a CUDA GPU "
                                               "(bitsandbytes); on a CPU pass --no-4bit")


@pytest.mark.parametrize("flag", ["--max-steps", "--beta", "--n-eval"])
def test_a_count_of_zero_is_refused(tmp_path, flag, capsys):
    script = load_script(NAME)
    with pytest.raises(SystemExit) as exit_:
        script.parse_args(["--adapter", "a", "--data", "d.jsonl", flag, "0"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f": error: {flag} 0" in err and ": must be above 0" in err, err


def test_configs_equal_the_notebooks_for_t4(tmp_path):
    ns = notebook_recipe("08_preference_dpo.ipynb", "dpo", tmp_path, cells=1, OUTPUT_DIR=tmp_path)
    script = load_script(NAME)
    args = script.parse_args(["--adapter", "a", "--data", "x.jsonl", "--output-dir", str(tmp_path)])
    quant, dpo = script.build_configs(args, gpu="t4")
    assert not (diff := mismatch(dpo, ns["args"])), diff
    assert dpo.fp16 and not dpo.bf16 and dpo.optim == "paged_adamw_8bit"
    assert quant.bnb_4bit_quant_type == "nf4" and quant.bnb_4bit_use_double_quant
    assert quant.bnb_4bit_compute_dtype == torch.float16  # the lesson's nf4: the profile's dtype


def test_a_byte_order_mark_is_dropped_as_the_library_drops_it(tmp_path):
    data = tmp_path / "bom.jsonl"
    data.write_bytes(b"\xef\xbb\xbf" + b'{"prompt": "Q", "chosen": "A", "rejected": "B"}\n')
    pairs, trees = load_script(NAME).read_pairs(str(data))
    assert not trees and [(p["prompt"], p["chosen"], p["rejected"]) for p in pairs] == [
        ("### Human: Q\n### Assistant:", " A", " B")] == [
        (p["prompt"], p["chosen"], p["rejected"]) for p in load_pairs(data)]


def test_an_eval_split_whose_prompts_train_holds_is_one_line(tmp_path, capsys):
    """One question opening two trees: the eval tree's pair has a train prompt and is left out;
    with nothing left to eval, exit 2 naming the fix (it failed inside trl)."""
    from transformers import AutoTokenizer

    script = load_script(NAME)
    pairs = [{"prompt": p, "chosen": "A", "rejected": r, "group": g}
             for p, r, g in (("X", "B", 1), ("Y", "B", 2), ("X", "C", 3))]  # fmt: skip
    args = script.parse_args(["--adapter", "a", "--data", "d.jsonl", "--n-eval", "1"])
    with pytest.raises(SystemExit) as exit_:
        script.fit_and_split(pairs, True, AutoTokenizer.from_pretrained(TINY), args)
    assert exit_.value.code == 2
    assert "no eval pair whose prompt train lacks: raise --n-eval" in capsys.readouterr().err

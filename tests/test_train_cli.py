"""``phi2kit train``: atomic outputs, crash-and-resume equality, and 2-process scale-out.

The subprocess tests use ``--threads 1``: on the CPU a float sum depends on how torch
splits it over threads, so bitwise comparisons need the same thread count in every run
(one thread is also the fastest on a busy 2-core machine).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from phi2kit.checkpoints import COMPLETE, latest_checkpoint
from phi2kit.commands.train import ADAPTER, add_train_parser, atomic_dir, main
from phi2kit.data.files import DataError
from phi2kit.recipes import get_recipe

ROOT = Path(__file__).resolve().parents[1]
ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def _adapter(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / ADAPTER / "adapter_model.safetensors"))


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys() and a
    return max((a[k] - b[k]).abs().max().item() for k in a)


def _losses(folder: Path) -> dict[int, float]:
    rows = [r for r in json.loads((folder / "trainer_state.json").read_text())["log_history"]
            if "loss" in r]  # fmt: skip
    steps = [r["step"] for r in rows]
    assert len(steps) == len(set(steps)), f"a step was logged twice: {steps}"
    return {r["step"]: r["loss"] for r in rows}


# --- Parser and atomic outputs ----------------------------------------------------------


def test_help_and_subcommand_registration(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "--resume" in capsys.readouterr().out
    sub = argparse.ArgumentParser().add_subparsers()
    add_train_parser(sub)
    args = sub.choices["train"].parse_args(["chat", "--qlora", "--save-every", "5"])
    assert (args.task, args.quantize, args.save_every, args.resume) == ("chat", True, 5, False)
    assert sub.choices["train"].parse_args(["sentiment", "--lora"]).quantize is False


def test_atomic_dir_crash_leaves_no_folder_and_no_litter(tmp_path):
    with pytest.raises(RuntimeError, match="crash"):
        with atomic_dir(tmp_path / "adapter") as tmp:
            (tmp / "adapter_model.safetensors").write_bytes(b"half")
            raise RuntimeError("crash while writing")
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_publishes_and_replaces(tmp_path):
    target = tmp_path / "adapter"
    with atomic_dir(target) as tmp:
        assert tmp.parent == tmp_path and not target.exists()  # invisible until complete
        (tmp / "a.json").write_text("1")
    with atomic_dir(target) as tmp:
        (tmp / "b.json").write_text("2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]
    assert sorted(p.name for p in target.iterdir()) == ["b.json"]


def test_latest_checkpoint_skips_incomplete(tmp_path):
    for step, complete in [(4, True), (8, True), (12, False)]:
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "trainer_state.json").write_text("{}")
        if complete:
            (folder / COMPLETE).write_text("{}")
    (tmp_path / "checkpoint-x").mkdir()
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-8"
    assert latest_checkpoint(tmp_path / "missing") is None


def test_refuses_to_overwrite_a_run_and_rejects_bad_options(tmp_path, capsys):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "settings.json").write_text("{}")  # a run started here
    (out / "run.json").write_text("{}")
    assert main(["sentiment", "--profile", "tiny", "--output-dir", str(out)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["sentiment", "--set", "lora_rank=4", "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--set lora_rank=4: 'lora_rank' is not a setting; the keys of sentiment are" in err
    assert "lora_r, " in err and "n_eval" in err and len(err.strip().splitlines()) == 1
    assert main(["sentiment", "--set", "beta=0.2", "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err  # a key of another task: only this task's keys are listed
    assert "'beta' is a setting of dpo and grpo only; the keys of sentiment are" in err
    assert "beta" not in err.split("the keys of sentiment are")[1], err
    # dpo goes on training the chat adapter as it was made: its LoRA settings are the adapter's
    assert main(["dpo", "--set", "lora_r=4", "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--set lora_r=4: 'lora_r' is the adapter's: dpo goes on training the chat adapter as " \
        "it was made (set it when training chat); the keys of dpo are" in err, err
    keys = err.split("the keys of dpo are")[1]
    assert "lora_r" not in keys and "n_eval" not in keys and "beta" in keys, err
    assert main(["chat", "--set", "n_eval=0", "--output-dir", str(out)]) == 2
    assert "'n_eval' is a setting of sentiment and classifier only" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints", "run.json"]
    capsys.readouterr()
    # an empty checkpoints/ (transformers' Trainer makes it; a build that failed after that
    # leaves it) is no run: the same command goes on to the next check
    empty = tmp_path / "failed"
    (empty / "checkpoints").mkdir(parents=True)
    missing = str(tmp_path / "missing.csv")
    assert main(["sentiment", "--profile", "tiny", "--data", missing, "--output-dir",
                 str(empty)]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "already holds a run" not in err and "no such file" in err, err


@pytest.mark.parametrize(
    "argv, said",
    [
        (["--set", "lora_r=x"], "--set lora_r=x: lora_r takes a whole number"),
        (["--set", "quantize_4bit=maybe"], "quantize_4bit takes true or false"),
        (["--set", "n_eval=-1"], "--set n_eval=-1: a count of rows per class, 0 or more"),
        (["--set", "n_train=8", "--set", "n_test=-1"], ": --set n_test=-1: n_test (-1) must be"),
        (["--labels", "good"], "--labels good: labels must be two or more distinct words"),
        (["--steps", "0"], "--steps 0: must be at least 1, e.g. --steps 20"),
        (["--profile", "t4"], "pass --profile tiny"),  # no CUDA here, as `course` says it
        (["--set", "learning_rate=-1"], "--set learning_rate=-1: learning_rate (-1.0) must be pos"),
        (["--set", "learning_rate=0"], "learning_rate (0.0) must be positive"),
        (["--set", "lora_dropout=2"], "lora_dropout (2.0) must be at least 0 and below 1"),
        (["--set", "n_train=-1"], "n_train (-1) must be positive"),
        (["--set", "n_train=0"], "n_train (0) must be positive"),
        (["--set", "n_test=-1"], "n_test (-1) must be at least 0"),
        (["--set", "warmup_ratio=5"], "warmup_ratio (5.0) must be at least 0 and below 1"),
        (["--threads", "0"], "--threads 0: must be at least 1"),
        (["--public"], "--public makes the hub repo of --push-to-hub public: add --push-to-hub"),
        # found only when the model is built: still one line, and no run folder left behind
        (["--set", "target_modules=foo", "--profile", "tiny"], "LoRA target(s) ['foo'] match no"),
    ],
)
def test_bad_settings_get_one_line_and_exit_2(argv, said, tmp_path, capsys):
    import torch

    if argv[0] == "--profile" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert main(["sentiment", *argv, "--output-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert said in err and len(err.strip().splitlines()) == 1, err
    assert "Use PROFILE=" not in err and not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "task, content, said",
    [
        ("sentiment", "", "empty file; --data for sentiment: a CSV of label,headline rows"),
        ("classifier", "text,label\n", "no usable rows (0 bad rows skipped); --data for class"),
        ("webglm", "positive,Sales rose\n", "malformed JSON (Expecting value; column 1); --data "
         'for webglm: JSON lines {"question", "answer", "references": [...]}'),
        ("chat", '{"text": "hi"}\n', "'message_id': missing or not a string; --data for chat: "),
        ("webglm.csv", "label,text\n", "a .csv file, not JSON lines: WebGLM-QA is read as JSON "
         'lines (.jsonl, one object a line); --data for webglm: JSON lines {"question"'),
        # a message that names its fix gets no format after it
        ("sentiment", "positive,Up\npostive,Down\n", "row 2, field 'sentiment': unknown label "
         "'postive' (expected one of negative, neutral, positive); if your data uses other"),
    ],
)
def test_a_file_of_the_wrong_kind_says_what_data_the_task_reads(task, content, said, tmp_path,
                                                                capsys):  # fmt: skip
    task, _, suffix = task.partition(".")  # webglm.csv: a file of another kind by its name
    data = tmp_path / f"mine.{suffix or 'txt'}"
    data.write_text(content)
    argv = [task, "--profile", "tiny", "--data", str(data), "--output-dir", str(tmp_path / "run")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert said in err and len(err.strip().splitlines()) == 1, err
    assert ("--data for" in err) == (said.count("--data for") == 1), err
    assert not (tmp_path / "run").exists()


def test_an_output_dir_that_cannot_be_written_is_one_line(capsys):
    out = "/proc/phi2kit-run"  # /proc takes no new folders, even for root
    argv = ["sentiment", "--profile", "tiny", "--steps", "1", "--set", "n_train=8"]
    assert main([*argv, "--output-dir", out]) == 2
    err = capsys.readouterr().err
    assert f"--output-dir {out}: cannot write there" in err and len(err.strip().splitlines()) == 1


def test_labels_only_for_labelled_tasks(tmp_path, capsys):
    assert main(["chat", "--labels", "a,b", "--output-dir", str(tmp_path / "r")]) == 2
    assert "--labels: chat data has no labels" in capsys.readouterr().err


def test_library_advice_in_shell_words():
    from phi2kit.commands.train_args import shell_words

    said = shell_words(
        "class 'negative' has 10 headlines after deduplication, and train + test take all "
        "of them: none is left for n_eval = 40. Lower n_test (or n_train), or pass n_eval=0."
    )
    assert said.endswith("Lower --set n_test=N (or --set n_train=N), or pass --set n_eval=0.")
    assert "none is left for n_eval = 40" in said  # only the advice is rewritten
    assert shell_words("or pass DATA_PATH pointing at your copy") == (
        "or pass --data PATH pointing at your copy"
    )


def test_own_labels_and_no_eval_split_from_the_shell(tmp_path, capsys):
    """`--labels bad,ok,good` on a file with those words, `--set n_eval=0`; a file with
    other words than the default ones is refused with the flag that fixes it."""
    words = {"negative": "bad", "neutral": "ok", "positive": "good"}
    rows = (ROOT / "data" / "financial_news" / "all-data.csv").read_text("latin-1").splitlines()
    mine = tmp_path / "mine.csv"
    mine.write_text("".join(words[r.split(",", 1)[0]] + "," + r.split(",", 1)[1] + "\n"
                            for r in rows))  # fmt: skip
    out = tmp_path / "run"
    base = ["classifier", "--profile", "tiny", "--data", str(mine), "--steps", "2"]
    base += ["--threads", "1", "--output-dir", str(out)]
    assert main(base) == 2
    err = capsys.readouterr().err
    assert "unknown label 'ok'" in err and "--labels WORD,WORD" in err and not out.exists()
    assert main([*base, "--labels", "bad,ok,good", "--set", "n_eval=0"]) == 0
    said = capsys.readouterr()
    meta = json.loads((out / ADAPTER / "metrics.json").read_text())
    assert meta["global_step"] == 2 and "eval_loss" not in meta
    assert "adapter written" in said.out
    # the sample's repeated headlines, reported as lesson 02 reports them
    assert "phi2kit train: deduplicated: 1526 rows, 1490 distinct headlines: 36 duplicate rows, " \
        "6 headlines with conflicting labels" in said.out, said.out
    n_test = 3 * get_recipe("classifier", "tiny").n_test  # the test split, read once by the head
    assert f"test accuracy (the score head, {n_test} headlines read once): " \
        f"{meta['test_accuracy']:.3f}; chance 0.333" in said.out, said.out


def test_length_grouped_order_depends_on_seed_and_epoch_only():
    """The bug behind a non-exact resume: transformers' sampler reads the global RNG."""
    import torch
    from transformers.trainer_pt_utils import LengthGroupedSampler

    from phi2kit.batching import SeededLengthGroupedSampler

    lengths = [(7 * i) % 23 + 1 for i in range(64)]
    upstream = LengthGroupedSampler(4, lengths=lengths)
    torch.manual_seed(1)
    first = list(upstream)
    torch.manual_seed(2)
    assert list(upstream) != first  # global RNG state decides the order

    def order(epoch: int, global_seed: int) -> list[int]:
        torch.manual_seed(global_seed)
        sampler = SeededLengthGroupedSampler(upstream.lengths, 4, seed=0)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert order(1, global_seed=1) == order(1, global_seed=2)
    assert order(0, global_seed=1) != order(1, global_seed=1)
    assert sorted(order(1, 1)) == list(range(64))


# --- Crash and resume -------------------------------------------------------------------


def test_ctrl_c_says_where_the_run_goes_on_from(tmp_path, monkeypatch, capsys):
    from transformers import Trainer

    def interrupted(self, *args, **kwargs):
        self.state.global_step = 5
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "train", interrupted)
    out = tmp_path / "run"
    argv = ["sentiment", "--profile", "tiny", "--set", "n_train=8", "--output-dir", str(out)]
    assert main(argv) == 130
    err = capsys.readouterr().err.strip()
    assert err == "phi2kit train: interrupted at step 5; no checkpoint yet: the same command " \
        "with --resume goes on from there", err
    assert (out / "run.json").is_file() and not (out / ADAPTER).exists()


# 30 headlines per class = 90 examples = 6 steps of 16 per epoch, so checkpoint-8 falls
# mid-way through epoch 2: the resumed run must skip 2 batches of a reshuffled epoch, then
# start epoch 3. LoRA dropout is switched on (0.1) so that the restored RNG state matters.
RESUME_ARGS = ["sentiment", "--profile", "tiny", "--steps", "16", "--save-every", "4"]
RESUME_ARGS += ["--set", "n_train=30", "--set", "lora_dropout=0.1", "--seed", "3"]
RESUME_ARGS += ["--threads", "1", "--no-eval"]


#: Seconds a subprocess run may take: generous, for a busy CI machine (CPU training at 2
#: threads on 2 busy cores ran 3.3x slower; these runs use 1 thread, which was unaffected).
SLOW_MACHINE_S = 900


def _kill_when(proc: subprocess.Popen, marker: Path, report: dict) -> None:
    """SIGKILL ``proc`` as soon as ``marker`` exists (a recycled Colab runtime: no cleanup)."""
    deadline = time.monotonic() + SLOW_MACHINE_S
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    report["alive"] = proc.poll() is None and marker.exists()
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_crash_and_resume_equals_uninterrupted_run(tmp_path):
    reference, crashed = tmp_path / "reference", tmp_path / "crashed"
    cmd = [
        sys.executable,
        "-m",
        "phi2kit.commands.train",
        *RESUME_ARGS,
        "--output-dir",
        str(crashed),
    ]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    marker = crashed / "checkpoints" / "checkpoint-8" / COMPLETE
    report: dict = {}
    killer = threading.Thread(target=_kill_when, args=(proc, marker, report))
    killer.start()
    try:  # the uninterrupted reference runs in this process, meanwhile
        assert main([*RESUME_ARGS, "--output-dir", str(reference)]) == 0
    finally:
        killer.join()
    errors = proc.stderr.read().decode(errors="replace")[-2000:]
    proc.stderr.close()
    assert report["alive"], f"the run ended before checkpoint-8 was complete: {errors}"
    assert not (crashed / ADAPTER).exists(), "the run finished before it was killed"

    # Resume in this process (a fresh process costs ~10 s of imports): the model, trainer
    # and data are rebuilt from scratch, and all state comes from the checkpoint on disk.
    assert main([*RESUME_ARGS, "--output-dir", str(crashed), "--resume"]) == 0
    diff = _max_diff(_adapter(reference), _adapter(crashed))
    assert diff <= 1e-6, f"resumed adapter differs from the uninterrupted one by {diff}"
    ref_loss, res_loss = _losses(reference), _losses(crashed)
    assert sorted(res_loss) == list(range(1, 17))
    worst = max(abs(ref_loss[s] - res_loss[s]) for s in ref_loss)
    print(f"resume: adapter max |diff| {diff:.3g}, loss max |diff| {worst:.3g}")
    assert worst <= 1e-6
    meta = json.loads((crashed / ADAPTER / "metrics.json").read_text())
    assert meta["global_step"] == 16
    # its train_loss is the whole run's mean, as the uninterrupted run's, not steps 9-16's
    whole = json.loads((reference / ADAPTER / "metrics.json").read_text())["train_loss"]
    assert abs(meta["train_loss"] - whole) < 1e-4, (meta["train_loss"], whole)
    assert not [p.name for p in crashed.iterdir() if p.name.startswith(".")]  # no temp litter


def test_a_finished_run_loads_it_does_not_train(tmp_path, capsys):
    """Resuming a finished run used to train one more step each time (121, then 122 of
    120). With its adapter there it does nothing; without it, it loads the last checkpoint
    and writes the adapter, still at the last step."""
    out = tmp_path / "run"
    args = ["sentiment", "--profile", "tiny", "--steps", "4", "--save-every", "2"]
    args += ["--set", "n_train=30", "--threads", "1", "--output-dir", str(out)]
    assert main(args) == 0
    first = _adapter(out)
    said = capsys.readouterr().out  # sentiment ends with notebook 02's label scoring, once
    test_accuracy = json.loads((out / ADAPTER / "metrics.json").read_text())["test_accuracy"]
    n_test = 3 * get_recipe("sentiment", "tiny").n_test  # per class
    assert f"test accuracy (label scoring, {n_test} headlines read once): {test_accuracy:.3f}; "\
        "chance 0.333" in said, said
    assert ("no better than chance: the adapter did not learn" in said) == (test_accuracy <= 1 / 3)
    assert main([*args, "--resume"]) == 0
    said = capsys.readouterr().out
    assert "holds a finished run (4 of 4 steps): nothing to train" in said
    assert main([*args, "--steps", "3", "--resume"]) == 0  # fewer steps than done: loads too
    assert "holds a finished run (4 steps, past --steps 3): nothing to train" in (
        capsys.readouterr().out)
    shutil.rmtree(out / ADAPTER)  # killed after the last checkpoint, before the adapter
    assert main([*args, "--resume"]) == 0
    assert sorted(p.name for p in (out / "checkpoints").glob("checkpoint-*")) == [
        "checkpoint-2", "checkpoint-4"
    ]  # fmt: skip
    assert json.loads((out / ADAPTER / "metrics.json").read_text())["global_step"] == 4
    assert _max_diff(first, _adapter(out)) == 0
    assert sorted(_losses(out)) == [1, 2, 3, 4]
    capsys.readouterr()
    # another profile: the run's own settings are named first, then the recipe's it changes
    assert main([*args, "--profile", "t4-cpu", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "profile (the run's 'tiny', now 't4-cpu')" in err, err
    assert err.index("profile (") < err.index("batch_size ("), err
    assert main([*args, "--qlora", "--resume"]) == 2  # in the flags' words
    assert "the base (the run's --lora, full precision, now --qlora, nf4)" in (
        capsys.readouterr().err)
    assert main([*args, "--steps", "6", "--resume"]) == 0  # more steps: it says it resumes
    assert "resuming from checkpoint-4 (step 4 of 6)" in capsys.readouterr().out


def test_train_resumable_loads_a_finished_run(tmp_path):
    """The notebooks' entry (04, 06): a finished run's `trainer.train()` is not called."""
    from phi2kit.checkpoints import train_resumable
    from phi2kit.commands.train_tasks import Setup, build_trainer, load_data
    from phi2kit.profiles import get_profile
    from phi2kit.recipes import get_recipe

    profile = get_profile("tiny")
    recipe = get_recipe("sentiment", profile, max_steps=3, n_train=20, n_test=5)
    setup = Setup("sentiment", profile, recipe)

    def trainer():
        return build_trainer(setup, load_data(setup), tmp_path,
                             save_strategy="steps", save_steps=3, report_to="none")  # fmt: skip

    settings = {"recipe": recipe}
    first, _ = train_resumable(trainer(), settings, log=lambda _: None)
    again = trainer()
    said: list[str] = []
    result, resumed_from = train_resumable(again, settings, log=said.append)
    assert resumed_from == tmp_path / "checkpoint-3" and "training had finished" in said[-1]
    assert result.global_step == again.state.global_step == 3
    assert abs(result.training_loss - first.training_loss) < 1e-6
    assert not (tmp_path / "checkpoint-4").exists()


# --- Scale-out: 2 processes x batch 4 against 1 process x batch 8 -------------------------


def test_one_webglm_file_is_split_and_n_train_counts(tmp_path, capsys):
    """One file: its last fifth is eval; ``--set n_train`` caps train, as for a folder."""
    lines = (ROOT / "data" / "webglm" / "train.jsonl").read_text().splitlines()[:20]
    mine = tmp_path / "qa.jsonl"
    mine.write_text("\n".join(lines) + "\n")
    argv = ["webglm", "--profile", "tiny", "--data", str(mine), "--steps", "1", "--no-eval",
            "--threads", "1", "--set", "n_train=3", "--output-dir", str(tmp_path / "run")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "phi2kit train: examples: 3 train, 4 eval\n" in out
    assert "lost references" not in out  # the tiny recipe's 256 tokens hold every reference
    assert main([*argv[:-1], str(tmp_path / "narrow"), "--set", "max_length=128"]) == 0
    out = capsys.readouterr().out  # 128 tokens cannot: said, with the fix
    trimmed = re.search(r"(\d+) of 7 examples lost references to fit max_length=128 .*"
                        r"--set max_length=N keeps more", out)  # fmt: skip
    assert trimmed and int(trimmed[1]) > 0, out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SCALE_ARGS = ["webglm", "--profile", "tiny", "--lora", "--steps", "4", "--save-every", "4"]
SCALE_ARGS += ["--set", "max_length=128", "--set", "n_train=64", "--set", "n_test=8"]
SCALE_ARGS += ["--threads", "1", "--no-eval"]


def test_two_processes_match_one_process_with_twice_the_batch(tmp_path):
    """DDP over gloo (accelerate) gives the single-process losses and adapter.

    Why the two runs are comparable, setting by setting:

    - **Data order.** With ``batch_size=4`` on 2 processes accelerate hands rank 0 and
      rank 1 consecutive slices of one global batch of 8, drawn from the same seeded
      sampler. Our length-grouped sampler groups by the *global* batch (per-process batch
      x processes), so each optimizer step sees the same 8 examples in both runs.
    - **Loss normalization.** WebGLM answers differ in length, so the number of completion
      tokens differs between the two halves of a batch. transformers 5 sums token losses
      and divides by the token count gathered over all processes
      (``average_tokens_across_devices=True``, its default), then DDP averages gradients:
      the same mean over the same tokens. (With it off, we measured loss differences of
      up to 0.09.)
    - **Dropout.** The tiny model and recipe have none.
    - **Why not bitwise.** The sum over 8 examples is split into two partial sums and an
      all-reduce; float addition is not associative, so the last bits differ. Measured:
      loss differences <= 3e-7, adapter differences <= 3e-6; the bounds below leave ~30x.

    Note: ``accelerate launch --cpu --num_processes 2`` starts a *single* process in
    accelerate 1.15 (its simple launcher); ``--multi_gpu`` is what starts torchrun, and on a
    machine without CUDA the Trainer then uses the CPU and gloo. ``world_size`` checks it.
    """
    pytest.importorskip("accelerate", reason="accelerate is needed to launch 2 processes")
    one, two = tmp_path / "one", tmp_path / "two"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu"]
    launch += ["--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no"]
    launch += ["--dynamo_backend", "no", "--main_process_port", str(_free_port())]
    cmd = [*launch, "-m", "phi2kit.commands.train", *SCALE_ARGS, "--set", "batch_size=4"]
    cmd += ["--output-dir", str(two)]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:  # the single-process run goes on in this process, meanwhile
        assert main([*SCALE_ARGS, "--set", "batch_size=8", "--output-dir", str(one)]) == 0
    finally:
        _, errors = proc.communicate(timeout=SLOW_MACHINE_S)
    assert proc.returncode == 0, errors.decode(errors="replace")[-3000:]

    assert json.loads((two / ADAPTER / "metrics.json").read_text())["world_size"] == 2
    assert json.loads((one / ADAPTER / "metrics.json").read_text())["world_size"] == 1
    loss_one, loss_two = _losses(one), _losses(two)
    assert sorted(loss_two) == sorted(loss_one) == [1, 2, 3, 4]
    worst = max(abs(loss_one[s] - loss_two[s]) for s in loss_one)
    diff = _max_diff(_adapter(one), _adapter(two))
    print(f"scale-out: loss max |diff| {worst:.3g}, adapter max |diff| {diff:.3g}")
    assert worst <= 1e-5, f"per-step losses differ by up to {worst}"
    assert diff <= 1e-4
    # Only rank 0 wrote the final outputs: one adapter folder, no temp folders.
    assert sorted(p.name for p in two.iterdir()) == sorted(
        ["adapter", "checkpoints", "run.json", "trainer_state.json"]
    )


def test_every_recipe_is_a_task_of_the_command():
    from phi2kit.commands.train_args import TASK_NAMES
    from phi2kit.commands.train_tasks import DATA
    from phi2kit.recipes import PREFERENCE_TASKS, TASKS

    assert tuple(DATA) == TASK_NAMES == TASKS + PREFERENCE_TASKS + ("grpo",)


def test_chat_data_in_another_language_names_lang_and_trains_with_it(tmp_path, capsys):
    """Threads are kept in English by default (Phi-2 was trained on English); a file in another
    language is refused with the flag that changes it, and trains with it."""
    from phi2kit.data import sample_path

    text = sample_path("oasst1").read_text().replace('"lang": "en"', '"lang": "xx"')
    text = text.replace('"ready_for_export"', '"growing"', 1)  # one unfinished tree, said
    data = tmp_path / "xx.trees.jsonl"
    data.write_text(text)
    argv = ["chat", "--profile", "tiny", "--data", str(data), "--steps", "2", "--no-eval"]
    assert main([*argv, "--output-dir", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert re.search(r"in language 'en': need at least 2; the messages' languages: xx \(\d+\), "
                     r"de \(\d+\): pass --lang with one of them, or --lang all$", err.strip()), err
    assert not (tmp_path / "a").exists()
    nolang = tmp_path / "nolang.trees.jsonl"  # no lang field, as your own chats: kept by --lang
    nolang.write_text(re.sub(r'"lang": "\w+", ', "", text))
    assert '"lang"' not in nolang.read_text()
    assert main(["chat", "--profile", "tiny", "--data", str(nolang), "--steps", "2", "--no-eval",
                 "--output-dir", str(tmp_path / "n")]) == 0  # fmt: skip
    capsys.readouterr()
    assert main([*argv, "--lang", "xx", "--output-dir", str(tmp_path / "b")]) == 0
    assert "1 unfinished trees (tree_state not ready_for_export) left out" in (
        capsys.readouterr().out)
    assert json.loads((tmp_path / "b" / "run.json").read_text())["lang"] == "xx"
    assert main([*argv, "--lang", "all", "--output-dir", str(tmp_path / "c")]) == 0
    capsys.readouterr()
    assert main([*argv, "--output-dir", str(tmp_path / "c"), "--resume"]) == 2  # --lang en
    assert "lang (the run's 'all', now 'en')" in capsys.readouterr().err
    data.write_text(text.replace('"ready_for_export"', '"growing"'))  # no tree finished
    assert main([*argv, "--lang", "xx", "--output-dir", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err
    assert "trees are unfinished (tree_state not ready_for_export): pass a file with finished " \
        "trees" in err and "pass --lang" not in err, err
    assert main(["sentiment", "--lang", "de", "--output-dir", str(tmp_path / "d")]) == 2
    assert "--lang: only chat and dpo" in capsys.readouterr().err


def test_chat_examples_fit_max_length_as_notebook_06_fits_them(tmp_path, capsys):
    """`train chat` makes its examples with notebook 06's ``to_examples``: a thread longer than
    ``max_length`` loses its oldest turns, never the reply (trl would cut the reply's end)."""
    from phi2kit.commands.train_args import Setup
    from phi2kit.commands.train_tasks import load_data
    from phi2kit.data import sample_path
    from phi2kit.profiles import get_profile
    from phi2kit.recipes import get_recipe

    profile = get_profile("tiny")
    recipe = get_recipe("chat", profile, max_length=64)
    data = load_data(Setup("chat", profile, recipe, data=str(sample_path("oasst1"))))
    out = capsys.readouterr().out
    assert re.search(r"to fit max_length 64, [1-9]\d* examples lost their oldest turns", out), out
    eos = data.tokenizer.eos_token
    for row in [*data.train, *data.eval]:
        assert set(row) == {"prompt", "completion"}
        assert len(data.tokenizer(row["prompt"] + row["completion"] + eos)["input_ids"]) <= 64
        assert row["prompt"].startswith("### Human:") and row["prompt"].endswith("### Assistant:")
    tiny = get_recipe("chat", profile, max_length=8)  # not even one question and reply fits
    with pytest.raises(DataError, match="fits max_length 8: raise it"):
        load_data(Setup("chat", profile, tiny, data=str(sample_path("oasst1"))))


def test_chat_eval_opens_with_no_question_train_opens_with(tmp_path):
    """The sample asks each question in several threads: split thread by thread, eval examples
    were train examples too. Threads that open alike go to one split, as in notebook 06."""
    from phi2kit.commands.train_args import Setup
    from phi2kit.commands.train_tasks import load_data
    from phi2kit.data import sample_path
    from phi2kit.profiles import get_profile
    from phi2kit.recipes import get_recipe

    profile = get_profile("tiny")
    data = load_data(Setup("chat", profile, get_recipe("chat", profile),
                           data=str(sample_path("oasst1"))))  # fmt: skip
    opening = lambda rows: {p.split("\n### Assistant:")[0] for p in rows["prompt"]}  # noqa: E731
    assert len(data.eval) and not opening(data.eval) & opening(data.train)
    same = tmp_path / "hi.jsonl"  # every chat opens with "Hi": no eval that is not a train one
    same.write_text("".join(json.dumps({"messages": [{"role": "user", "content": "Hi"}, {
        "role": "assistant", "content": f"Hello {i}"}]}) + "\n" for i in range(5)))  # fmt: skip
    with pytest.raises(DataError, match="every thread opens with the same question: need two"):
        load_data(Setup("chat", profile, get_recipe("chat", profile), data=str(same)))
    big = tmp_path / "big.jsonl"  # most chats open with "Hello!": that group trains, whole
    chats = [("Hello!", f"Hi {i}") for i in range(40)] + [(f"Q{i}?", f"A{i}.") for i in range(8)]
    big.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q}, {
        "role": "assistant", "content": a}]}) + "\n" for q, a in chats[40:] + chats[:40]))
    data = load_data(Setup("chat", profile, get_recipe("chat", profile), data=str(big)))
    assert len(data.train) == 41 and "Hello!" not in "".join(data.eval["prompt"])  # Q0 + 40


def test_resume_checks_the_data_by_content_not_by_the_path_typed(tmp_path, capsys, monkeypatch):
    """The same file by another path resumes; another file of the same name is refused."""
    sample = ROOT / "data" / "financial_news" / "all-data.csv"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    shutil.copy(sample, tmp_path / "a" / "news.csv")
    rows = sample.read_text("latin-1").splitlines()
    (tmp_path / "b" / "news.csv").write_text("\n".join(rows[::-1]) + "\n", "latin-1")
    out = tmp_path / "run"
    args = ["sentiment", "--profile", "tiny", "--steps", "2", "--set", "n_train=30",
            "--threads", "1", "--output-dir", str(out)]  # fmt: skip
    monkeypatch.chdir(tmp_path / "a")
    assert main([*args, "--data", "news.csv"]) == 0
    capsys.readouterr()
    assert main([*args, "--data", str(tmp_path / "a" / "news.csv"), "--steps", "3",
                 "--resume"]) == 0  # fmt: skip
    assert json.loads((out / ADAPTER / "metrics.json").read_text())["global_step"] == 3
    capsys.readouterr()
    # the batch order decides the run too: another --sampler is another run
    assert main([*args, "--data", str(tmp_path / "a" / "news.csv"), "--steps", "4",
                 "--sampler", "random", "--resume"]) == 2  # fmt: skip
    assert "sampler (the run's default, now 'random')" in capsys.readouterr().err
    # labels are a list: named like the rest, in the order given
    assert main([*args, "--data", str(tmp_path / "a" / "news.csv"), "--resume",
                 "--labels", "positive,neutral,negative"]) == 2  # fmt: skip
    assert ("labels (the run's ['negative', 'neutral', 'positive'], now ['positive', 'neutral', "
            "'negative'])") in capsys.readouterr().err  # fmt: skip
    monkeypatch.chdir(tmp_path / "b")
    assert main([*args, "--data", "news.csv", "--steps", "4", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "data (--data's content is not the run's)" in err, err
    assert len(err.strip().splitlines()) == 1
    assert main([*args, "--data", "gone.csv", "--resume"]) == 2
    assert "gone.csv: no such file or folder (--data)" in capsys.readouterr().err
    # another file that is also broken: its bad row is named, not only that it changed
    broken = [*rows[:4], "okk," + rows[4].split(",", 1)[1], *rows[5:]]  # row 5: a typo
    (tmp_path / "b" / "news.csv").write_text("\n".join(broken) + "\n", "latin-1")
    assert main([*args, "--data", "news.csv", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "news.csv, row 5, field 'sentiment': unknown label 'okk'" in err, err


@pytest.mark.parametrize("resume", [False, True])
def test_a_folder_train_did_not_make_is_refused_and_left_alone(tmp_path, capsys, resume):
    # a take-home script's output (adapter/, checkpoints/) or a folder of your own files:
    # `phi2kit train` neither resumes nor writes into it
    out = tmp_path / "example_run"
    (out / "adapter").mkdir(parents=True)
    (out / "adapter" / "adapter_model.safetensors").write_bytes(b"the script's weights")
    (out / "checkpoints" / "checkpoint-20").mkdir(parents=True)
    (out / "metrics.json").write_text("{}")
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    argv = ["sentiment", "--profile", "tiny", "--steps", "1", "--output-dir", str(out)]
    assert main(argv + ["--resume"] * resume) == 2
    err = capsys.readouterr().err
    assert f"--output-dir {out}: not empty and not a phi2kit train run (no run.json; it holds " \
        "adapter, checkpoints, metrics.json): pass a new or empty folder" in err, err
    assert len(err.strip().splitlines()) == 1
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before
    assert (out / "adapter" / "adapter_model.safetensors").read_bytes() == b"the script's weights"


def test_labels_that_start_with_another_label_are_refused(tmp_path, capsys):
    # label scoring sums a label's tokens: 'sporty' = 'sport' + more, so it could never win
    rows = [f"{label},headline number {i} about {label}" for i in range(40)
            for label in ("sport", "sporty", "tech")]  # fmt: skip
    data = tmp_path / "topics.csv"
    data.write_text("\n".join(rows) + "\n")
    out = tmp_path / "run"
    assert main(["sentiment", "--profile", "tiny", "--data", str(data), "--labels",
                 "sport,sporty,tech", "--output-dir", str(out)]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "--labels: 'sporty' starts with the tokens of 'sport'" in err, err
    assert "--data for" not in err, err  # the fix is the labels', not the file's format
    assert len(err.strip().splitlines()) == 1 and not out.exists()


def test_the_eval_loss_before_training_is_the_runs_baseline(tmp_path, capsys):
    """A newcomer's `train chat` on their own chats printed only the final eval loss, so they
    could not tell whether it learned: a fresh run evaluates first and shows both; a resumed
    run has no baseline of its own (none is claimed), and --no-eval skips both."""
    out = tmp_path / "run"
    argv = ["chat", "--profile", "tiny", "--steps", "6", "--save-every", "3", "--threads", "1",
            "--output-dir", str(out)]
    assert main(argv) == 0
    said = capsys.readouterr().out
    meta = json.loads((out / ADAPTER / "metrics.json").read_text())
    assert meta["eval_loss"] < meta["eval_loss_before"], meta  # 6 steps of 8 chats learn here
    assert f"eval_loss_before {meta['eval_loss_before']:.4g}, eval_loss {meta['eval_loss']:.4g})" \
        in said, said
    assert main([*argv[:-1], str(out), "--steps", "8", "--resume"]) == 0
    meta = json.loads((out / ADAPTER / "metrics.json").read_text())
    assert meta["global_step"] == 8 and "eval_loss" in meta and "eval_loss_before" not in meta
    assert main([*argv[:-1], str(tmp_path / "quiet"), "--no-eval"]) == 0
    meta = json.loads((tmp_path / "quiet" / ADAPTER / "metrics.json").read_text())
    assert "eval_loss" not in meta and "eval_loss_before" not in meta, meta

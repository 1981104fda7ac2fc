"""``phi2kit train``: atomic outputs, crash-and-resume equality, and 2-process scale-out.

The subprocess tests use ``--threads 1``: on the CPU a float sum depends on how torch
splits it over threads, so bitwise comparisons need the same thread count in every run
(one thread is also the fastest on a busy 2-core machine).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from phi2kit.commands.train import (
    ADAPTER,
    COMPLETE,
    add_train_parser,
    atomic_dir,
    latest_checkpoint,
    main,
    make_parser,
)

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
    rows = [json.loads(line) for line in (folder / "loss_log.jsonl").read_text().splitlines()]
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
    assert make_parser().parse_args(["sentiment", "--lora"]).quantize is False


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
    assert main(["sentiment", "--profile", "tiny", "--output-dir", str(out)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["sentiment", "--set", "lora_rank=4", "--output-dir", str(out)]) == 2
    assert "recipe field" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints"]


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

# 30 headlines per class = 90 examples = 6 steps of 16 per epoch, so checkpoint-8 falls
# mid-way through epoch 2: the resumed run must skip 2 batches of a reshuffled epoch, then
# start epoch 3. LoRA dropout is switched on (0.1) so that the restored RNG state matters.
RESUME_ARGS = ["sentiment", "--profile", "tiny", "--steps", "16", "--save-every", "4"]
RESUME_ARGS += ["--set", "n_train=30", "--set", "lora_dropout=0.1", "--seed", "3"]
RESUME_ARGS += ["--threads", "1", "--no-eval"]


def _kill_when(proc: subprocess.Popen, marker: Path, report: dict) -> None:
    """SIGKILL ``proc`` as soon as ``marker`` exists (a recycled Colab runtime: no cleanup)."""
    deadline = time.monotonic() + 240
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
    assert not [p.name for p in crashed.iterdir() if p.name.startswith(".")]  # no temp litter


# --- Scale-out: 2 processes x batch 4 against 1 process x batch 8 -------------------------


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
        _, errors = proc.communicate(timeout=300)
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
        ["adapter", "checkpoints", "loss_log.jsonl", "run.json"]
    )


def test_every_recipe_task_has_one_row_in_the_dispatch_table():
    from phi2kit.commands.tasks import STEPS
    from phi2kit.recipes import TASKS

    assert tuple(STEPS) == TASKS

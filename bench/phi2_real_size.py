"""Phi-2 at its real size, on a CPU or a GPU: the T4 recipes' code path against the planner.

    nice -n 10 python bench/phi2_real_size.py            # sentiment, merge routes, classifier
    python bench/phi2_real_size.py --recipes all         # also webglm, chat, dpo, grpo (longer)
    python bench/phi2_real_size.py --recipes dpo,grpo    # notebooks 08 and 09
    python bench/phi2_real_size.py --layers 2            # full width, 2 of 32 layers: minutes
    python bench/phi2_real_size.py --quick               # 1/4 width, 2 layers, all recipes but
                                                         # webglm/chat: about 90 s CPU (CI)
    python bench/phi2_real_size.py --device cuda         # on a GPU: fp16 AMP, paged 8-bit AdamW
    python bench/phi2_real_size.py --device cuda --recipes all --recipe-batch
                                                         # each recipe's micro-batch at max_length

What it does, in order:

1. **A random Phi-2.** The model is built from Phi-2's published configuration, the one the
   planner and the meta-device model count (:func:`meta_report.phi2_on_meta`,
   2,779,683,840 parameters), with seeded random weights (normal, std
   ``initializer_range``; LayerNorms at 1 and 0), in fp16 like the published checkpoint.
   It is saved as a local snapshot laid out like a hub download: ``config.json``,
   ``generation_config.json``, sharded ``model-0000k-of-0000n.safetensors`` with
   ``model.safetensors.index.json``, and tokenizer files. ``--quick`` keeps 2 of the 32
   layers, at full width and full vocabulary.
2. **The notebooks' calls on it**, with the T4 recipe of each task
   (``phi2kit.recipes.get_recipe(task, "t4")``) and the T4 profile pointed at the snapshot:
   ``load_model`` / ``load_classifier`` in nf4 with double quantization, ``add_lora``
   (``prepare_model_for_kbit_training``, gradient checkpointing, LoRA dropout), optimizer
   steps at batch 1 through ``sft_trainer`` (notebooks 02, 04, 06) or ``classifier_trainer``
   (03), ``save_adapter`` and a reload, ``generate`` (a few tokens) or ``predict_logits``;
   and notebook 05's merge routes on the sentiment adapter: PEFT's merge on the 4-bit model
   (re-quantized), (b) merge into the fp16 weights, (c) dequantize then merge
   (``dequantize_into``), ``save_pretrained`` and a reload of the merged model.
3. **Measured against the planner** (``phi2kit.plan.estimate`` with the run's settings), per
   recipe, side by side; the run exits 1 if a check fails (tolerances below).

On the CPU the ``t4`` profile refuses to start (it requires CUDA), so the run uses the t4
profile with CPU settings (``dataclasses.replace``): ``device_map="cpu"``, and AdamW instead
of paged 8-bit AdamW (which needs CUDA). Everything else is the T4's: fp16 weights and nf4
compute dtype, nf4 + double quantization, ``phi2kit_fp32`` attention, gradient checkpointing,
the recipes' LoRA ranks, targets and dropout, ``fp16=True`` in the trainer, which on a CPU
``phi2kit.twin.cpu_fp16_amp`` turns into real fp16 autocast with a grad scaler, as on the
T4. The recipe's batch, accumulation and step count are replaced by batch 1 (with
``--recipe-batch``: the recipe's micro-batch, every row at ``max_length``) and steps until
the first one the grad scaler does not skip (it skips a step whose scaled gradients overflow
and halves its scale: the quick classifier needed a few), at most ``--steps`` (8); that step
is the one measured, and a run whose every step was skipped fails.

**Tokens.** Phi-2's tokenizer (CodeGen/GPT-2 BPE, 50,295 tokens) cannot be shipped or
downloaded here, so the snapshot carries the tiny Phi's byte-level BPE tokenizer (2,048
tokens, from ``phi2kit/tiny``). Its ids are a subset of the 51,200 embedding rows (Phi-2's
own tokenizer also leaves rows unused), so every id is valid; ``config.json`` keeps Phi-2's
bos/eos id 50,256 while the tokenizer's eos is id 0 (transformers aligns the two when a
trainer is built, and ``generate`` is passed the tokenizer's). Text is tokenized into more
pieces than Phi-2's tokenizer would, so each training example is built with the notebooks'
own builders from the project's data samples and lengthened (more headlines, references or
turns from the samples) to the planner's typical length for the task
(``phi2kit.plan.TYPICAL_TOKENS``); the model's weights are random, so only the length matters.
The planner is evaluated at the length actually trained.

**Checks and tolerances** (relative; each is a measured quantity against the planner's):

- trainable parameters: exact, against the meta-device report (``bench/meta_report.py``) and the
  planner's ``lora_parameters``; the model's parameter count: exact (2,779,683,840 full size).
- model bytes (every parameter, buffer and quant_state tensor, after loading and after
  ``add_lora``): 0.1 %. The planner leaves out only the rotary ``inv_freq`` buffers, a few
  hundred bytes; the tolerance still catches one miscounted absmax or code tensor per layer.
- LoRA gradients at the optimizer step: 0.1 % (they are exactly 4 bytes per trainable
  parameter).
- optimizer state after the step: 1 % for AdamW (two fp32 moments, 8 B/param; the per-tensor
  step counters are left out), 5 % for paged 8-bit AdamW (2 B/param; the per-block absmax
  and the quantization maps are left out, about 1.6 %).
- saved adapter file: 1 % over 4 bytes per trainable parameter (the safetensors header).
- tensors live during the step's forward and backward (a ``TorchDispatchMode`` tracker,
  ``bench/measure_memory.py``) against the planner's activations + logits +
  LoRA gradients, for the classifier (HF ``Trainer``): 25 %. The planner's activation model
  is checked to 5 % on fp32 CPU runs (``tests/test_plan.py``); here the fp16 autocast of the
  CPU, the upcast fp32 residual stream and gradient clipping differ from what it models
  (measured: the planner 11-14 % high, with and without autocast, quick and full size).
  25 % is about twice that: it catches gross errors (a term off by the
  sequence length, the batch or a dtype's size), while each term's own accuracy is pinned
  to 5 % in ``tests/test_plan.py`` (the dequantized 4-bit weight included). For the SFT
  recipes (trl) the term is shown, not checked: trl 1.16's fused LM head scores the loss in
  tiles of 32,768 vocabulary entries, every position on a CPU and only the completion's on a
  CUDA device with Triton, while the planner counts transformers' unfused loss (12 bytes per
  position and vocabulary entry, all positions). On the CPU the fused head's backward holds
  about 8 fp32 tiles, more than the planner's term; on a T4 it holds far less.
- peak RSS during the step must be at least the planner's CPU total (weights, LoRA, its
  gradients, optimizer state, activations, logits) minus 10 %. RSS has no upper check: it
  also holds Python and the libraries, the loading path's buffers and whatever the allocator
  keeps, none of which the GPU planner models. Peak RSS of loading is shown, not checked.

On ``--device cuda`` the same checks run against the planner's GPU settings, and the step's peak
GPU memory (``torch.cuda.max_memory_allocated``, less what earlier recipes left allocated) is
shown next to the planner's total less its overhead term (the CUDA context and allocator slack,
which that figure does not see). ``--recipe-batch`` trains each SFT/classifier recipe at its own
micro-batch with every row at its ``max_length`` instead. Figures from an H100:
``docs/memory.md``.

**DPO (notebook 08) and GRPO (notebook 09)**, ``--recipes dpo,grpo`` (in ``--quick`` by default).
Their recipes are ``get_recipe("dpo")`` / ``get_recipe("grpo")`` on the t4 profile with the CPU
settings above; each starts, as the lessons do, from an SFT adapter loaded trainable onto the
nf4 base (``PeftModel.from_pretrained(..., is_trainable=True)``): a seeded random adapter of the
recipe's shape stands in for 06's (DPO, r=64) and 04's (GRPO, r=16), written as
``save_pretrained`` writes one. trl 1.16 then adds a frozen copy of it, ``ref``, the
reference. DPO runs ``phi2kit train dpo``'s own trainer
(``phi2kit.commands.train_tasks.dpo``) on one pair (``--dpo-tokens``: prompt + the longer
reply, 128 by default: chosen and rejected in one batch of two) and is checked against
``phi2kit.plan.dpo.estimate_dpo(reference="adapter", precompute=False)``; GRPO runs notebook
09's ``GRPOConfig`` / ``GRPOTrainer`` (no vLLM, 04's checks as rewards) on one prompt
(``--grpo-prompt-tokens``): one step generates ``num_generations`` (4) completions of
``--grpo-tokens`` (8), runs the ``ref`` adapter (beta 0.04 > 0) and trains on them, checked
against ``phi2kit.plan.grpo.estimate_grpo``. Checked: trainable parameters (exact, against the
meta report and the planner), the ``ref`` adapter's bytes against the planner's reference
term and the model's bytes (0.1 %), gradients (0.1 %), optimizer state (1 %; 5 % for paged 8-bit
AdamW on a GPU), peak RSS of the
step at least the planner's CPU total (-10 %). The step's live tensors are shown, not
checked, for the reason given above for the SFT recipes: both trainers score with trl's fused
LM head (every position on a CPU, in tiles; only the completion's on a CUDA device with
Triton), which the planner's ``logits + grads`` term (transformers' unfused loss, 12 bytes per
position and vocabulary entry) does not model. Measured (DPO, 152 tokens per sequence): 84 %
above the planner's term at full width with 2 layers, where the head dominates, and 27 % below
it at full size, where the planner's activation terms dominate.
Notebook 08 and ``phi2kit train dpo`` load the SFT adapter without
``prepare_model_for_kbit_training``, so nothing is upcast to fp32; ``estimate_dpo`` counts
the base weights so (it counted the fp32 upcasts of ``estimate`` until this check found it:
2.351 GB instead of 1.825 GB at full size, 0.53 GB high), and model bytes are checked
against its own term.

**Time, and the torch a user gets.** On a CPU the twin's fp16 autocast sends every matrix
product to torch's CPU fp16 kernels, some of them reference loops on CPUs without AVX512-FP16:
bitsandbytes' 4-bit backward (``grad_output @ dequantize_4bit(W)``, a row-major right operand)
took 11.2 s of CPU for one fc2-shaped product at 77 tokens, against 0.11 s in fp32, on torch
2.13.0+cpu and 2.14.1 (the default build, +cu130) alike. As the ``t4-cpu`` profile does, this
script therefore runs fp16 products through fp32 BLAS on the CPU
(:func:`phi2kit.twin.fast_cpu_fp16_products`: the same fp32 sums, rounded to fp16 once; its fp32
temporaries run inside the live-tensor tracker's op, so they are not counted, and every memory
check reads as with the stock kernels). With bitsandbytes' backward on the stock kernels the
full-size sentiment step was about 13 minutes of CPU, which is why the default run once did not
finish in 29 minutes; the torch version was not the cause. The default run, one after the other
on 2 quiet cores (torch 2.13.0+cpu, 2026-12-07): 6 min 52 s wall, 711 s of CPU, peak RSS 16.0
GB; with the narrower patch this replaced (a column-major copy of the dequantized weight in
bitsandbytes' backward only) 7 min 41 s, 796 s and 15.6 GB. A shared machine: run with
``OMP_NUM_THREADS=1`` (two threads on two cores with one busy ran 3.3x slower). The default
run's budget and the figures are in ``docs/performance.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import re
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/: meta_report, measure_memory

PHI2_PARAMETERS = 2_779_683_840
#: ``--quick``: Phi-2 at a quarter of its width with 2 of its 32 layers. The vocabulary (51,200),
#: the head dimension (80), partial rotary, biases and the untied head stay Phi-2's.
QUICK = {"num_hidden_layers": 2, "hidden_size": 640, "intermediate_size": 2560,
         "num_attention_heads": 8, "num_key_value_heads": 8}  # fmt: skip
DEFAULT_RECIPES = ("sentiment", "classifier", "merge")
ALL_RECIPES = ("sentiment", "classifier", "webglm", "chat", "merge", "dpo", "grpo")
PREFERENCE = ("dpo", "grpo")  # notebooks 08 and 09: their own recipes and trainers
QUICK_RECIPES = ("sentiment", "classifier", "merge", *PREFERENCE)  # --quick (CI): about 90 s
SNAPSHOT_NOTE = "phi2kit_random_snapshot.json"
GB = 1e9

TOL_WEIGHTS = 1e-3
TOL_GRADS = 1e-3
TOL_ADAMW = 0.01
TOL_ADAM8BIT = 0.05
TOL_ADAPTER_FILE = 0.01
TOL_STEP_LIVE = 0.25
TOL_RSS_BELOW = 0.10
TOL_PREF_STEP = None  # DPO/GRPO step: see the docstring


# --- the random snapshot -----------------------------------------------------------------------


def phi2_config(quick: bool = False, layers: int | None = None):
    """Phi-2's published config, the skeleton's; ``quick`` shrinks it (see :data:`QUICK`),
    ``layers`` keeps that many of its decoder layers at full width (``--layers``)."""
    from meta_report import phi2_on_meta

    cfg = phi2_on_meta().config  # one source: phi2kit.footprint.phi2_config via the skeleton
    for key, value in (QUICK if quick else {}).items():
        setattr(cfg, key, value)
    if layers:
        cfg.num_hidden_layers = layers
    return cfg


def build_snapshot(folder: Path, cfg, seed: int = 0) -> dict:
    """Write a seeded random Phi-2 in fp16 to ``folder`` as a hub-style snapshot."""
    import torch
    from transformers import AutoTokenizer, PhiForCausalLM

    from phi2kit.tiny import tiny_path

    start = time.perf_counter()
    with torch.device("meta"):
        model = PhiForCausalLM(cfg)
    model = model.to(torch.float16).to_empty(device="cpu")
    n_params = sum(p.numel() for p in model.parameters())
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            elif "layernorm" in name or "final_layernorm" in name:
                p.fill_(1.0)
            else:  # chunks of fp32 random numbers, cast to fp16: no 11 GB fp32 copy
                flat = p.view(-1)
                for i in range(0, flat.numel(), 1 << 24):
                    chunk = flat[i : i + (1 << 24)]
                    chunk.copy_(torch.randn(chunk.numel(), generator=gen) * cfg.initializer_range)
    folder.mkdir(parents=True, exist_ok=True)
    shard = "2GB" if n_params > 1e9 else "100MB"  # quick: sharded all the same
    model.save_pretrained(str(folder), max_shard_size=shard, safe_serialization=True)
    AutoTokenizer.from_pretrained(str(tiny_path())).save_pretrained(str(folder))
    note = {"seed": seed, "config": cfg.to_diff_dict(), "parameters": n_params,
            "weights": "random, normal(0, initializer_range); not Phi-2's"}  # fmt: skip
    (folder / SNAPSHOT_NOTE).write_text(json.dumps(note, indent=2) + "\n")
    del model
    gc.collect()
    return {**note, "seconds": time.perf_counter() - start}


def snapshot_matches(folder: Path, cfg, seed: int) -> bool:
    note = folder / SNAPSHOT_NOTE
    if not note.is_file() or not (folder / "model.safetensors.index.json").is_file():
        return False
    info = json.loads(note.read_text())
    # building and saving a model writes these two into its config: not part of the shape
    drop = lambda c: {k: v for k, v in c.items() if k not in ("dtype", "architectures")}  # noqa: E731
    return info.get("seed") == seed and drop(info.get("config", {})) == drop(cfg.to_diff_dict())


# --- memory -------------------------------------------------------------------------------------


def _rss_kib(field: str) -> int | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    m = re.search(rf"{field}:\s+(\d+) kB", text)
    return int(m.group(1)) if m else None


@dataclasses.dataclass
class Phase:
    """Wall time and peak RSS of a block; ``peak_gpu`` on CUDA. Bytes."""

    seconds: float = 0.0
    cpu_seconds: float = 0.0  # user + system time of this process: robust on a shared machine
    peak_rss: int = 0
    peak_gpu: int | None = None
    gpu_start: int = 0  # CUDA bytes allocated when the block began (the load phase: leftovers)
    exact_peak: bool = True  # False: the process's peak so far (no per-phase reset here)


@contextlib.contextmanager
def phase() -> Iterator[Phase]:
    """Measure a block. On Linux the RSS high-water mark is reset first (``clear_refs``)."""
    import torch

    out = Phase()
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        out.exact_peak = False
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        out.gpu_start = torch.cuda.memory_allocated()
    start, cpu = time.perf_counter(), time.process_time()
    try:
        yield out
    finally:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            out.peak_gpu = torch.cuda.max_memory_allocated()
        out.seconds = time.perf_counter() - start
        out.cpu_seconds = time.process_time() - cpu
        hwm = _rss_kib("VmHWM") if out.exact_peak else None
        if hwm is None:
            out.exact_peak = False
            hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        out.peak_rss = hwm * 1024


def free() -> None:
    """Collect garbage and hand freed memory back (glibc keeps freed heap pages otherwise).

    With a bitsandbytes 8-bit optimizer (the t4 profile's paged AdamW), transformers' ``Trainer``
    registers every ``nn.Embedding`` with bitsandbytes' global ``GlobalOptimManager`` and never
    takes it out, so a finished recipe's embedding (fp32 after ``prepare_model_for_kbit_training``:
    0.524 GB for Phi-2) outlived its model; the list is emptied here (``docs/memory.md``).
    """
    import ctypes
    import ctypes.util

    import bitsandbytes as bnb
    import torch

    bnb.optim.GlobalOptimManager.get_instance().module_weight_config_triple.clear()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    libc = ctypes.util.find_library("c")
    if sys.platform.startswith("linux") and libc:
        ctypes.CDLL(libc).malloc_trim(0)


@contextlib.contextmanager
def profiled(on: bool) -> Iterator[None]:
    """``--profile``: torch.profiler over the block, the top operators by self CPU time."""
    if not on:
        yield
        return
    import torch

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        yield
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=int(on) * 15))
    sys.stdout.flush()


# --- checks -------------------------------------------------------------------------------------


@dataclasses.dataclass
class Row:
    name: str
    measured: float
    planned: float | None
    unit: str  # "count", "GB", "s"
    tol: float | None = None  # relative; 0 = exact; None = shown, not checked
    lower_bound: bool = False  # measured must be >= planned * (1 - tol)

    @property
    def ok(self) -> bool:
        if self.tol is None or self.planned is None:
            return True
        if self.lower_bound:
            return self.measured >= self.planned * (1 - self.tol)
        if self.tol == 0:
            return self.measured == self.planned
        return abs(self.measured - self.planned) <= self.tol * abs(self.planned)

    def cells(self) -> list[str]:
        def fmt(v: float | None) -> str:
            if v is None:
                return "-"
            if self.unit == "count":
                return f"{int(v):,}"
            if self.unit == "GB":
                return f"{v / GB:.3f} GB"
            return f"{v:.1f} s"

        if self.tol is None or self.planned is None:
            check = "shown"
        elif self.lower_bound:
            check = f">= -{100 * self.tol:g} %"
        else:
            check = "exact" if self.tol == 0 else f"{100 * self.tol:g} %"
        diff = ""
        if self.planned and self.unit != "count":
            diff = f"{100 * (self.measured - self.planned) / self.planned:+.2f} %"
        status = "" if self.tol is None or self.planned is None else ("ok" if self.ok else "FAIL")
        return [self.name, fmt(self.measured), fmt(self.planned), diff, check, status]


def gpu_rows(load: Phase, train: Phase, planned: float) -> list[Row]:
    """The step's peak of PyTorch's allocated GPU memory, less what earlier recipes of this run
    left allocated (none since :func:`free` lets go of the embedding an 8-bit optimizer held;
    shown when there is some), against the planner's total less its overhead term (the CUDA
    context and the allocator's slack, which ``max_memory_allocated`` does not see)."""
    rows = [Row("peak GPU memory allocated, step (planner: less overhead)",
                train.peak_gpu - load.gpu_start, planned, "GB")]  # fmt: skip
    if load.gpu_start:
        rows.append(Row("  left allocated by earlier recipes", load.gpu_start, None, "GB"))
    return rows


def print_table(title: str, rows: list[Row]) -> None:
    head = ["term", "measured", "planner", "diff", "tolerance", ""]
    table = [head] + [r.cells() for r in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(head))]
    print(f"\n## {title}")
    for i, r in enumerate(table):
        print("  " + "  ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in
                              enumerate(zip(r, widths, strict=True))))  # fmt: skip
        if i == 0:
            print("  " + "  ".join("-" * w for w in widths))
    sys.stdout.flush()


# --- the examples -------------------------------------------------------------------------------


def _n_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text)["input_ids"]) + 1  # + the EOS training appends


def train_example(task: str, tokenizer, target: int) -> dict:
    """One prompt/completion example built by the notebook's builder, lengthened to ``target``.

    Sentiment/classifier: several sample headlines make one long "headline" (label of the
    first). WebGLM: the references of several sample questions, fitted to ``target`` by
    ``fit_to_length`` (the notebook's trimming). Chat: sample threads joined into one long
    conversation; the example is its last assistant turn with all turns before as context.
    """
    from phi2kit.data import sample_path

    if task in ("sentiment", "classifier"):
        from phi2kit.data.sentiment import build_prompt, load_financial_news

        df = load_financial_news(sample_path("financial_news"))
        texts, label = [], df["label"].iloc[0]
        for text in df["text"]:
            texts.append(text)
            prompt = build_prompt(" ".join(texts))
            if _n_tokens(tokenizer, prompt + " " + label) >= target:
                break
        return {"text": " ".join(texts), "prompt": prompt, "completion": " " + label,
                "label": label}  # fmt: skip
    if task == "webglm":
        from phi2kit.data.webglm import fit_to_length, load_webglm

        rows = load_webglm(sample_path("webglm"), split="train")
        first = dict(rows[0])
        first["references"] = [ref for row in rows[:50] for ref in row["references"]]
        example, _ = fit_to_length(first, tokenizer, target)
        return example
    if task == "chat":
        from phi2kit.chat import to_examples
        from phi2kit.data.oasst import load_oasst

        thread: list = []
        for t in load_oasst(sample_path("oasst1"), lang="en"):
            thread += t if t[-1][0] == "assistant" else t[:-1]
            example = to_examples(thread, tokenizer, 10**9)[-1]  # the whole thread: nothing cut
            if _n_tokens(tokenizer, example["prompt"] + example["completion"]) >= target:
                break
        return {"prompt": example["prompt"], "completion": example["completion"]}
    raise ValueError(task)


# --- one recipe ---------------------------------------------------------------------------------


def planner_terms(cfg, profile, recipe, seq: int, batch: int = 1):
    """The planner's estimate for this run: ``batch`` rows of ``seq`` tokens, the profile's
    settings."""
    from phi2kit.plan import estimate

    one = dataclasses.replace(recipe, batch_size=batch, grad_accum=1, max_length=seq)
    overhead = None if profile.requires_cuda else 0.0
    return estimate(profile, one, config=cfg, overhead_gb=overhead, device_gb=1e6)


class StepProbe:
    """Trainer callback: live tensors over forward + backward, gradients, optimizer state."""

    def __init__(self) -> None:
        from transformers import TrainerCallback

        probe = self

        class _Callback(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                from measure_memory import live_bytes_tracker

                probe.tracker = live_bytes_tracker()
                probe.tracker.__enter__()

            def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
                probe.tracker.__exit__(None, None, None)
                probe.live_peak = probe.tracker.peak
                probe.grad_bytes = sum(
                    p.grad.numel() * p.grad.element_size()
                    for p in model.parameters()
                    if p.requires_grad and p.grad is not None
                )

            def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
                from measure_memory import optimizer_state_bytes

                probe.opt_bytes = optimizer_state_bytes(optimizer)

            def on_step_end(self, args, state, control, **kwargs):
                # fp16 AMP: measure the first step the grad scaler does not skip, then stop
                accelerator = getattr(probe.trainer, "accelerator", None)
                if not getattr(accelerator, "optimizer_step_was_skipped", False):
                    control.should_training_stop = True
                return control

        self.callback = _Callback()
        self.trainer = None
        self.tracker = None
        self.live_peak = self.grad_bytes = self.opt_bytes = 0


def run_recipe(task: str, profile, cfg, out: Path, args) -> tuple[list[Row], dict]:
    """Load, add LoRA, one step, save + reload the adapter, generate; rows to check."""
    import torch
    from datasets import Dataset
    from measure_memory import model_bytes
    from meta_report import recipe_report

    from phi2kit import footprint
    from phi2kit.lora import add_lora, save_adapter
    from phi2kit.models import describe, load_model, load_tokenizer
    from phi2kit.plan.course import TYPICAL_TOKENS
    from phi2kit.recipes import get_recipe

    recipe = get_recipe(task, profile)  # the T4 recipe: the profile is t4 with CPU settings
    # --recipe-batch: the recipe's micro-batch, every row at max_length (what the fit is for)
    batch = recipe.batch_size if args.recipe_batch else 1
    step = dataclasses.replace(recipe, max_steps=args.steps, batch_size=batch, grad_accum=1)
    seq_cls = recipe.task_type == "SEQ_CLS"
    tokenizer = load_tokenizer(profile, padding_side="right")
    target = recipe.max_length if args.recipe_batch else TYPICAL_TOKENS[task]
    example = train_example(task, tokenizer, target)
    info: dict = {"task": task, "lora_r": recipe.lora_r, "task_type": recipe.task_type,
                  "batch": batch}  # fmt: skip
    rows: list[Row] = []

    torch.manual_seed(args.seed)
    with phase() as load:
        if seq_cls:
            from phi2kit.classifier import load_classifier

            model = load_classifier(profile, quantize_4bit=recipe.quantize_4bit)
        else:
            model = load_model(profile, quantize_4bit=recipe.quantize_4bit)
    loaded_bytes = model_bytes(model)
    planned_loaded = footprint.weight_bytes(
        cfg, profile.dtype, quantize_4bit=recipe.quantize_4bit, head=not seq_cls
    ) + (4 * cfg.hidden_size * 3 if seq_cls else 0)  # the fresh fp32 score head
    n_base = describe(model).parameters  # 4-bit weights count as unpacked

    model = add_lora(model, step, profile)
    trainable = model.get_nb_trainable_parameters()[0]
    skeleton = recipe_report(task, profile, config=cfg).trainable
    rows += [
        Row("trainable parameters vs meta skeleton", trainable, skeleton, "count", 0),
        Row("trainable parameters vs planner", trainable,
            footprint.lora_parameters(cfg, recipe), "count", 0),
        Row("model bytes, loaded (nf4)", loaded_bytes, planned_loaded, "GB", TOL_WEIGHTS),
    ]  # fmt: skip

    if seq_cls:
        import pandas as pd

        from phi2kit.classifier import classifier_trainer, tokenize_headlines

        df = pd.DataFrame({"text": [example["text"]] * batch, "label": [example["label"]] * batch})
        train_ds = tokenize_headlines(df, tokenizer, recipe.max_length)
        seq = len(train_ds[0]["input_ids"])
    else:
        from phi2kit.training import sft_trainer

        train_ds = Dataset.from_list([{"prompt": example["prompt"],
                                       "completion": example["completion"]}] * batch)  # fmt: skip
    probe = StepProbe()
    kwargs = {"warmup_steps": 0}  # a warmup would make the first step's learning rate 0
    if seq_cls:
        trainer = classifier_trainer(model, tokenizer, train_ds, profile, step,
                                     out / f"{task}_trainer", **kwargs)  # fmt: skip
    else:
        trainer = sft_trainer(model, tokenizer, train_ds, profile, step,
                              out / f"{task}_trainer", **kwargs)  # fmt: skip
        seq = len(trainer.train_dataset[0]["input_ids"])
    trainer.add_callback(probe.callback)
    probe.trainer = trainer
    adapted_bytes = model_bytes(model)
    est = planner_terms(cfg, profile, recipe, seq, batch)
    p = est.parts
    planned_adapted = (p["base weights"] + p["LoRA weights (fp32)"]) * GB
    if seq_cls:  # PEFT keeps the original (frozen) score head next to its trainable copy
        planned_adapted += 4 * cfg.hidden_size * 3
    with phase() as train, profiled(args.profile):
        trainer.train()
    loss = trainer.state.log_history[-1].get("train_loss")
    info["steps"] = trainer.state.global_step
    # fp16 AMP (CUDA): the grad scaler skips a step whose gradients overflow; nothing moves
    skipped = bool(getattr(trainer.accelerator, "optimizer_step_was_skipped", False))
    opt_tol = TOL_ADAM8BIT if "8bit" in profile.optim else TOL_ADAMW
    step_planned = (p["activations"] + p["logits + grads"] + p["LoRA gradients (fp32)"]) * GB
    cpu_total = sum(v for k, v in p.items() if k != "overhead") * GB
    rows += [
        Row("model bytes, after add_lora", adapted_bytes, planned_adapted, "GB", TOL_WEIGHTS),
        Row("LoRA gradients", probe.grad_bytes, p["LoRA gradients (fp32)"] * GB, "GB", TOL_GRADS),
        Row(f"optimizer state ({profile.optim})", probe.opt_bytes, p["optimizer state"] * GB,
            "GB", opt_tol),
        Row("step: live tensors (acts + logits + grads)", probe.live_peak, step_planned, "GB",
            TOL_STEP_LIVE if seq_cls else None),  # SFT: trl's fused LM head (docstring)
        Row("peak RSS, loading", load.peak_rss, None, "GB"),
    ]  # fmt: skip
    if train.peak_gpu is not None:
        rows += gpu_rows(load, train, cpu_total)
    else:
        rows.append(Row("peak RSS, step (>= planner CPU total)", train.peak_rss, cpu_total, "GB",
                        TOL_RSS_BELOW, lower_bound=True))  # fmt: skip

    # Save the adapter (notebooks 02-06), reload it next to the trained one, compare.
    adapter_dir = save_adapter(model, out / f"{task}_adapter")
    file_bytes = (adapter_dir / "adapter_model.safetensors").stat().st_size
    rows.append(Row("adapter file (4 B/param)", file_bytes, 4 * trainable, "GB", TOL_ADAPTER_FILE))
    model.load_adapter(str(adapter_dir), adapter_name="reloaded")
    trained = {n: t for n, t in model.named_parameters() if ".default." in n}
    reloaded = dict(model.named_parameters())
    same = all(torch.equal(t, reloaded[n.replace(".default.", ".reloaded.")]) for n, t in
               trained.items())  # fmt: skip
    moved = skipped or any(t.abs().sum() > 0 for n, t in trained.items() if "lora_B" in n)
    model.delete_adapter("reloaded")
    model.set_adapter("default")

    with phase() as use:
        model.eval()
        if seq_cls:
            from phi2kit_exercises.classification import predict_logits

            logits = predict_logits(model, tokenizer, [example["prompt"]])
            use_ok, used = bool(torch.isfinite(torch.as_tensor(logits)).all()), logits.round(3)
        else:
            from phi2kit.generation import generate

            gen = generate(model, tokenizer, [example["prompt"]], max_new_tokens=args.new_tokens)
            use_ok, used = gen.new_tokens[0] > 0, repr(gen.texts[0])
    info.update(parameters=n_base, seq=seq, loss=loss, skipped=skipped, adapter_identical=same,
                lora_b_moved=moved, used=used, use_ok=use_ok, load_s=load.seconds,
                step_s=train.seconds,
                use_s=use.seconds, adapter=str(adapter_dir), exact_rss=load.exact_peak,
                cpu_s={"load": load.cpu_seconds, "step": train.cpu_seconds,
                       "use": use.cpu_seconds})  # fmt: skip
    if task == "sentiment" and "merge" in args.recipe_list:  # for notebook 05's routes
        info["model"], info["tokenizer"] = model, tokenizer
    del model, trainer
    free()
    return rows, info


# --- notebooks 08 (DPO) and 09 (GRPO) ------------------------------------------------------------


def write_adapter(cfg, recipe, profile, folder: Path, base: str, seed: int) -> Path:
    """A LoRA adapter of ``recipe``'s shape, as ``save_pretrained`` writes one, with seeded
    random A and B: the stand-in for the adapter DPO (06's) or GRPO (04's) starts from.

    Built on the meta-device skeleton (names and shapes of PEFT's own ``state_dict``), so no
    model is loaded for it; B is not zero, as after SFT.
    """
    import torch
    from meta_report import phi2_on_meta
    from peft import get_peft_model, get_peft_model_state_dict
    from safetensors.torch import save_file

    from phi2kit.lora import lora_config

    with torch.device("meta"):
        peft_model = get_peft_model(phi2_on_meta(None, profile, cfg), lora_config(recipe))
    gen = torch.Generator().manual_seed(seed)
    state = {name: torch.randn(tuple(t.shape), generator=gen) * 0.01 for name, t in
             get_peft_model_state_dict(peft_model).items()}  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    save_file(state, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    config = peft_model.peft_config["default"]
    config.base_model_name_or_path = base
    config.save_pretrained(str(folder))
    return folder


def dpo_example(tokenizer, target: int) -> dict:
    """One preference pair of the sample's kind, its prompt a conversation of ``target`` tokens.

    The prompt and the chosen reply are :func:`train_example`'s chat example (sample threads
    joined until prompt + reply reach ``target``); the rejected reply is the sample's first
    lower-ranked one (``phi2kit.data.oasst_pairs.load_pairs``, notebook 08's loader).
    """
    from phi2kit.data import sample_path
    from phi2kit.data.oasst_pairs import load_pairs

    chat = train_example("chat", tokenizer, target)
    rejected = load_pairs(sample_path("oasst1"), lang="en")[0]["rejected"]
    return {"prompt": chat["prompt"], "chosen": chat["completion"], "rejected": rejected}


def grpo_example(tokenizer, target: int) -> dict:
    """A WebGLM prompt (notebook 09's: references, question, "Answer:") of about ``target``
    tokens, with its references for the rewards."""
    from phi2kit.data import sample_path
    from phi2kit.data.webglm import build_qa_prompt, load_webglm

    rows = load_webglm(sample_path("webglm"), split="train")
    refs, question = [], rows[0]["question"]
    for ref in (r for row in rows[:50] for r in row["references"]):
        refs.append(ref)
        if _n_tokens(tokenizer, build_qa_prompt(question, refs)) >= target:
            break
    return {"prompt": build_qa_prompt(question, refs), "references": refs}


def _lora_bytes(model, adapter: str) -> int:
    return sum(p.numel() * p.element_size() for n, p in model.named_parameters()
               if f".{adapter}." in n)  # fmt: skip


def _step_rows(probe, optim: str, p: dict, step_planned: float, tol: float | None,
               load, train) -> list[Row]:  # fmt: skip
    """Rows common to DPO and GRPO: gradients, optimizer state, the step's live tensors, RSS."""
    rows = [
        Row("LoRA gradients", probe.grad_bytes, p["LoRA gradients (fp32)"] * GB, "GB", TOL_GRADS),
        Row(f"optimizer state ({optim})", probe.opt_bytes, p["optimizer state"] * GB, "GB",
            TOL_ADAM8BIT if "8bit" in optim else TOL_ADAMW),
        Row("step: live tensors (see docstring)", probe.live_peak, step_planned, "GB", tol),
        Row("peak RSS, loading + trainer", load.peak_rss, None, "GB"),
    ]  # fmt: skip
    cpu_total = sum(v for k, v in p.items() if k != "overhead") * GB
    if train.peak_gpu is not None:
        rows += gpu_rows(load, train, cpu_total)
    else:
        rows.append(Row("peak RSS, step (>= planner CPU total)", train.peak_rss, cpu_total, "GB",
                        TOL_RSS_BELOW, lower_bound=True))  # fmt: skip
    return rows


def _preference_step_info(trainer, model, load, train, est) -> dict:
    """What the DPO and GRPO steps both report: steps, skip, adapters, times, planner total."""
    return {"steps": trainer.state.global_step,
            "skipped": bool(getattr(trainer.accelerator, "optimizer_step_was_skipped", False)),
            "adapters": list(model.peft_config),
            "ref_frozen": not any(p.requires_grad for n, p in model.named_parameters()
                                  if ".ref." in n),
            "load_s": load.seconds, "step_s": train.seconds,
            "cpu_s": {"load": load.cpu_seconds, "step": train.cpu_seconds},
            "planner_total_gb": est.total_gb}  # fmt: skip


def run_dpo(profile, cfg, out: Path, args) -> tuple[list[Row], dict]:
    """Notebook 08 / ``phi2kit train dpo`` at batch 1 pair: the SFT adapter loaded trainable
    on the nf4 base, trl's frozen ``ref`` copy of it as the reference, one DPO step."""
    from datasets import Dataset
    from measure_memory import model_bytes
    from meta_report import recipe_report

    from phi2kit import footprint
    from phi2kit.commands.train_tasks import Data, Setup, dpo
    from phi2kit.models import load_tokenizer
    from phi2kit.plan.dpo import estimate_dpo
    from phi2kit.recipes import get_recipe

    recipe = get_recipe("dpo", profile)  # the T4 recipe: the profile is t4 with CPU settings
    step = dataclasses.replace(recipe, max_steps=args.steps, batch_size=1, grad_accum=1)
    tokenizer = load_tokenizer(profile, padding_side="right")
    pair = dpo_example(tokenizer, args.dpo_tokens)
    adapter = write_adapter(cfg, recipe, profile, out / "dpo_sft_adapter", profile.model_id,
                            args.seed)  # fmt: skip
    setup = Setup("dpo", profile, step, adapter=adapter)
    probe = StepProbe()
    with phase() as load:  # phi2kit train dpo's trainer: nf4 base, PeftModel, DPOTrainer
        trainer = dpo(setup, Data(None, tokenizer, Dataset.from_list([pair]), None),
                      out / "dpo_trainer", save_strategy="no", logging_steps=1,
                      seed=args.seed)  # fmt: skip
    model = trainer.model
    trainer.add_callback(probe.callback)
    probe.trainer = trainer
    row = trainer.train_dataset[0]
    seq = len(row["prompt_ids"]) + max(len(row["chosen_ids"]), len(row["rejected_ids"]))
    est = estimate_dpo(profile, dataclasses.replace(step, max_length=seq), reference="adapter",
                       precompute=False, config=cfg, overhead_gb=0.0, device_gb=1e6)  # fmt: skip
    p = est.parts
    no_upcast = footprint.weight_bytes(cfg, profile.dtype, quantize_4bit=True, upcast_fp32=False)
    trainable = model.get_nb_trainable_parameters()[0]
    rows = [
        Row("trainable parameters vs meta skeleton", trainable,
            recipe_report("dpo", profile, config=cfg).trainable, "count", 0),
        Row("trainable parameters vs planner", trainable, footprint.lora_parameters(cfg, recipe),
            "count", 0),
        Row("reference: trl's `ref` adapter", _lora_bytes(model, "ref"), p["reference"] * GB,
            "GB", TOL_WEIGHTS),
        # notebook 08 and `phi2kit train dpo` load the adapter onto the nf4 base without
        # prepare_model_for_kbit_training: nothing is upcast to fp32 (docstring: DPO)
        Row("model bytes (nf4 + SFT adapter + ref)", model_bytes(model),
            (p["base weights"] + p["LoRA weights (fp32)"] + p["reference"]) * GB, "GB",
            TOL_WEIGHTS),
        Row("planner's base weights: nothing upcast", p["base weights"] * GB, no_upcast, "GB",
            TOL_WEIGHTS),
    ]  # fmt: skip
    step_planned = (p["activations"] + p["logits + grads"] + p["reference pass"]
                    + p["LoRA gradients (fp32)"]) * GB  # fmt: skip
    with phase() as train:
        trainer.train()
    rows += _step_rows(probe, profile.optim, p, step_planned, TOL_PREF_STEP, load, train)
    log = [h for h in trainer.state.log_history if "loss" in h]
    info = {"task": "dpo", "task_type": "DPO", "lora_r": recipe.lora_r, "seq": seq,
            "loss": log[-1]["loss"] if log else None,
            **_preference_step_info(trainer, model, load, train, est)}  # fmt: skip
    del model, trainer
    free()
    return rows, info


def run_grpo(profile, cfg, out: Path, args) -> tuple[list[Row], dict]:
    """Notebook 09's calls at one prompt: 04's adapter loaded trainable on the nf4 base,
    ``GRPOTrainer`` (no vLLM) with 04's checks as rewards; one step generates
    ``num_generations`` completions of ``--grpo-tokens``, runs the ``ref`` adapter (beta > 0)
    and trains on them."""
    import warnings

    from datasets import Dataset
    from measure_memory import model_bytes
    from meta_report import recipe_report
    from peft import PeftModel, prepare_model_for_kbit_training
    from trl import GRPOConfig, GRPOTrainer

    from phi2kit import footprint
    from phi2kit.models import load_model, load_tokenizer
    from phi2kit.plan.grpo import estimate_grpo
    from phi2kit.recipes import get_recipe
    from phi2kit.rewards import citations_in_range, citations_supported, guard, make_stops_on_eos
    from phi2kit.training import finish_trainer

    recipe = get_recipe("grpo", profile)
    n = recipe.num_generations
    tokenizer = load_tokenizer(profile, padding_side="left")
    example = grpo_example(tokenizer, args.grpo_prompt_tokens)
    prompt_len = len(tokenizer(example["prompt"])["input_ids"])
    step = dataclasses.replace(recipe, max_steps=args.steps, batch_size=n, grad_accum=1,
                               steps_per_generation=1, max_completion_length=args.grpo_tokens,
                               max_length=prompt_len + args.grpo_tokens)  # fmt: skip
    adapter = write_adapter(cfg, recipe, profile, out / "grpo_sft_adapter", profile.model_id,
                            args.seed)  # fmt: skip
    probe = StepProbe()
    with phase() as load, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*gradient_checkpointing_(en|dis)able")
        model = load_model(profile, quantize_4bit=True)
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=profile.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False})  # fmt: skip
        model = PeftModel.from_pretrained(model, str(adapter), is_trainable=True)
        config = GRPOConfig(
            output_dir=str(out / "grpo_trainer"), use_vllm=False, num_generations=n,
            per_device_train_batch_size=step.batch_size, gradient_accumulation_steps=1,
            max_completion_length=step.max_completion_length, beta=step.beta,
            temperature=step.temperature, steps_per_generation=1,
            reward_weights=[1.0, 0.0, 0.0, 1.0], learning_rate=step.learning_rate,
            warmup_steps=0, max_steps=step.max_steps, fp16=profile.fp16, bf16=profile.bf16,
            optim=profile.optim, activation_checkpointing=profile.gradient_checkpointing,
            activation_checkpointing_kwargs={"use_reentrant": False}, logging_steps=1,
            save_strategy="no", report_to="none", seed=args.seed,
            use_cpu=not profile.requires_cuda, disable_tqdm=True,
        )  # fmt: skip
        rewards = [citations_supported, citations_in_range,
                   make_stops_on_eos(tokenizer.eos_token_id), guard]  # fmt: skip
        trainer = GRPOTrainer(model=model, reward_funcs=rewards, args=config,
                              train_dataset=Dataset.from_list([example] * n),
                              processing_class=tokenizer)  # fmt: skip
        trainer = finish_trainer(trainer, seeded_sampler=False)
    model = trainer.model
    trainer.add_callback(probe.callback)
    probe.trainer = trainer
    est = estimate_grpo(profile, step, config=cfg, device_gb=1e6)
    p = est.parts
    trainable = model.get_nb_trainable_parameters()[0]
    rows = [
        Row("trainable parameters vs meta skeleton", trainable,
            recipe_report("grpo", profile, config=cfg).trainable, "count", 0),
        Row("trainable parameters vs planner", trainable, footprint.lora_parameters(cfg, recipe),
            "count", 0),
        Row("reference: trl's `ref` adapter", _lora_bytes(model, "ref"),
            p["ref adapter (beta>0)"] * GB, "GB", TOL_WEIGHTS),
        Row("model bytes (nf4 + 04's adapter + ref)", model_bytes(model),
            (p["base weights"] + p["LoRA weights (fp32)"] + p["ref adapter (beta>0)"]) * GB,
            "GB", TOL_WEIGHTS),
    ]  # fmt: skip
    step_planned = (p["training step"] + p["generation (extra)"] + p["ref pass (extra)"]
                    + p["LoRA gradients (fp32)"]) * GB  # fmt: skip
    with phase() as train, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*gradient_checkpointing_(en|dis)able")
        trainer.train()
    rows += _step_rows(probe, profile.optim, p, step_planned, TOL_PREF_STEP, load, train)
    log = [h for h in trainer.state.log_history if "reward" in h]
    info = {"task": "grpo", "task_type": "GRPO", "lora_r": recipe.lora_r,
            "seq": step.max_length, "prompt_tokens": prompt_len,
            "completion_tokens": step.max_completion_length, "num_generations": n,
            "beta": step.beta, "loss": log[-1].get("loss") if log else None,
            "reward": log[-1].get("reward") if log else None,
            **_preference_step_info(trainer, model, load, train, est)}  # fmt: skip
    del model, trainer
    free()
    return rows, info


def report_preference(task: str, profile, cfg, out: Path, args, results: dict) -> list[str]:
    """Run DPO or GRPO, print its table; return failures."""
    rows, info = (run_dpo if task == "dpo" else run_grpo)(profile, cfg, out, args)
    what = (f"{info['seq']} tokens per sequence, chosen + rejected" if task == "dpo" else
            f"{info['num_generations']} completions of {info['completion_tokens']} tokens "
            f"after a {info['prompt_tokens']}-token prompt, beta {info['beta']}")  # fmt: skip
    unit = "pair" if task == "dpo" else "prompt"
    print_table(f"{task}: T4 recipe (QLoRA nf4, r={info['lora_r']}, reference: trl's `ref` "
                f"adapter), {info['steps']} step(s) at batch 1 {unit} ({what})", rows)  # fmt: skip
    cpu = info["cpu_s"]
    print(f"  times (wall / CPU): load {info['load_s']:.0f} / {cpu['load']:.0f} s, step "
          f"{info['step_s']:.0f} / {cpu['step']:.0f} s | loss {info['loss']} | adapters "
          f"{info['adapters']}, ref frozen: {info['ref_frozen']} | planner total "
          f"{info['planner_total_gb']:.3f} GB"
          + (f" | reward {info['reward']}" if task == "grpo" else ""))  # fmt: skip
    failures = [f"{task}: {r.name}" for r in rows if not r.ok]
    if info["skipped"]:
        failures.append(f"{task}: the grad scaler skipped every step (raise --steps)")
    if info["adapters"] != ["default", "ref"] or not info["ref_frozen"]:
        failures.append(f"{task}: adapters {info['adapters']}, ref frozen {info['ref_frozen']}")
    if info["loss"] is None or info["loss"] != info["loss"]:
        failures.append(f"{task}: no finite loss logged")
    results["recipes"][task] = {"rows": [dataclasses.asdict(r) | {"ok": r.ok} for r in rows],
                                **info}  # fmt: skip
    return failures


# --- notebook 05's routes ----------------------------------------------------------------------


def run_merge(profile, held: dict, adapter_dir: Path, out: Path) -> tuple[list[Row], dict]:
    """Routes of notebook 05 with the sentiment QLoRA adapter; errors against the adapter.

    ``held`` holds the trained ``model`` (taken out here, so that it can be freed before the
    full-precision copies load) and its ``tokenizer``.
    """
    import warnings

    import torch
    from peft import PeftModel

    from phi2kit.models import load_model
    from phi2kit_exercises.merging import dequantize_into, merge_error, probe_logits

    probe = ["### Human: Where does the otter live?\n### Assistant:",
             "Norvik Oyj 's net sales rose 12 % to EUR 40 mn"]  # fmt: skip
    info: dict = {}
    qlora, tokenizer = held.pop("model"), held["tokenizer"]
    with phase() as ph:
        qlora.eval()
        trained = probe_logits(qlora, tokenizer, probe)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PEFT warns about the rounding we measure
            requantized = qlora.merge_and_unload()
        info["PEFT 4-bit merge (re-quantized)"] = merge_error(
            trained, probe_logits(requantized, tokenizer, probe)
        )
        del requantized, qlora
        free()
        naive = PeftModel.from_pretrained(
            load_model(profile, quantize_4bit=False), str(adapter_dir)
        )
        naive = naive.merge_and_unload()
        info["(b) QLoRA into W"] = merge_error(trained, probe_logits(naive, tokenizer, probe))
        del naive
        free()
        base = load_model(profile, quantize_4bit=False)  # then W := dequant(nf4(W)), layer by layer
        quantized = load_model(profile, quantize_4bit=True)
        dequantize_into(base, quantized)
        del quantized
        dequant = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
        dequant_logits = probe_logits(dequant, tokenizer, probe)
        info["(c) dequantize, then merge"] = merge_error(trained, dequant_logits)
        merged_dir = out / "merged"
        dequant.save_pretrained(str(merged_dir))  # safetensors
        tokenizer.save_pretrained(str(merged_dir))
        del dequant, base
        free()
        reloaded = load_model(profile, quantize_4bit=False, source=str(merged_dir))
        info["reload identical"] = torch.equal(probe_logits(reloaded, tokenizer, probe),
                                               dequant_logits)  # fmt: skip
        del reloaded
        free()
    info["finite"] = all(
        v.max_abs == v.max_abs and v.max_abs < float("inf")
        for k, v in info.items() if hasattr(v, "max_abs")
    )  # fmt: skip
    info["seconds"], info["peak_rss"], info["peak_gpu"] = ph.seconds, ph.peak_rss, ph.peak_gpu
    info["cpu_seconds"] = ph.cpu_seconds
    return [Row("peak RSS, merge routes", ph.peak_rss, None, "GB")], info


# --- main ---------------------------------------------------------------------------------------


def run_profile(device: str, folder: Path):
    """The t4 profile pointed at the snapshot; on the CPU with CPU settings."""
    from phi2kit.profiles import check_hardware, get_profile
    from phi2kit.twin import fast_cpu_fp16_products

    t4 = get_profile("t4", check=False)
    if device == "cuda":
        profile = dataclasses.replace(t4, model_id=str(folder))
        check_hardware(profile)
        return profile, "t4 profile, model_id = the snapshot"
    profile = dataclasses.replace(
        t4, model_id=str(folder), requires_cuda=False, optim="adamw_torch"
    )
    fast_cpu_fp16_products()  # as the t4-cpu profile: torch's CPU fp16 products at fp32 speed
    note = ("t4 profile with CPU settings (dataclasses.replace): device_map='cpu', adamw_torch "
            "instead of paged_adamw_8bit; fp16 weights, nf4 + double quant, phi2kit_fp32 "
            "attention, gradient checkpointing and fp16=True as on the T4; fp16 products "
            "through fp32 BLAS (phi2kit.twin)")  # fmt: skip
    return profile, note


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--quick",
        action="store_true",
        help="Phi-2 at a quarter width with 2 layers, full vocabulary (seconds)",
    )
    p.add_argument(
        "--recipes",
        default=None,
        help=f"comma-separated, from {','.join(ALL_RECIPES)}, or 'all' "
        f"(default: {','.join(DEFAULT_RECIPES)}; with --quick: {','.join(QUICK_RECIPES)}; "
        "merge needs sentiment)",
    )
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument(
        "--snapshot",
        type=Path,
        default=None,
        help="folder for the random snapshot, kept and reused (default: a temporary "
        "folder, removed at the end)",
    )
    p.add_argument("--layers", type=int, default=None,
                   help="full width with this many of the 32 layers (a cheaper real-width run)")
    p.add_argument("--profile", action="store_true",
                   help="torch.profiler over each SFT/classifier step: the top operators")
    p.add_argument("--recipe-batch", action="store_true",
                   help="train at each SFT/classifier recipe's micro-batch with every row at its "
                   "max_length (the worst case the planner's fit is for; on a GPU, the real "
                   "step's peak) instead of batch 1 at a typical length")  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--steps",
        type=int,
        default=8,
        help="at most this many optimizer steps per recipe: training stops at the first "
        "step fp16 AMP's grad scaler does not skip (it skips steps whose scaled gradients "
        "overflow, halving its scale each time), and that step is measured",
    )
    p.add_argument("--new-tokens", type=int, default=4, help="tokens to generate")
    p.add_argument("--dpo-tokens", type=int, default=128,
                   help="dpo: tokens of prompt + chosen reply (the longer sequence of the pair)")
    p.add_argument("--grpo-prompt-tokens", type=int, default=96, help="grpo: prompt tokens")
    p.add_argument("--grpo-tokens", type=int, default=8,
                   help="grpo: max_completion_length of the step's completions")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    return p.parse_args(argv)  # fmt: skip


def report_merge(profile, held: dict, results: dict, out: Path) -> list[str]:
    """Run notebook 05's routes on the sentiment model, print them; return failures."""
    adapter = Path(results["recipes"]["sentiment"]["adapter"])
    _, info = run_merge(profile, held, adapter, out)
    free()
    print(
        f"\n## merge (notebook 05's routes, sentiment QLoRA adapter), {info['seconds']:.0f} s "
        f"({info['cpu_seconds']:.0f} s CPU), peak RSS {info['peak_rss'] / GB:.1f} GB"
    )
    for key, value in info.items():
        if hasattr(value, "max_abs"):
            print(f"  {key:34s} {value}")
    print(f"  merged model saved and reloaded, logits identical: {info['reload identical']}")
    results["recipes"]["merge"] = {
        k: (str(v) if hasattr(v, "max_abs") else v) for k, v in info.items()
    }
    if not info["reload identical"] or not info["finite"]:
        return ["merge: reload not identical or a non-finite error"]
    return []


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t0, c0 = time.perf_counter(), time.process_time()
    if args.recipes is None:
        args.recipes = ",".join(QUICK_RECIPES if args.quick else DEFAULT_RECIPES)
    wanted = ALL_RECIPES if args.recipes == "all" else tuple(args.recipes.split(","))
    recipes = tuple(r for r in ALL_RECIPES if r in wanted)  # sentiment first: merge uses it
    args.recipe_list = recipes
    unknown = set(wanted) - set(ALL_RECIPES)
    if unknown:
        raise SystemExit(f"unknown recipes {sorted(unknown)}; choose from {ALL_RECIPES}")
    if "merge" in recipes and "sentiment" not in recipes:
        raise SystemExit("merge uses the sentiment adapter: add sentiment to --recipes")

    import torch

    from phi2kit.footprint import count_parameters
    from phi2kit.logs import quiet

    quiet()
    cfg = phi2_config(args.quick, args.layers)
    tmp = None
    folder = args.snapshot
    if folder is None:
        tmp = tempfile.TemporaryDirectory(prefix="phi2_real_size_")
        folder = Path(tmp.name) / "snapshot"
    # one folder per run for adapters and trainers: two runs may share a snapshot
    folder.parent.mkdir(parents=True, exist_ok=True)
    out = Path(tempfile.mkdtemp(prefix=f"{folder.name}_runs_", dir=folder.parent))
    results: dict = {"quick": args.quick, "device": args.device, "recipes": {}}
    failures: list[str] = []
    try:
        n_params = count_parameters(cfg)
        size = "quick: 1/4 width, 2 of 32 layers" if args.quick else "full size"
        if args.layers:
            size = f"{'1/4' if args.quick else 'full'} width, {args.layers} of 32 layers"
        print(f"Phi-2 ({size}): {n_params:,} parameters (published config; Phi-2 has "
              f"{PHI2_PARAMETERS:,}); torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads, device {args.device}")  # fmt: skip
        if not args.quick and not args.layers and n_params != PHI2_PARAMETERS:
            failures.append(f"parameter count {n_params:,} != {PHI2_PARAMETERS:,}")
        if snapshot_matches(folder, cfg, args.seed):
            print(f"snapshot: reusing {folder}")
        else:
            with phase() as ph:
                built = build_snapshot(folder, cfg, args.seed)
            files = sorted(p.name for p in folder.iterdir())
            print(
                f"snapshot: {built['parameters']:,} random parameters (seed {args.seed}) "
                f"saved in {ph.seconds:.0f} s ({ph.cpu_seconds:.0f} s CPU), peak RSS "
                f"{ph.peak_rss / GB:.1f} GB: {folder}"
            )
            print("  files:", ", ".join(files))  # fmt: skip
            results["build_s"] = ph.seconds
            if built["parameters"] != n_params:
                failures.append(f"built {built['parameters']:,} parameters, planner {n_params:,}")
        profile, note = run_profile(args.device, folder)
        print("profile:", note)
        for task in (r for r in recipes if r != "merge"):
            if task in PREFERENCE:
                failures += report_preference(task, profile, cfg, out, args, results)
                free()
                continue
            rows, info = run_recipe(task, profile, cfg, out, args)
            held = {"model": info.pop("model", None), "tokenizer": info.pop("tokenizer", None)}
            title = (f"{task}: T4 recipe ({info['task_type']}, QLoRA nf4, r={info['lora_r']}), "
                     f"{info['steps']} step(s) at batch {info['batch']} x {info['seq']} "
                     "tokens")  # fmt: skip
            print_table(title, rows)
            cpu = info["cpu_s"]
            print(
                f"  times (wall / CPU): load {info['load_s']:.0f} / {cpu['load']:.0f} s, step "
                f"{info['step_s']:.0f} / {cpu['step']:.0f} s, use {info['use_s']:.0f} / "
                f"{cpu['use']:.0f} s | loss {info['loss']:.3f} | adapter reloaded "
                f"identical: {info['adapter_identical']} | lora_B moved: {info['lora_b_moved']}"
                + (" | the last step was skipped by the grad scaler" if info["skipped"] else "")
            )
            print(f"  {'logits' if info['task_type'] == 'SEQ_CLS' else 'generated'}: "
                  f"{info['used']}")  # fmt: skip
            if info["parameters"] != count_parameters(cfg) and info["task_type"] == "CAUSAL_LM":
                failures.append(f"{task}: the loaded model has {info['parameters']:,} parameters")
            failures += [f"{task}: {r.name}" for r in rows if not r.ok]
            for key in ("adapter_identical", "lora_b_moved", "use_ok"):
                if not info[key]:
                    failures.append(f"{task}: {key} is False")
            if info["skipped"]:
                failures.append(f"{task}: the grad scaler skipped every step (raise --steps)")
            results["recipes"][task] = {
                "rows": [dataclasses.asdict(r) | {"ok": r.ok} for r in rows],
                **{k: v for k, v in info.items() if k != "used"},
            }
            if task == "sentiment" and "merge" in recipes:  # before the next model loads
                failures += report_merge(profile, held, results, out)
            held.clear()
            free()
    finally:
        if tmp is not None:
            shutil.rmtree(out, ignore_errors=True)
            tmp.cleanup()
        elif out.exists():
            shutil.rmtree(out, ignore_errors=True)
    results["failures"] = failures
    results["wall_s"], results["cpu_s"] = time.perf_counter() - t0, time.process_time() - c0
    print(
        f"\ntotal: {results['wall_s']:.0f} s wall, {results['cpu_s']:.0f} s CPU "
        f"({torch.get_num_threads()} threads)"
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print("\n" + ("FAILED: " + "; ".join(failures) if failures else "all checks passed"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

"""Trainers that are safe on a T4: notebook 02's calls (and its cell :func:`plot_losses`),
kept for the later lessons and ``phi2kit train``. fp16/bf16 come from the profile, never from
a library default (trl's ``SFTConfig`` defaults to bf16, which a T4 only emulates).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import torch
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
from torch import nn

from phi2kit.profiles import Profile
from phi2kit.recipes import Recipe
from phi2kit.twin import cpu_fp16_amp


def upcast_trainable(model: nn.Module) -> int:
    """Cast trainable parameters to fp32 (fp16 AMP's grad scaler needs them); return the count."""
    n = 0
    for p in model.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
            n += 1
    return n


#: Non-reentrant activation checkpointing: what transformers 5 uses by default, said explicitly
#: so that peft's kbit preparation and the Trainer agree.
CHECKPOINTING_KWARGS = {"use_reentrant": False}


def common_args(
    profile: Profile, recipe: Recipe, output_dir: str | Path, eval_steps: int | None = None
) -> dict:
    """The TrainingArguments keywords every trainer shares (SFT, DPO, GRPO): profile and recipe."""
    args = {
        "output_dir": str(output_dir),
        "per_device_train_batch_size": recipe.batch_size,
        "per_device_eval_batch_size": recipe.batch_size,
        "gradient_accumulation_steps": recipe.grad_accum,
        "learning_rate": recipe.learning_rate,
        "warmup_steps": max(1, round(recipe.warmup_ratio * recipe.max_steps)),
        "lr_scheduler_type": "linear",
        "max_steps": recipe.max_steps,
        "fp16": profile.fp16,  # explicit: never inherit a library default
        "bf16": profile.bf16,
        "optim": profile.optim,
        # transformers 5 name; the old `gradient_checkpointing` is a deprecated alias
        "activation_checkpointing": profile.gradient_checkpointing,
        "activation_checkpointing_kwargs": dict(CHECKPOINTING_KWARGS),
        "logging_steps": max(1, recipe.max_steps // 20),
        "save_strategy": "no",
        "report_to": "none",
        "seed": 0,
        "data_seed": 0,
        "use_cpu": not profile.requires_cuda,
        "dataloader_num_workers": 0,
        # GPU profiles: the Trainer's progress bar (a notebook widget in Jupyter) with the
        # time left and a row per logged loss; a 55-minute T4 run must show signs of life.
        # The CPU profiles (tiny, CI) finish in seconds and stay quiet.
        "disable_tqdm": not profile.requires_cuda,
    }
    if eval_steps:  # as notebook 02: evaluate and save every eval_steps, keep the best (eval loss)
        args.update(eval_strategy="steps", eval_steps=eval_steps, save_strategy="steps",
                    save_steps=eval_steps, load_best_model_at_end=True, save_total_limit=2,
                    metric_for_best_model="eval_loss", greater_is_better=False)
    return args


def sft_config(profile: Profile, recipe: Recipe, output_dir: str | Path,
               eval_steps: int | None = None, **overrides):  # fmt: skip
    """trl ``SFTConfig`` for prompt/completion data: loss on the completion only. With
    ``eval_steps``, evaluate and checkpoint that often and load the best at the end (02)."""
    from trl import SFTConfig

    args = common_args(profile, recipe, output_dir, eval_steps)
    return SFTConfig(**{**args, "max_length": recipe.max_length, "completion_only_loss": True,
                        "packing": False, "train_sampling_strategy": "group_by_length",
                        **overrides})  # fmt: skip


def sft_trainer(model, tokenizer, train_dataset, profile: Profile, recipe: Recipe,
                output_dir: str | Path, eval_dataset=None, **overrides):  # fmt: skip
    """trl ``SFTTrainer`` through :func:`finish_trainer`; ``overrides`` go to :func:`sft_config`."""
    from trl import SFTTrainer

    args = sft_config(profile, recipe, output_dir, **overrides)
    return finish_trainer(SFTTrainer(model=model, args=args, train_dataset=train_dataset,
                                     eval_dataset=eval_dataset, processing_class=tokenizer))


def finish_trainer(trainer, *, seeded_sampler: bool = True):
    """The last step for every trainer phi2kit builds: trainable weights to fp32 (trl casts QLoRA
    adapters to bf16), fp16 AMP on a CPU, the seeded sampler (unless ``seeded_sampler=False``) and
    no log dict per step."""
    from transformers.trainer_callback import PrinterCallback

    from phi2kit.batching import group_by_length

    upcast_trainable(trainer.model)
    cpu_fp16_amp(trainer)
    trainer.remove_callback(PrinterCallback)
    return group_by_length(trainer) if seeded_sampler else trainer


def plot_losses(log_history, title="Train and eval loss", ax=None, log_scale=False, best_step=None):
    """Train ``loss`` and ``eval_loss`` from ``trainer.state.log_history`` against the step.

    A dotted vertical line marks ``best_step`` (``trainer.state.best_global_step``) when given.
    Draws on ``ax`` if given, else on a new figure; returns the figure.
    """
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        plt.close(fig)  # returned, so Jupyter shows it once
    for key, name in [("loss", "train"), ("eval_loss", "eval")]:
        steps = [h["step"] for h in log_history if key in h]
        if steps:
            values = [h[key] for h in log_history if key in h]
            ax.plot(steps, values, marker="o", markersize=3, label=f"{name} loss")
    if best_step is not None:
        ax.axvline(best_step, color="grey", linestyle=":", label=f"best (step {best_step})")
    if log_scale:  # labelled at 1, 2, 5 x 10^k as plain numbers
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set(xlabel="optimizer step", ylabel="loss", title=title)
    ax.legend()
    ax.grid(alpha=0.3)
    return ax.figure

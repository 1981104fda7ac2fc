"""``phi2kit train grpo``: notebook 09's prompts and trainer (the task of :mod:`.train_tasks`).

The trainer is the lesson's: trl's ``GRPOTrainer`` with the rewards lesson 09 writes
(:mod:`phi2kit.rewards`) and ``GRPOConfig`` from the recipe (``get_grpo_recipe``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from phi2kit.data.files import DataError

if TYPE_CHECKING:  # train_tasks imports this module: its names only for the annotations
    from phi2kit.commands.train_tasks import Data, Setup


def read_prompts(path: Path | None, setup: Setup, tokenizer):
    """Notebook 09's prompts: ``prompt`` (04's, references dropped from the last until it
    fits ``max_length - max_completion_length``) and the ``references`` it shows (the rewards
    read them). The train split after 04's SFT prompts, as far as the data allows (a folder),
    or one file's examples; no eval split (GRPO has no eval loss: 09 reads its test split)."""
    from datasets import Dataset

    from phi2kit.data.webglm import build_qa_prompt, load_webglm
    from phi2kit.recipes import get_recipe

    recipe = setup.recipe
    skip = get_recipe("webglm", setup.profile).n_train  # the prompts 04's SFT trained on
    examples = list(load_webglm(path, "train", limit=skip + recipe.n_train))
    start = max(0, min(skip, len(examples) - recipe.n_train))
    budget = recipe.max_length - recipe.max_completion_length
    rows = []
    for e in examples[start : start + recipe.n_train]:
        refs = list(e["references"])
        while refs and len(tokenizer(build_qa_prompt(e["question"], refs)).input_ids) > budget:
            refs.pop()  # whole references, from the last; never the question (as 04 and 09)
        if refs:  # a question alone over the budget has nothing to cite: left out
            rows.append({"prompt": build_qa_prompt(e["question"], refs), "references": refs})
    if len(rows) < recipe.num_generations:
        raise DataError(
            f"{len(rows)} prompt(s) fit max_length - max_completion_length = {budget} "
            "tokens with a reference: need more (raise max_length)",
            path=path or "hub",
        )
    return Dataset.from_list(rows), None


def grpo(setup: Setup, data: Data, output_dir, **args):
    """Notebook 09's trainer: trl's ``GRPOTrainer`` with 09's rewards (:mod:`phi2kit.rewards`)
    and ``GRPOConfig`` from the recipe; on 04's adapter (``--adapter``, trl adds a frozen copy,
    ``ref``, as the reference) or a new LoRA on the profile's base (the reference: the base)."""
    import torch
    from peft import PeftModel, prepare_model_for_kbit_training
    from trl import GRPOConfig, GRPOTrainer

    from phi2kit.lora import is_quantized
    from phi2kit.models import load_model
    from phi2kit.rewards import (
        citations_in_range,
        citations_supported,
        guard,
        make_stops_on_eos,
    )
    from phi2kit.training import CHECKPOINTING_KWARGS, finish_trainer

    profile, recipe = setup.profile, setup.recipe
    config = GRPOConfig(
        output_dir=str(output_dir), use_vllm=False, num_generations=recipe.num_generations,
        per_device_train_batch_size=recipe.batch_size,
        gradient_accumulation_steps=recipe.grad_accum,
        max_completion_length=recipe.max_completion_length, beta=recipe.beta,
        temperature=recipe.temperature, steps_per_generation=recipe.steps_per_generation,
        reward_weights=list(GRPO_REWARD_WEIGHTS), learning_rate=recipe.learning_rate,
        warmup_steps=max(1, round(recipe.warmup_ratio * recipe.max_steps)),
        max_steps=recipe.max_steps, fp16=profile.fp16, bf16=profile.bf16, optim=profile.optim,
        activation_checkpointing=profile.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False},
        report_to="none", use_cpu=not profile.requires_cuda, disable_tqdm=not profile.requires_cuda,
        **args,
    )  # fmt: skip
    base = load_model(profile, quantize_4bit=recipe.quantize_4bit)
    base.config.pad_token_id = base.generation_config.pad_token_id = data.tokenizer.pad_token_id
    if is_quantized(base):  # 09's cells: 04's LoRA weights, trainable, on the prepared nf4 base
        base = prepare_model_for_kbit_training(
            base, use_gradient_checkpointing=profile.gradient_checkpointing,
            gradient_checkpointing_kwargs=CHECKPOINTING_KWARGS)  # fmt: skip
    model = PeftModel.from_pretrained(base, str(setup.adapter), is_trainable=True)
    rewards = [citations_supported, citations_in_range,
               make_stops_on_eos(data.tokenizer.eos_token_id), guard]  # fmt: skip
    data.tokenizer.padding_side = "left"  # GRPO generates
    trainer = GRPOTrainer(model=model, reward_funcs=rewards, args=config,
                          train_dataset=data.train, processing_class=data.tokenizer)  # fmt: skip
    trainer.add_callback(_warn_if_never_supported(citations_supported.__name__))
    finish_trainer(trainer, seeded_sampler=False)  # as 09: fp32 trainables, fp16 AMP on t4-cpu
    if "ref" in model.peft_config:  # as dpo: trl rounded the adapter to bf16 on a 4-bit base;
        with torch.no_grad():  # take back 04's exact fp32 weights from its first copy, `ref`
            for name, p in model.named_parameters():
                if ".default." in name:
                    p.copy_(model.get_parameter(name.replace(".default.", ".ref.")))
    return trainer


#: Notebook 09's ``reward_weights``: supported and the guard; in range and EOS logged only.
GRPO_REWARD_WEIGHTS = (1.0, 0.0, 0.0, 1.0)


def _warn_if_never_supported(reward_name: str):
    """A callback: at the end, a warning when no logged step had a supported citation (an
    adapter that never cites, e.g. not 04's: every group scores alike, nothing is learned)."""
    from transformers import TrainerCallback

    key = f"rewards/{reward_name}/mean"  # trl's log of each reward's mean

    class WarnIfNeverSupported(TrainerCallback):
        def on_train_end(self, args, state, control, **kwargs):
            supported = [h[key] for h in state.log_history if key in h]
            if state.is_world_process_zero and supported and max(supported) == 0:
                print("phi2kit train: warning: no completion had a supported citation at any "
                      "logged step, so GRPO had nothing to reinforce: the --adapter does not "
                      "cite yet; train it longer (phi2kit train webglm with more --steps, or "
                      "lesson 04), then run grpo from it")  # fmt: skip

    return WarnIfNeverSupported()

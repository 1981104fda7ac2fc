"""Training recipes: the LoRA/QLoRA and trainer numbers each notebook starts from, per profile."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from phi2kit.profiles import Profile, get_profile

TASKS: tuple[str, ...] = ("sentiment", "classifier", "webglm", "chat")

#: Phi-2's linear layers: attention (q/k/v and the output ``dense``) and the MLP (fc1/fc2).
PHI_LORA_TARGETS: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2")


@dataclass(frozen=True)
class Recipe:
    """LoRA and trainer settings for one task on one profile; ``quantize_4bit``: QLoRA.
    ``n_train`` and ``n_test`` (the test split) count per class for the classification tasks."""

    task: str
    quantize_4bit: bool
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: tuple[str, ...] = PHI_LORA_TARGETS
    learning_rate: float = 2e-4
    warmup_ratio: float = 0.03
    max_steps: int = 100
    batch_size: int = 4
    grad_accum: int = 4
    max_length: int = 512
    n_train: int = 300
    n_test: int = 50

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task={self.task!r} is not one of {TASKS}")
        _check_numbers(self)

    @property
    def effective_batch(self) -> int:
        return self.batch_size * self.grad_accum

    @property
    def task_type(self) -> Literal["CAUSAL_LM", "SEQ_CLS"]:
        """PEFT's: ``SEQ_CLS`` (PEFT then saves the ``score`` head) for the classifier."""
        return "SEQ_CLS" if self.task == "classifier" else "CAUSAL_LM"


def _check_numbers(r: Recipe) -> None:
    """A ``ValueError`` naming the first number out of range (``--set`` can give any)."""
    if not r.target_modules:
        raise ValueError("target_modules is empty: LoRA would train nothing")
    for name in ("lora_r", "lora_alpha", "max_steps", "batch_size", "grad_accum", "max_length",
                 "learning_rate", "n_train"):
        if getattr(r, name) <= 0:
            raise ValueError(f"{name} ({getattr(r, name)}) must be positive")
    if r.n_test < 0:
        raise ValueError(f"n_test ({r.n_test}) must be at least 0")
    for name in ("lora_dropout", "warmup_ratio"):
        if not 0 <= getattr(r, name) < 1:
            raise ValueError(f"{name} ({getattr(r, name)}) must be at least 0 and below 1")


# T4 recipes: the defaults a learner runs on a free Colab T4 (15 GB). Each is predicted to
# fit by phi2kit.plan; the README's planner table shows the numbers.
_T4: dict[str, Recipe] = {
    # n_test: the seed's test split, 300 per class
    "sentiment": Recipe("sentiment", quantize_4bit=True, max_length=256, max_steps=150,
                        n_test=300),
    "classifier": Recipe("classifier", quantize_4bit=True, max_length=256, max_steps=150,
                         batch_size=8, grad_accum=2, learning_rate=1e-4, n_test=300),
    # 1,600 examples: ~112 minutes on a T4 (plan.train_minutes; 56 at 2,048)
    "webglm": Recipe("webglm", quantize_4bit=True, max_length=1024, max_steps=100, batch_size=2,
                     grad_accum=8, n_train=5000, n_test=200),
    # r=64, alpha=16 on all six projections: the QLoRA paper's Guanaco setting on OASST1;
    # about 79 minutes on a T4 (plan.train_minutes; 39 at 2,048)
    "chat": Recipe("chat", quantize_4bit=True, lora_r=64, lora_alpha=16, lora_dropout=0.1,
                   max_length=1024, max_steps=120, batch_size=2, grad_accum=8, n_train=5000,
                   n_test=200),
}  # fmt: skip

# Tiny recipes: the same code on a 1.3M-parameter Phi on 2 CPU cores, about a minute each.
# Small models want larger learning rates and ranks relative to their width; no dropout and
# no accumulation keep the short runs deterministic and quick.
_TINY_LORA = dict(lora_r=16, lora_alpha=32, lora_dropout=0.0, learning_rate=3e-3, grad_accum=1)
_TINY: dict[str, Recipe] = {
    "sentiment": Recipe("sentiment", quantize_4bit=False, max_length=96, max_steps=120,
                        batch_size=16, n_train=120, n_test=40, **_TINY_LORA),
    "classifier": Recipe("classifier", quantize_4bit=False, max_length=96,
                         max_steps=40,  # a fresh 3-way head learns fast; LoRA and QLoRA both run
                         batch_size=16, n_train=120, n_test=40, **_TINY_LORA),
    "webglm": Recipe("webglm", quantize_4bit=True, max_length=256, max_steps=120, batch_size=8,
                     n_train=400, n_test=40, **_TINY_LORA),
    "chat": Recipe("chat", quantize_4bit=True, max_length=256, max_steps=120, batch_size=8,
                   n_train=400, n_test=40, **_TINY_LORA),
}  # fmt: skip

# T4-twin recipes (profile t4-cpu): the T4 recipe itself (QLoRA, its r/alpha, LoRA dropout,
# gradient accumulation > 1) with only the CPU-bound numbers shrunk: lengths, counts and
# the learning rate are the tiny recipes' (a 1.3M-parameter model needs a larger rate to
# learn in CI-sized step counts). A step costs more than a tiny-profile step on a CPU (nf4
# dequantization, fp16 autocast, checkpointing's recomputation), so the recipes whose learning
# checks allow it take fewer steps and smaller micro-batches than on tiny.
_T4_CPU_ACCUM = 2
_T4_CPU_STEPS = {"sentiment": (120, 4), "classifier": (20, 4), "webglm": (40, 2), "chat": (40, 2)}
_T4_CPU: dict[str, Recipe] = {
    name: replace(_T4[name], max_length=tiny.max_length, max_steps=_T4_CPU_STEPS[name][0],
                  batch_size=_T4_CPU_STEPS[name][1], grad_accum=_T4_CPU_ACCUM,
                  n_train=tiny.n_train, n_test=tiny.n_test, learning_rate=tiny.learning_rate)
    for name, tiny in _TINY.items()
}  # fmt: skip

_AMPERE: dict[str, Recipe] = {
    name: replace(r, batch_size=r.batch_size * 2, grad_accum=max(1, r.grad_accum // 2))
    for name, r in _T4.items()
}

_RECIPES = {"tiny": _TINY, "t4-cpu": _T4_CPU, "t4": _T4, "ampere": _AMPERE}


# --- Preference tuning (notebook 08) ----------------------------------------------------------
# DPO is not an SFT task: it is kept out of TASKS (which `phi2kit train`, the T4-twin tests
# and the meta-device report run through) and has its own recipe class with DPO's knobs.

PREFERENCE_TASKS: tuple[str, ...] = ("dpo",)


@dataclass(frozen=True)
class DPORecipe(Recipe):
    """A :class:`Recipe` for DPO (notebook 08) with trl's ``beta`` and ``precompute_ref_log_probs``;
    the LoRA numbers are 06's chat adapter's; ``batch_size`` counts pairs."""

    beta: float = 0.1
    precompute_ref_log_probs: bool = False

    def t4_minutes(self) -> float:
        """T4 minutes at the seed-003 clock: per pair two ~350-token sequences through the policy
        (6N FLOPs a token) and the reference's forward (2N)."""
        from phi2kit.footprint import count_parameters, phi2_config
        from phi2kit.plan.course import T4_EFFECTIVE_FLOPS

        tokens = self.max_steps * self.effective_batch * 2 * 350
        return tokens * 8 * count_parameters(phi2_config()) / T4_EFFECTIVE_FLOPS / 60

    def __post_init__(self) -> None:
        if self.task not in PREFERENCE_TASKS:
            raise ValueError(f"task={self.task!r} is not one of {PREFERENCE_TASKS}")
        if self.beta <= 0:
            raise ValueError(f"beta={self.beta} must be positive")
        _check_numbers(self)


_DPO: dict[str, DPORecipe] = {
    # 06's chat adapter (r=64, alpha=16, all six projections), trained on at a tenth of its
    # SFT rate: DPO starts from a model that already answers and only reorders its choices.
    # 50 steps of 16 pairs, up to 1,024 tokens: DPORecipe.t4_minutes gives the T4 time.
    "t4": DPORecipe("dpo", quantize_4bit=True, lora_r=64, lora_alpha=16, lora_dropout=0.1,
                    learning_rate=2e-5, max_length=1024, max_steps=50, batch_size=2,
                    grad_accum=8, n_train=800, n_test=200, beta=0.1),
    # the tiny chat adapter's numbers (06 on tiny), on the nf4 base 06 trained that adapter on
    "tiny": DPORecipe("dpo", quantize_4bit=True, max_length=160, max_steps=24, batch_size=8,
                      n_train=400, n_test=40, beta=0.1, **{**_TINY_LORA, "learning_rate": 1e-3}),
}  # fmt: skip
# the T4 recipe with the CPU-bound numbers shrunk, as for the SFT tasks
_DPO["t4-cpu"] = replace(_DPO["t4"], max_length=160, max_steps=16, batch_size=4, grad_accum=2,
                         n_train=400, n_test=40, learning_rate=1e-3)  # fmt: skip
_DPO["ampere"] = replace(_DPO["t4"], batch_size=4, grad_accum=4)


# --- GRPO (notebook 09): reinforcement learning on 04's checks, from 04's adapter ------------


@dataclass(frozen=True)
class GrpoRecipe(Recipe):
    """A :class:`Recipe` with the knobs of trl's ``GRPOTrainer`` (notebook 09); ``batch_size``
    counts completions, ``max_length`` is the prompt's budget plus ``max_completion_length``."""

    task: str = "grpo"
    quantize_4bit: bool = True
    num_generations: int = 4
    max_completion_length: int = 192
    beta: float = 0.04
    temperature: float = 1.0
    steps_per_generation: int | None = None

    def __post_init__(self) -> None:
        if self.task != "grpo":
            raise ValueError(f"a GrpoRecipe is for task 'grpo', not {self.task!r}")
        if self.num_generations < 2:  # a group of one has no advantage to compute
            raise ValueError(f"num_generations ({self.num_generations}) must be at least 2: "
                             "GRPO compares the completions of one prompt")  # fmt: skip
        _check_numbers(self)
        if self.generation_batch % self.num_generations:
            steps = "steps_per_generation" if self.steps_per_generation else "grad_accum"
            fits = [n for n in range(2, self.generation_batch + 1) if not self.generation_batch % n]
            raise ValueError(f"the generation batch (batch_size x {steps} = "
                             f"{self.generation_batch} completions) must be a multiple of "
                             f"num_generations={self.num_generations}: "
                             f"num_generations one of {', '.join(map(str, fits))}")  # fmt: skip
        if not 0 < self.max_completion_length < self.max_length:
            raise ValueError("max_completion_length must be positive and below max_length")

    @property
    def generation_batch(self) -> int:  # completions per generate call
        return self.batch_size * self.generation_steps

    @property
    def generation_steps(self) -> int:  # optimizer steps per generate call (trl's default)
        return self.steps_per_generation or self.grad_accum


# T4: 50 steps of 4 prompts x 4 completions, prompts up to 576 tokens and answers up to 192;
# 04's LoRA shape (the adapter GRPO continues) and a learning rate ten times below 04's.
_GRPO_T4 = GrpoRecipe(max_length=768, max_completion_length=192, num_generations=4,
                      batch_size=4, grad_accum=4, max_steps=50, learning_rate=2e-5,
                      n_train=200, n_test=200)
_GRPO = {
    "t4": _GRPO_T4,
    "ampere": replace(_GRPO_T4, batch_size=8, grad_accum=2),
    # tiny: short answers, one group of 8 per step, 4 steps per generate call (generation is
    # what costs most on a CPU); t4-cpu: the T4 recipe with these numbers, fewer steps
    "tiny": GrpoRecipe(max_length=256, max_completion_length=32, num_generations=8,
                       batch_size=8, grad_accum=1, steps_per_generation=4, max_steps=60,
                       learning_rate=3e-4, lora_dropout=0.0, n_train=240, n_test=60),
    "t4-cpu": replace(_GRPO_T4, max_length=256, max_completion_length=32, num_generations=8,
                      batch_size=8, grad_accum=2, max_steps=20, learning_rate=3e-4,
                      n_train=240, n_test=60),
}  # fmt: skip


def get_recipe(task: str, profile: Profile | str = "auto",
               **overrides: object) -> Recipe | DPORecipe | GrpoRecipe:  # fmt: skip
    """``task``'s recipe (:data:`TASKS`, ``dpo`` or ``grpo``) on ``profile``, with ``overrides``."""
    profile = get_profile(profile, check=False) if isinstance(profile, str) else profile
    recipes = _RECIPES[profile.name] | {"dpo": _DPO[profile.name], "grpo": _GRPO[profile.name]}
    if task not in recipes:
        raise ValueError(f"unknown task {task!r}; choose one of {tuple(recipes)}")
    return replace(recipes[task], **overrides) if overrides else recipes[task]

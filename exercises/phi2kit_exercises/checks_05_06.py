"""Criteria of the exercises that go with lessons 05 and 06 (see :mod:`checks_01_02`)."""

from __future__ import annotations

import json
import random
import tempfile
from pathlib import Path

from phi2kit_exercises.grader import Fail, call, criterion, exercise, expect, need

# --- 05_a: a QLoRA adapter merged into the full-precision base (Break and fix) ----------------

exercise(
    "05_a", "Merging a QLoRA adapter into a full-precision base", "Break and fix", "05 §5.5-5.6"
)


@criterion(
    "05_a",
    "the naive merge's error was measured against the adapter on 4-bit",
    "naive_err = merge_error(trained, probe_logits(naive_merged, tokenizer, PROBE))",
)
def _05a_naive(ns):
    err = need(ns, "naive_err")
    expect(err.max_abs > 1e-3, f"the naive merge looks exact ({err}): is the adapter QLoRA?")
    return str(err)


@criterion(
    "05_a",
    "the fixed merge reproduces the adapter-on-4-bit model",
    "the adapter learned against dequant(nf4(W)), not W: build a full-precision base with "
    "those weights (phi2kit_exercises.merging, lesson 05 §5.6), then put the adapter on it and "
    "merge",
)
def _05a_fixed(ns):
    from peft import PeftModel

    from phi2kit.models import load_model
    from phi2kit_exercises.merging import merge_error, probe_logits

    tokenizer, probe = need(ns, "tokenizer"), need(ns, "PROBE")
    qlora = PeftModel.from_pretrained(load_model(need(ns, "profile"), quantize_4bit=True),
                                      str(need(ns, "qlora_path")))  # fmt: skip
    reference = probe_logits(qlora, tokenizer, probe)
    fixed = need(ns, "fixed_merged")
    expect(not hasattr(fixed, "peft_config"), "fixed_merged is still a PeftModel: merge it")
    err = merge_error(reference, probe_logits(fixed, tokenizer, probe))
    naive = need(ns, "naive_err")
    expect(
        err.max_abs < 1e-3 and err.max_abs * 10 < naive.max_abs,
        f"fixed merge: {err}; the naive one: {naive}",
    )
    return str(err)


# --- 05_b: dequantize-then-merge (Write it) ---------------------------------------------------

exercise("05_b", "Dequantize, then merge", "Write it", "05 §5.6")


@criterion(
    "05_b",
    "dequantize_into() copies dequant(nf4) into every Linear, exactly",
    "walk `quantized`'s named modules for bitsandbytes' Linear4bit; bitsandbytes.functional "
    "turns a 4-bit weight and its quant_state back into floats; copy that into `target`'s "
    "module of the same name, and return how many you copied",
)
def _05b_weights(ns):
    import torch

    from phi2kit.models import load_model
    from phi2kit_exercises.merging import dequantize_into

    quantized = load_model("tiny", quantize_4bit=True)
    mine, theirs = load_model("tiny", quantize_4bit=False), load_model("tiny", quantize_4bit=False)
    with torch.no_grad():
        n = call(ns, "dequantize_into", mine, quantized)
    want = dequantize_into(theirs, quantized)
    expect(n == want, f"returned {n}; {want} layers were dequantized")
    a, b = mine.state_dict(), theirs.state_dict()
    bad = [k for k in b if not torch.equal(a[k], b[k])]
    expect(not bad, f"{len(bad)} tensors differ, e.g. {bad[:2]}")
    return f"{n} layers, every weight identical"


# --- 06_a: thread building from an OASST tree (Write it) ------------------------------------

exercise("06_a", "The main thread of an OASST1 tree", "Write it", "06 §6.3")


def random_oasst_tree(rng: random.Random, role: str = "prompter", depth: int = 0, *,
                      p_bad: float = 0.1, p_de: float = 0.0, max_replies: int = 3,
                      p_tie: float = 0.0) -> dict:  # fmt: skip
    """A made-up OASST1 export tree (nested ``replies``): deleted and failed-review messages
    with probability ``p_bad`` each, unreviewed ones (``review_result`` None: kept) with
    ``p_bad`` too, German ones with ``p_de``, replies all ranked, all unranked or some of
    each, a tie at the top with ``p_tie``. Exercises 06_a and 08_a grade against the loader
    on these (a draw is made only where its probability is not 0)."""
    reviewed = rng.random() > p_bad
    msg = {
        "message_id": f"m{rng.getrandbits(40):x}",
        "role": role,
        "text": f"{role} says {rng.randint(0, 999)}",
        "lang": "de" if p_de and rng.random() <= p_de else "en",
        "deleted": rng.random() < p_bad,
        "review_result": (rng.random() > p_bad) if reviewed else None,
        "rank": None,
        "replies": [],
    }
    if depth < 4:
        n = rng.randint(0, max_replies)
        ranks = rng.sample(range(n), n) if rng.random() < 0.7 else [None] * n
        ranks = [None if r is not None and rng.random() < 0.2 else r for r in ranks]  # mixed
        if p_tie and n > 1 and rng.random() < p_tie and ranks[0] is not None:
            ranks[1] = ranks[0]  # a tie
        other = "assistant" if role == "prompter" else "prompter"
        kw = {"p_bad": p_bad, "p_de": p_de, "max_replies": max_replies, "p_tie": p_tie}
        msg["replies"] = [random_oasst_tree(rng, other, depth + 1, **kw) for _ in range(n)]
        for reply, rank in zip(msg["replies"], ranks, strict=False):
            reply["rank"] = rank
    return msg


def load_made_trees(trees: list[dict], loader, **kwargs):
    """``loader(path, **kwargs)`` on ``trees`` written as a ``*.trees.jsonl`` export."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "made.trees.jsonl"
        path.write_text("".join(json.dumps(t) + "\n" for t in trees))
        return loader(path, **kwargs)


@criterion(
    "06_a",
    "main_thread() picks the same thread as phi2kit's loader on 40 made-up trees",
    "follow the reply with the lowest rank (0 is best; unranked replies after ranked "
    "ones, first in order); skip deleted or failed-review messages (review_result False; "
    "None is not reviewed, and kept) and their subtrees; drop trailing prompter turns",
)
def _06a_threads(ns):
    from phi2kit.data.oasst import load_oasst

    rng = random.Random(0)
    trees = [{"message_tree_id": f"t{i}", "prompt": random_oasst_tree(rng)} for i in range(40)]
    for tree in trees:
        tree["prompt"].update(deleted=False, review_result=True)
    want = [list(map(tuple, t)) for t in load_made_trees(trees, load_oasst)]
    got = [[tuple(turn) for turn in call(ns, "main_thread", t["prompt"])] for t in trees]
    got = [t for t in got if t]
    if got != want:
        pairs = enumerate(zip(got, want, strict=False))
        first = next((i for i, (a, b) in pairs if a != b), min(len(got), len(want)))
        raise Fail(f"{len(got)} threads vs {len(want)}; the first difference is thread {first}")
    return f"{len(want)} threads agree"


# --- 06_b: generating with checkpointing on (Break and fix) ----------------------------------

exercise("06_b", "Generating right after training, checkpointing on", "Break and fix", "06 §6.9")


@criterion(
    "06_b",
    "the broken generation differs from the eval-mode one",
    "run the 'break' cell: train mode + activation (gradient) checkpointing, then generate",
)
def _06b_broken(ns):
    broken, reference = need(ns, "broken"), need(ns, "reference")
    broken = list(getattr(broken, "texts", broken))
    expect(broken != reference.texts, "the broken run should differ from the reference")


@criterion(
    "06_b",
    "safe_generate() gives eval-mode text and leaves the model training",
    "switch to model.eval() for generate, then restore model.train(was_training) in a "
    "finally block",
)
def _06b_safe(ns):
    import torch

    from phi2kit.generation import generate
    from phi2kit.models import load_model, load_tokenizer

    torch.manual_seed(0)
    model, tokenizer = load_model("tiny", quantize_4bit=False), load_tokenizer("tiny")
    prompts = ["### Human: Where does the otter live?\n### Assistant:", "def square(x):"]
    want = generate(model.eval(), tokenizer, prompts, max_new_tokens=10).texts
    model.activation_checkpointing_enable()
    model.train()
    got = call(ns, "safe_generate", model, tokenizer, prompts, max_new_tokens=10)
    texts = getattr(got, "texts", got)
    expect(list(texts) == want, f"safe_generate gave {texts}; eval mode gives {want}")
    expect(model.training, "the model was left in eval mode: restore its training mode")


# --- 06_c: LoRA targets (Try it) ---------------------------------------------------------------

exercise("06_c", "LoRA targets: attention only, all six, and a name that matches nothing",
         "Try it", "06 §6.7, 02 §2.8")  # fmt: skip


def _phi2_lora(targets, rank: int) -> int:
    from phi2kit.footprint import lora_parameters, phi2_config
    from phi2kit.recipes import get_recipe

    recipe = get_recipe("chat", "t4", lora_r=rank, target_modules=tuple(targets))
    return lora_parameters(phi2_config(), recipe)


@criterion("06_c", "`counts` and `share`: attention-only against all six on Phi-2",
           "count each target list with trainable_with (the attention names, then all six "
           "of PHI_LORA_TARGETS); the share is the first count over the second")  # fmt: skip
def _06c_counts(ns):
    from phi2kit.recipes import PHI_LORA_TARGETS

    counts, share, rank = need(ns, "counts"), need(ns, "share"), need(ns, "RANK")
    want = {"attention": _phi2_lora(("q_proj", "k_proj", "v_proj", "dense"), rank),
            "all six": _phi2_lora(PHI_LORA_TARGETS, rank)}  # fmt: skip
    expect(counts == want, f"counts = {counts}; Phi-2's adapters hold {want}")
    expect(abs(share - want["attention"] / want["all six"]) < 1e-9,
           f"share = {share}; the counts give {want['attention'] / want['all six']:.4f}")
    return f"{share:.1%}"


@criterion(
    "06_c",
    "the old names trained less, silently, and check_targets caught them",
    "keep the ValueError from check_targets(phi2_on_meta(), OLD_NAMES) in `caught`",
)
def _06c_caught(ns):
    old, caught = need(ns, "OLD_NAMES"), need(ns, "caught")
    expect(
        need(ns, "silent_count") == _phi2_lora(("fc1", "fc2"), need(ns, "RANK")),
        "silent_count should be what PEFT trained with the old names: fc1 and fc2 only",
    )
    expect(isinstance(caught, ValueError), f"`caught` is {type(caught).__name__}, not ValueError")
    expect(all(n in str(caught) for n in ("Wqkv", "q_proj")), "the error should name both")
    expect(tuple(old) == ("Wqkv", "out_proj", "fc1", "fc2"), "OLD_NAMES was changed")


@criterion(
    "06_c",
    "`fixed_targets` are the current names of the same layers",
    "Wqkv was q, k and v in one Linear; out_proj is now dense",
)
def _06c_fixed(ns):
    from phi2kit.recipes import PHI_LORA_TARGETS

    fixed = need(ns, "fixed_targets")
    expect(sorted(fixed) == sorted(PHI_LORA_TARGETS), f"fixed_targets = {fixed}")

"""Criteria of the exercises that go with lessons 04-06 (see :mod:`checks_lessons`)."""

from __future__ import annotations

import json
import random
import tempfile
from pathlib import Path

from phi2kit.exercises.checks_lessons import _tiny
from phi2kit.exercises.grader import Fail, call, criterion, exercise, expect, need

# --- 04_a: the completion-only label mask (Write it) -----------------------------------------

exercise("04_a", "A completion-only label mask, and padding by position", "Write it", "04 §4.5")

_TRAINER: dict = {}


def _reference_trainer():
    """trl's prepared rows and collator for prompt/completion pairs the grader makes."""
    if not _TRAINER:
        from datasets import Dataset

        from phi2kit.profiles import get_profile
        from phi2kit.recipes import get_recipe
        from phi2kit.training import add_lora, sft_trainer

        rng = random.Random(0)
        words = "the heron otter river bank sales rose fell profit quarter stone".split()
        pairs = [{"prompt": " ".join(rng.choices(words, k=rng.randint(2, 9))) + ":",
                  "completion": " " + " ".join(rng.choices(words, k=rng.randint(1, 4)))}
                 for _ in range(6)]  # fmt: skip
        from phi2kit.models import load_model

        _, tokenizer = _tiny()
        model = load_model("tiny", quantize_4bit=False)
        profile = get_profile("tiny")
        recipe = get_recipe("webglm", profile, quantize_4bit=False, max_steps=1)
        folder = tempfile.mkdtemp(prefix="phi2kit-grader-")
        peft_model = add_lora(model, recipe, profile)
        trainer = sft_trainer(peft_model, tokenizer, Dataset.from_list(pairs), profile, recipe,
                              folder)  # fmt: skip
        rows = [trainer.train_dataset[i] for i in range(len(pairs))]
        _TRAINER.update(rows=rows, collator=trainer.data_collator, eos=tokenizer.eos_token_id)
    return _TRAINER


def _split_row(row) -> tuple[list[int], list[int]]:
    n_prompt = sum(1 for label in row["labels"] if label == -100)
    return row["input_ids"][:n_prompt], row["input_ids"][n_prompt:-1]  # completion without EOS


@criterion("04_a", "completion_example() builds trl's input_ids and labels",
           "input_ids = prompt + completion + [eos]; labels = -100 for each prompt token, then "
           "the completion and the EOS")
def _04a_example(ns):
    ref = _reference_trainer()
    for row in ref["rows"]:
        prompt, completion = _split_row(row)
        got = call(ns, "completion_example", prompt, completion, ref["eos"])
        for key in ("input_ids", "labels"):
            expect(list(got[key]) == list(row[key]),
                   f"{key}: {list(got[key])}; trl makes {list(row[key])}")


@criterion("04_a", "pad_batch() pads on the right and masks padding by position",
           "pad input_ids with pad_id, attention_mask 0 on pads, labels -100 on pads: never "
           "find pads by their id (pad = eos, and the EOS target must stay)")
def _04a_batch(ns):
    import torch

    ref = _reference_trainer()
    rows = [{k: r[k] for k in ("input_ids", "labels")} for r in ref["rows"]]
    got = call(ns, "pad_batch", rows, ref["eos"])
    want = ref["collator"](rows)
    for key in ("input_ids", "attention_mask", "labels"):
        expect(key in got, f"the batch has no {key!r}")
        g = torch.as_tensor(got[key])
        expect(g.shape == want[key].shape and torch.equal(g.long(), want[key].long()),
               f"{key} differs from trl's collator (first row {g[0].tolist()} vs "
               f"{want[key][0].tolist()})")
    n_eos = int((torch.as_tensor(got["labels"]) == ref["eos"]).sum())
    return f"{n_eos} EOS targets kept for {len(rows)} rows"


# --- 04_b: labels = input_ids over padded batches (Break and fix) -----------------------------

exercise("04_b", "labels = input_ids over padded batches", "Break and fix", "04 §4.5")


@criterion("04_b", "the seed's batch is measured: loss positions on padding, useful fraction",
           "count_tokens(seed_batch) gives supervised_pad and useful_fraction")
def _04b_broken(ns):
    from phi2kit.batching import count_tokens

    counts = count_tokens(need(ns, "seed_batch"))
    expect(counts.supervised_pad > 0, "the seed batch should supervise padding: it does not")
    expect(need(ns, "seed_counts") == counts, "seed_counts is not count_tokens(seed_batch)")
    return f"{counts.supervised_pad:,} loss positions on padding, useful {counts.useful_fraction:.0%}"


@criterion("04_b", "fix_labels() supervises the completion and EOS only, never a pad",
           "labels = input_ids where attention_mask is 1 and position >= the prompt's length; "
           "-100 everywhere else")
def _04b_fix(ns):
    import torch

    ids = torch.tensor([[5, 6, 7, 8, 0, 0, 0], [5, 6, 9, 0, 0, 0, 0], [1, 2, 3, 4, 5, 6, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 0, 0, 0], [1] * 7])
    prompt_lengths = [2, 1, 3]
    got = torch.as_tensor(call(ns, "fix_labels", {"input_ids": ids, "attention_mask": mask},
                               prompt_lengths))  # fmt: skip
    cols = torch.arange(ids.shape[1])
    keep = (mask == 1) & (cols >= torch.tensor(prompt_lengths)[:, None])
    want = torch.where(keep, ids, torch.full_like(ids, -100))
    expect(torch.equal(got.long(), want), f"got {got.tolist()}; want {want.tolist()}")


@criterion("04_b", "the fixed batch has no loss on padding and the same real tokens",
           "fixed_counts = count_tokens(fixed_batch), with fixed_batch's labels from fix_labels")
def _04b_counts(ns):
    from phi2kit.batching import count_tokens

    fixed, seed = count_tokens(need(ns, "fixed_batch")), need(ns, "seed_counts")
    expect(fixed.supervised_pad == 0, f"{fixed.supervised_pad} loss positions still on padding")
    expect(fixed.non_pad == seed.non_pad, "the fixed batch lost or gained real tokens")
    expect(0 < fixed.supervised < seed.supervised, "the fixed batch supervises nothing, or all")


# --- 05_a: a QLoRA adapter merged into the full-precision base (Break and fix) ----------------

exercise("05_a", "Merging a QLoRA adapter into a full-precision base", "Break and fix", "05 §5.4-5.5")


@criterion("05_a", "the naive merge's error was measured against the adapter on 4-bit",
           "naive_err = merge_error(trained, probe_logits(naive_merged, tokenizer, PROBE))")
def _05a_naive(ns):
    err = need(ns, "naive_err")
    expect(err.max_abs > 1e-3, f"the naive merge looks exact ({err}): is the adapter QLoRA?")
    return str(err)


@criterion("05_a", "the fixed merge reproduces the adapter-on-4-bit model",
           "merge into load_dequantized_base(profile), not into load_model(..., "
           "quantize_4bit=False)")
def _05a_fixed(ns):
    from peft import PeftModel

    from phi2kit.merging import merge_error, probe_logits
    from phi2kit.models import load_model

    tokenizer, probe = need(ns, "tokenizer"), need(ns, "PROBE")
    qlora = PeftModel.from_pretrained(load_model(need(ns, "profile"), quantize_4bit=True),
                                      str(need(ns, "qlora_path")))  # fmt: skip
    reference = probe_logits(qlora, tokenizer, probe)
    fixed = need(ns, "fixed_merged")
    expect(not hasattr(fixed, "peft_config"), "fixed_merged is still a PeftModel: merge it")
    err = merge_error(reference, probe_logits(fixed, tokenizer, probe))
    naive = need(ns, "naive_err")
    expect(err.max_abs < 1e-3 and err.max_abs * 10 < naive.max_abs,
           f"fixed merge: {err}; the naive one: {naive}")
    return str(err)


# --- 05_b: dequantize-then-merge (Write it) ---------------------------------------------------

exercise("05_b", "Dequantize, then merge", "Write it", "05 §5.5")


@criterion("05_b", "dequantize_into() copies dequant(nf4) into every Linear, exactly",
           "for each bitsandbytes Linear4bit in `quantized`: dequantize_4bit(module.weight.data, "
           "module.weight.quant_state) and copy it into target.get_submodule(name).weight")
def _05b_weights(ns):
    import torch

    from phi2kit.merging import dequantize_into
    from phi2kit.models import load_model

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

exercise("06_a", "The main thread of an OASST1 tree", "Write it", "06 §6.2")


def _random_tree(rng: random.Random, role: str = "prompter", depth: int = 0) -> dict:
    msg = {"message_id": f"m{rng.getrandbits(40):x}", "role": role,
           "text": f"{role} says {rng.randint(0, 999)}", "lang": "en",
           "deleted": rng.random() < 0.1, "review_result": rng.random() > 0.1, "replies": []}
    if depth < 4:
        n = rng.randint(0, 3)
        ranks = rng.sample(range(n), n) if rng.random() < 0.7 else [None] * n
        other = "assistant" if role == "prompter" else "prompter"
        msg["replies"] = [_random_tree(rng, other, depth + 1) for _ in range(n)]
        for reply, rank in zip(msg["replies"], ranks):
            reply["rank"] = rank
    return msg  # fmt: skip


@criterion("06_a", "main_thread() picks the same thread as phi2kit's loader on 40 made-up trees",
           "follow the reply with the lowest rank (0 is best; unranked replies after ranked "
           "ones, first in order); skip deleted or failed-review messages and their subtrees; "
           "drop trailing prompter turns")
def _06a_threads(ns):
    from phi2kit.data.oasst import load_oasst

    rng = random.Random(0)
    trees = [{"message_tree_id": f"t{i}", "prompt": _random_tree(rng)} for i in range(40)]
    for tree in trees:
        tree["prompt"].update(deleted=False, review_result=True)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "made.trees.jsonl"
        path.write_text("".join(json.dumps(t) + "\n" for t in trees))
        want = [list(map(tuple, t)) for t in load_oasst(path)]
    got = [[tuple(turn) for turn in call(ns, "main_thread", t["prompt"])] for t in trees]
    got = [t for t in got if t]
    if got != want:
        first = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), len(want))
        raise Fail(f"{len(got)} threads vs {len(want)}; the first difference is thread {first}")
    return f"{len(want)} threads agree"


# --- 06_b: generating with checkpointing on (Break and fix) ----------------------------------

exercise("06_b", "Generating right after training, checkpointing on", "Break and fix", "06 §6.6")


@criterion("06_b", "the broken generation differs from the eval-mode one",
           "run the 'break' cell: train mode + gradient checkpointing, then generate")
def _06b_broken(ns):
    broken, reference = need(ns, "broken"), need(ns, "reference")
    expect(broken.texts != reference.texts, "the broken run should differ from the reference")


@criterion("06_b", "safe_generate() gives eval-mode text and leaves the model training",
           "switch to model.eval() for generate, then restore model.train(was_training) in a "
           "finally block")
def _06b_safe(ns):
    import torch

    from phi2kit.generation import generate
    from phi2kit.models import load_model, load_tokenizer

    torch.manual_seed(0)
    model, tokenizer = load_model("tiny", quantize_4bit=False), load_tokenizer("tiny")
    prompts = ["### Human: Where does the otter live?\n### Assistant:", "def square(x):"]
    want = generate(model.eval(), tokenizer, prompts, max_new_tokens=10).texts
    model.gradient_checkpointing_enable()
    model.train()
    got = call(ns, "safe_generate", model, tokenizer, prompts, max_new_tokens=10)
    texts = getattr(got, "texts", got)
    expect(list(texts) == want, f"safe_generate gave {texts}; eval mode gives {want}")
    expect(model.training, "the model was left in eval mode: restore its training mode")

"""Criteria of the exercises that go with lessons 03 and 04 (see :mod:`checks_01_02`)."""

from __future__ import annotations

import random
import tempfile

from phi2kit_exercises.grader import Fail, call, criterion, exercise, expect, need, tiny_model

# --- 03_a: last-token pooling (Write it) -------------------------------------------------------

exercise("03_a", "Last-token pooling for the classification head", "Write it", "03 §3.3")


@criterion(
    "03_a",
    "last_token_index() finds the last real token, right or left padded",
    "the last position whose attention_mask is 1 (not the last non-pad id: pad = eos)",
)
def _03a_index(ns):
    import torch

    from phi2kit.classifier import last_token_index

    g = torch.Generator().manual_seed(0)
    for side in ["right", "left", "none"]:
        lengths = torch.randint(1, 9, (6,), generator=g)
        cols = torch.arange(8)
        mask = (cols < lengths[:, None]).long()
        if side == "left":
            mask = mask.flip(-1)
        if side == "none":
            mask = torch.ones_like(mask)
        got = torch.as_tensor(call(ns, "last_token_index", mask))
        want = last_token_index(mask)
        expect(
            torch.equal(got.long(), want),
            f"{side} padding: {got.tolist()}; want {want.tolist()} for masks {mask.tolist()}",
        )


@criterion(
    "03_a",
    "classify() gives lesson 03's logits: right and left padding, and a text ending in EOS",
    "run clf.model, take the hidden state at last_token_index, apply clf.score (the stock "
    "class's own forward finds the last token by its id, and pad = eos)",
)
def _03a_classify(ns):
    import torch

    from phi2kit.classifier import classify_by_hand, load_classifier

    _, tokenizer = tiny_model()
    clf = load_classifier("tiny").eval()  # transformers' AutoModelForSequenceClassification
    texts = ["Sales rose", "The company warns of a deep loss"]
    cases = [("right padding", "right", texts), ("left padding", "left", texts),
             ("a text ending in EOS", "right", [texts[0] + tokenizer.eos_token, texts[1]])]
    side = tokenizer.padding_side
    try:
        for name, tokenizer.padding_side, batch in cases:
            enc = tokenizer(batch, return_tensors="pt", padding=True)
            with torch.no_grad():
                got = torch.as_tensor(call(ns, "classify", clf, enc)).float()
                want = classify_by_hand(clf.model, clf.score, enc).float()
            expect(got.shape == want.shape, f"{name}: shape {tuple(got.shape)}; want "
                   f"{tuple(want.shape)}")  # fmt: skip
            expect(torch.allclose(got, want, atol=1e-5),
                   f"{name}: logits differ by {(got - want).abs().max():.3g}")
    finally:
        tokenizer.padding_side = side
    return "right and left padding, and a text ending in EOS"


# --- 03_b: the head that was not saved (Break and fix) ----------------------------------------

exercise("03_b", "The classification head that was not saved", "Break and fix", "03 §3.7, §3.11")


@criterion(
    "03_b",
    "the broken adapter was saved without the head and predicts differently",
    "run the 'break' cells: save `broken` to broken_dir and compare after reloading",
)
def _03b_broken(ns):
    from phi2kit_exercises.classification import adapter_keys

    keys = adapter_keys(need(ns, "broken_dir"))
    expect(not any("score" in k for k in keys), "the broken adapter contains the head")
    expect(need(ns, "broken_same") is False, "broken_same should be False: reloaded differently")


@criterion(
    "03_b",
    "the fixed adapter carries the score head, and reloads to the same logits",
    "the head is new and not a LoRA target: LoRA factors of it are not the head; find the "
    "LoraConfig setting that trains a module whole and saves it with the adapter",
)
def _03b_fixed(ns):
    import numpy as np
    from peft import PeftModel

    from phi2kit.classifier import load_classifier
    from phi2kit_exercises.classification import adapter_keys, predict_logits

    path = need(ns, "fixed_dir")
    expect(any("score" in k for k in adapter_keys(path)), "the fixed adapter has no score head")
    reloaded = PeftModel.from_pretrained(load_classifier(need(ns, "profile")), str(path))
    want = predict_logits(reloaded, need(ns, "tokenizer"), need(ns, "texts"))
    got = np.asarray(need(ns, "fixed_logits"))
    if got.shape != want.shape or not np.allclose(got, want, atol=1e-5):
        raise Fail("fixed_logits differ from the reloaded adapter's predictions: the reload "
                   "drew a new head, so the saved adapter holds the head's LoRA factors at most, "
                   "not the head itself")


# --- 04_a: the completion-only label mask (Write it) -----------------------------------------

exercise("04_a", "A completion-only label mask, and padding by position", "Write it", "04 §4.6")

_TRAINER: dict = {}


def _reference_trainer():
    """trl's prepared rows and collator for prompt/completion pairs the grader makes."""
    if not _TRAINER:
        from datasets import Dataset

        from phi2kit.lora import add_lora
        from phi2kit.profiles import get_profile
        from phi2kit.recipes import get_recipe
        from phi2kit.training import sft_trainer

        rng = random.Random(0)
        words = "the heron otter river bank sales rose fell profit quarter stone".split()
        pairs = [{"prompt": " ".join(rng.choices(words, k=rng.randint(2, 9))) + ":",
                  "completion": " " + " ".join(rng.choices(words, k=rng.randint(1, 4)))}
                 for _ in range(6)]  # fmt: skip
        from phi2kit.models import load_model

        _, tokenizer = tiny_model()
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


@criterion(
    "04_a",
    "completion_example() builds trl's input_ids and labels",
    "input_ids = prompt + completion + [eos]; labels = -100 for each prompt token, then "
    "the completion and the EOS",
)
def _04a_example(ns):
    ref = _reference_trainer()
    for row in ref["rows"]:
        prompt, completion = _split_row(row)
        got = call(ns, "completion_example", prompt, completion, ref["eos"])
        for key in ("input_ids", "labels"):
            expect(
                list(got[key]) == list(row[key]),
                f"{key}: {list(got[key])}; trl makes {list(row[key])}",
            )


@criterion(
    "04_a",
    "pad_batch() pads on the right and masks padding by position",
    "pad input_ids with pad_id, attention_mask 0 on pads, labels -100 on pads: never "
    "find pads by their id (pad = eos, and the EOS target must stay)",
)
def _04a_batch(ns):
    import torch

    ref = _reference_trainer()
    rows = [{k: r[k] for k in ("input_ids", "labels")} for r in ref["rows"]]
    got = call(ns, "pad_batch", rows, ref["eos"])
    want = ref["collator"](rows)
    for key in ("input_ids", "attention_mask", "labels"):
        expect(key in got, f"the batch has no {key!r}")
        g = torch.as_tensor(got[key])
        expect(
            g.shape == want[key].shape and torch.equal(g.long(), want[key].long()),
            f"{key} differs from trl's collator (first row {g[0].tolist()} vs "
            f"{want[key][0].tolist()})",
        )
    n_eos = int((torch.as_tensor(got["labels"]) == ref["eos"]).sum())
    return f"{n_eos} EOS targets kept for {len(rows)} rows"


# --- 04_b: labels = input_ids over padded batches (Break and fix) -----------------------------

exercise("04_b", "labels = input_ids over padded batches", "Break and fix", "04 §4.6")


@criterion(
    "04_b",
    "the seed's batch is measured: loss positions on padding, useful fraction",
    "token_counts([seed_batch]) gives (real, computed, supervised, supervised padding)",
)
def _04b_broken(ns):
    from phi2kit.batching import token_counts

    real, computed, _, pads = counts = token_counts([need(ns, "seed_batch")])
    expect(pads > 0, "the seed batch should supervise padding: it does not")
    expect(
        tuple(need(ns, "seed_counts")) == counts, "seed_counts is not token_counts([seed_batch])"
    )
    return f"{pads:,} loss positions on padding, useful-token fraction {real / computed:.0%}"


@criterion(
    "04_b",
    "fix_labels() supervises the completion and EOS only, never a pad",
    "labels = input_ids where attention_mask is 1 and position >= the prompt's length; "
    "-100 everywhere else",
)
def _04b_fix(ns):
    import torch

    ids = torch.tensor([[5, 6, 7, 8, 0, 0, 0], [5, 6, 9, 0, 0, 0, 0], [1, 2, 3, 4, 5, 6, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 0, 0, 0], [1] * 7])
    prompt_lengths = [2, 1, 3]
    given = ids.clone()  # the learner's copy: an answer that writes -100 into it is caught
    got = torch.as_tensor(call(ns, "fix_labels", {"input_ids": given, "attention_mask": mask},
                               prompt_lengths))  # fmt: skip
    expect(torch.equal(given, ids), "fix_labels() changed batch['input_ids'] in place (labels "
           "is the same tensor): build labels from input_ids.clone()")  # fmt: skip
    cols = torch.arange(ids.shape[1])
    keep = (mask == 1) & (cols >= torch.tensor(prompt_lengths)[:, None])
    want = torch.where(keep, ids, torch.full_like(ids, -100))
    expect(torch.equal(got.long(), want), f"got {got.tolist()}; want {want.tolist()}")


@criterion(
    "04_b",
    "the fixed batch has no loss on padding and the same real tokens",
    "fixed_counts = token_counts([fixed_batch]), with fixed_batch's labels from fix_labels",
)
def _04b_counts(ns):
    from phi2kit.batching import token_counts

    fixed, seed = token_counts([need(ns, "fixed_batch")]), need(ns, "seed_counts")
    expect(fixed[3] == 0, f"{fixed[3]} loss positions still on padding")
    expect(fixed[0] == seed[0], "the fixed batch lost or gained real tokens")
    expect(0 < fixed[2] < seed[2], "the fixed batch supervises nothing, or all")

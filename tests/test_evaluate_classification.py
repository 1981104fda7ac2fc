"""Tests for phi2kit_exercises.classification on a tiny random Phi and a made-up tokenizer."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import transformers
from bench_eval import predict_by_generation  # bench/: the benchmark's batched peer
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from phi2kit.data.sentiment import LABELS, build_prompt
from phi2kit.evaluate.scoring import (
    label_logprobs,
    predict_by_scoring,
    score_labels,
    shared_prefix_length,
)
from phi2kit.generation import generate
from phi2kit_exercises.classification import classification_metrics, majority_rate, parse_label

EOS = "<|endoftext|>"
HEADLINES = [
    "Acme profit up",
    "Shares fell after the weak outlook for the coming year",
    "The board meets on Tuesday",
    "Net sales were neutral at best, analysts said",
    "Loss",
]


@pytest.fixture(scope="module")
def tokenizer():
    sentences = [
        "Acme reports higher sales and a record profit",
        "Shares fell after the weak outlook",
        "The board meets on Tuesday to discuss the neutral plan",
        "Classify the sentiment of this financial news headline",
    ]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(sentences * 3, trainer)
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS, bos_token=EOS, unk_token=EOS, pad_token=EOS
    )


@pytest.fixture(scope="module")
def model(tokenizer):
    # head_dim 10, so the rotary part (0.4 of it, as in Phi-2) has an even size.
    config = transformers.PhiConfig(
        vocab_size=len(tokenizer),
        hidden_size=40,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        partial_rotary_factor=0.4,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    return transformers.PhiForCausalLM(config).eval()


def scores_by_hand(model, tokenizer, prompts):
    """One unpadded sequence at a time, log-softmax written out."""
    scores = np.zeros((len(prompts), len(LABELS)))
    for i, prompt in enumerate(prompts):
        prompt_ids = tokenizer(prompt)["input_ids"]
        for j, label in enumerate(LABELS):
            label_ids = tokenizer(" " + label, add_special_tokens=False)["input_ids"]
            ids = torch.tensor([prompt_ids + label_ids])
            with torch.no_grad():
                logits = model(input_ids=ids).logits[0].double()
            logp = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
            for k, token in enumerate(label_ids):
                scores[i, j] += logp[len(prompt_ids) + k - 1, token].item()
    return scores


def test_label_tokens_differ_in_length(tokenizer):
    # Otherwise padding inside a batch would not be exercised by the candidates.
    lengths = {
        len(tokenizer(" " + label, add_special_tokens=False)["input_ids"]) for label in LABELS
    }
    assert len(lengths) > 1


@pytest.fixture(scope="module")
def prompts():
    return [build_prompt(h) for h in HEADLINES]


@pytest.fixture(scope="module")
def expected_scores(model, tokenizer, prompts):
    return scores_by_hand(model, tokenizer, prompts)


@pytest.mark.parametrize(
    ("padding_side", "batch_size", "share_prefix"),
    [("right", 1, True), ("left", 4, True), ("right", 32, True), ("right", 5, False)],
)
def test_score_labels_matches_unbatched(
    model, tokenizer, prompts, expected_scores, padding_side, batch_size, share_prefix
):
    """Multi-token labels: one row per (prompt, label), the shared instruction run once."""
    assert shared_prefix_length([tokenizer(p)["input_ids"] for p in prompts]) > 3
    tokenizer.padding_side = padding_side
    try:
        scores = score_labels(
            model, tokenizer, prompts, batch_size=batch_size, share_prefix=share_prefix
        )
        assert tokenizer.padding_side == padding_side
    finally:
        tokenizer.padding_side = "right"
    assert scores.shape == (len(prompts), len(LABELS))
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-5, atol=1e-4)
    assert (scores.argmax(axis=1) == expected_scores.argmax(axis=1)).all()


@pytest.mark.parametrize("batch_size", [1, 4, 32])
def test_lesson_label_logprobs_equals_score_labels(model, tokenizer, prompts, expected_scores,
                                                   batch_size):
    """Notebook 02's plain label scoring (multi-token labels here) and the fast path agree."""
    scores = label_logprobs(model, tokenizer, prompts, LABELS, batch_size=batch_size)
    assert scores.shape == (len(prompts), len(LABELS))
    np.testing.assert_allclose(scores, expected_scores, atol=1e-4)
    np.testing.assert_allclose(scores, score_labels(model, tokenizer, prompts), atol=1e-4)


def test_predict_by_scoring_is_the_argmax(model, tokenizer, prompts, expected_scores):
    predictions = predict_by_scoring(model, tokenizer, prompts, batch_size=8)
    assert predictions == [LABELS[j] for j in expected_scores.argmax(axis=1)]


def test_generation_batched_equals_one_by_one(model, tokenizer, prompts):
    batched = generate(model, tokenizer, prompts, max_new_tokens=4, batch_size=3).texts
    single = [generate(model, tokenizer, [p], max_new_tokens=4).texts[0] for p in prompts]
    assert batched == single
    assert tokenizer.padding_side == "right"
    assert predict_by_generation(model, tokenizer, prompts) == [parse_label(t) for t in batched]


class ScriptedModel(torch.nn.Module):
    """Stands in for a model: "generates" a fixed continuation after any prompt."""

    def __init__(self, tokenizer, continuation):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.new_ids = tokenizer(continuation, add_special_tokens=False)["input_ids"]
        self.seen = []

    def generate(self, input_ids, attention_mask, max_new_tokens, do_sample, pad_token_id, **_):
        self.seen.append((input_ids.clone(), attention_mask.clone(), pad_token_id))
        new = torch.tensor(self.new_ids[:max_new_tokens]).repeat(len(input_ids), 1)
        return torch.cat([input_ids, new], dim=1)


@pytest.mark.parametrize(
    ("continuation", "expected"), [(" Positive.", "positive"), (" bullish", None)]
)
def test_predict_by_generation_parses_or_leaves_none(tokenizer, continuation, expected):
    model = ScriptedModel(tokenizer, continuation)
    prompts = ["Loss", "The board meets on Tuesday"]
    assert predict_by_generation(model, tokenizer, prompts, max_new_tokens=16) == [expected] * 2
    input_ids, attention_mask, pad_id = model.seen[0]
    assert pad_id == tokenizer.eos_token_id
    assert attention_mask[0, 0] == 0 and attention_mask[:, -1].all()  # padded on the left


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (" positive", "positive"),
        ("NEGATIVE\nHeadline:", "negative"),
        (' "Neutral".', "neutral"),
        ("positively", None),
        ("The sentiment is positive", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_label(text, expected):
    assert parse_label(text) == expected


def test_metrics_count_unparsed_as_wrong():
    y_true = ["negative", "neutral", "positive", "positive"]
    y_pred = ["negative", None, "positive", "neutral"]
    m = classification_metrics(y_true, y_pred)
    assert m["accuracy"] == 0.5
    assert m["n_unparsed"] == 1
    assert m["per_class_accuracy"] == {"negative": 1.0, "neutral": 0.0, "positive": 0.5}
    # F1: negative 1, neutral 0 (one wrong prediction, one miss), positive 2/3.
    assert math.isclose(m["macro_f1"], (1 + 0 + 2 / 3) / 3)
    assert "unparsed" not in m["report"] and "positive" in m["report"]
    assert m["confusion"].tolist() == [[1, 0, 0], [0, 0, 0], [0, 1, 1]]
    with pytest.raises(ValueError, match="y_pred has 2"):
        classification_metrics(y_true, y_pred[:2])


def test_majority_rate():
    assert majority_rate(["neutral", "neutral", "positive", "negative"]) == 0.5
    with pytest.raises(ValueError):
        majority_rate([])


def test_generation_without_pad_token_uses_eos_and_restores(tokenizer):
    no_pad = copy.deepcopy(tokenizer)
    no_pad.pad_token = None
    model = ScriptedModel(no_pad, " neutral")
    assert predict_by_generation(model, no_pad, ["Loss", "Orders grew"], max_new_tokens=16) == [
        "neutral",
        "neutral",
    ]
    assert model.seen[0][2] == no_pad.eos_token_id
    assert no_pad.pad_token is None and no_pad.padding_side == "right"


def test_single_token_fast_path_matches_general_path():
    """The shipped tiny tokenizer has single-token labels: the fast path must agree."""
    from phi2kit.data.sentiment import build_prompt
    from phi2kit.models import load_model, load_tokenizer

    model, tok = load_model("tiny"), load_tokenizer("tiny")
    prompts = [build_prompt(h) for h in ["Sales rose", "The board met in Oulu on Monday", "Loss"]]
    assert all(len(tok(" " + lab, add_special_tokens=False).input_ids) == 1 for lab in LABELS)
    fast = score_labels(model, tok, prompts)
    # the general path: each (prompt, label) row scored by a full forward pass
    slow = np.array(
        [
            [
                model(**tok(p + " " + lab, return_tensors="pt"))
                .logits[0, -2]
                .log_softmax(-1)[tok(" " + lab).input_ids[0]]
                .item()
                for lab in LABELS
            ]
            for p in prompts
        ]
    )
    assert np.allclose(fast, slow, atol=1e-4)


def test_shared_prefix_length():
    assert shared_prefix_length([[5, 6, 7, 8], [5, 6, 9], [5, 6, 7]]) == 2
    assert shared_prefix_length([[5, 6], [5, 6, 7]]) == 1  # every row keeps a token of its own
    assert shared_prefix_length([[5, 6, 7]]) == 2
    assert shared_prefix_length([[5], [5]]) == 0
    assert shared_prefix_length([[1, 2], [3, 2]]) == 0
    assert shared_prefix_length([]) == 0


@pytest.mark.parametrize("share_prefix", [True, False])
def test_fast_path_shared_prefix_and_sorting_keep_scores_and_order(share_prefix):
    """Prompts of mixed lengths over several batches: the shared instruction runs once per
    batch and prompts are sorted by length, yet every score lands on its own prompt."""
    from phi2kit.models import load_model, load_tokenizer

    model, tok = load_model("tiny"), load_tokenizer("tiny")
    headlines = [
        "The board met in Oulu on Monday to discuss the quarterly dividend and new plants",
        "Loss",
        "Sales rose 5 %",
        "Orders fell sharply after the strike",
        "Profit",
        "Net sales in the period were EUR 12 million, compared with EUR 11 million a year ago",
        "Shares were flat",
    ]
    prompts = [build_prompt(h) for h in headlines]
    label_ids = [tok(" " + lab, add_special_tokens=False).input_ids[0] for lab in LABELS]
    encoded = [tok(p).input_ids for p in prompts]
    assert shared_prefix_length(encoded) > 10  # the instruction is shared
    fast = score_labels(model, tok, prompts, batch_size=3, share_prefix=share_prefix)
    with torch.no_grad():
        alone = np.array(
            [
                model(input_ids=torch.tensor([ids])).logits[0, -1].log_softmax(-1)[label_ids]
                for ids in encoded
            ]
        )
    np.testing.assert_allclose(fast, alone, atol=1e-4)
    assert not model.training


def test_score_labels_of_no_prompts(model, tokenizer):
    assert score_labels(model, tokenizer, []).shape == (0, len(LABELS))
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        score_labels(model, tokenizer, ["Headline: up", ""])

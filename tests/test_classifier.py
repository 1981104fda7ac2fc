"""phi2kit.classifier: the refactored head against transformers' PhiForSequenceClassification,
padding layouts, pad = eos, the weighted loss, metrics, LoRA/QLoRA and the saved adapter."""

from __future__ import annotations

from dataclasses import replace

import pandas as pd
import pytest
import torch
from transformers import PhiConfig, PhiForCausalLM, PhiForSequenceClassification

from phi2kit.classifier import (
    PhiClassifier,
    adapter_keys,
    class_weights,
    classifier_from_causal_lm,
    classifier_trainer,
    compute_metrics,
    cross_entropy,
    last_token_index,
    load_classifier,
    predict_logits,
    tokenize_headlines,
)
from phi2kit.data.sentiment import LABELS
from phi2kit.lora import add_lora
from phi2kit.recipes import get_recipe

EOS = 7  # the random model's eos, and its pad


def random_lm(pad_token_id: int | None = EOS) -> PhiForCausalLM:
    config = PhiConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=64,
        bos_token_id=EOS,
        eos_token_id=EOS,
        pad_token_id=pad_token_id,
    )
    torch.manual_seed(0)
    return PhiForCausalLM(config).eval()


def pair(lm) -> tuple[PhiClassifier, PhiForSequenceClassification]:
    """The refactor and the native class with the same backbone and head weights."""
    ours = classifier_from_causal_lm(lm).eval()
    torch.nn.init.normal_(ours.score.weight, std=1.0)  # a head that is not near zero
    native = PhiForSequenceClassification(ours.config).eval()
    native.load_state_dict(ours.state_dict())
    return ours, native


def batch(rows: list[list[int]], side: str) -> dict[str, torch.Tensor]:
    """Pad rows with EOS (pad = eos, as for Phi-2) on ``side``."""
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), EOS)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(0, len(row)) if side == "right" else slice(width - len(row), width)
        ids[i, span], mask[i, span] = torch.tensor(row), 1
    return {"input_ids": ids, "attention_mask": mask}


def alone(model, row: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([row])).logits[0]


ROWS = [[3, 9, 12, 40, 5, 6], [11, 2, 30], [4, 4, 21, 22, 8]]
EOS_INSIDE = [[3, 9, EOS, 40, 5, 6], [11, EOS, 30], [4, 4, 21, 22, 8]]


def test_last_token_index_for_both_padding_sides():
    right = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]])
    assert last_token_index(right).tolist() == [2, 0, 3]
    assert last_token_index(right.flip(-1)).tolist() == [3, 3, 3]


def test_refactor_reuses_backbone_with_a_fresh_head():
    lm = random_lm()
    model = classifier_from_causal_lm(lm)
    assert model.model is lm.model
    assert not hasattr(model, "lm_head")
    assert model.score.bias is None and model.score.weight.shape == (len(LABELS), 32)
    assert model.score.weight.dtype == torch.float32
    assert model.config.id2label == dict(enumerate(LABELS))
    assert set(model.state_dict()) == set(PhiForSequenceClassification(model.config).state_dict())


@pytest.mark.parametrize(
    ("rows", "side"), [(ROWS, "right"), (ROWS, "left"), (EOS_INSIDE, "right"), (EOS_INSIDE, "left")]
)
def test_logits_equal_native_and_each_row_alone(rows, side):
    ours, native = pair(random_lm())
    enc = batch(rows, side)
    with torch.no_grad():
        got, expected = ours(**enc).logits, native(**enc).logits
    assert torch.equal(got, expected)
    for i, row in enumerate(rows):
        torch.testing.assert_close(got[i], alone(ours, row), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got[0], got[1])  # the rows really differ


def test_native_skips_a_trailing_eos_while_mask_pooling_reads_it():
    ours, native = pair(random_lm())
    text = [3, 9, 12, 40]
    rows = [text + [EOS], [11, 2]]
    for side in ("right", "left"):
        enc = batch(rows, side)
        with torch.no_grad():
            got, nat = ours(**enc).logits, native(**enc).logits
        # Native pools the last token that is not pad_token_id: with pad = eos it reads
        # the token before the EOS, as if the EOS were not there.
        torch.testing.assert_close(nat[0], alone(ours, text), atol=1e-5, rtol=1e-5)
        # Pooling by the attention mask reads the EOS itself, as the unpadded row does.
        torch.testing.assert_close(got[0], alone(ours, text + [EOS]), atol=1e-5, rtol=1e-5)
        assert not torch.allclose(got[0], nat[0], atol=1e-3)
        torch.testing.assert_close(got[1], nat[1])  # the row without EOS agrees


def test_pad_token_id_is_set_and_needed_for_batches():
    lm = random_lm(pad_token_id=None)
    model = classifier_from_causal_lm(lm)
    assert model.config.pad_token_id == EOS
    native = PhiForSequenceClassification(lm.config).eval()
    two = torch.tensor([[1, 2, 3], [4, 5, 6]])
    with pytest.raises(ValueError, match="batch sizes > 1 if no padding token"):
        native(input_ids=two)
    native(input_ids=two[:1])  # a single row still works


def test_cross_entropy_weighted_by_hand():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3], [-1.0, 3.0, 0.0], [0.0, 0.0, 1.0]])
    labels = torch.tensor([0, 2, 1, 0])
    weight = torch.tensor([0.5, 2.0, 3.0])
    logp = torch.log_softmax(logits, -1)
    by_hand = -sum(weight[y] * logp[i, y] for i, y in enumerate(labels.tolist())) / 4
    torch.testing.assert_close(cross_entropy(logits, labels, weight), by_hand)
    # Over an accumulated batch of 10 labels, this micro-batch contributes its sum / 10.
    torch.testing.assert_close(cross_entropy(logits, labels, weight, 10), by_hand * 4 / 10)
    plain = torch.nn.functional.cross_entropy(logits, labels)
    torch.testing.assert_close(cross_entropy(logits, labels), plain)
    torch.testing.assert_close(cross_entropy(logits, labels, torch.ones(3)), plain)


def test_class_weights():
    w = class_weights(["neutral"] * 6 + ["positive"] * 3 + ["negative"])
    torch.testing.assert_close(w, torch.tensor([10 / 3, 10 / 18, 10 / 9]))
    assert class_weights([0, 1, 2, 2, 1, 0]).tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match=r"classes \[0\] do not occur"):
        class_weights([1, 2, 2])


def test_compute_metrics_reuses_classification_metrics():
    from transformers import EvalPrediction

    logits = torch.eye(3)[[0, 1, 2, 1]].numpy()
    out = compute_metrics(EvalPrediction(predictions=logits, label_ids=[0, 1, 2, 2]))
    assert out["accuracy"] == pytest.approx(0.75)
    assert out["accuracy_positive"] == pytest.approx(0.5)
    assert 0 < out["macro_f1"] < 1


def test_weighted_trainer_loss_matches_hand_computation(tiny_profile, tiny_tokenizer, tmp_path):
    df = pd.DataFrame(
        {
            "text": ["Sales rose", "Profit fell sharply", "It employs 40"],
            "label": ["positive", "negative", "neutral"],
        }
    )
    ds = tokenize_headlines(df, tiny_tokenizer, max_length=64)
    assert ds["labels"] == [2, 0, 1]
    model = load_classifier(tiny_profile).eval()
    weight = torch.tensor([3.0, 0.5, 1.5])
    recipe = get_recipe("classifier", tiny_profile)
    trainer = classifier_trainer(
        model, tiny_tokenizer, ds, tiny_profile, recipe, tmp_path, weight=weight
    )
    inputs = trainer.data_collator([ds[i] for i in range(3)])
    with torch.no_grad():
        logits = model(**{k: v for k, v in inputs.items() if k != "labels"}).logits
        loss = trainer.compute_loss(model, dict(inputs))
    per_example = torch.nn.functional.cross_entropy(logits, inputs["labels"], reduction="none")
    torch.testing.assert_close(loss, (weight[inputs["labels"]] * per_example).mean())


def test_lora_saves_the_head_and_reload_is_identical(tiny_profile, tiny_tokenizer, tmp_path):
    from peft import PeftModel

    from phi2kit.tiny import tiny_path

    recipe = get_recipe("classifier", tiny_profile)
    torch.manual_seed(0)
    model = add_lora(load_classifier(tiny_profile), recipe, tiny_profile)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any(".score." in n for n in trainable) and any("lora_B" in n for n in trainable)
    with torch.no_grad():  # stand-in for training: move the head and the LoRA B matrices
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(tmp_path)
    keys = adapter_keys(tmp_path)
    assert any(k.endswith("score.weight") for k in keys), keys
    texts = ["Sales rose strongly", "The company warns of a loss", "It employs 40 people"]
    before = predict_logits(model, tiny_tokenizer, texts)
    fresh = PeftModel.from_pretrained(load_classifier(tiny_profile), tmp_path)
    assert (predict_logits(fresh, tiny_tokenizer, texts) == before).all()
    # Same weight names: the adapter also loads onto transformers' own class.
    native = PhiForSequenceClassification.from_pretrained(tiny_path(), num_labels=3)
    native.config.pad_token_id = native.config.eos_token_id
    reloaded = PeftModel.from_pretrained(native, tmp_path)
    torch.testing.assert_close(predict_logits(reloaded, tiny_tokenizer, texts), before)


def test_lora_target_that_matches_nothing_raises(tiny_profile):
    recipe = replace(get_recipe("classifier", tiny_profile), target_modules=("q_proj", "query"))
    with pytest.raises(ValueError, match=r"\['query'\] match no module"):
        add_lora(load_classifier(tiny_profile), recipe, tiny_profile)


def test_qlora_classifier_trains_head_and_adapters(tiny_profile):
    recipe = get_recipe("classifier", tiny_profile)
    base = load_classifier(tiny_profile, quantize_4bit=True)
    assert base.is_quantized and base.score.weight.dtype == torch.float32
    model = add_lora(base, recipe, tiny_profile)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert model.get_nb_trainable_parameters()[0] > 0
    assert any(".score." in n for n in trainable)
    assert all(p.dtype == torch.float32 for p in trainable.values())
    model.train()
    ids = torch.randint(1, 2000, (2, 6))
    model(
        input_ids=ids, attention_mask=torch.ones_like(ids), labels=torch.tensor([0, 2])
    ).loss.backward()
    head = next(p for n, p in trainable.items() if ".score." in n)
    assert head.grad is not None and head.grad.abs().sum() > 0

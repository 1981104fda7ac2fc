"""phi2kit.classifier: notebook 03's hand-built head against transformers' stock class,
padding layouts, pad = eos, metrics, the Trainer's loss under accumulation, LoRA/QLoRA and
the saved adapter."""

from __future__ import annotations

import ast
import json
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch
from transformers import PhiConfig, PhiForSequenceClassification

from phi2kit import classifier
from phi2kit.classifier import (
    classifier_trainer,
    classify_by_hand,
    compute_metrics,
    last_token_index,
    load_classifier,
    tokenize_headlines,
)
from phi2kit.lora import add_lora
from phi2kit.recipes import get_recipe
from phi2kit_exercises.classification import adapter_keys, predict_logits

EOS = 7  # the random model's eos, and its pad
NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "03_classification_head.ipynb"


def random_classifier(pad_token_id: int | None = EOS) -> PhiForSequenceClassification:
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
        num_labels=3,
    )
    torch.manual_seed(0)
    model = PhiForSequenceClassification(config).eval()
    torch.nn.init.normal_(model.score.weight, std=1.0)  # a head that is not near zero
    return model


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


def test_module_functions_are_the_notebooks_cells():
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    source = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    source = "\n".join(line for line in source.splitlines() if not line.startswith("%"))
    written = {n.name: ast.dump(n) for n in ast.walk(ast.parse(source))
               if isinstance(n, ast.FunctionDef)}  # fmt: skip
    module = ast.parse(Path(classifier.__file__).read_text())
    kept = {n.name: ast.dump(n) for n in module.body if isinstance(n, ast.FunctionDef)}
    shared = sorted(set(written) & set(kept))
    assert shared == ["classify_by_hand", "compute_metrics", "last_token_index"]
    assert all(written[name] == kept[name] for name in shared)


def test_last_token_index_for_both_padding_sides():
    right = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]])
    assert last_token_index(right).tolist() == [2, 0, 3]
    assert last_token_index(right.flip(-1)).tolist() == [3, 3, 3]


@pytest.mark.parametrize(
    ("rows", "side"), [(ROWS, "right"), (ROWS, "left"), (EOS_INSIDE, "right"), (EOS_INSIDE, "left")]
)
def test_by_hand_equals_the_stock_class_and_each_row_alone(rows, side):
    model = random_classifier()
    enc = batch(rows, side)
    with torch.no_grad():
        got, stock = classify_by_hand(model.model, model.score, enc), model(**enc).logits
    assert torch.equal(got, stock)
    for i, row in enumerate(rows):
        torch.testing.assert_close(got[i], alone(model, row), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got[0], got[1])  # the rows really differ


def test_stock_class_skips_a_trailing_eos_while_mask_pooling_reads_it():
    """The one difference, a note in notebook 03: with pad = eos, transformers reads the
    token before a trailing EOS; pooling by the attention mask reads the EOS itself."""
    model = random_classifier()
    text = [3, 9, 12, 40]
    for side in ("right", "left"):
        enc = batch([text + [EOS], [11, 2]], side)
        with torch.no_grad():
            ours, stock = classify_by_hand(model.model, model.score, enc), model(**enc).logits
        torch.testing.assert_close(stock[0], alone(model, text), atol=1e-5, rtol=1e-5)
        assert not torch.allclose(ours[0], stock[0], atol=1e-3)
        torch.testing.assert_close(ours[1], stock[1])  # the row without EOS agrees


def test_stock_class_needs_pad_token_id_for_batches():
    model = random_classifier(pad_token_id=None)
    two = torch.tensor([[1, 2, 3], [4, 5, 6]])
    with pytest.raises(ValueError, match="batch sizes > 1 if no padding token"):
        model(input_ids=two)
    model(input_ids=two[:1])  # a single row still works


def test_compute_metrics():
    from transformers import EvalPrediction

    logits = torch.eye(3)[[0, 1, 2, 1]].numpy()
    out = compute_metrics(EvalPrediction(predictions=logits, label_ids=[0, 1, 2, 2]))
    assert out["accuracy"] == pytest.approx(0.75)
    assert out["macro_f1"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)


def test_load_classifier_is_the_stock_class_with_labels_and_pad(tiny_profile):
    model = load_classifier(tiny_profile, labels=("complaint", "praise"))
    assert type(model) is PhiForSequenceClassification
    assert model.score.out_features == 2 and model.score.bias is None
    assert model.config.id2label == {0: "complaint", 1: "praise"}
    assert model.config.label2id == {"complaint": 0, "praise": 1}
    assert model.config.pad_token_id == model.config.eos_token_id


def test_trainer_loss_is_the_mean_under_gradient_accumulation(tiny_profile, tiny_tokenizer,
                                                              tmp_path):
    """transformers 5.23's classifiers return a batch mean but accept loss kwargs: without
    ``loss_is_scaled_for_ga = False`` the logged loss (and the gradient) double at accum 2."""
    texts = ["Sales rose", "Profit fell sharply", "It employs 40", "Orders grew"]
    df = pd.DataFrame({"text": texts, "label": ["positive", "negative", "neutral", "positive"]})
    ds = tokenize_headlines(df, tiny_tokenizer, max_length=64)
    assert ds["labels"] == [2, 0, 1, 2]
    recipe = replace(get_recipe("classifier", tiny_profile), max_steps=1, batch_size=2,
                     grad_accum=2, learning_rate=1e-9)
    torch.manual_seed(0)
    model = add_lora(load_classifier(tiny_profile), recipe, tiny_profile)
    trainer = classifier_trainer(model, tiny_tokenizer, ds, tiny_profile, recipe, tmp_path,
                                 logging_steps=1)
    inputs = trainer.data_collator([ds[i] for i in range(len(ds))])
    with torch.no_grad():
        enc = {k: inputs[k] for k in ("input_ids", "attention_mask")}
        logits = model(**enc).logits
        expected = torch.nn.functional.cross_entropy(logits, inputs["labels"])
    trainer.train()
    logged = next(h["loss"] for h in trainer.state.log_history if "loss" in h)
    assert logged == pytest.approx(expected.item(), rel=0.05)


def test_lora_saves_the_head_and_reload_is_identical(tiny_profile, tiny_tokenizer, tmp_path):
    from peft import PeftModel

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


def test_lora_target_that_matches_nothing_raises(tiny_profile):
    recipe = replace(get_recipe("classifier", tiny_profile), target_modules=("q_proj", "query"))
    with pytest.raises(ValueError, match=r"\['query'\] match no module"):
        add_lora(load_classifier(tiny_profile), recipe, tiny_profile)


def test_qlora_classifier_trains_head_and_adapters(tiny_profile):
    recipe = get_recipe("classifier", tiny_profile)
    base = load_classifier(tiny_profile, quantize_4bit=True)
    assert base.is_loaded_in_4bit and base.score.weight.dtype == torch.float32
    model = add_lora(base, recipe, tiny_profile)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert any(".score." in n for n in trainable)
    assert all(p.dtype == torch.float32 for p in trainable.values())
    model.train()
    ids = torch.randint(1, 2000, (2, 6))
    model(
        input_ids=ids, attention_mask=torch.ones_like(ids), labels=torch.tensor([0, 2])
    ).loss.backward()
    head = next(p for n, p in trainable.items() if ".score." in n)
    assert head.grad is not None and head.grad.abs().sum() > 0

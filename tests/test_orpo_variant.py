"""Notebook 08 §8.11: trl 1.16's experimental ORPOTrainer on the lesson's pairs.

ORPOTrainer tokenizes only the data sets it is built with, so ``evaluate`` on text pairs
fails (KeyError 'chosen_input_ids'); the lesson maps ``tokenize_row`` over its test pairs
first. If a trl release changes either half, the lesson's cell and this test say so.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "08_preference_dpo.ipynb"


@pytest.fixture(scope="module")
def orpo(tmp_path_factory):
    pytest.importorskip("trl.experimental.orpo")
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    from phi2kit.data import sample_path
    from phi2kit.data.oasst_pairs import load_pairs
    from phi2kit.tiny import tiny_path

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_path()))
    tokenizer.pad_token = tokenizer.eos_token
    pairs = load_pairs(sample_path("oasst1"))
    keys = ("prompt", "chosen", "rejected")
    text = Dataset.from_list([{k: p[k] for k in keys} for p in pairs[:12]])
    args = ORPOConfig(str(tmp_path_factory.mktemp("orpo")), max_steps=1, max_length=160,
                      per_device_train_batch_size=4, per_device_eval_batch_size=4,
                      remove_unused_columns=False, save_strategy="no", report_to="none",
                      use_cpu=True, disable_tqdm=True)  # fmt: skip
    trainer = ORPOTrainer(model=AutoModelForCausalLM.from_pretrained(str(tiny_path())), args=args,
                          train_dataset=text, processing_class=tokenizer,
                          peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                 task_type="CAUSAL_LM"))  # fmt: skip
    return trainer, text


def test_orpo_needs_its_own_tokenization_to_evaluate(orpo):
    trainer, text = orpo
    with pytest.raises(KeyError, match="chosen_input_ids"):
        trainer.evaluate(text)
    metrics = trainer.evaluate(text.map(trainer.tokenize_row))
    assert 0.0 <= metrics["eval_rewards/accuracies"] <= 1.0
    assert metrics["eval_loss"] > 0


def test_the_lesson_tokenizes_the_eval_pairs_for_orpo_and_reads_test_once():
    cells = ["".join(c["source"]) for c in json.loads(NOTEBOOK.read_text())["cells"]]
    orpo_cell = next(c for c in cells if "ORPOTrainer(" in c)
    assert "eval_ds.map(orpo.tokenize_row)" in orpo_cell
    assert "orpo.evaluate(eval_tokens)" in orpo_cell and "test_ds" not in orpo_cell
    # the test pairs score ORPO's last step once, with DPO's trainer, in the next cell
    after = cells[cells.index(orpo_cell) + 1 :]
    scored = [c for c in after if "trainer.evaluate(test_ds" in c and "orpo" in c]
    assert len(scored) == 1, scored

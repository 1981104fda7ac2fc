"""What trl's SFTTrainer feeds the model on prompt/completion data, and phi2kit.batching.

The batches come from ``trainer.get_train_dataloader()`` of a real SFTTrainer on the shipped
tiny Phi, built with ``phi2kit.training.sft_trainer`` as notebook 04 builds it.
"""

import pytest
import torch

from phi2kit.batching import token_counts

N_EXAMPLES = 8
BATCH = 4


@pytest.fixture(scope="module")
def sft(tmp_path_factory):
    """(trainer, tokenizer, prompt/completion dataset) on the first WebGLM sample examples."""
    from phi2kit.data import sample_path
    from phi2kit.data.webglm import load_webglm, to_prompt_completion
    from phi2kit.lora import add_lora
    from phi2kit.models import load_model, load_tokenizer
    from phi2kit.profiles import get_profile
    from phi2kit.recipes import get_recipe
    from phi2kit.training import sft_trainer

    profile = get_profile("tiny")
    recipe = get_recipe(
        "webglm", profile, quantize_4bit=False, batch_size=BATCH, grad_accum=1, max_steps=2
    )
    tok = load_tokenizer(profile, padding_side="right")
    examples = load_webglm(sample_path("webglm"), split="train", limit=N_EXAMPLES)
    dataset, _ = to_prompt_completion(examples, tok, recipe.max_length)
    torch.manual_seed(0)
    model = add_lora(load_model(profile, quantize_4bit=False), recipe, profile)
    out = tmp_path_factory.mktemp("sft")
    trainer = sft_trainer(model, tok, dataset, profile, recipe, out)
    return trainer, tok, dataset


@pytest.fixture(scope="module")
def batches(sft):
    trainer, _, _ = sft
    return list(trainer.get_train_dataloader())


def _source_row(batch_ids, tok, dataset):
    """The dataset row whose prompt + completion tokenizes to ``batch_ids`` (padding cut)."""
    for row in dataset:
        ids = tok(row["prompt"] + row["completion"])["input_ids"] + [tok.eos_token_id]
        if batch_ids[: len(ids)] == ids:
            return row, len(ids)
    raise AssertionError("a collated row matches no example")


def test_batches_cover_the_data_and_pad_dynamically(sft, batches):
    trainer, tok, dataset = sft
    assert sum(b["input_ids"].shape[0] for b in batches) == N_EXAMPLES
    for b in batches:
        real = b["attention_mask"].sum(1)
        # dynamic padding: as wide as the longest row, not max_length
        assert b["input_ids"].shape[1] == int(real.max())
        assert b["input_ids"].shape[1] < trainer.args.max_length
    # lengths differ, so some rows are padded, and the pads are eos ids (pad = eos)
    pads = torch.cat([b["input_ids"][b["attention_mask"] == 0] for b in batches])
    assert pads.numel() > 0 and (pads == tok.eos_token_id).all()


def test_labels_are_the_answer_and_one_final_eos(sft, batches):
    _, tok, dataset = sft
    for b in batches:
        for ids, labels, mask in zip(b["input_ids"], b["labels"], b["attention_mask"], strict=True):
            row, n = _source_row(ids.tolist(), tok, dataset)
            n_prompt = len(tok(row["prompt"])["input_ids"])
            sup = (labels != -100).nonzero().flatten().tolist()
            # one contiguous span: right after the prompt, up to and including the EOS
            assert sup == list(range(n_prompt, n)), (sup[:3], n_prompt, n)
            assert labels[sup].tolist() == ids[sup].tolist()
            assert tok.decode(ids[sup[:-1]]) == row["completion"]
            # exactly one supervised eos, the last supervised token
            eos_sup = [i for i in sup if ids[i] == tok.eos_token_id]
            assert eos_sup == [sup[-1]]
            # never loss on padding, although the pads carry the same id as that eos
            assert not ((labels != -100) & (mask == 0)).any()


def test_sampler_groups_by_length(sft):
    from transformers.trainer_pt_utils import LengthGroupedSampler

    trainer, _, _ = sft
    sampler = trainer.get_train_dataloader().batch_sampler.sampler
    assert isinstance(sampler, LengthGroupedSampler)


def test_token_counts_of_the_trainers_batches(batches):
    real, computed, _, on_pad = token_counts(batches)
    assert on_pad == 0
    assert 0.5 < real / computed < 1.0  # padded, but not mostly padding


def test_token_counts_on_a_hand_built_batch():
    batch = {
        "input_ids": torch.tensor([[5, 6, 7, 8], [5, 6, 0, 0]]),
        "attention_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]]),
        "labels": torch.tensor([[-100, -100, 7, 8], [-100, 6, 0, -100]]),
    }
    assert token_counts([batch]) == (6, 8, 4, 1)
    assert token_counts([batch, batch]) == (12, 16, 8, 2)


def test_padding_free_rows_keep_sequence_boundaries(tiny_model):
    """transformers 5 builds a block-diagonal mask from restarting position_ids, also for the
    phi2kit_fp32 (eager) attention: two sequences in one row give the same logits as alone.

    Only without a KV cache: with ``use_cache=True`` the boundaries are ignored. trl's
    ``compute_loss`` passes ``use_cache=False``, so padding-free SFT training is correct.
    """
    a, b = torch.tensor([[3, 17, 42, 9, 11]]), torch.tensor([[8, 25, 6]])
    flat = torch.cat([a, b], dim=1)
    pos = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2]])
    with torch.no_grad():
        alone = torch.cat([tiny_model(input_ids=a).logits, tiny_model(input_ids=b).logits], 1)
        packed = tiny_model(input_ids=flat, position_ids=pos, use_cache=False).logits
        leaky = tiny_model(input_ids=flat, use_cache=False).logits  # b attends to a
    assert torch.allclose(packed, alone, atol=1e-4)
    assert not torch.allclose(leaky[:, 5:], alone[:, 5:], atol=1e-2)

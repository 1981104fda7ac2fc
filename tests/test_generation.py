import torch

from phi2kit.generation import cut_at_stop, generate

PROMPTS = [
    "### Human: Where does the otter live?\n### Assistant:",
    "def add(a, b):",
    "Instruct: What does the heron eat?\nOutput:",
    "Norvik Oyj 's net sales rose",
]


def test_batched_equals_sequential_greedy(tiny_model, tiny_tokenizer):
    batched = generate(tiny_model, tiny_tokenizer, PROMPTS, max_new_tokens=24, batch_size=4)
    single = generate(tiny_model, tiny_tokenizer, PROMPTS, max_new_tokens=24, batch_size=1)
    assert batched.texts == single.texts
    assert batched.new_tokens == single.new_tokens
    assert tiny_tokenizer.padding_side == "right"  # restored


def test_right_padding_would_break_batching(tiny_model, tiny_tokenizer):
    """The reason for left padding: with right pads the short prompt continues from pad."""
    tok = tiny_tokenizer
    tok.padding_side = "right"
    try:
        enc = tok(PROMPTS[:2], return_tensors="pt", padding=True)
        out = tiny_model.generate(
            **enc, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id
        )
    finally:
        tok.padding_side = "right"
    short = 1 if enc["attention_mask"][1].sum() < enc["attention_mask"][0].sum() else 0
    right = tok.decode(out[short, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    alone = generate(tiny_model, tok, [PROMPTS[short]], max_new_tokens=8).texts[0]
    assert right != alone


def test_stops_on_eos(tiny_model, tiny_tokenizer):
    """Code snippets in the corpus end with EOS; the base model learned to stop there."""
    out = generate(tiny_model, tiny_tokenizer, ["def square(x):"], max_new_tokens=60)
    assert out.finish == ["eos"]
    assert out.new_tokens[0] < 60
    assert "return x * x" in out.texts[0]


def test_stop_strings_end_a_rambling_chat_turn(tiny_model, tiny_tokenizer):
    prompt = [PROMPTS[0]]
    free = generate(tiny_model, tiny_tokenizer, prompt, max_new_tokens=60)
    assert "### Human:" in free.texts[0]  # the base model invents the next turn
    cut = generate(
        tiny_model, tiny_tokenizer, prompt, max_new_tokens=60, stop_strings=["### Human:"]
    )
    assert cut.finish == ["stop"]
    assert "### Human:" not in cut.texts[0]
    assert free.texts[0].startswith(cut.texts[0].rstrip())
    assert cut.new_tokens[0] < free.new_tokens[0]


def test_cut_at_stop():
    assert cut_at_stop("a ### Human: b", ["### Human:"]) == ("a", True)
    assert cut_at_stop("abc", ["x", "y"]) == ("abc", False)
    assert cut_at_stop("1 y 2 x", ["x", "y"]) == ("1", True)


def test_tokens_per_second_positive(tiny_model, tiny_tokenizer):
    out = generate(tiny_model, tiny_tokenizer, PROMPTS[:2], max_new_tokens=5)
    assert out.tokens_per_second > 0
    assert all(isinstance(t, str) for t in out.texts)
    assert torch.is_grad_enabled()


def test_notebook_01_writes_what_this_module_holds():
    from lesson_source import assert_cells_define

    assert_cells_define("01_baseline_inference", "phi2kit/generation.py",
                        ["cut_at_stop", "inference", "Generation", "generate"])  # fmt: skip


def test_generate_restores_the_tokenizer(tiny_model, tiny_tokenizer):
    side, pad = tiny_tokenizer.padding_side, tiny_tokenizer.pad_token
    tiny_tokenizer.pad_token = None  # a raw Phi-2 tokenizer: generate pads with eos for the call
    try:
        out = generate(tiny_model, tiny_tokenizer, PROMPTS[:2], max_new_tokens=4)
        assert len(out.texts) == 2 and tiny_tokenizer.pad_token is None
        assert tiny_tokenizer.padding_side == side
    finally:
        tiny_tokenizer.pad_token = pad

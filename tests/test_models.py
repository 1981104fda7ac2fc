import math
from pathlib import Path

import torch

from phi2kit.models import (
    FP32_ATTENTION,
    describe,
    fp32_attention_forward,
    load_model,
    load_tokenizer,
    register_fp32_attention,
)

ROOT = Path(__file__).resolve().parents[1]


def test_tokenizer_behaves_like_phi2(tiny_profile):
    tok = load_tokenizer(tiny_profile)
    assert tok.eos_token == tok.bos_token == tok.unk_token == "<|endoftext|>"
    assert tok.pad_token == tok.eos_token  # set by us: Phi-2 ships none
    assert tok.chat_template is None
    assert tok.padding_side == "right"
    assert load_tokenizer(tiny_profile, padding_side="left").padding_side == "left"


def test_shipped_tokenizer_has_no_pad_token():
    from transformers import AutoTokenizer

    from phi2kit.tiny import tiny_path

    raw = AutoTokenizer.from_pretrained(tiny_path())
    assert raw.pad_token is None


def test_model_config_pad_and_attention(tiny_model):
    assert tiny_model.config.pad_token_id == tiny_model.config.eos_token_id
    assert tiny_model.config._attn_implementation == FP32_ATTENTION
    assert type(tiny_model).__name__ == "PhiForCausalLM"


def test_nf4_on_cpu(tiny_profile):
    q = load_model(tiny_profile, quantize_4bit=True)
    assert type(q.model.layers[0].self_attn.q_proj).__name__ == "Linear4bit"
    state = q.model.layers[0].mlp.fc1.weight.quant_state
    assert state.quant_type == "nf4" and state.nested  # double quantization
    summary = describe(q)
    full = describe(load_model(tiny_profile, quantize_4bit=False))
    assert summary.parameters == full.parameters
    assert summary.total_bytes < full.total_bytes
    x = torch.tensor([[1, 2, 3, 4]])
    assert torch.isfinite(q(input_ids=x).logits).all()


def test_describe_counts(tiny_model):
    s = describe(tiny_model)
    assert s.parameters == sum(p.numel() for p in tiny_model.parameters())
    assert s.bytes_by_dtype == {"float32": 4 * s.parameters}
    tiny_model.lm_head.weight.requires_grad_(False)
    assert describe(tiny_model).trainable == s.parameters - tiny_model.lm_head.weight.numel()
    assert "parameters" in str(s)


def _eager_fp16(q, k, v, scaling):
    scores = torch.matmul(q, k.transpose(2, 3)) * scaling  # transformers' eager maths
    return torch.matmul(torch.softmax(scores.float(), -1).to(q.dtype), v)


def test_fp32_attention_survives_fp16_overflow():
    torch.manual_seed(0)
    b, h, t, d = 1, 2, 5, 32
    q = torch.full((b, h, t, d), 60.0) + torch.randn(b, h, t, d)
    k = torch.full((b, h, t, d), 60.0) + torch.randn(b, h, t, d)
    v = torch.randn(b, h, t, d)
    scaling = d**-0.5
    assert (q @ k.transpose(2, 3)).max() > 65504  # the raw scores do not fit in fp16
    naive = _eager_fp16(q.half(), k.half(), v.half(), scaling)
    assert not torch.isfinite(naive).all()  # the bug: inf scores -> NaN

    module = torch.nn.Module()
    out, _ = fp32_attention_forward(module, q.half(), k.half(), v.half(), None, scaling)
    q, k, v = q.half().float(), k.half().float(), v.half().float()  # same rounded inputs
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=scaling)
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    assert torch.allclose(out.float(), ref.transpose(1, 2), atol=2e-2)


def test_fp32_attention_survives_fp16_autocast():
    """Inside Trainer(fp16=True) autocast is on: the fp32 scores must not be cast back."""
    torch.manual_seed(0)
    b, h, t, d = 1, 2, 5, 32
    q = (torch.full((b, h, t, d), 60.0) + torch.randn(b, h, t, d)).half()
    k = (torch.full((b, h, t, d), 60.0) + torch.randn(b, h, t, d)).half()
    v = torch.randn(b, h, t, d).half()
    with torch.autocast("cpu", dtype=torch.float16):
        # the trap: upcast inputs do not escape autocast, the matmul comes back in fp16
        assert torch.matmul(q.float(), k.float().transpose(2, 3)).dtype == torch.float16
        out, probs = fp32_attention_forward(torch.nn.Module(), q, k, v, None, d**-0.5)
    assert torch.isfinite(out).all() and torch.isfinite(probs).all()


def test_fp32_attention_matches_eager_in_fp32(tiny_profile, tiny_model):
    from transformers import AutoModelForCausalLM

    from phi2kit.models import model_source

    eager = AutoModelForCausalLM.from_pretrained(
        model_source(tiny_profile), attn_implementation="eager"
    )
    x = torch.tensor([[5, 6, 7, 8, 9], [0, 0, 5, 6, 7]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])
    a = tiny_model(input_ids=x, attention_mask=mask).logits
    b = eager(input_ids=x, attention_mask=mask).logits
    assert torch.allclose(a, b, atol=1e-5)


def test_model_level_fp16_overflow(tiny_profile):
    """With q/k weights scaled up, eager fp16 attention gives NaN; phi2kit_fp32 does not."""
    from transformers import AutoModelForCausalLM

    from phi2kit.models import model_source

    def build(attn):
        m = AutoModelForCausalLM.from_pretrained(
            model_source(tiny_profile), dtype=torch.float16, attn_implementation=attn
        )
        with torch.no_grad():
            for layer in m.model.layers:
                for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj):
                    proj.bias.fill_(80.0)
        return m

    register_fp32_attention()  # what notebook 01's cell does; importing phi2kit registers nothing
    x = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12]])
    bad = build("eager")(input_ids=x).logits
    good = build(FP32_ATTENTION)(input_ids=x).logits
    assert not torch.isfinite(bad).all()
    assert torch.isfinite(good).all()


def test_tiny_weights_are_safetensors_only():
    from phi2kit.tiny import tiny_path

    files = {p.suffix for p in tiny_path().iterdir()}
    assert ".safetensors" in files
    assert not files & {".bin", ".pt", ".pth", ".pkl"}


def test_tiny_build_report_beats_unigram():
    from phi2kit.tiny import build_report

    r = build_report()
    assert r["held_out_perplexity"] < r["unigram_perplexity"] / 5
    assert math.isfinite(r["held_out_perplexity"])


def test_nf4_eval_then_train_on_cpu(tiny_profile):
    """bitsandbytes repacks nf4 on an eval forward on some CPUs; training must still work."""
    from phi2kit.lora import add_lora
    from phi2kit.recipes import get_recipe

    q = load_model(tiny_profile, quantize_4bit=True)
    x = torch.tensor([[5, 6, 7, 8]])
    q.eval()
    with torch.no_grad():
        before = q(input_ids=x).logits
    peft_model = add_lora(q, get_recipe("webglm", tiny_profile), tiny_profile)
    peft_model.train()
    loss = peft_model(input_ids=x, labels=x).loss
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in peft_model.parameters() if p.requires_grad)
    assert torch.isfinite(before).all()


def test_seq_cls_model_has_pad_token(tiny_profile):
    clf = load_model(tiny_profile, quantize_4bit=False, num_labels=3)
    assert clf.config.pad_token_id is not None
    out = clf(
        input_ids=torch.tensor([[5, 6, 7], [0, 8, 9]]),
        attention_mask=torch.tensor([[1, 1, 1], [0, 1, 1]]),
    )
    assert out.logits.shape == (2, 3)


def test_device_map_per_process_under_ddp(monkeypatch):
    from phi2kit.models import _device_map
    from phi2kit.profiles import PROFILES

    assert _device_map(PROFILES["tiny"]) == "cpu"
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert _device_map(PROFILES["t4"]) == "auto"
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert _device_map(PROFILES["t4"]) == {"": 1}


def test_importing_phi2kit_registers_no_attention():
    """A learner's script that only imports phi2kit must not get "phi2kit_fp32" for free."""
    import subprocess
    import sys

    code = (
        "import phi2kit.models, phi2kit.training, phi2kit.generation\n"
        "from transformers import AttentionInterface\n"
        "assert 'phi2kit_fp32' not in AttentionInterface._global_mapping, 'registered on import'\n"
        "phi2kit.models.register_fp32_attention()\n"
        "assert 'phi2kit_fp32' in AttentionInterface._global_mapping\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_notebook_01_writes_what_this_module_holds():
    from lesson_source import assert_cells_define

    names = ["fp32_attention_forward", "ModelSummary", "describe", "_state_bytes"]
    assert_cells_define("01_baseline_inference", "phi2kit/models.py", names)


def test_describe_counts_every_quant_state_tensor_as_the_bench_does(tiny_profile):
    """Lesson 01's count of the quantization constants is the bench's (and so the planner's):
    absmax, nf4's code, and with double quantization the offset and the nested tensors."""
    from measure_memory import _storage_bytes, model_bytes  # bench/

    for double_quant in (True, False):
        q = load_model(tiny_profile, quantize_4bit=True)
        if not double_quant:  # the same weights, quantized without double quantization
            from transformers import AutoModelForCausalLM

            from phi2kit.models import bnb_config, model_source

            config = bnb_config(tiny_profile)
            config.bnb_4bit_use_double_quant = False
            q = AutoModelForCausalLM.from_pretrained(model_source(tiny_profile),
                                                     quantization_config=config)  # fmt: skip
        held = model_bytes(q) - _storage_bytes([*q.parameters(), *q.buffers()])
        assert describe(q).bytes_by_dtype["quant constants"] == held > 0

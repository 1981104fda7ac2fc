"""Lesson 07: a tuned Phi-2 as a GGUF file for llama.cpp and Ollama (its cells, kept for the
exercises and ``bench/gguf_real_size.py``). The layout is llama.cpp's own converter's for
``microsoft/phi-2``. Needs the ``export`` extra (``gguf`` and ``llama-cpp-python``).
"""

from __future__ import annotations

import json
from pathlib import Path

from phi2kit.lora import adapter_profile, trained_by


def chat_adapter_problem(adapter, profile_name):
    """Why the folder ``adapter`` cannot be exported as a chat model under ``profile_name``,
    and what to pass instead; None when it can."""
    path, say = Path(adapter), f"CHAT_ADAPTER {adapter}"
    instead = ("pass a chat adapter instead: notebook 06's (outputs/06_chat/adapter), or the "
               "adapter/ folder that `phi2kit train chat` (or dpo) writes in its --output-dir")
    if not path.exists():
        return f"{say} does not exist; {instead}"
    if not path.is_dir():
        return f"{say} is a file, not a folder; pass the folder that holds adapter_config.json"
    config, inner = path / "adapter_config.json", path / "adapter"  # inner: a `phi2kit train` run's
    if not config.is_file() and (inner / "adapter_config.json").is_file():
        return f"{say} holds no adapter_config.json, its adapter/ folder does: pass {inner}"
    if not config.is_file():
        return f"{say} holds no adapter_config.json, so it is no PEFT adapter; {instead}"
    if json.loads(config.read_text()).get("task_type") == "SEQ_CLS":
        return (f"{say} is a classifier adapter (task_type SEQ_CLS, as notebook 03 and `phi2kit "
                "train classifier` save it): it answers through its `score` head, which a chat "
                f"model has no place for, so the export would lose the head; {instead}")
    run, task = trained_by(path)
    if task not in (None, "chat", "dpo"):  # a dpo adapter is a chat model tuned further
        return (f"{say} was trained by `phi2kit train {task}` ({run} says so), not on chats: "
                f"exported as a chat model it would answer in that task's form; {instead}")
    made_under = adapter_profile(path)  # tiny and t4-cpu share one base model and outputs/
    if made_under not in (None, profile_name):
        return (f"{say} was trained under the {made_under} profile, not {profile_name}: run "
                f"this notebook with PROFILE {made_under!r}")
    return None


#: The course's chat format (notebook 06) as a Jinja template, for ``tokenizer.chat_template``:
#: ``### Human: ...`` / ``### Assistant: ...`` lines joined by newlines; the generation prompt
#: ends with ``### Assistant:`` (the reply then starts with a space, as in training). A system
#: message is no line of its own: as in training (``conversation_to_rows``), its text, a blank
#: line, then the next user message make one ``### Human:`` turn. Each turn is stripped, as
#: ``format_chat`` strips it in training (:data:`OLLAMA_TEMPLATE` cannot: Go has no trim).
CHAT_TEMPLATE = (
    "{% set ns = namespace(system='', started=false) %}"
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{% set ns.system = m['content'] | trim %}"
    "{% else %}"
    "{{ '\\n' if ns.started else '' }}{% set ns.started = true %}"
    "{% if m['role'] == 'user' %}"
    "{% set text = ns.system + '\\n\\n' + m['content'] if ns.system else m['content'] %}"
    "{% set ns.system = '' %}{{ '### Human: ' + text | trim }}"
    "{% else %}{{ '### Assistant: ' + m['content'] | trim }}{% endif %}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
    "{{ ('\\n' if ns.started else '') + '### Assistant:' }}{% endif %}"
)
STOP = ["### Human:"]  # the stop string of phi2kit.chat; EOS stops generation too

#: transformers' ``PhiForCausalLM`` names -> llama.cpp's ``phi2`` names (``N`` is the layer)
GGUF_NAMES = {
    "model.embed_tokens": "token_embd",
    "model.final_layernorm": "output_norm",
    "lm_head": "output",
    "model.layers.N.input_layernorm": "blk.N.attn_norm",
    "model.layers.N.self_attn.q_proj": "blk.N.attn_q",
    "model.layers.N.self_attn.k_proj": "blk.N.attn_k",
    "model.layers.N.self_attn.v_proj": "blk.N.attn_v",
    "model.layers.N.self_attn.dense": "blk.N.attn_output",
    "model.layers.N.mlp.fc1": "blk.N.ffn_up",
    "model.layers.N.mlp.fc2": "blk.N.ffn_down",
}


def gguf_name(hf_name):
    """``model.layers.3.mlp.fc1.weight`` -> ``blk.3.ffn_up.weight``."""
    module, _, kind = hf_name.rpartition(".")  # kind: "weight" or "bias"
    parts = module.split(".")
    layer = next((p for p in parts if p.isdigit()), None)
    key = ".".join("N" if p == layer else p for p in parts)
    return GGUF_NAMES[key].replace("N", str(layer)) + "." + kind


def gguf_type(name, ndim, qtype):
    """The converter's rule: 1-D tensors (biases, norms) stay F32, matrices get ``qtype``."""
    return "F32" if ndim == 1 or name.endswith("_norm.weight") else qtype


def write_gguf(model, tokenizer, path, qtype="F16", chat_template=CHAT_TEMPLATE, add_bos=False):
    """Write a ``PhiForCausalLM`` and its tokenizer as a ``phi2`` GGUF file (F16, Q8_0, F32)."""
    import gguf

    cfg, n_vocab = model.config, model.config.vocab_size
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    w = gguf.GGUFWriter(str(path), "phi2")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_attention_heads)
    w.add_layer_norm_eps(cfg.layer_norm_eps)
    w.add_rope_dimension_count(int(head_dim * cfg.rope_parameters["partial_rotary_factor"]))
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    w.add_file_type(gguf.LlamaFileType[f"MOSTLY_{qtype}" if qtype != "F32" else "ALL_F32"])
    # tokenizer: GPT-2 byte-level BPE, the token list padded to the embedding rows
    vocab = {i: t for t, i in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    T = gguf.TokenType
    types = [T.UNUSED if i not in vocab else T.NORMAL if i not in added
             else T.CONTROL if added[i].special else T.USER_DEFINED for i in range(n_vocab)]
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("phi-2")  # GPT-2's split regex, as in Phi-2's tokenizer
    w.add_token_list([vocab.get(i, f"[PAD{i}]") for i in range(n_vocab)])
    w.add_token_types(types)
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    w.add_bos_token_id(tokenizer.bos_token_id)
    w.add_eos_token_id(tokenizer.eos_token_id)
    w.add_add_bos_token(add_bos)  # False: Phi-2 was trained without a BOS
    if chat_template:
        w.add_chat_template(chat_template)
    for hf_name, tensor in model.state_dict().items():
        name = gguf_name(hf_name)
        kind = gguf.GGMLQuantizationType[gguf_type(name, tensor.ndim, qtype)]
        data = gguf.quants.quantize(tensor.detach().float().cpu().numpy(), kind)
        w.add_tensor(name, data, raw_dtype=kind)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def quantize_gguf(src, dst, ftype="Q4_K_M"):
    """Quantize a GGUF file with llama.cpp's own quantizer (K-quants need it: ``gguf`` has none)."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype}")
    if llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params) != 0:
        raise RuntimeError(f"llama.cpp could not quantize {src} to {ftype}")
    return dst


#: The chat format as an Ollama (Go) template, line for line :data:`CHAT_TEMPLATE`: Ollama keeps
#: system messages in ``.Messages`` (role ``system``); Go's templates have no trim function
#: (Ollama adds only ``json``), so it drops just one leading space of a message.
OLLAMA_TEMPLATE = (
    '{{- $system := "" }}{{ $started := false }}'
    "{{- range .Messages }}"
    "{{- $text := .Content }}"
    '{{ if and $text (eq (slice $text 0 1) " ") }}{{ $text = slice $text 1 }}{{ end }}'
    '{{- if eq .Role "system" }}{{ $system = $text }}'
    "{{- else }}{{ if $started }}\n{{ end }}{{ $started = true }}"
    '{{- if eq .Role "user" }}### Human: '
    '{{ if $system }}{{ $system }}\n\n{{ $system = "" }}{{ end }}{{ $text }}'
    "{{- else }}### Assistant: {{ $text }}{{ end }}"
    "{{- end }}"
    "{{- end }}{{ if $started }}\n{{ end }}### Assistant:"
)


def write_modelfile(path, gguf_file, eos="<|endoftext|>"):
    """An Ollama ``Modelfile`` beside the GGUF file: the template and stops of training."""
    stops = "".join(f'PARAMETER stop "{s}"\n' for s in [*STOP, eos])
    text = f'FROM ./{gguf_file}\nTEMPLATE """{OLLAMA_TEMPLATE}"""\n{stops}PARAMETER temperature 0\n'
    with open(path, "w") as f:
        f.write(text)
    return text


def write_gguf_lora(peft_model, path):
    """Write a PEFT LoRA adapter as a llama.cpp GGUF adapter for the base model's GGUF file."""
    import gguf

    config = peft_model.peft_config["default"]
    w = gguf.GGUFWriter(str(path), "phi2")
    w.add_type(gguf.GGUFType.ADAPTER)
    w.add_string(gguf.Keys.Adapter.TYPE, "lora")
    w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(config.lora_alpha))  # scale: alpha / r
    for name, tensor in peft_model.state_dict().items():  # ...q_proj.lora_A.weight: (r, in)
        if ".lora_A." in name or ".lora_B." in name:
            module = name.removeprefix("base_model.model.").split(".lora_")[0]
            part = "lora_a" if ".lora_A." in name else "lora_b"
            data = tensor.detach().float().cpu().numpy()
            w.add_tensor(f"{gguf_name(module + '.weight')}.{part}", data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path

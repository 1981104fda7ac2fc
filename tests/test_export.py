"""Lesson 07's GGUF export (phi2kit_exercises.export, the planner's GGUF sizes), checked through
llama.cpp.

- the writer's layout on Phi-2's real shapes (meta device) is the one llama.cpp's converter
  writes for ``microsoft/phi-2`` and its ``phi2`` loader reads;
- on the tiny model: llama.cpp's token ids equal transformers' on strings that stress
  byte-level BPE, F16 logits equal transformers' within F16 rounding, the embedded chat
  template renders the training prompt (a system message as training placed it), and the
  planner's sizes are the files';
- the Ollama template renders what the Jinja one renders, through Go's ``text/template``
  (where Go is installed);
- the notebook's cells hold the same functions as the module.
"""

import ast
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")

from phi2kit.chat import build_threads, conversation_to_rows, format_chat, to_examples  # noqa: E402
from phi2kit.plan.gguf import GB, gguf_footprint, gguf_tensor_types  # noqa: E402
from phi2kit_exercises import export  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "07_export_gguf.ipynb"
STRINGS = [
    "### Human: Where does the otter live?\n### Assistant:",
    "  two  spaces,\ttab and\n\nlines   ",
    "12345 3.14159 1e-9 2,048 ½",
    "naïve café Ünïcödé 東京 🚀 😶‍🌫️",
    "def f(x):\n    return x**2  # sq",
    "end.<|endoftext|>Next document",
    "I've 'told he's there, 'RE you sure? We'Ve",
    " The",
]
#: max |Δ logit| of the F16 file, relative to the largest |logit| (the lesson's bound):
#: fp16 keeps 11 significant bits (2^-11 ~ 5e-4 per rounding); measured about 4e-4 here
F16_TOLERANCE = 0.0025


def _tiny():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from phi2kit.tiny import tiny_path

    model = AutoModelForCausalLM.from_pretrained(tiny_path(), dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(tiny_path())


@pytest.fixture(scope="module")
def tiny():
    return _tiny()


@pytest.fixture(scope="module")
def files(tiny, tmp_path_factory):
    pytest.importorskip("llama_cpp")
    model, tokenizer = tiny
    folder = tmp_path_factory.mktemp("gguf")
    out = {q: folder / f"tiny-{q}.gguf" for q in ("F16", "Q8_0", "Q4_K_M")}
    export.write_gguf(model, tokenizer, out["F16"], qtype="F16")
    export.write_gguf(model, tokenizer, out["Q8_0"], qtype="Q8_0")
    export.quantize_gguf(out["F16"], out["Q4_K_M"], "Q4_K_M")
    return out


def _llama(path, **kw):
    from llama_cpp import Llama

    return Llama(str(path), n_ctx=256, n_threads=1, n_threads_batch=1, verbose=False, **kw)


# --- the layout, on Phi-2's real shapes ------------------------------------------------------


def _phi2_on_meta():
    from transformers import PhiForCausalLM

    from phi2kit.footprint import phi2_config

    with torch.device("meta"):
        return PhiForCausalLM(phi2_config())


def _loader_tensors(n_embd, n_ff, n_vocab, n_layer):
    """What llama.cpp's phi2 loader (src/models/phi2.cpp) creates: name -> ggml shape."""
    shapes = {"token_embd.weight": (n_embd, n_vocab), "output_norm.weight": (n_embd,),
              "output_norm.bias": (n_embd,), "output.weight": (n_embd, n_vocab),
              "output.bias": (n_vocab,)}  # fmt: skip
    for i in range(n_layer):
        b = f"blk.{i}."
        shapes.update({b + "attn_norm.weight": (n_embd,), b + "attn_norm.bias": (n_embd,)})
        for part in ("attn_q", "attn_k", "attn_v", "attn_output"):
            shapes.update({b + part + ".weight": (n_embd, n_embd), b + part + ".bias": (n_embd,)})
        shapes.update({b + "ffn_down.weight": (n_ff, n_embd), b + "ffn_down.bias": (n_embd,)})
        shapes.update({b + "ffn_up.weight": (n_embd, n_ff), b + "ffn_up.bias": (n_ff,)})
    return shapes


def _converter_type(name, ndim, qtype):
    """convert_hf_to_gguf.py's rule (ModelBase.prepare_tensors): 1-D and *_norm.weight in
    F32, every other ``.weight`` (token_embd and output included) in the file type."""
    if ndim <= 1 or name.endswith("_norm.weight") or not name.endswith(".weight"):
        return "F32"
    return qtype


def test_layout_on_phi2_is_the_converters_and_the_loaders():
    model = _phi2_on_meta()
    cfg = model.config
    converter = gguf.get_tensor_name_map(gguf.MODEL_ARCH.PHI2, cfg.num_hidden_layers)
    loader = _loader_tensors(cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size,
                             cfg.num_hidden_layers)  # fmt: skip
    ours = {}
    for hf_name, tensor in model.state_dict().items():
        name = export.gguf_name(hf_name)
        assert name == converter.get_name(hf_name, try_suffixes=(".weight", ".bias")), hf_name
        for qtype in ("F16", "Q8_0"):
            assert export.gguf_type(name, tensor.ndim, qtype) == _converter_type(
                name, tensor.ndim, qtype), name
        ours[name] = tuple(reversed(tensor.shape))  # ggml lists the fastest dimension first
    assert ours == loader
    assert len(ours) == 5 + 14 * 32 == 453  # 5 outside the layers, 14 per layer
    # the planner counts the same tensors
    assert [n for n, _, _ in gguf_tensor_types("F16")] and \
        {n for n, _, _ in gguf_tensor_types("F16")} == set(ours)  # fmt: skip


def test_phi2_sizes_from_the_planner():
    sizes = {q: gguf_footprint(q) for q in ("F16", "Q8_0", "Q4_K_M")}
    # F16: every one of Phi-2's 2,779,683,840 parameters in 2 bytes, but 1-D tensors in F32
    assert 5.55 < sizes["F16"]["tensors_gb"] < 5.57
    assert sizes["Q4_K_M"]["disk_gb"] < sizes["Q8_0"]["disk_gb"] < sizes["F16"]["disk_gb"]
    assert 1.6 < sizes["Q4_K_M"]["disk_gb"] < 1.9  # published Q4_K_M files of Phi-2: ~1.7-1.8 GB
    for s in sizes.values():
        assert s["ram_gb"] > s["disk_gb"] + s["kv_cache_gb"]
        assert s["kv_cache_gb"] == pytest.approx(2 * 32 * 2048 * 2560 * 2 / GB)
    with pytest.raises(ValueError, match="qtype must be"):
        gguf_footprint("Q4_0")


# --- the tiny model through llama.cpp --------------------------------------------------------


def test_header_says_phi2_no_bos_and_the_chat_template(files, tiny):
    model, tokenizer = tiny
    reader = gguf.GGUFReader(files["F16"])
    field = {k: reader.fields[k].contents() for k in reader.fields}
    assert field["general.architecture"] == "phi2"
    assert field["tokenizer.ggml.model"] == "gpt2" and field["tokenizer.ggml.pre"] == "phi-2"
    assert field["tokenizer.ggml.add_bos_token"] is False
    assert field["tokenizer.ggml.eos_token_id"] == tokenizer.eos_token_id
    assert field["tokenizer.chat_template"] == export.CHAT_TEMPLATE
    assert len(field["tokenizer.ggml.tokens"]) == model.config.vocab_size  # padded to the rows
    assert field["phi2.rope.dimension_count"] == 12  # 0.4 x head dim 32, as transformers rounds
    assert field["phi2.feed_forward_length"] == model.config.intermediate_size


def test_token_ids_equal_transformers(files, tiny):
    _, tokenizer = tiny
    llm = _llama(files["Q8_0"])
    try:
        for s in STRINGS:
            assert llm.tokenize(s.encode(), add_bos=False, special=True) == \
                tokenizer(s)["input_ids"], s  # fmt: skip
        # add_bos=True adds nothing: the file says Phi-2 takes no BOS
        assert llm.tokenize(b"Hi", add_bos=True, special=True) == tokenizer("Hi")["input_ids"]
    finally:
        llm.close()


def _max_errors(path, model, tokenizer):
    llm = _llama(path, logits_all=True)
    worst, scale, agree = 0.0, 0.0, []
    try:
        for s in STRINGS[:5]:
            ids = tokenizer(s)["input_ids"]
            with torch.no_grad():
                hf = model(torch.tensor([ids])).logits[0].numpy()
            llm.reset()
            llm.eval(ids)
            ours = np.asarray(llm.scores[: len(ids)])
            worst = max(worst, float(np.abs(ours - hf).max()))
            scale = max(scale, float(np.abs(hf).max()))
            agree += list(ours.argmax(-1) == hf.argmax(-1))
    finally:
        llm.close()
    return worst, scale, float(np.mean(agree))


def test_f16_is_the_same_model(files, tiny):
    model, tokenizer = tiny
    worst, scale, agree = _max_errors(files["F16"], model, tokenizer)
    assert worst < F16_TOLERANCE * scale, (worst, scale)
    assert agree == 1.0


def test_a_wrong_file_fails_the_f16_check(tiny, tmp_path):
    """The check can fail: swap two layers' query weights and the bound is broken."""
    pytest.importorskip("llama_cpp")
    model, tokenizer = tiny
    import copy

    broken = copy.deepcopy(model)
    q0, q1 = (broken.model.layers[i].self_attn.q_proj.weight for i in (0, 1))
    with torch.no_grad():
        q0.data, q1.data = q1.data.clone(), q0.data.clone()
    export.write_gguf(broken, tokenizer, tmp_path / "broken.gguf")
    worst, scale, _ = _max_errors(tmp_path / "broken.gguf", model, tokenizer)
    assert worst > F16_TOLERANCE * scale * 10, (worst, scale)


def _jinja(messages, add_generation_prompt=True):
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter
    from transformers import AutoTokenizer

    from phi2kit.tiny import tiny_path

    hf = AutoTokenizer.from_pretrained(tiny_path()).apply_chat_template(
        messages, chat_template=export.CHAT_TEMPLATE, tokenize=False,
        add_generation_prompt=add_generation_prompt)  # fmt: skip
    if add_generation_prompt:  # llama-cpp-python's chat API always asks for the reply
        formatter = Jinja2ChatFormatter(export.CHAT_TEMPLATE, eos_token="<|endoftext|>",
                                        bos_token="<|endoftext|>")  # fmt: skip
        assert formatter(messages=messages).prompt == hf
    return hf


def _messages(turns):
    return [{"role": "user" if r == "prompter" else r, "content": t} for r, t in turns]


def test_chat_template_renders_the_training_prompt():
    turns = [("prompter", "Where does the otter live?"), ("assistant", " By rivers."),
             ("prompter", "What does it eat?")]  # fmt: skip
    assert _jinja(_messages(turns)) == format_chat(turns)  # a reply's leading space: dropped
    closed = _jinja(_messages(turns[:2]), add_generation_prompt=False)
    assert closed == format_chat(turns[:2], add_generation_prompt=False)


def test_chat_template_strips_each_turn_as_training_did():
    """``format_chat`` strips every turn, and a leading system message joins the first user
    message before it is stripped (``conversation_to_rows``); the template does the same."""
    from phi2kit.chat import conversation_to_rows

    chat = [("system", " Be brief. "), ("prompter", " Hi\n"), ("assistant", "  Hello. \n"),
            ("prompter", "Bye ")]  # fmt: skip
    rows = conversation_to_rows(_messages(chat), 0)
    trained = format_chat([(r["role"], r["text"]) for r in rows])
    assert _jinja(_messages(chat)) == trained == (
        "### Human: Be brief.\n\n Hi\n### Assistant: Hello.\n### Human: Bye\n### Assistant:")


#: Your own chats (messages format), each with a system message first, as training reads them
SYSTEM_CHATS = [
    [("system", "Answer in one short sentence."), ("prompter", "Where does the otter live?"),
     ("assistant", "By rivers."), ("prompter", "What does it eat?"), ("assistant", "Fish.")],
    [("system", "You are a terse assistant."), ("prompter", "Hi"), ("assistant", "Hello.")],
]


@pytest.mark.parametrize("turns", SYSTEM_CHATS, ids=["two turns", "one turn"])
def test_chat_template_puts_a_system_message_where_training_did(tiny, turns):
    """The prompt of the chat's last reply, as ``phi2kit train chat --data`` builds it (lesson
    06's ``conversation_to_rows``, ``build_threads``, ``to_examples``): the system text, a blank
    line and the first user message in one ``### Human:`` turn. The old template wrote the
    system message as an ``### Assistant:`` line."""
    _, tokenizer = tiny
    (thread,) = build_threads(conversation_to_rows(_messages(turns), "own"))
    trained = to_examples(thread, tokenizer, 512)[-1]["prompt"]
    assert trained.startswith(f"### Human: {turns[0][1]}\n\n{turns[1][1]}\n")
    assert _jinja(_messages(turns[:-1])) == trained


# --- the Ollama template, rendered by Go's text/template -------------------------------------

#: Renders a template over messages (JSON on stdin) as Ollama's template package does for a
#: template that uses .Messages: consecutive messages of one role joined by a blank line, system
#: messages kept among the messages and gathered in .System.
GO_RENDER = """package main

import (
\t"encoding/json"
\t"os"
\t"strings"
\t"text/template"
)

type Message struct {
\tRole    string `json:"role"`
\tContent string `json:"content"`
}

func main() {
\tvar msgs []Message
\tif err := json.NewDecoder(os.Stdin).Decode(&msgs); err != nil {
\t\tpanic(err)
\t}
\tvar system []string
\tvar joined []*Message
\tfor i := range msgs {
\t\tm := msgs[i]
\t\tif m.Role == "system" {
\t\t\tsystem = append(system, m.Content)
\t\t}
\t\tif n := len(joined); n > 0 && joined[n-1].Role == m.Role {
\t\t\tjoined[n-1].Content += "\\n\\n" + m.Content
\t\t} else {
\t\t\tjoined = append(joined, &m)
\t\t}
\t}
\tt := template.Must(template.New("").Option("missingkey=zero").Parse(os.Args[1]))
\tdata := map[string]any{"System": strings.Join(system, "\\n\\n"), "Messages": joined}
\tif err := t.Execute(os.Stdout, data); err != nil {
\t\tpanic(err)
\t}
}
"""


@pytest.fixture(scope="module")
def go_render(tmp_path_factory):
    if shutil.which("go") is None:
        pytest.skip("Go is not installed (apt-get install golang-go renders Ollama's template)")
    folder = tmp_path_factory.mktemp("go")
    (folder / "render.go").write_text(GO_RENDER)
    env = {**os.environ, "GOCACHE": str(folder / "cache"), "GOPATH": str(folder / "gopath"),
           "GOFLAGS": "", "GO111MODULE": "off"}  # fmt: skip
    subprocess.run(["go", "build", "-o", str(folder / "render"), str(folder / "render.go")],
                   check=True, env=env, cwd=folder)  # fmt: skip

    def render(messages):
        return subprocess.run([str(folder / "render"), export.OLLAMA_TEMPLATE], check=True,
                              input=json.dumps(messages), capture_output=True, text=True).stdout

    return render


@pytest.mark.parametrize("turns", [
    [("prompter", "Where does the otter live?")],
    [("prompter", "Where?"), ("assistant", " By rivers."), ("prompter", "What does it eat?")],
    *[chat[:-1] for chat in SYSTEM_CHATS],
], ids=["one message", "a reply with its space", "system", "system, one turn"])
def test_ollama_template_renders_what_the_jinja_template_renders(go_render, turns):
    messages = _messages(turns)
    assert go_render(messages) == _jinja(messages)


def test_ollama_render_can_fail(go_render):
    """The old template (every role but user an ``### Assistant:`` line) renders a system
    message unlike the Jinja template: the comparison above sees it."""
    old = export.OLLAMA_TEMPLATE
    try:
        export.OLLAMA_TEMPLATE = (
            "{{- range $i, $m := .Messages }}{{ if $i }}\n{{ end }}"
            '{{ if eq $m.Role "user" }}### Human: {{ $m.Content }}'
            "{{ else }}### Assistant: {{ $m.Content }}{{ end }}"
            "{{- end }}\n### Assistant:"
        )
        messages = _messages(SYSTEM_CHATS[0][:-1])
        assert go_render(messages).startswith("### Assistant: Answer in one short sentence.\n")
        assert go_render(messages) != _jinja(messages)
    finally:
        export.OLLAMA_TEMPLATE = old


def test_chat_completion_stops_and_equals_transformers(files, tiny):
    model, tokenizer = tiny
    prompt = format_chat([("prompter", "Where does the otter live?")])
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    new = model.generate(ids, max_new_tokens=30, do_sample=False)[0, ids.shape[1]:]
    hf = tokenizer.decode(new, skip_special_tokens=True).split(export.STOP[0])[0]
    llm = _llama(files["F16"])
    try:
        messages = [{"role": "user", "content": "Where does the otter live?"}]
        out = llm.create_chat_completion(messages, max_tokens=30, temperature=0.0, stop=export.STOP)
    finally:
        llm.close()
    choice = out["choices"][0]
    assert choice["message"]["content"] == hf
    assert choice["finish_reason"] == "stop"  # the base tiny model writes "### Human:" next


def test_planner_equals_the_tiny_files(files):
    from phi2kit.tiny import tiny_config

    for q, path in files.items():
        reader = gguf.GGUFReader(path)
        got = {t.name: (t.tensor_type.name, int(t.n_bytes)) for t in reader.tensors}
        predicted = gguf_tensor_types(q, tiny_config())
        assert {n: t for n, t, _ in predicted} == {n: t for n, (t, _) in got.items()}, q
        size = gguf_footprint(q, tiny_config())
        assert round(size["tensors_gb"] * GB) == sum(b for _, b in got.values()), q
        assert size["disk_gb"] * GB == pytest.approx(path.stat().st_size, rel=0.01), q


def test_adapter_gguf_on_the_base_gguf_equals_the_peft_model(files, tiny, tmp_path):
    from peft import LoraConfig, get_peft_model

    model, tokenizer = tiny
    torch.manual_seed(0)
    lora = LoraConfig(r=8, lora_alpha=16, init_lora_weights=False,  # a non-zero update
                      target_modules=["q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"])
    peft_model = get_peft_model(copy_of(model), lora).eval()
    adapter = export.write_gguf_lora(peft_model, tmp_path / "adapter.gguf")
    reader = gguf.GGUFReader(adapter)
    assert reader.fields["general.type"].contents() == "adapter"
    assert reader.fields["adapter.lora.alpha"].contents() == 16.0
    names = {t.name for t in reader.tensors}
    assert "blk.0.attn_q.weight.lora_a" in names and "blk.3.ffn_down.weight.lora_b" in names
    assert len(names) == 4 * 6 * 2
    ids = tokenizer(STRINGS[0])["input_ids"]
    with torch.no_grad():
        want = peft_model(torch.tensor([ids])).logits[0].numpy()
    errors = {}
    for label, path in [("with", adapter), ("without", None)]:
        llm = _llama(files["F16"], lora_path=str(path) if path else None, logits_all=True)
        try:
            llm.eval(ids)
            errors[label] = float(np.abs(np.asarray(llm.scores[: len(ids)]) - want).max())
        finally:
            llm.close()
    assert errors["with"] < F16_TOLERANCE * np.abs(want).max(), errors
    assert errors["with"] * 10 < errors["without"], errors


def copy_of(model):
    import copy

    return copy.deepcopy(model)


def test_quantize_refuses_a_missing_file(tmp_path):
    pytest.importorskip("llama_cpp")
    with pytest.raises(RuntimeError, match="could not quantize"):
        export.quantize_gguf(tmp_path / "nope.gguf", tmp_path / "out.gguf")


def test_modelfile_has_the_training_format_and_stops(tmp_path):
    text = export.write_modelfile(tmp_path / "Modelfile", "model-q4_k_m.gguf")
    assert (tmp_path / "Modelfile").read_text() == text
    assert text.startswith("FROM ./model-q4_k_m.gguf\n")
    lines = text.splitlines()
    stops = [line.split(" ", 2)[2] for line in lines if line.startswith("PARAMETER stop")]
    assert stops == ['"### Human:"', '"<|endoftext|>"']
    template = text.split('TEMPLATE """')[1].split('"""')[0]
    assert template == export.OLLAMA_TEMPLATE
    # the Jinja template's pieces: a system message's place, a line per message, newline-joined,
    # then the generation prompt
    assert '{{- if eq .Role "system" }}{{ $system = $text }}' in template
    assert "### Human: {{ if $system }}{{ $system }}\n\n{{ $system = \"\" }}{{ end }}{{ $text }}" \
        in template  # fmt: skip
    assert "### Assistant: {{ $text }}" in template
    assert template.endswith("{{ if $started }}\n{{ end }}### Assistant:")


# --- the notebook's cells are the module's source ----------------------------------------------


def test_notebook_cells_define_the_module_functions():
    cells = [c for c in json.loads(NOTEBOOK.read_text())["cells"] if c["cell_type"] == "code"]
    in_cells = {}
    for cell in cells:
        for node in ast.parse("".join(cell["source"])).body:
            if isinstance(node, ast.FunctionDef):
                in_cells[node.name] = ast.dump(node)
            elif isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
                in_cells.setdefault(node.targets[0].id, ast.dump(node))
    module = ast.parse(Path(export.__file__).read_text())
    names = []
    for node in module.body:
        if isinstance(node, ast.FunctionDef) or (
            isinstance(node, ast.Assign) and node.targets[0].id.isupper()
        ):
            name = node.name if isinstance(node, ast.FunctionDef) else node.targets[0].id
            names.append(name)
            assert in_cells.get(name) == ast.dump(node), f"{name} differs from the notebook's cell"
    assert {"write_gguf", "gguf_name", "quantize_gguf", "CHAT_TEMPLATE", "OLLAMA_TEMPLATE",
            "chat_adapter_problem"} <= set(names)

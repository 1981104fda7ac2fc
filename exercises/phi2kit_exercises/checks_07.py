"""Criteria of the exercises that go with lesson 07 (see :mod:`checks_01_02`).

Both need the ``export`` extra (``gguf``, ``llama-cpp-python``); without it a criterion
fails and says how to install it.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from phi2kit_exercises.grader import Fail, call, criterion, exercise, expect, need

_TINY: dict = {}


def _need_export() -> None:
    try:
        import gguf  # noqa: F401
        import llama_cpp  # noqa: F401
    except ImportError as err:
        raise Fail(f"{err.name} is missing: pip install -e '.[export]' (compiles llama.cpp, "
                   "about 4 minutes)") from None  # fmt: skip


def _tiny():
    """The tiny model (fp32, eval) and its tokenizer, with plain transformers calls."""
    if not _TINY:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from phi2kit.tiny import tiny_path

        _TINY["model"] = AutoModelForCausalLM.from_pretrained(tiny_path()).eval()
        _TINY["tokenizer"] = AutoTokenizer.from_pretrained(tiny_path())
    return _TINY["model"], _TINY["tokenizer"]


@contextlib.contextmanager
def _llama(path, **kw):
    from llama_cpp import Llama

    llm = Llama(str(path), n_ctx=256, n_threads=1, n_threads_batch=1, verbose=False, **kw)
    try:
        yield llm
    finally:
        llm.close()


# --- 07_a: the tensor names llama.cpp's phi2 loader looks up (Write it) ----------------------

exercise("07_a", "Tensor names for llama.cpp", "Write it", "07 §7.2")


@criterion(
    "07_a",
    "gguf_name() gives the converter's name for every tensor of the tiny Phi and of Phi-2",
    "split off '.weight'/'.bias', find the layer number, look the module up in a table "
    "(model.layers.N.mlp.fc1 -> blk.N.ffn_up, lm_head -> output, ...), put both back",
)
def _07a_names(ns):
    _need_export()
    import gguf
    import torch
    from transformers import PhiForCausalLM

    from phi2kit.footprint import phi2_config

    model, _ = _tiny()
    with torch.device("meta"):
        phi2 = PhiForCausalLM(phi2_config())
    for m in (model, phi2):
        names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.PHI2, m.config.num_hidden_layers)
        for hf_name in m.state_dict():
            want = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
            got = call(ns, "gguf_name", hf_name)
            expect(got == want, f"gguf_name({hf_name!r}) = {got!r}; llama.cpp looks for {want!r}")
    return f"{len(phi2.state_dict())} Phi-2 names and {len(model.state_dict())} tiny ones"


@criterion(
    "07_a",
    "a file written with your names loads in llama.cpp and gives transformers' logits",
    "finish gguf_name first; the grader writes an F16 file with it and runs it in llama.cpp",
)
def _07a_loads(ns):
    _need_export()
    import tempfile

    import numpy as np
    import torch

    from phi2kit_exercises import export

    model, tokenizer = _tiny()
    fn = need(ns, "gguf_name")
    ids = tokenizer("### Human: Where does the otter live?\n### Assistant:")["input_ids"]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "mine.gguf"
        original = export.gguf_name
        export.gguf_name = fn  # write_gguf looks the names up here
        try:
            export.write_gguf(model, tokenizer, path)
        except Exception as err:
            raise Fail(f"writing with your gguf_name failed: {type(err).__name__}: {err}") from None
        finally:
            export.gguf_name = original
        try:
            with _llama(path, logits_all=True) as llm:
                llm.eval(ids)
                ours = np.asarray(llm.scores[: len(ids)])
        except Exception as err:
            raise Fail(f"llama.cpp could not load the file ({type(err).__name__})") from None
    with torch.no_grad():
        hf = model(torch.tensor([ids])).logits[0].numpy()
    err = float(np.abs(ours - hf).max())
    expect(err < 0.0025 * np.abs(hf).max(), f"max |Δ logit| {err:.3g}: not the same model")
    return f"max |Δ logit| {err:.2e}"


# --- 07_b: a GGUF file without its chat template (Break and fix) ----------------------------

exercise("07_b", "Exporting without the chat template", "Break and fix", "07 §7.2, §7.6")


@criterion(
    "07_b",
    "the broken file has no template, and llama.cpp then renders another model's prompt",
    "broken_path = write_gguf(model, tokenizer, ..., chat_template=None); "
    "broken_prompt is what llama-cpp-python rendered for it",
)
def _07b_broken(ns):
    _need_export()
    import gguf

    from phi2kit.chat import format_chat

    reader = gguf.GGUFReader(need(ns, "broken_path"))
    expect("tokenizer.chat_template" not in reader.fields, "broken_path has a chat template")
    prompt = need(ns, "broken_prompt")
    expect(prompt != format_chat([("prompter", need(ns, "QUESTION"))]),
           "broken_prompt is the training prompt: was the template really left out?")  # fmt: skip
    return f"llama.cpp rendered {prompt[:40]!r}..."


@criterion(
    "07_b",
    "the fixed file's template renders the training prompt, and its chat reply is transformers'",
    "write the file again with chat_template=CHAT_TEMPLATE (the course's ### Human: / "
    "### Assistant: format), then chat with it as before",
)
def _07b_fixed(ns):
    _need_export()
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    from phi2kit.chat import format_chat
    from phi2kit_exercises.export import STOP

    path = need(ns, "fixed_path")
    turns = [("prompter", "Hi"), ("assistant", "Hello."), ("prompter", "Where is the heron?")]
    messages = [{"role": "user" if r == "prompter" else "assistant", "content": t}
                for r, t in turns]  # fmt: skip
    question = need(ns, "QUESTION")
    with _llama(path) as llm:
        template = llm.metadata.get("tokenizer.chat_template")
        expect(template, f"{path} has no tokenizer.chat_template")
        fmt = Jinja2ChatFormatter(template, eos_token="<|endoftext|>", bos_token="<|endoftext|>")
        for n in (1, 3):
            got = fmt(messages=messages[:n]).prompt
            expect(got == format_chat(turns[:n]), f"the template renders {got!r}")
        out = llm.create_chat_completion([{"role": "user", "content": question}], max_tokens=30,
                                         temperature=0.0, stop=STOP)  # fmt: skip
    reply = out["choices"][0]["message"]["content"]
    model, tokenizer = _tiny()
    ids = tokenizer(format_chat([("prompter", question)]), return_tensors="pt").input_ids
    new = model.generate(ids, max_new_tokens=30, do_sample=False)[0, ids.shape[1]:]
    want = tokenizer.decode(new, skip_special_tokens=True).split(STOP[0])[0]
    expect(reply == want, f"llama.cpp replied {reply!r}; transformers {want!r}")
    return f"reply {reply!r}, as in transformers"

"""Merge a LoRA or QLoRA adapter into a full-precision base, and measure the merge (lesson 05).

    python examples/05_merge_adapter.py --model microsoft/phi-2 \
        --adapter outputs/04_webglm/adapter --output-dir merged --dtype float16

- A **LoRA** adapter (trained on the full-precision base) is merged into the base weights W.
- A **QLoRA** adapter was trained against dequant(nf4(W)), not W. It is merged into a
  full-precision copy whose Linear weights are dequant(nf4(W)) ("dequantize, then merge");
  merging it into W instead ships a model you never trained.
- Which one: ``--trained-on 4bit|full``; ``auto`` (the default) reads the ``base_4bit`` note
  that examples 02, 04, 06 and phi2kit's ``save_adapter`` write next to the adapter
  (``phi2kit_adapter.json``). A classifier adapter (03's, SEQ_CLS) is refused: no causal LM.
- Printed: max |delta logit| of the merged model against the unmerged adapter model (on the
  base it was trained on), on a few prompts. ``--model`` takes a hub id or a local folder
  (e.g. ``phi2kit/tiny/model``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from pathlib import Path

logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # its note on an optional CPU kernel

PROMPTS = [
    "### Human: Where does the otter live?\n### Assistant:",
    "Instruct: What does the heron eat?\nOutput:",
    "def square(x):",
]


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="base model: hub id or local folder")
    p.add_argument("--adapter", required=True, help="folder with adapter_config.json")
    p.add_argument("--output-dir", required=True, help="where the merged model is saved")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                   help="dtype of the merged model (float16 on a T4)")
    p.add_argument("--trained-on", default="auto", choices=["auto", "4bit", "full"],
                   help="the base the adapter was trained on (auto: read phi2kit_adapter.json)")
    p.add_argument("--no-double-quant", action="store_true",
                   help="the QLoRA base was quantized without double quantization")
    return p


def fail(message: str):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def check_adapter(args) -> bool:
    """Refuse a bad --adapter before any model loads; return whether it was trained on 4-bit."""
    folder = Path(args.adapter)
    config = folder / "adapter_config.json"
    if not folder.is_dir():
        fail(f"--adapter {folder}: {'a file, not a' if folder.is_file() else 'no such'} folder")
    if not config.is_file():
        fail(f"--adapter {folder}: no adapter_config.json, so it is not a PEFT adapter folder")
    try:
        fields = json.loads(config.read_text())
    except json.JSONDecodeError as e:
        fail(f"{config}: not valid JSON ({e.msg.removesuffix(' at')} at line {e.lineno} "
             f"column {e.colno})")
    fields = fields if isinstance(fields, dict) else {}
    if fields.get("peft_type") != "LORA":
        fail(f"{config}: field peft_type is {fields.get('peft_type')!r}; this script merges LoRA")
    if fields.get("task_type") == "SEQ_CLS":  # a classifier (03): a causal LM would drop `score`
        fail(f"{config}: task_type SEQ_CLS is a sequence-classification adapter; this script "
             "merges causal-LM adapters: load it on AutoModelForSequenceClassification and "
             "call merge_and_unload() there")
    note = folder / "phi2kit_adapter.json"
    if args.trained_on != "auto":  # your word over the note's, but a disagreement is said
        asked = args.trained_on == "4bit"
        with contextlib.suppress(OSError, ValueError, AttributeError):
            if json.loads(note.read_text()).get("base_4bit") is (not asked):
                print(f"note: {note} says base_4bit {not asked}; merging as --trained-on "
                      f"{args.trained_on} asks", file=sys.stderr)
        return asked
    if not note.is_file():
        fail(f"{folder}: no phi2kit_adapter.json saying which base it was trained on; "
             "pass --trained-on 4bit (QLoRA) or --trained-on full (LoRA)")
    try:
        return bool(json.loads(note.read_text())["base_4bit"])
    except (json.JSONDecodeError, KeyError, TypeError):
        fail(f'{note}: not {{"base_4bit": true|false}}; fix it, or pass --trained-on 4bit|full')


def quant_config(args):
    """The nf4 config of the QLoRA base (lessons 01-05's, compute in --dtype)."""
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=not args.no_double_quant,
        bnb_4bit_compute_dtype=getattr(torch, args.dtype),
    )


def logits(model, tokenizer, device):
    """fp32 logits at every real (non-pad) position of PROMPTS."""
    import torch

    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True).to(device)
    with torch.no_grad():
        out = model(**batch).logits
    return out[batch["attention_mask"].bool()].float().cpu()


def main(argv=None) -> None:
    args = make_parser().parse_args(argv)
    base_4bit = check_adapter(args)  # before loading anything
    out = Path(args.output_dir)
    if out.is_file() or (out.is_dir() and any(out.iterdir())):
        fail(f"--output-dir {out} is not empty: pass another, or remove it")
    import bitsandbytes as bnb
    import torch
    from bitsandbytes.functional import dequantize_4bit
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    load = dict(dtype=getattr(torch, args.dtype), device_map=device, use_safetensors=True)
    try:  # a mistyped folder: one line, not a traceback from inside transformers
        tokenizer = AutoTokenizer.from_pretrained(args.model)
    except OSError as err:
        sys.exit(print(f"error: --model {args.model}: no such folder; as a hub id: {err}"
                       .splitlines()[0], file=sys.stderr) or 2)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    tokenizer.padding_side = "left"
    base = AutoModelForCausalLM.from_pretrained(args.model, **load).eval()
    if base_4bit:  # dequantize, then merge: W := dequant(nf4(W)) in every quantized Linear
        quantized = AutoModelForCausalLM.from_pretrained(
            args.model, quantization_config=quant_config(args), **load).eval()
        for module in quantized.modules():  # CPU only: keep the layout dequantize_4bit reads
            if hasattr(module, "support_avx512bf16_for_cpu"):
                module.support_avx512bf16_for_cpu = False
        n = 0
        with torch.no_grad():
            for name, module in quantized.named_modules():
                if isinstance(module, bnb.nn.Linear4bit):
                    weight = base.get_submodule(name).weight
                    state = module.weight.quant_state
                    weight.copy_(dequantize_4bit(module.weight.data, state).to(weight.dtype))
                    n += 1
        print(f"dequantized {n} 4-bit layers into the {args.dtype} base")
        # the reference: the adapter on the 4-bit base, as it was trained
        reference = logits(PeftModel.from_pretrained(quantized, args.adapter).eval(),
                           tokenizer, device)
        del quantized
    model = PeftModel.from_pretrained(base, args.adapter).eval()
    if not base_4bit:
        reference = logits(model, tokenizer, device)  # the adapter on its own base
    merged = model.merge_and_unload()
    gap = (logits(merged, tokenizer, device) - reference).abs()
    print(f"merged vs the unmerged {'QLoRA' if base_4bit else 'LoRA'} model on {len(PROMPTS)} "
          f"prompts: max |delta logit| {gap.max():.3e}, mean {gap.mean():.3e}")
    merged.save_pretrained(args.output_dir)  # safetensors
    tokenizer.save_pretrained(args.output_dir)
    print(f"saved the merged model to {args.output_dir}")


if __name__ == "__main__":
    main()

"""QLoRA on cited question answering (lesson 04 as one script): Phi-2 learns to answer from
numbered references, cite them as [1], [2], ... and stop.

Data: JSON lines as the WebGLM-QA data card describes, one object per line,
{"question": str, "answer": str, "references": [str, ...]}, with citations 1-based.

    python examples/04_qa_qlora.py --model microsoft/phi-2 --data train.jsonl \\
        --eval-data validation.jsonl --output-dir out/qa [--max-steps 100] [--max-length 1024]
    python examples/04_qa_qlora.py --model phi2kit/tiny/model --data data/webglm/train.jsonl \\
        --output-dir /tmp/qa --max-steps 30 --max-length 256 --learning-rate 3e-3 --no-4bit  # CPU

Writes the adapter of the checkpoint with the lowest eval loss to OUTPUT_DIR/adapter.
"""

import argparse
import json
import logging
import os
import re
import sys

logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # its note on an optional CPU kernel

CITATION = re.compile(r"\[(\d+(?:\s*,\s*\d+)*)\]")  # [3], [1, 2]


def fail(message):
    sys.exit(print(f"error: {message}", file=sys.stderr) or 2)


def read_rows(path):
    """The file's rows; a bad one ends the run with file, line and field (exit 2)."""
    if not os.path.isfile(path):
        fail(f"{path}: a folder, not a file: pass the .jsonl file" if os.path.isdir(path) else
             f"{path}: no such file")
    try:
        with open(path, encoding="utf-8-sig") as f:  # a byte order mark is dropped
            lines = f.read().split("\n")  # not splitlines: a JSON string may hold U+2028
    except UnicodeDecodeError:  # e.g. a .gz or .parquet: this script reads plain JSON lines
        fail(f"{path}: not UTF-8 text; pass plain JSON lines (unpack a .gz first)")
    rows = []
    for n, line in enumerate(lines, start=1):
        try:
            row = json.loads(line.rstrip()) if line.strip() else {"blank": True}
        except json.JSONDecodeError as e:  # its msg may end in "at": the column follows
            fail(f"{path}, line {n}: not JSON ({e.msg.removesuffix(' at')} at column {e.colno})")
        if not isinstance(row, dict):
            fail(f"{path}, line {n}: not a JSON object")
        for field, kind in (("question", str), ("answer", str), ("references", list)):
            if "blank" not in row and not (isinstance(row.get(field), kind) and row[field]):
                fail(f"{path}, line {n}, field {field!r}: missing, empty or not a {kind.__name__}")
        cites = [int(k) for m in CITATION.finditer(row.get("answer", "")) for k in m[1].split(",")]
        if any(not 1 <= k <= len(row["references"]) for k in cites):
            fail(f"{path}, line {n}, field 'answer': cites outside 1..{len(row['references'])}")
        rows += [] if "blank" in row else [row]
    return rows or fail(f"{path}: no rows")


def build_qa_prompt(question, references):
    """Numbered references, the question, then the cue "Answer:" (the completion follows)."""
    lines = ["References:"] + [f"[{i}] {ref.strip()}" for i, ref in enumerate(references, 1)]
    return "\n".join((lines if references else []) + [f"Question: {question.strip()}", "Answer:"])


def fit_example(example, tokenizer, max_length):
    """Prompt and completion whose tokens (with EOS) fit in max_length; None if nothing fits."""
    question, answer = example["question"], " " + example["answer"].strip()
    refs = list(example["references"])
    while True:  # drop whole references from the last: the question and the answer are never cut
        prompt = build_qa_prompt(question, refs)
        if len(tokenizer(prompt + answer).input_ids) + 1 <= max_length:  # + 1: the EOS trl appends
            return {"prompt": prompt, "completion": answer}
        if not refs:
            return None
        refs.pop()


def fp32_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Lesson 01's attention: Q K^T and softmax in fp32 (in fp16 Phi-2's scores overflow)."""
    import torch

    with torch.autocast(query.device.type, enabled=False):
        scores = torch.matmul(query.float(), key.float().transpose(2, 3)) * scaling
        if attention_mask is not None:  # eager's additive mask
            scores = scores + attention_mask[:, :, :, : key.shape[-2]].float()
        probs = torch.nn.functional.dropout(scores.softmax(-1), p=dropout, training=module.training)
        out = torch.matmul(probs, value.float()).to(query.dtype)
    return out.transpose(1, 2).contiguous(), probs.to(query.dtype)


def build_configs(args, cuda, bf16_ok):
    """BitsAndBytesConfig (None with --no-4bit), LoraConfig and SFTConfig: lesson 04's T4 recipe."""
    import torch
    from peft import LoraConfig
    from transformers import BitsAndBytesConfig
    from trl import SFTConfig

    dtype = (torch.bfloat16 if bf16_ok else torch.float16) if cuda else torch.float32
    quant = None if args.no_4bit else BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=dtype)
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, bias="none", task_type="CAUSAL_LM",
                      target_modules=["q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"])
    every = max(1, args.max_steps // 4)  # evaluate and save 4 times
    sft = SFTConfig(
        output_dir=f"{args.output_dir}/checkpoints", learning_rate=args.learning_rate,
        per_device_train_batch_size=2, per_device_eval_batch_size=2, gradient_accumulation_steps=8,
        warmup_steps=max(1, round(0.03 * args.max_steps)), lr_scheduler_type="linear",
        max_steps=args.max_steps, fp16=cuda and not bf16_ok, bf16=cuda and bf16_ok,
        optim="paged_adamw_8bit" if cuda else "adamw_torch", activation_checkpointing=cuda,
        activation_checkpointing_kwargs={"use_reentrant": False}, max_length=args.max_length,
        completion_only_loss=True, packing=False, train_sampling_strategy="group_by_length",
        eval_strategy="steps", eval_steps=every, save_strategy="steps", save_steps=every,
        save_total_limit=2, load_best_model_at_end=True, metric_for_best_model="eval_loss",
        greater_is_better=False, logging_steps=max(1, args.max_steps // 20), report_to="none",
        seed=0, data_seed=0, use_cpu=not cuda, dataloader_num_workers=0, disable_tqdm=not cuda)
    return quant, lora, sft, dtype


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="microsoft/phi-2", help="hub id or local folder")
    p.add_argument("--data", required=True, help="training JSON lines")
    p.add_argument("--eval-data", help="eval JSON lines (default: a fifth of --data, up to 200)")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--max-steps", type=int, default=100)
    p.add_argument("--max-length", type=int, default=1024, help="tokens per example")
    p.add_argument("--learning-rate", type=float, default=2e-4, help="3e-3 suits the tiny model")
    p.add_argument("--no-4bit", action="store_true", help="LoRA on the full-precision base")
    args = p.parse_args(argv)
    for flag in ("max_steps", "max_length", "learning_rate"):  # argparse takes 0 and -3 as numbers
        if not getattr(args, flag) > 0:
            p.error(f"--{flag.replace('_', '-')} {getattr(args, flag)}: must be above 0")
    return args


def main(argv=None):
    args = parse_args(argv)
    out = args.output_dir
    if os.path.isfile(out) or (os.path.isdir(out) and os.listdir(out)):  # never overwritten
        fail(f"--output-dir {out} is not empty: pass another, or remove it")
    train_rows = read_rows(args.data)  # every row checked before any model loads
    eval_rows = read_rows(args.eval_data) if args.eval_data else None
    import torch

    if not args.no_4bit and not torch.cuda.is_available():
        fail("4-bit training needs a CUDA GPU (bitsandbytes); on a CPU pass --no-4bit")
    from datasets import Dataset
    from peft import get_peft_model, prepare_model_for_kbit_training
    from transformers import AttentionInterface, AutoModelForCausalLM, AutoTokenizer, set_seed
    from transformers.masking_utils import AttentionMaskInterface, eager_mask
    from trl import SFTTrainer

    AttentionInterface.register("fp32", fp32_attention)
    AttentionMaskInterface.register("fp32", eager_mask)
    cuda = torch.cuda.is_available()
    bf16 = cuda and torch.cuda.is_bf16_supported(including_emulation=False)  # a T4's: emulated
    quant, lora, sft, dtype = build_configs(args, cuda, bf16)
    if eval_rows is None:  # hold out a fifth of the training rows
        n = min(200, max(1, len(train_rows) // 5))
        train_rows, eval_rows = train_rows[:-n], train_rows[-n:]
    try:  # a mistyped folder: one line, not a traceback from inside transformers
        tokenizer = AutoTokenizer.from_pretrained(args.model)
    except OSError as err:
        sys.exit(print(f"error: --model {args.model}: no such folder; as a hub id: {err}"
                       .splitlines()[0], file=sys.stderr) or 2)
    tokenizer.pad_token = tokenizer.eos_token  # Phi-2 has no pad token
    fitted = {name: [r for r in (fit_example(e, tokenizer, args.max_length) for e in rows) if r]
              for name, rows in (("train", train_rows), ("eval", eval_rows))}
    print(n := {k: len(v) for k, v in fitted.items()}, f"examples fit in {args.max_length}")
    if not all(n.values()):  # whole references are dropped to fit, never the question
        fail(f"--max-length {args.max_length}: {n} examples fit: raise it" if train_rows else
             f"{args.data}: one row: need two, to train and to evaluate (or pass --eval-data)")
    set_seed(0)  # the new LoRA matrices start random: seeded, a rerun trains the same adapter
    model = AutoModelForCausalLM.from_pretrained(
        args.model, dtype=dtype, quantization_config=quant, attn_implementation="fp32",
        use_safetensors=True, device_map="auto" if cuda else "cpu")
    model.config.pad_token_id = tokenizer.pad_token_id
    if quant is not None:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cuda)
    model = get_peft_model(model, lora)
    trainer = SFTTrainer(model=model, args=sft, processing_class=tokenizer,
                         train_dataset=Dataset.from_list(fitted["train"]),
                         eval_dataset=Dataset.from_list(fitted["eval"]))
    for p in [p for p in model.parameters() if p.requires_grad]:  # trl may cast adapters to bf16
        p.data = p.data.float()  # and fp16 AMP needs fp32 trainable weights
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    print(f"eval loss {before:.3f} -> {trainer.state.best_metric:.3f} (best checkpoint, step "
          f"{trainer.state.best_global_step})")
    trainer.model.save_pretrained(adapter := f"{args.output_dir}/adapter")  # + its base, for 05
    with open(f"{adapter}/phi2kit_adapter.json", "w") as f:
        json.dump({"base_4bit": quant is not None}, f)
    with open(f"{args.output_dir}/metrics.json", "w") as f:
        json.dump({"eval_loss_before": before, "eval_loss_best": trainer.state.best_metric}, f)


if __name__ == "__main__":
    main()

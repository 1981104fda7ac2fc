"""Chat fine-tuning (QLoRA) of Phi-2 on OpenAssistant OASST1 conversations: notebook 06 as a script.

    python examples/06_chat_sft.py --model microsoft/phi-2 --data oasst1.jsonl --output-dir out/chat

--data: JSON lines in either published form: the hub's message rows (message_id, parent_id, text,
role, lang, rank, deleted, review_result) or the export's *.trees.jsonl (replies nested); or your
own chats, {"messages": [{"role": "user"|"assistant", "content"}, ...]} (trl's and OpenAI's format,
and ultrachat_200k's; a system message first goes before the first user turn). Threads follow
the best-ranked reply; deleted and failed-review messages are skipped. On a CPU, with the shipped
tiny model: --model phi2kit/tiny/model --no-4bit --max-steps 30 --learning-rate 3e-3
"""

import argparse
import json
import logging
import os
import sys
from collections import defaultdict

# before peft imports bitsandbytes: its note on an optional CPU kernel it does not need
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)

import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
from transformers import (
    AttentionInterface,
    AutoModelForCausalLM,
    AutoTokenizer,
    BitsAndBytesConfig,
    set_seed,
)
from transformers.masking_utils import AttentionMaskInterface, eager_mask
from trl import SFTConfig, SFTTrainer

HUMAN, ASSISTANT = "### Human:", "### Assistant:"
KEEP = ("message_id", "text", "role", "lang", "rank", "created_date", "deleted", "review_result")


def bad(path, line, field, problem):
    """One line: file, then the line and field where there is one, then the problem; exit 2."""
    where = (f", line {line}" if line else "") + (f", field '{field}'" if field else "")
    print(f"error: {path}{where}: {problem}", file=sys.stderr)
    sys.exit(2)


def chat_rows(turns, path, line):
    """A {"messages": [...]} chat as message rows: one path, each the reply to the one before."""
    if not isinstance(turns, list) or not turns:
        bad(path, line, "messages", 'not a list of {"role", "content"} messages')
    roles = [m.get("role") if isinstance(m, dict) else None for m in turns]
    texts = [m.get("content") if isinstance(m, dict) else None for m in turns]
    system = roles[0] == "system"
    for i, (role, text) in enumerate(zip(roles, texts, strict=True)):
        if not isinstance(text, str) or not text.strip():
            bad(path, line, f"messages[{i}]", "content missing, empty or not text")
        if system and i == 1 and role != "user":
            bad(path, line, "messages[1]", f"role {role!r}: a system message must be followed by "
                "a user turn")
        if role != ("system" if system and i == 0 else ("user", "assistant")[(i - system) % 2]):
            bad(path, line, f"messages[{i}]", f"role {role!r}: user and assistant take turns, "
                "a user first (a system message only first)")
    if roles == ["system"]:
        bad(path, line, "messages[0]", "a system message alone: it must be followed by a user turn "
            "(the chat has no user or assistant turns)")
    if system and len(texts) > 1:  # the chat format has no system line
        roles, texts = roles[1:], [f"{texts[0].strip()}\n\n{texts[1]}", *texts[2:]]
    return [{"message_id": f"{line}-{i}", "parent_id": f"{line}-{i - 1}" if i else None,
             "text": text, "role": {"user": "prompter"}.get(role, role), "lang": None, "rank": None,
             "created_date": None, "deleted": False, "review_result": None, "line": line}
            for i, (role, text) in enumerate(zip(roles, texts, strict=True))]


def read_messages(path):
    """Messages from rows or trees; exit 2 at the first bad line, naming file, line and field."""
    def message(m, line, parent_id):
        for field in ("message_id", "text", "role"):
            if not isinstance(m.get(field), str):
                bad(path, line, field, "missing or not a string")
        if m["role"] not in ("prompter", "assistant"):
            bad(path, line, "role", f"{m['role']!r} is neither prompter nor assistant")
        return {**{k: m.get(k) for k in KEEP}, "parent_id": parent_id, "line": line}

    def flatten(node, line, parent_id=None):
        rows = [message(node, line, parent_id)]
        for reply in node.get("replies") or []:
            rows += flatten(reply, line, node["message_id"])
        return rows

    if not os.path.isfile(path):
        bad(path, None, None, "a folder, not a file: pass the .jsonl file" if os.path.isdir(path)
            else "no such file")
    messages = []
    try:
        with open(path, encoding="utf-8-sig") as f:  # a byte order mark is dropped
            lines = f.read().split("\n")  # not splitlines: a JSON string may hold U+2028
    except UnicodeDecodeError:  # e.g. a .gz or .parquet: this script reads plain JSON lines
        bad(path, None, None, "not UTF-8 text; pass plain JSON lines (unpack a .gz first)")
    if "".join(lines).lstrip().startswith("["):
        bad(path, None, None, "a JSON array: this reads JSON lines, one object per line")
    for line, text in enumerate(lines, start=1):
        try:
            obj = json.loads(text.rstrip()) if text.strip() else {"skip": True}
        except json.JSONDecodeError as e:  # its msg may end in "at": the column follows
            bad(path, line, None, f"not JSON ({e.msg.removesuffix(' at')} at column {e.colno}); "
                "--data needs one JSON object a line")
        if not isinstance(obj, dict):
            bad(path, line, None, "not a JSON object")
        elif obj.get("tree_state") not in (None, "ready_for_export"):
            continue  # a tree still growing or aborted (the export's *_all files)
        elif "messages" in obj and not isinstance(obj.get("prompt"), dict):  # chats, not trees:
            messages += chat_rows(obj["messages"], path, line)  # ultrachat's add a "prompt" text
        elif "prompt" in obj and not isinstance(obj["prompt"], str):  # *.trees.jsonl: a tree a line
            if not isinstance(obj["prompt"], dict):
                bad(path, line, "prompt", "not a message object")
            messages += flatten(obj["prompt"], line)
        elif not {"message_id", "text", "skip"} & set(obj):  # e.g. ShareGPT's "conversations"
            bad(path, line, None, f"the fields {', '.join(list(obj)[:4])}: not a form this reads; "
                'pass OASST1 rows or trees, or chats {"messages": [{"role", "content"}, ...]}')
        elif "skip" not in obj:  # the hub's rows: one message per line
            messages.append(message(obj, line, obj.get("parent_id") or None))
    ids = {m["message_id"] for m in messages}
    for m in messages:
        if m["parent_id"] is not None and m["parent_id"] not in ids:
            bad(path, m["line"], "parent_id", f"no message {m['parent_id']!r} in the file")
    return messages


def build_threads(messages, lang=None):
    """The main thread of every tree: the best-ranked usable reply at each step."""
    def usable(m):  # a message without a language (your own chats) is kept
        in_lang = lang is None or m["lang"] in (None, lang)
        return not m["deleted"] and m["review_result"] is not False and in_lang

    replies = defaultdict(list)
    for m in messages:
        replies[m["parent_id"]].append(m)
    threads = []
    for node in [m for m in replies[None] if usable(m)]:
        thread = []
        while node is not None:
            thread.append((node["role"], node["text"]))
            options = [m for m in replies[node["message_id"]] if usable(m)]
            node = min(options, default=None, key=lambda m: (
                m["rank"] is None, m["rank"] or 0, m["created_date"] or ""))
        while thread and thread[-1][0] != "assistant":
            thread.pop()
        threads += [thread] if thread else []
    return threads


def format_chat(turns):
    lines = [f"{HUMAN if role == 'prompter' else ASSISTANT} {text.strip()}" for role, text in turns]
    return "\n".join(lines + [ASSISTANT])


def to_examples(thread, tokenizer, max_length):
    """One prompt/completion per assistant turn; the oldest turns dropped until it fits."""
    lines = [format_chat([turn])[: -len(ASSISTANT) - 1] for turn in thread]
    sizes = [len(ids) + 1 for ids in tokenizer(lines)["input_ids"]]  # each line, + its newline
    n_tail = len(tokenizer(ASSISTANT)["input_ids"]) + 1  # the closing '### Assistant:', and EOS
    examples = []
    for i, (role, text) in enumerate(thread):
        budget = max_length - n_tail - len(tokenizer(" " + text.strip())["input_ids"])
        for start in [j for j in range(i) if thread[j][0] == "prompter" and role == "assistant"]:
            if sum(sizes[start:i]) <= budget:  # byte-level BPE: line counts add up exactly
                prompt, completion = format_chat(thread[start:i]), " " + text.strip()
                examples.append({"prompt": prompt, "completion": completion})
                break
    return examples


def build_configs(args, gpu):
    """(BitsAndBytesConfig or None, LoraConfig, SFTConfig); gpu: None (CPU), "t4" or "ampere"."""
    dtype = {"t4": torch.float16, "ampere": torch.bfloat16}.get(gpu, torch.float32)
    quant = None if args.no_4bit else BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=dtype)
    lora = LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                      target_modules=["q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"],
                      bias="none", task_type="CAUSAL_LM")
    every, batch = max(1, args.max_steps // 5), args.batch_size
    sft = SFTConfig(
        output_dir=f"{args.output_dir}/checkpoints", per_device_train_batch_size=batch,
        per_device_eval_batch_size=batch, gradient_accumulation_steps=args.grad_accum,
        learning_rate=args.learning_rate, warmup_steps=max(1, round(0.03 * args.max_steps)),
        lr_scheduler_type="linear", max_steps=args.max_steps, fp16=gpu == "t4",
        bf16=gpu == "ampere", optim="paged_adamw_8bit" if gpu else "adamw_torch",
        activation_checkpointing=gpu is not None,
        activation_checkpointing_kwargs={"use_reentrant": False}, max_length=args.max_length,
        completion_only_loss=True, packing=False, train_sampling_strategy="group_by_length",
        eval_strategy="steps", eval_steps=every, save_strategy="steps", save_steps=every,
        save_total_limit=2, load_best_model_at_end=True, metric_for_best_model="eval_loss",
        greater_is_better=False, logging_steps=max(1, args.max_steps // 20), report_to="none",
        seed=0, data_seed=0, use_cpu=gpu is None, dataloader_num_workers=0,
        disable_tqdm=gpu is None)
    return quant, lora, sft


def fp32_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Eager attention with Q @ K^T and the softmax in fp32: Phi-2's scores overflow fp16."""
    with torch.autocast(device_type=query.device.type, enabled=False):
        scores = torch.matmul(query.float(), key.float().transpose(2, 3)) * scaling
        if attention_mask is not None:
            scores = scores + attention_mask[:, :, :, : key.shape[-2]].float()
        out = torch.matmul(torch.softmax(scores, dim=-1), value.float()).to(query.dtype)
    return out.transpose(1, 2).contiguous(), None


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="microsoft/phi-2", help="hub id or local folder")
    p.add_argument("--data", required=True,
                   help='OASST1 JSON lines (rows or *.trees.jsonl) or {"messages": [...]} chats')
    p.add_argument("--no-4bit", action="store_true", help="LoRA on the full-precision base")
    for flag, kind, default in [("--output-dir", str, "out/06_chat"), ("--max-steps", int, 120),
                                ("--lang", str, "en"), ("--n-eval", int, 100),
                                ("--lora-r", int, 64), ("--lora-alpha", int, 16),
                                ("--lora-dropout", float, 0.1), ("--learning-rate", float, 2e-4),
                                ("--batch-size", int, 2), ("--grad-accum", int, 8),
                                ("--max-length", int, 1024)]:
        p.add_argument(flag, type=kind, default=default, help=f"default {default}")
    args = p.parse_args(argv)
    # argparse takes 0 and -3 as numbers: a run of "0 steps" would train one and look real
    for flag in ("max_steps", "lora_r", "lora_alpha", "learning_rate", "batch_size", "grad_accum",
                 "max_length", "n_eval"):
        if not getattr(args, flag) > 0:
            p.error(f"--{flag.replace('_', '-')} {getattr(args, flag)}: must be above 0")
    return args


def main(argv=None):
    args = parse_args(argv)
    out = args.output_dir
    if os.path.isfile(out) or (os.path.isdir(out) and os.listdir(out)):  # never overwritten
        sys.exit(print(f"error: --output-dir {out} is not empty: pass another, or remove it",
                       file=sys.stderr) or 2)
    threads = build_threads(read_messages(args.data), args.lang or None)  # before any model loads
    unique = [list(t) for t in dict.fromkeys(map(tuple, threads))]  # a repeat: in train and eval
    print(f"{len(threads)} threads, {len(threads) - len(unique)} repeats left out")
    threads = unique
    if len(threads) <= args.n_eval:
        bad(args.data, None, None, f"{len(threads)} threads in {args.lang!r} (or of no language), "
            f"need more than --n-eval {args.n_eval}: lower it (e.g. --n-eval "
            f"{max(1, len(threads) // 5)})")
    gpu = None if not torch.cuda.is_available() else (
        "ampere" if torch.cuda.is_bf16_supported(including_emulation=False) else "t4")
    quant, lora, sft = build_configs(args, gpu)
    if quant is not None and gpu is None:  # bitsandbytes' CPU 4-bit layer fails in training
        sys.exit(print("error: 4-bit training needs a CUDA GPU (bitsandbytes); on a CPU pass "
                       "--no-4bit", file=sys.stderr) or 2)
    try:  # a mistyped folder: one line, not a traceback from inside transformers
        tokenizer = AutoTokenizer.from_pretrained(args.model)
    except OSError as err:
        sys.exit(print(f"error: --model {args.model}: no such folder; as a hub id: {err}"
                       .splitlines()[0], file=sys.stderr) or 2)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    groups = {}  # threads that open with the same question go to one split
    for t in threads:
        groups.setdefault(t[0][1].strip(), []).append(t)
    # whole groups from the end of the file to eval; the first, and any over a fifth, train
    held = [q for q in list(groups)[1:] if len(groups[q]) <= max(1, len(threads) // 5)]
    while held and sum(len(groups[q]) for q in held[1:]) >= args.n_eval:
        held.pop(0)
    if not held:
        bad(args.data, None, None, "every thread opens with the same question: need at least "
            "two different ones (train and eval)")
    rows = {name: [ex for t in threads if (t[0][1].strip() in held) == is_eval
                   for ex in to_examples(t, tokenizer, args.max_length)]
            for name, is_eval in (("train", False), ("eval", True))}  # in the file's order
    seen = {ex["prompt"] for ex in rows["train"]}  # a prompt that lost its oldest turns may
    rows["eval"] = [ex for ex in rows["eval"] if ex["prompt"] not in seen]  # match a train one
    if not rows["train"] or not rows["eval"]:
        bad(args.data, None, None, f"no {'train' if not rows['train'] else 'eval'} example fits "
            f"--max-length {args.max_length}: raise it (eval keeps the prompts train lacks)")
    data = {name: Dataset.from_list(part) for name, part in rows.items()}
    AttentionInterface.register("fp32_eager", fp32_attention)
    AttentionMaskInterface.register("fp32_eager", eager_mask)
    set_seed(0)  # the new LoRA matrices start random: seeded, a rerun trains the same adapter
    model = AutoModelForCausalLM.from_pretrained(
        args.model, dtype={"t4": torch.float16, "ampere": torch.bfloat16}.get(gpu, torch.float32),
        attn_implementation="fp32_eager" if gpu == "t4" else "sdpa", quantization_config=quant,
        use_safetensors=True, device_map="auto" if gpu else "cpu")
    model.config.pad_token_id = tokenizer.pad_token_id
    if quant is not None:  # the trainer turns (non-reentrant) gradient checkpointing on itself
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    model = get_peft_model(model, lora)
    trainer = SFTTrainer(model=model, args=sft, train_dataset=data["train"],
                         eval_dataset=data["eval"], processing_class=tokenizer)
    for param in model.parameters():
        if param.requires_grad:
            param.data = param.data.float()  # trl made QLoRA adapters bf16; fp16 AMP needs fp32
    before = trainer.evaluate()["eval_loss"]
    trainer.train()  # then loads the checkpoint with the lowest eval loss
    metrics = {"eval_loss_before": before, "eval_loss_best": trainer.state.best_metric,
               "best_step": trainer.state.best_global_step, "train_examples": len(data["train"])}
    print(json.dumps(metrics))
    model.save_pretrained(f"{args.output_dir}/adapter")
    tokenizer.save_pretrained(f"{args.output_dir}/adapter")
    with open(f"{args.output_dir}/adapter/phi2kit_adapter.json", "w") as f:  # its base, for 05
        json.dump({"base_4bit": quant is not None}, f)
    with open(f"{args.output_dir}/metrics.json", "w") as f:
        json.dump(metrics, f, indent=2)
    print(f"eval loss {before:.3f} -> {trainer.state.best_metric:.3f} (best checkpoint, step "
          f"{trainer.state.best_global_step}); adapter saved to {args.output_dir}/adapter")


if __name__ == "__main__":
    main()

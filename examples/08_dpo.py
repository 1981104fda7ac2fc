"""Preference tuning (DPO) of a chat adapter on preference pairs: notebook 08 as a script.

    python examples/08_dpo.py --model microsoft/phi-2 --adapter out/chat/adapter \
        --data pairs.jsonl --output-dir out/dpo

--data: JSON lines, one pair a line, in trl's preference format {"prompt", "chosen", "rejected"}
(text; a prompt that does not end in "### Assistant:" is put in notebook 06's chat format), or
OASST1's export *.trees.jsonl, whose ranked replies become pairs as in notebook 08. --adapter: the
chat (SFT) adapter DPO goes on training, e.g. examples/06_chat_sft.py's OUTPUT_DIR/adapter; a
frozen copy of it is the reference. On a CPU, with the shipped tiny model: --model
phi2kit/tiny/model --no-4bit --max-steps 20 --learning-rate 1e-3 --batch-size 8 --grad-accum 1
"""

import argparse
import json
import logging
import os
import re
import sys
import warnings

# before peft imports bitsandbytes: its note on an optional CPU kernel it does not need
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)

import torch
from datasets import Dataset
from peft import PeftModel
from transformers import (
    AttentionInterface,
    AutoModelForCausalLM,
    AutoTokenizer,
    BitsAndBytesConfig,
    set_seed,
)
from transformers.masking_utils import AttentionMaskInterface, eager_mask
from trl import DPOConfig, DPOTrainer

HUMAN, ASSISTANT = "### Human:", "### Assistant:"
REPLIES = ("chosen", "rejected")


def bad(path, line, field, problem):
    """One line: file, then the line and field where there is one, then the problem; exit 2."""
    where = (f", line {line}" if line else "") + (f", field '{field}'" if field else "")
    sys.exit(print(f"error: {path}{where}: {problem}", file=sys.stderr) or 2)


def usable(message, lang):
    """Not deleted, not failed review, in ``lang`` (None: any)."""
    return not message.get("deleted") and message.get("review_result") is not False and (
        lang is None or message.get("lang") == lang)


def tree_pairs(node, lang, path, line, history=()):
    """Notebook 08's pairs: at each human turn, the best-ranked usable reply against each worse
    one (a tie at the top gives none); replies that are not usable are skipped."""
    replies = node.get("replies") or []
    for m in [node, *replies]:
        for field in ("text", "role"):
            if not isinstance(m.get(field), str):
                bad(path, line, field, "missing or not a string")
        if m["role"] not in ("prompter", "assistant"):
            bad(path, line, "role", f"{m['role']!r} is neither prompter nor assistant")
        if m.get("rank") is not None and type(m["rank"]) is not int:
            bad(path, line, "rank", f"{m['rank']!r} is not a whole number or null")
    tag = HUMAN if node["role"] == "prompter" else ASSISTANT
    history = [*history, f"{tag} {node['text'].strip()}"]
    ranked = sorted((r for r in replies if r["role"] == "assistant" and r.get("rank") is not None
                     and usable(r, lang)), key=lambda r: r["rank"])  # fmt: skip
    pairs = []
    if node["role"] == "prompter" and len(ranked) > 1 and ranked[0]["rank"] < ranked[1]["rank"]:
        prompt = "\n".join([*history, ASSISTANT])
        pairs += [{"prompt": prompt, "chosen": " " + ranked[0]["text"].strip(),
                   "rejected": " " + worse["text"].strip()} for worse in ranked[1:]]  # fmt: skip
    for reply in replies:
        if usable(reply, lang):
            pairs += tree_pairs(reply, lang, path, line, history)
    return pairs


def read_pairs(path, lang=None):
    """(pairs, holds trees) from trl-format rows or OASST1 trees; exit 2 at the first bad line."""
    if not os.path.isfile(path):
        bad(path, None, None, "a folder, not a file: pass the .jsonl file" if os.path.isdir(path)
            else "no such file")
    try:
        with open(path, encoding="utf-8-sig") as f:  # a byte order mark is dropped
            lines = f.read().split("\n")  # not splitlines: a JSON string may hold U+2028
    except UnicodeDecodeError:  # e.g. a .gz or .parquet: this script reads plain JSON lines
        bad(path, None, None, "not UTF-8 text: pass plain JSON lines (a .gz unpacked)")
    pairs, trees = [], False
    for line, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:  # its msg may end in "at": the column follows
            bad(path, line, None, f"not JSON ({e.msg.removesuffix(' at')} at column {e.colno}); "
                "--data needs one JSON object a line")  # fmt: skip
        if not isinstance(obj, dict):
            bad(path, line, None, "not a JSON object")
        if "message_id" in obj:  # (the hub's rows carry a tree_state too)
            bad(path, line, None, "an OASST1 message row: pass the export's *.trees.jsonl, or "
                "pairs {\"prompt\", \"chosen\", \"rejected\"}")  # fmt: skip
        if isinstance(obj.get("prompt"), dict) or "tree_state" in obj:  # *.trees.jsonl export
            trees, ready = True, obj.get("tree_state") in (None, "ready_for_export")  # not *_all's
            if ready and not isinstance(tree := obj.get("prompt"), dict):  # aborted: may be null
                bad(path, line, "prompt", "expected a tree with a 'prompt' object")
            if ready and usable(tree, lang):
                pairs += [{**p, "group": line} for p in tree_pairs(tree, lang, path, line)]
            continue
        for field in ("prompt", *REPLIES):
            if isinstance(obj.get(field), list):
                bad(path, line, field, "a list of messages (trl's conversational form): this "
                    "script reads text (lesson 08 and phi2kit train dpo read both)")
            if field not in obj and field == "prompt" and "chosen" in obj:
                bad(path, line, field, "missing (trl's implicit-prompt form, the prompt inside "
                    "chosen and rejected, is not read): give the prompt a field of its own")
            if not isinstance(obj.get(field), str) or not obj[field].strip():
                bad(path, line, field, "missing, empty or not a string")
        if obj["chosen"].strip() == obj["rejected"].strip():
            bad(path, line, "rejected", "the same text as chosen: nothing to prefer")
        prompt = obj["prompt"].strip()
        if not prompt.endswith(ASSISTANT):  # a bare question: notebook 06's chat format
            prompt = f"{'' if prompt.startswith(HUMAN) else HUMAN + ' '}{prompt}\n{ASSISTANT}"
        pairs.append({"prompt": prompt, **{k: " " + obj[k].strip() for k in REPLIES}})
    prompts = {p["prompt"] for p in pairs if "group" not in p}
    for p in (p for p in pairs if "group" not in p):  # a row's chat: the shortest prompt in
        cuts = [p["prompt"][: m.end()] for m in re.finditer(re.escape(ASSISTANT), p["prompt"])]
        p["group"] = next(cut for cut in cuts if cut in prompts)  # the file its prompt continues
    return pairs, trees


def split(pairs, n_eval):
    """(train, eval): whole conversations (a tree, or a chat's turns) to one side, the last to
    eval until it holds ``n_eval`` pairs or more, less those whose prompt train holds."""
    groups = {}
    for pair in pairs:
        groups.setdefault(pair["group"], []).append(pair)
    train, evals = list(groups.values()), []
    while train and sum(map(len, evals)) < n_eval:
        evals.insert(0, train.pop())
    seen = {p["prompt"] for g in train for p in g}  # a question can open several trees
    return [p for g in train for p in g], [p for g in evals for p in g if p["prompt"] not in seen]


def fit_and_split(pairs, trees, tokenizer, args):
    """(train, eval) of the pairs that fit --max-length, each once; exit 2 naming the fix."""
    unique = {}
    for p in pairs:  # a pair given twice: once, where it first stood
        unique.setdefault((p["prompt"], p["chosen"], p["rejected"]), p)
    unique = list(unique.values())
    longest = lambda p: max(len(tokenizer(p["prompt"] + p[k])["input_ids"]) for k in REPLIES)  # noqa: E731
    fits = [p for p in unique if longest(p) + 1 <= args.max_length]  # + 1: the EOS trl appends
    train, evals = split(fits, args.n_eval)
    if train and not evals:  # each eval prompt is also a train one
        bad(args.data, None, None, "no eval pair whose prompt train lacks: raise --n-eval")
    if not train:
        lang = f" in language {args.lang!r} (--lang '' for all)" if args.lang else ""
        fix = max(1, len(fits) // 5) if split(fits, max(1, len(fits) // 5))[0] else 1
        bad(args.data, None, None, (f"no prompt has two usable, differently ranked replies{lang}"
            if trees else "no pairs: the file holds no JSON lines") if not pairs else
            f"none of the {len(unique)} pairs fits --max-length {args.max_length} (prompt and "
            "reply, in tokens): raise it" if not fits else
            f"the {len(fits)} pairs that fit are one conversation: add another, to hold out "
            "for eval" if len({p["group"] for p in fits}) < 2 else
            f"--n-eval {args.n_eval} leaves no pair to train: lower it (e.g. --n-eval {fix})")
    print(f"{len(pairs)} pair(s): {len(pairs) - len(unique)} repeated and {len(unique) - len(fits)}"
          f" longer than --max-length {args.max_length} left out; {len(train)} train, "
          f"{len(evals)} eval")  # fmt: skip
    return train, evals


def build_configs(args, gpu):
    """(BitsAndBytesConfig or None, DPOConfig); gpu: None (CPU), "t4" or "ampere"."""
    dtype = {"t4": torch.float16, "ampere": torch.bfloat16}.get(gpu, torch.float32)
    quant = None if args.no_4bit else BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=dtype)
    every = max(1, args.max_steps // 4)  # evaluate and checkpoint every quarter of the run
    dpo = DPOConfig(
        output_dir=f"{args.output_dir}/checkpoints", beta=args.beta,
        precompute_ref_log_probs=False, max_length=args.max_length, max_steps=args.max_steps,
        learning_rate=args.learning_rate, lr_scheduler_type="linear",
        warmup_steps=max(1, round(0.03 * args.max_steps)),
        per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=args.batch_size,
        gradient_accumulation_steps=args.grad_accum, fp16=gpu == "t4", bf16=gpu == "ampere",
        optim="paged_adamw_8bit" if gpu else "adamw_torch", activation_checkpointing=bool(gpu),
        activation_checkpointing_kwargs={"use_reentrant": False}, eval_strategy="steps",
        eval_steps=every, save_strategy="steps", save_steps=every, load_best_model_at_end=True,
        metric_for_best_model="eval_loss", greater_is_better=False, save_total_limit=2,
        logging_steps=max(1, every // 2), report_to="none", seed=0, use_cpu=gpu is None,
        disable_tqdm=gpu is None)
    return quant, dpo


def fp32_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Eager attention with Q @ K^T and the softmax in fp32: Phi-2's scores overflow fp16."""
    with torch.autocast(device_type=query.device.type, enabled=False):
        scores = torch.matmul(query.float(), key.float().transpose(2, 3)) * scaling
        if attention_mask is not None:
            scores = scores + attention_mask[:, :, :, : key.shape[-2]].float()
        out = torch.matmul(torch.softmax(scores, dim=-1), value.float()).to(query.dtype)
    return out.transpose(1, 2).contiguous(), None


def check_adapter(adapter, quantized, gpu):
    """Exit 2 unless ``adapter`` is a causal-LM LoRA trained on this base (4-bit or not)."""
    if not os.path.isdir(adapter):
        bad(adapter, None, None, "no such folder")
    try:
        with open(os.path.join(adapter, "adapter_config.json")) as f:
            task = json.load(f).get("task_type")
    except (OSError, ValueError):
        bad(adapter, None, None, "no adapter_config.json: pass the adapter folder of "
            "examples/06_chat_sft.py (OUTPUT_DIR/adapter) or of phi2kit train chat")  # fmt: skip
    if task not in (None, "CAUSAL_LM"):
        bad(adapter, None, None, f"a {task} adapter (a classifier's?): DPO trains a chat adapter")
    note, was = os.path.join(adapter, "phi2kit_adapter.json"), None  # examples 02-08 write it
    if os.path.isfile(note):
        try:
            with open(note) as f:
                was = json.load(f).get("base_4bit")
        except (ValueError, AttributeError):
            bad(note, None, None, 'not {"base_4bit": true|false}: fix it, or remove it')
    if was is not None and was != quantized:
        fix = "add --no-4bit" if not was else "drop --no-4bit" if gpu else (
            "4-bit trains on a CUDA GPU only; on a CPU use an adapter trained with --no-4bit")
        bad(adapter, None, None, f"trained on the {'4-bit (nf4)' if was else 'full-precision'} "
            f"base: {fix}")  # fmt: skip


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="microsoft/phi-2", help="hub id or local folder")
    p.add_argument("--adapter", required=True, help="the chat (SFT) adapter folder to go on from")
    p.add_argument("--data", required=True, help="JSON lines: prompt/chosen/rejected or trees")
    p.add_argument("--no-4bit", action="store_true", help="the full-precision base (LoRA)")
    p.add_argument("--lang", default="en", help="trees: replies in this language ('' for all)")
    p.add_argument("--n-eval", type=int, default=200, help="eval pairs, at least (whole "
                   "conversations: a tree, or a chat's turns); default 200")
    for flag, kind, default in [("--output-dir", str, "out/08_dpo"), ("--max-steps", int, 50),
                                ("--beta", float, 0.1),
                                ("--learning-rate", float, 2e-5), ("--batch-size", int, 2),
                                ("--grad-accum", int, 8), ("--max-length", int, 1024)]:
        p.add_argument(flag, type=kind, default=default, help=f"default {default}")
    args = p.parse_args(argv)
    # argparse takes 0 and -3 as numbers: a run of "0 steps" would train one and look real
    for flag in ("max_steps", "n_eval", "beta", "learning_rate", "batch_size", "grad_accum",
                 "max_length"):
        if not getattr(args, flag) > 0:
            p.error(f"--{flag.replace('_', '-')} {getattr(args, flag)}: must be above 0")
    return args


def main(argv=None):
    args = parse_args(argv)
    out = args.output_dir
    if os.path.isfile(out) or (os.path.isdir(out) and os.listdir(out)):  # never overwritten
        sys.exit(print(f"error: --output-dir {out} is not empty: pass another, or remove it",
                       file=sys.stderr) or 2)
    pairs, trees = read_pairs(args.data, args.lang or None)  # before any model loads
    gpu = None if not torch.cuda.is_available() else (
        "ampere" if torch.cuda.is_bf16_supported(including_emulation=False) else "t4")
    quant, dpo = build_configs(args, gpu)
    if quant is not None and gpu is None:  # bitsandbytes' CPU 4-bit layer fails in training
        sys.exit(print("error: 4-bit training needs a CUDA GPU (bitsandbytes); on a CPU pass "
                       "--no-4bit", file=sys.stderr) or 2)
    check_adapter(args.adapter, quant is not None, gpu)
    try:  # a mistyped folder: one line, not a traceback from inside transformers
        tokenizer = AutoTokenizer.from_pretrained(args.model)
    except OSError as err:
        sys.exit(print(f"error: --model {args.model}: no such folder; as a hub id: {err}"
                       .splitlines()[0], file=sys.stderr) or 2)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    train, evals = fit_and_split(pairs, trees, tokenizer, args)
    AttentionInterface.register("fp32_eager", fp32_attention)
    AttentionMaskInterface.register("fp32_eager", eager_mask)
    set_seed(0)  # dropout and the data order: a rerun trains the same adapter
    model = AutoModelForCausalLM.from_pretrained(
        args.model, dtype={"t4": torch.float16, "ampere": torch.bfloat16}.get(gpu, torch.float32),
        attn_implementation="fp32_eager" if gpu == "t4" else "sdpa", quantization_config=quant,
        use_safetensors=True, device_map="auto" if gpu else "cpu")
    model = PeftModel.from_pretrained(model, args.adapter, is_trainable=True)
    # no ref_model: trl adds a frozen copy of the adapter, "ref", as the reference
    trainer = DPOTrainer(model=model, args=dpo, train_dataset=Dataset.from_list(train),
                         eval_dataset=Dataset.from_list(evals), processing_class=tokenizer)
    with torch.no_grad():  # trl made QLoRA adapters bf16; fp16 AMP needs fp32, and the policy
        for name, param in model.named_parameters():  # starts as its reference: exact copies
            if ".default." in name:
                ref = model.get_parameter(name.replace(".default.", ".ref."))
                param.data = ref.data.to(torch.float32, copy=True)
    before = trainer.evaluate()
    # trl switches checkpointing off around the reference pass with transformers' old names
    warnings.filterwarnings("ignore", message=".*gradient_checkpointing_(en|dis)able` is deprec")
    trainer.train()  # then loads the checkpoint with the lowest eval loss
    after = trainer.evaluate()
    acc = "eval_rewards/accuracies"
    metrics = {"eval_loss_before": before["eval_loss"], "eval_loss_best": trainer.state.best_metric,
               "reward_accuracy_before": before[acc], "reward_accuracy_best": after[acc],
               "reward_margin_before": before["eval_rewards/margins"], "train_pairs": len(train),
               "reward_margin_best": after["eval_rewards/margins"], "eval_pairs": len(evals),
               "best_step": trainer.state.best_global_step}  # fmt: skip
    print(json.dumps(metrics))
    was, best = metrics["eval_loss_before"], metrics["eval_loss_best"]
    if not best < was:  # the best trained checkpoint is saved, even when it is worse
        print(f"warning: the eval loss did not fall ({was:.4f} before training, {best:.4f} at "
              "the best step): " + ("try a smaller --learning-rate" if best > was else
              "train longer (--max-steps) or with a larger --learning-rate"), file=sys.stderr)
    model.save_pretrained(f"{out}/adapter", selected_adapters=["default"])  # not the reference
    tokenizer.save_pretrained(f"{out}/adapter")
    with open(f"{out}/adapter/phi2kit_adapter.json", "w") as f:  # its base, for example 05
        json.dump({"base_4bit": quant is not None}, f)
    with open(f"{out}/metrics.json", "w") as f:
        json.dump(metrics, f, indent=2)


if __name__ == "__main__":
    main()

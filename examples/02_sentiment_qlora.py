"""Lesson 02 as one script: teach Phi-2 to label financial news sentiment, with QLoRA.

    python examples/02_sentiment_qlora.py --model microsoft/phi-2 --data all-data.csv \
        --output-dir out

--data: the Kaggle all-data.csv as downloaded (no header, label first, Latin-1), or a CSV with a
header and `text,label` columns (else name them: --text-column/--label-column); an integer label
i means LABELS[i], as in financial_phrasebank. On a CPU, with the course's tiny model:

    python examples/02_sentiment_qlora.py --model phi2kit/tiny/model --no-4bit --max-steps 40 \
        --learning-rate 3e-3 --data data/financial_news/all-data.csv --output-dir /tmp/out

Prints zero-shot and tuned accuracy (label scoring) on a held-out test split; saves the adapter.
"""

import argparse
import csv
import io
import json
import logging
import random
import sys
from collections import Counter, defaultdict
from pathlib import Path

logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # its note on an optional CPU kernel


def read_rows(path, labels, text_col="text", label_col="label"):
    """(text, label) pairs; a bad file or row exits with its file, row and field (code 2)."""
    def fail(where, why):
        sys.exit(print(f"error: {path}{where}: {why}", file=sys.stderr) or 2)

    if not Path(path).is_file():
        fail("", "a folder, not a file: pass the .csv file" if Path(path).is_dir() else
             "no such file")
    if (raw := Path(path).read_bytes())[:2] in (b"\xff\xfe", b"\xfe\xff"):  # a UTF-16 BOM
        fail(", row 1", "a UTF-16 file; save it as UTF-8")  # Excel's "Unicode text"
    if not raw.strip() or b"\0" in raw or raw.lstrip()[:1] in (b"{", b"["):  # NUL: Parquet, .gz
        fail("", "empty file" if not raw.strip() else "a binary file, not CSV text: pass a .csv"
             if b"\0" in raw else "JSON, not CSV: pass a CSV of headlines")  # JSON: chat or QA rows
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")  # the Kaggle file
    text = text.replace("\r\n", "\n").replace("\r", "\n")  # CR, LF or CRLF
    header = [c.strip().lower() for c in next(csv.reader(io.StringIO(text)), [])]
    if len(header) == 1 and (sep := next((c for c in ";\t" if c in header[0]), None)):
        fail(", row 1", f"one column with {sep!r} in it: save the file as CSV with commas")
    headed = text_col in header or label_col in header  # else Kaggle: sentiment, headline
    for col in [c for c in (text_col, label_col) if headed and c not in header][:1]:
        fail(f", row 1, field {col!r}", f"missing column (the header has {header})")
    t_field, l_field = (text_col, label_col) if headed else ("headline", "sentiment")
    rows, known, reader = [], {w.lower(): w for w in labels}, csv.reader(io.StringIO(text))
    for cells in reader:
        if (headed and reader.line_num == 1) or not "".join(cells).strip():
            continue
        value = dict(zip(header, cells, strict=False))
        label = (value.get(label_col, "") if headed else cells[0]).strip()
        body = value.get(text_col, "") if headed else ",".join(cells[1:])  # unquoted commas
        label = labels[int(label)] if label.isdigit() and int(label) < len(labels) else label
        where = f", row {reader.line_num}, field "
        if label.lower() not in known:
            hint = "" if headed or rows else (  # the first row: a header with other names?
                f"; a header row needs the columns {text_col!r} and {label_col!r} (name "
                f"yours with --text-column and --label-column)")
            fail(where + repr(l_field),
                 f"unknown label {label!r} (expected {', '.join(labels)}){hint}")
        if not body.strip():
            fail(where + repr(t_field), "empty text")
        rows.append((" ".join(body.split()), known[label.lower()]))
    if len({label for _, label in rows}) < 2:
        fail("", f"fewer than two labels in {len(rows)} rows: nothing to classify")
    return rows


def split(rows, n_train, n_test, n_eval, seed=42):
    """Per class: test, train, then eval from the rest (drawn with replacement where too few
    are left, as lesson 02); repeats kept once, two-label headlines dropped."""
    seen = defaultdict(set)
    for text, label in rows:
        seen[text].add(label)
    print(f"{len(rows)} rows, {len(seen)} distinct headlines: {len(rows) - len(seen)} repeats, "
          f"{sum(len(labels) > 1 for labels in seen.values())} headlines with two labels left out")
    parts = {"train": [], "eval": [], "test": []}
    for label in sorted({label for labels in seen.values() for label in labels}):
        texts = sorted(t for t, labels in seen.items() if labels == {label})
        random.Random(seed).shuffle(texts)
        test, train, left = texts[:n_test], texts[n_test:][:n_train], texts[n_test + n_train:]
        if 0 < len(left) < n_eval:
            print(f"eval: label {label!r} has {len(left)} headlines left after test and train: "
                  f"its {n_eval} eval rows are drawn from them with replacement")
            left = random.Random(seed).choices(left, k=n_eval)
        for name, part in (("train", train), ("eval", left[:n_eval]), ("test", test)):
            parts[name] += [(t, label) for t in part]
    return parts


def prompt(text, labels):
    listed = ", ".join(labels[:-1]) + " or " + labels[-1]
    task = f"Classify the sentiment of this financial news headline as {listed}."
    return f"{task}\nHeadline: {text}\nSentiment:"


def fp32_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Phi-2's Q @ K^T overflows fp16 (lesson 01): scores and softmax in fp32, autocast off."""
    import torch

    with torch.autocast(query.device.type, enabled=False):
        scores = torch.matmul(query.float(), key.float().transpose(2, 3)) * scaling
        if attention_mask is not None:  # eager's additive mask
            scores = scores + attention_mask[:, :, :, : key.shape[-2]].float()
        probs = torch.nn.functional.dropout(scores.softmax(-1), p=dropout, training=module.training)
        out = torch.matmul(probs, value.float()).to(query.dtype)
    return out.transpose(1, 2).contiguous(), probs.to(query.dtype)


def build_configs(args, cuda, bf16=False):
    """BitsAndBytesConfig (None with --no-4bit), LoraConfig, SFTConfig: lesson 02's T4 recipe."""
    import torch
    from peft import LoraConfig
    from transformers import BitsAndBytesConfig
    from trl import SFTConfig

    dtype = torch.bfloat16 if bf16 else torch.float16 if cuda else torch.float32  # T4: fp16
    quant = None if args.no_4bit else BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=dtype)
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, bias="none", task_type="CAUSAL_LM",
                      target_modules=["q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"])
    every = max(1, args.max_steps // 5)  # evaluate and checkpoint five times
    sft = SFTConfig(
        output_dir=f"{args.output_dir}/trainer", per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size, gradient_accumulation_steps=args.grad_accum,
        learning_rate=args.learning_rate, warmup_steps=max(1, round(0.03 * args.max_steps)),
        lr_scheduler_type="linear", max_steps=args.max_steps, fp16=cuda and not bf16, bf16=bf16,
        optim="paged_adamw_8bit" if cuda else "adamw_torch", activation_checkpointing=cuda,
        activation_checkpointing_kwargs={"use_reentrant": False}, max_length=args.max_length,
        completion_only_loss=True, packing=False, train_sampling_strategy="group_by_length",
        logging_steps=max(1, args.max_steps // 20), eval_strategy="steps", eval_steps=every,
        save_strategy="steps", save_steps=every, load_best_model_at_end=True,
        metric_for_best_model="eval_loss", greater_is_better=False, save_total_limit=2,
        report_to="none", seed=0, data_seed=0, use_cpu=not cuda, dataloader_num_workers=0,
        disable_tqdm=not cuda)
    return quant, lora, sft, dtype


def accuracy(model, tok, rows, labels):
    """Label scoring: the label whose first token is likeliest right after the prompt."""
    import torch

    first = [tok(" " + label, add_special_tokens=False)["input_ids"][0] for label in labels]
    right = 0
    model.eval()
    for start in range(0, len(rows), 16):
        batch = rows[start : start + 16]
        enc = tok([prompt(t, labels) for t, _ in batch], return_tensors="pt", padding=True)
        last = (enc["attention_mask"].sum(1) - 1).to(model.device)  # right-padded: last token
        with torch.no_grad():
            logits = model(**enc.to(model.device)).logits[torch.arange(len(batch)), last][:, first]
        predicted = [labels[j] for j in logits.argmax(-1).tolist()]
        right += sum(p == y for p, (_, y) in zip(predicted, batch, strict=True))
    return right / len(rows)


def parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="microsoft/phi-2", help="hub id or local folder")
    p.add_argument("--data", required=True, help="all-data.csv, or a CSV with text,label columns")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--max-steps", type=int, default=150)
    p.add_argument("--no-4bit", action="store_true", help="plain LoRA on the full-precision base")
    p.add_argument("--labels", nargs="+", default=["negative", "neutral", "positive"],
                   type=lambda v: v.strip(","), help="label words in order: a b c (or a,b,c)")
    p.add_argument("--text-column", default="text", type=str.lower)
    p.add_argument("--label-column", default="label", type=str.lower)
    numbers = {"--learning-rate": 2e-4, "--batch-size": 4, "--grad-accum": 4, "--max-length": 256,
               "--n-train": 300, "--n-test": 300, "--n-eval": 50}  # --n-*: headlines per class
    for flag, default in numbers.items():
        p.add_argument(flag, type=type(default), default=default)
    return p


def main(argv=None):
    args = (p := parser()).parse_args(argv)
    for flag, value in vars(args).items():  # argparse takes 0 and -3: "0 steps" would train one
        if type(value) in (int, float) and not value > 0:  # --n-*: every split needs a headline
            p.error(f"--{flag.replace('_', '-')} {value}: must be above 0")
    out = Path(args.output_dir)
    if out.is_file() or any(out.glob("*")):  # an earlier run's adapter is never overwritten
        sys.exit(print(f"error: --output-dir {out} is not empty: pass another, or remove it",
                       file=sys.stderr) or 2)
    args.labels = [w for v in args.labels for w in v.split(",") if w]  # "a,b" as phi2kit train
    rows = read_rows(args.data, args.labels, args.text_column, args.label_column)
    parts = split(rows, args.n_train, args.n_test, args.n_eval)  # checked before any model loads
    counts = {name: Counter(y for _, y in part) for name, part in parts.items()}
    n, label = min((sum(counts[name][w] for name in parts), w) for w in args.labels)
    if n < args.n_test + args.n_eval + args.n_train:  # every split full, or the flags to lower
        n_test, n_eval = max(1, n // 5), max(1, n // 10)  # fits every label: n is the fewest
        fix = (f"lower them (e.g. --n-test {n_test} --n-eval {n_eval} --n-train "
               f"{n - n_test - n_eval})" if n >= 3 else
               "each label needs at least 3 (one for each of test, eval and train)")
        sys.exit(print(f"error: {args.data}: label {label!r} has {n} usable headlines, too few for "
                       f"--n-test {args.n_test} + --n-eval {args.n_eval} + --n-train "
                       f"{args.n_train}: {fix}", file=sys.stderr) or 2)
    print({name: dict(c) for name, c in counts.items()})

    import torch
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
    if quant is not None and not cuda:  # bitsandbytes' CPU 4-bit layer fails in training
        sys.exit(print("error: 4-bit training needs a CUDA GPU (bitsandbytes); on a CPU pass "
                       "--no-4bit", file=sys.stderr) or 2)
    try:  # a mistyped folder: one line, not a traceback from inside transformers
        tok = AutoTokenizer.from_pretrained(args.model)
    except OSError as err:
        sys.exit(print(f"error: --model {args.model}: no such folder; as a hub id: {err}"
                       .splitlines()[0], file=sys.stderr) or 2)
    tok.pad_token, tok.padding_side = tok.pad_token or tok.eos_token, "right"  # Phi-2: pad = eos
    firsts = [tok(" " + w, add_special_tokens=False)["input_ids"][0] for w in args.labels]
    if len(set(firsts)) < len(firsts):  # label scoring compares each label's first token only
        sys.exit(print(f"error: --labels {','.join(args.labels)}: two labels start with the same "
                       "token, so scoring cannot tell them apart; use words that start "
                       "differently", file=sys.stderr) or 2)
    try:  # made after the checks above (a refused run leaves no folder), before the model loads
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        sys.exit(print(f"error: --output-dir {out}: cannot write there ({e.strerror})",
                       file=sys.stderr) or 2)
    set_seed(0)  # the new LoRA matrices start random: seeded, a rerun trains the same adapter
    model = AutoModelForCausalLM.from_pretrained(  # safetensors only, transformers' own Phi code
        args.model, dtype=dtype, quantization_config=quant, use_safetensors=True,
        attn_implementation="sdpa" if bf16 else "fp32", device_map="auto" if cuda else "cpu")
    model.config.pad_token_id = tok.pad_token_id
    zero_shot = accuracy(model, tok, parts["test"], args.labels)
    if quant is not None:  # QLoRA: freeze the 4-bit base, norms in fp32, checkpointing on a GPU
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=cuda,
            gradient_checkpointing_kwargs={"use_reentrant": False})
    model = get_peft_model(model, lora)

    def pairs(part):  # prompt/completion: the loss falls on " label" + EOS only
        return Dataset.from_dict({"prompt": [prompt(t, args.labels) for t, _ in part],
                                  "completion": [" " + y for _, y in part]})

    trainer = SFTTrainer(model=model, args=sft, train_dataset=pairs(parts["train"]),
                         eval_dataset=pairs(parts["eval"]), processing_class=tok)
    for param in model.parameters():  # trl casts QLoRA adapters to bf16; fp16 AMP needs fp32
        if param.requires_grad:
            param.data = param.data.float()
    trainer.train()  # evaluates as it goes, and loads the best checkpoint (lowest eval loss)
    state = trainer.state
    print(f"best checkpoint: step {state.best_global_step}, eval loss {state.best_metric:.3f}")
    tuned = accuracy(model, tok, parts["test"], args.labels)
    print(f"test accuracy ({len(parts['test'])} headlines): "
          f"zero-shot {zero_shot:.3f}, tuned {tuned:.3f}")
    model.save_pretrained(adapter := f"{args.output_dir}/adapter")  # + its base, for example 05
    Path(adapter, "phi2kit_adapter.json").write_text(json.dumps({"base_4bit": quant is not None}))
    Path(args.output_dir, "metrics.json").write_text(json.dumps({  # the figures above, kept
        "zero_shot": zero_shot, "tuned": tuned, "n_test": len(parts["test"]),
        "best_step": state.best_global_step, "best_eval_loss": state.best_metric}))
    print(f"adapter saved to {adapter}; figures in {args.output_dir}/metrics.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())

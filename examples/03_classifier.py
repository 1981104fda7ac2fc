"""Lesson 03 as one script: Phi-2 + a new `score` head, LoRA or QLoRA, the HF Trainer.

    python examples/03_classifier.py --model microsoft/phi-2 --data all-data.csv --output-dir out

--data is the Kaggle "Sentiment Analysis for Financial News" all-data.csv as published (no
header; label, then headline; Latin-1), or a CSV with a header row and the columns text,label
(--text-column/--label-column name others). Labels are whatever words the file holds. The
texts are split per label into train, eval (scored during training; the best checkpoint by
eval loss is kept) and test (scored once, at the end). On a CPU, with the course's tiny model:

    python examples/03_classifier.py --model phi2kit/tiny/model --output-dir /tmp/clf \
        --data data/financial_news/all-data.csv --no-4bit --max-steps 40 --batch-size 16 \
        --learning-rate 3e-3
"""

import argparse
import csv
import io
import json
import logging
import random
import sys
from pathlib import Path

logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # its note on an optional CPU kernel

TARGETS = ["q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"]  # Phi-2's Linear layers


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="microsoft/phi-2", help="hub id or local folder")
    p.add_argument("--data", required=True, help="Kaggle all-data.csv or a CSV with text,label")
    p.add_argument("--output-dir", required=True, help="checkpoints and the adapter go here")
    p.add_argument("--max-steps", type=int, default=150, help="optimizer steps (150)")
    p.add_argument("--no-4bit", action="store_true", help="LoRA on the fp base, not QLoRA")
    p.add_argument("--learning-rate", type=float, default=1e-4)
    p.add_argument("--batch-size", type=int, default=8, help="per micro-batch; 2 per step")
    p.add_argument("--text-column", default="text", help="headed CSV: the text column")
    p.add_argument("--label-column", default="label", help="headed CSV: the label column")
    args = p.parse_args(argv)
    for flag in ("max_steps", "batch_size", "learning_rate"):  # argparse takes 0 and -3 as numbers
        if not getattr(args, flag) > 0:
            p.error(f"--{flag.replace('_', '-')} {getattr(args, flag)}: must be above 0")
    return args


class BadData(ValueError):  # a bad input file: one line naming file, row and field; exit 2
    pass


def read_rows(path, text_column="text", label_column="label", first_row=None):
    """[(text, label)] from the Kaggle form (no header: label, text) or a headed CSV;
    first_row (a dict, if given) gets each label's first row number, for split's errors."""
    if Path(path).is_dir():
        raise BadData(f"{path}: a folder, not a file: pass the .csv file")
    try:
        raw = Path(path).read_bytes()
    except OSError as err:
        raise BadData(f"{path}: cannot read ({err.strerror})") from None
    if raw[:2] in (b"\xff\xfe", b"\xfe\xff"):  # a UTF-16 byte order mark: Excel's "Unicode text"
        raise BadData(f"{path}: row 1: a UTF-16 file; save it as UTF-8")
    if b"\0" in raw:  # Parquet, a .gz or a spreadsheet
        raise BadData(f"{path}: a binary file, not CSV text: pass a .csv")
    try:
        content = raw.decode("utf-8")
    except UnicodeDecodeError:  # the Kaggle file is Latin-1
        content = raw.decode("latin-1")
    table = [r for r in csv.reader(io.StringIO(content, newline="")) if r]  # CR, LF or CRLF
    if not table:
        raise BadData(f"{path}: no rows")
    if len(table[0]) == 1 and (sep := next((c for c in ";\t" if c in table[0][0]), None)):
        raise BadData(f"{path}: row 1: one column with {sep!r} in it: save the file as CSV with "
                      "commas")  # fmt: skip
    header = [h.strip().lower() for h in table[0]]
    if text_column.lower() in header or label_column.lower() in header:
        for name in (text_column, label_column):
            if name.lower() not in header:
                raise BadData(f"{path}: row 1 (header): no column '{name}' in {table[0]}")
        t, lab = header.index(text_column.lower()), header.index(label_column.lower())
        numbered, first = table[1:], 2
    else:  # Kaggle: label, then text
        t, lab, numbered, first = 1, 0, table, 1
    rows = []
    for n, row in enumerate(numbered, first):
        if len(row) <= max(t, lab) or (numbered is table and len(row) != 2):
            raise BadData(f"{path}: row {n}: {len(row)} fields; expected label,text (or a header)")
        text, label = " ".join(row[t].split()), row[lab].strip()  # spacing: as lesson 02 compares
        for field, value in (("text", text), ("label", label)):
            if not value:
                raise BadData(f"{path}: row {n}, field '{field}': empty")
        if len(label) > 40 or not label.replace("_", "").replace("-", "").isalnum():
            raise BadData(f"{path}: row {n}, field 'label': {label[:40]!r} is not a label word")
        rows.append((text, label))
        if first_row is not None:
            first_row.setdefault(label, n)
    return rows


def split(rows, path, eval_fraction=0.1, test_fraction=0.1, seed=0, first_row=None):
    """Per label: test, eval, the rest train. A repeated text is kept once (in one split); one
    with two labels is left out, as example 02 does; both are counted."""
    labels_of = {}
    for text, label in rows:
        labels_of.setdefault(text, set()).add(label)
    print(f"{len(rows)} rows, {len(labels_of)} distinct texts: {len(rows) - len(labels_of)} "
          f"repeats, {sum(len(ls) > 1 for ls in labels_of.values())} texts with two labels left "
          "out")  # fmt: skip
    by_label = {}
    for text, (label, *others) in labels_of.items():
        if not others:
            by_label.setdefault(label, []).append(text)
    if len(by_label) < 2:
        raise BadData(f"{path}: field 'label': one label only ({list(by_label)}); need two or more")
    parts = {"train": [], "eval": [], "test": []}
    for label, texts in sorted(by_label.items()):
        if len(texts) < 3:  # a typo'd label, often: name where it first appears
            row = f"row {first_row[label]}, " if first_row else ""
            others = ", ".join(sorted(set(by_label) - {label}))
            raise BadData(f"{path}: {row}field 'label': '{label}' has {len(texts)} text(s); each "
                          f"label needs 3 (test, eval and train). A misspelt label? The others "
                          f"are: {others}")  # fmt: skip
        random.Random(seed).shuffle(texts)
        n_test, n_eval = (max(1, round(f * len(texts))) for f in (test_fraction, eval_fraction))
        parts["test"] += [(x, label) for x in texts[:n_test]]
        parts["eval"] += [(x, label) for x in texts[n_test : n_test + n_eval]]
        parts["train"] += [(x, label) for x in texts[n_test + n_eval :]]
    return sorted(by_label), parts


def build_configs(args, cuda, bf16=False):
    """BitsAndBytesConfig (or None), LoraConfig and TrainingArguments: lesson 03's recipe."""
    import torch
    from peft import LoraConfig
    from transformers import BitsAndBytesConfig, TrainingArguments

    dtype = torch.bfloat16 if bf16 else torch.float16 if cuda else torch.float32
    quant = None if args.no_4bit else BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=dtype)
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=TARGETS,
                      bias="none", task_type="SEQ_CLS")  # SEQ_CLS: `score` trains and is saved
    steps = max(1, args.max_steps // 5)  # evaluate and save 5 times
    train_args = TrainingArguments(
        output_dir=args.output_dir, per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size, gradient_accumulation_steps=2,
        learning_rate=args.learning_rate, warmup_steps=max(1, round(0.03 * args.max_steps)),
        lr_scheduler_type="linear", max_steps=args.max_steps, fp16=cuda and not bf16, bf16=bf16,
        optim="paged_adamw_8bit" if cuda else "adamw_torch", activation_checkpointing=cuda,
        activation_checkpointing_kwargs={"use_reentrant": False}, eval_strategy="steps",
        eval_steps=steps, save_strategy="steps", save_steps=steps, save_total_limit=2,
        load_best_model_at_end=True, metric_for_best_model="eval_loss", greater_is_better=False,
        label_names=["labels"], logging_steps=max(1, args.max_steps // 20), report_to="none",
        seed=0, data_seed=0, use_cpu=not cuda, dataloader_num_workers=0, disable_tqdm=not cuda)
    return dtype, quant, lora, train_args


def fp32_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Eager attention with QK^T and softmax in fp32: Phi-2's scores overflow fp16 (lesson 01)."""
    import torch

    with torch.autocast(query.device.type, enabled=False):
        scores = torch.matmul(query.float(), key.float().transpose(2, 3)) * scaling
        if attention_mask is not None:
            scores = scores + attention_mask[:, :, :, : key.shape[-2]].float()
        probs = torch.nn.functional.dropout(scores.softmax(-1), dropout, module.training)
        out = torch.matmul(probs, value.float()).to(query.dtype)
    return out.transpose(1, 2).contiguous(), probs.to(query.dtype)


def main(argv=None):
    args = parse_args(argv)
    out = Path(args.output_dir)
    if out.is_file() or any(out.glob("*")):  # an earlier run's adapter is never overwritten
        print(f"error: --output-dir {out} is not empty: pass another, or remove it",
              file=sys.stderr)
        return 2
    try:  # the data is checked before any model loads
        rows = read_rows(args.data, args.text_column, args.label_column, first := {})
        labels, parts = split(rows, args.data, first_row=first)
    except BadData as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    import torch
    from datasets import Dataset
    from peft import get_peft_model, prepare_model_for_kbit_training
    from sklearn.metrics import accuracy_score, f1_score
    from transformers import (
        AttentionInterface,
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        set_seed,
    )
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    cuda = torch.cuda.is_available()
    bf16 = cuda and torch.cuda.is_bf16_supported(including_emulation=False)  # a T4's: emulated
    dtype, quant, lora, train_args = build_configs(args, cuda, bf16)
    AttentionInterface.register("fp32_eager", fp32_attention)
    AttentionMaskInterface.register("fp32_eager", eager_mask)
    try:  # a mistyped folder: one line, not a traceback from inside transformers
        tok = AutoTokenizer.from_pretrained(args.model)
    except OSError as err:
        sys.exit(print(f"error: --model {args.model}: no such folder; as a hub id: {err}"
                       .splitlines()[0], file=sys.stderr) or 2)
    tok.pad_token = tok.pad_token or tok.eos_token  # Phi-2 has no pad token
    set_seed(0)  # the score head and LoRA matrices start random: seeded, reruns agree
    model = AutoModelForSequenceClassification.from_pretrained(
        args.model, num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id={w: i for i, w in enumerate(labels)}, pad_token_id=tok.pad_token_id,
        quantization_config=quant, dtype=dtype, attn_implementation="fp32_eager",
        use_safetensors=True, device_map="auto" if cuda else "cpu")
    if quant is not None:
        for m in model.modules():  # CPU only: keep bitsandbytes from repacking nf4 for inference
            if hasattr(m, "support_avx512bf16_for_cpu"):
                m.support_avx512bf16_for_cpu = False
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)  # args
    model = get_peft_model(model, lora)
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()  # fp32 trainables: fp16 AMP's grad scaler needs them

    def to_dataset(rows):
        enc = tok([t for t, _ in rows], truncation=True, max_length=256)
        return Dataset.from_dict({**enc, "labels": [labels.index(w) for _, w in rows]})

    def compute_metrics(eval_pred):
        logits, y = eval_pred
        pred = logits.argmax(-1)
        return {"accuracy": accuracy_score(y, pred), "macro_f1": f1_score(y, pred, average="macro")}

    trainer = Trainer(model=model, args=train_args, train_dataset=to_dataset(parts["train"]),
                      eval_dataset=to_dataset(parts["eval"]), processing_class=tok,
                      data_collator=DataCollatorWithPadding(tok), compute_metrics=compute_metrics)
    trainer.loss_is_scaled_for_ga = False  # its loss is a batch mean: divide by accumulation
    trainer.train()
    best = trainer.state
    print(f"best checkpoint: step {best.best_global_step}, eval loss {best.best_metric:.4f}")
    test = trainer.predict(to_dataset(parts["test"]), metric_key_prefix="test").metrics
    model.save_pretrained(f"{args.output_dir}/adapter")  # LoRA matrices + the score head
    n_test = len(parts["test"])
    majority = max(sum(w == label for _, w in parts["test"]) for label in labels) / n_test
    print(f"test accuracy {test['test_accuracy']:.4f} macro F1 {test['test_macro_f1']:.4f} "
          f"(majority class {majority:.4f}, n = {n_test}); labels {labels}")
    Path(args.output_dir, "metrics.json").write_text(json.dumps(  # the head's row i: labels[i]
        {"labels": labels, "majority_class": majority, **test}, indent=2) + "\n")
    print(f"adapter saved to {args.output_dir}/adapter; labels and figures in "
          f"{args.output_dir}/metrics.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Rebuild the tiny Phi shipped in ``phi2kit/tiny/model`` from a generated corpus.

    python scripts/build_tiny.py            # about 5 minutes on 2 CPU cores
    python scripts/build_tiny.py --out /tmp/tiny --steps 50   # a quick smoke build

The corpus is written by ``scripts/synth.py`` (made up by this project). Seeds are fixed
and torch runs deterministically, so the same command gives the same weights on a CPU.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections import Counter
from pathlib import Path

import torch

from phi2kit.tiny import TINY_DIR

EOS = "<|endoftext|>"
VOCAB_SIZE = 2048
BLOCK = 128


def tiny_phi_config(vocab_size: int = VOCAB_SIZE):
    """The tiny model's shape: Phi's architecture at 1/20 of Phi-2's width."""
    from transformers import PhiConfig

    return PhiConfig(
        vocab_size=vocab_size,
        hidden_size=128,  # Phi-2: 2560
        intermediate_size=512,  # 4x hidden, as in Phi-2
        num_hidden_layers=4,  # Phi-2: 32
        num_attention_heads=4,  # head dim 32; Phi-2: 32 heads of 80
        max_position_embeddings=512,  # Phi-2: 2048
        partial_rotary_factor=0.4,  # as Phi-2: rotary on 40 % of each head
        hidden_act="gelu_new",
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=None,  # like Phi-2: no pad token
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        dtype="float32",
    )


def train_tokenizer(texts: list[str], out_dir: Path, vocab_size: int = VOCAB_SIZE):
    """Train the byte-level BPE and save it in the transformers layout."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"))
    config = {
        "tokenizer_class": "CodeGenTokenizer",
        "bos_token": EOS,
        "eos_token": EOS,
        "unk_token": EOS,
        "add_prefix_space": False,
        "add_bos_token": False,
        "model_max_length": 512,
        "clean_up_tokenization_spaces": False,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return AutoTokenizer.from_pretrained(out_dir)


def pack(texts: list[str], tokenizer, block: int = BLOCK):
    """Join documents with EOS and cut the token stream into blocks."""
    import torch

    ids: list[int] = []
    for t in texts:
        ids.extend(tokenizer(t).input_ids + [tokenizer.eos_token_id])
    n = len(ids) // block
    return torch.tensor(ids[: n * block]).view(n, block)


def unigram_perplexity(train, held_out, vocab_size: int) -> float:
    """Perplexity of an add-one unigram model: the baseline the tiny model must beat."""
    counts = Counter(train.flatten().tolist())
    total = sum(counts.values()) + vocab_size
    nll = [-math.log((counts.get(t, 0) + 1) / total) for t in held_out.flatten().tolist()]
    return math.exp(sum(nll) / len(nll))


def model_perplexity(model, blocks, batch_size: int = 64) -> float:
    import torch

    model.eval()
    losses = []
    with torch.no_grad():
        for i in range(0, len(blocks), batch_size):
            x = blocks[i : i + batch_size]
            losses.append(model(input_ids=x, labels=x).loss.item() * len(x))
    return math.exp(sum(losses) / len(blocks))


def build(
    out_dir: Path,
    *,
    n_docs: int = 24000,
    steps: int = 1000,
    batch_size: int = 32,
    lr: float = 3e-3,
    seed: int = 0,
    log=print,
) -> dict:
    """Build tokenizer and model into ``out_dir``; return the build report."""
    import torch
    from synth import corpus  # scripts/synth.py, beside this script
    from transformers import PhiForCausalLM

    t0 = time.time()
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    train_texts = corpus(n_docs, seed=seed)
    held_texts = corpus(max(200, n_docs // 40), seed=seed + 1)
    tokenizer = train_tokenizer(train_texts, out_dir)
    train, held = pack(train_texts, tokenizer), pack(held_texts, tokenizer)
    log(
        f"corpus: {len(train_texts)} docs, {train.numel():,} train tokens, "
        f"{held.numel():,} held-out tokens"
    )

    model = PhiForCausalLM(tiny_phi_config(len(tokenizer)))
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.95))
    warmup = steps // 20
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warmup, 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))
    )
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for step in range(steps):
        x = train[torch.randint(len(train), (batch_size,), generator=gen)]
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % 50 == 0 or step == steps - 1:
            log(f"step {step:4d}  loss {loss.item():.3f}  {time.time() - t0:.0f}s")

    report = {
        "parameters": n_params,
        "vocab_size": len(tokenizer),
        "train_tokens_seen": steps * batch_size * BLOCK,
        "held_out_perplexity": round(model_perplexity(model, held), 3),
        "unigram_perplexity": round(unigram_perplexity(train, held, len(tokenizer)), 3),
        "build_seconds": round(time.time() - t0, 1),
        "seed": seed,
        "steps": steps,
    }
    model.generation_config.pad_token_id = None
    model.save_pretrained(out_dir, safe_serialization=True)
    (out_dir / "build_report.json").write_text(json.dumps(report, indent=2) + "\n")
    log(json.dumps(report, indent=2))
    return report



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=TINY_DIR)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--docs", type=int, default=24000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(2)  # the documented build machine: 2 cores
    build(args.out, n_docs=args.docs, steps=args.steps, seed=args.seed)


if __name__ == "__main__":
    main()

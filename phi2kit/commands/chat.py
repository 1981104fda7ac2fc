"""``phi2kit chat``: multi-turn chat in the terminal with a tuned Phi-2 (notebook 06).

    phi2kit chat --profile tiny --adapter notebooks/outputs/06_chat/adapter
    phi2kit chat --profile t4 --adapter outputs/06_chat/adapter --4bit

Type a message per line; ``exit`` or end of input (Ctrl-D) quits.
"""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

from phi2kit.chat import ChatSession, load_chat_model
from phi2kit.commands import add_profile_argument

EXIT_WORDS = ("exit", "quit")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The model flags shared by ``phi2kit chat`` and the Gradio app."""
    add_profile_argument(parser)
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--adapter", default=None, help="LoRA adapter folder (on the base)")
    which.add_argument("--model", default=None, help="merged model folder instead of the base")
    parser.add_argument(
        "--4bit",
        dest="quantize_4bit",
        action="store_true",
        help="load the base in nf4, as QLoRA trained it",
    )
    parser.add_argument("--max-new-tokens", type=int, default=128, help="reply length limit")
    parser.add_argument(
        "--temperature",
        type=float,
        default=0.0,
        help="sampling temperature; 0 (default) is greedy, the same reply every time",
    )


def add_chat_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``phi2kit chat`` on an ``add_subparsers()`` object."""
    parser = subparsers.add_parser(
        "chat",
        help="chat in the terminal with the base model plus an adapter, or a merged model",
        description="Multi-turn chat in the '### Human: / ### Assistant:' format. One message "
        "per line; 'exit' or end of input quits. Example: phi2kit chat --profile tiny "
        "--adapter notebooks/outputs/06_chat/adapter",
    )
    add_model_arguments(parser)
    parser.set_defaults(func=run_chat)
    return parser


def run_chat(
    args: argparse.Namespace, stdin: TextIO | None = None, stdout: TextIO | None = None
) -> int:
    """Read messages from ``stdin`` line by line and print each reply as it is generated."""
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    model, tokenizer = load_chat_model(
        args.profile, adapter=args.adapter, model=args.model, quantize_4bit=args.quantize_4bit
    )
    session = ChatSession(
        model, tokenizer, max_new_tokens=args.max_new_tokens, temperature=args.temperature
    )
    interactive = stdin.isatty()
    if interactive:
        print("Type a message; 'exit' or Ctrl-D quits.", file=stdout)
    while True:
        if interactive:
            print("you> ", end="", file=stdout, flush=True)
        line = stdin.readline()
        if not line or line.strip().lower() in EXIT_WORDS:
            break
        if not line.strip():
            continue
        print("assistant> ", end="", file=stdout, flush=True)
        shown = ""
        for reply in session.stream(line):
            # each value extends the last one (text is only ever held back, never taken back)
            print(reply[len(shown) :], end="", file=stdout, flush=True)
            shown = reply
        print(file=stdout, flush=True)
    return 0

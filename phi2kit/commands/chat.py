"""``phi2kit chat``: multi-turn chat in the terminal with a tuned Phi-2 (notebook 06).

    phi2kit chat --profile tiny --adapter notebooks/outputs/06_chat/adapter
    phi2kit chat --profile t4 --adapter outputs/06_chat/adapter --4bit

Type a message per line; ``exit`` or end of input (Ctrl-D) quits.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TextIO

from phi2kit.chat import load_chat_model, stream_reply
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


def model_error(args: argparse.Namespace) -> str | None:
    """What is wrong with ``--adapter``/``--model`` (one line, with the fix), or None.

    Checked before any model loads: a folder that is not there, a folder that holds no
    adapter, and a classification adapter (notebook 03's, ``task_type`` ``SEQ_CLS``), which
    scores labels and would only talk nonsense.
    """
    if args.max_new_tokens < 1:
        return f"--max-new-tokens {args.max_new_tokens}: must be at least 1, e.g. 128"
    if args.temperature < 0:
        return f"--temperature {args.temperature:g}: must be 0 (greedy) or more, e.g. 0.7"
    saved = {"--adapter": "the adapter notebook 06 saved (outputs/06_chat/adapter under the "
                          "folder it ran in)",
             "--model": "a merged model folder (notebook 05 saves one: outputs/05_merging/merged)"}
    for flag, value, marker in (
        ("--adapter", args.adapter, "adapter_config.json"),
        ("--model", args.model, "config.json"),
    ):
        if value is None:
            continue
        folder = Path(value)
        if folder.is_file():
            return f"{flag} {value}: a file; pass the folder that holds it, {flag} {folder.parent}"
        if not folder.is_dir():
            return (f"{flag} {value}: no such folder; pass {saved[flag]}, or leave {flag} out "
                    "to chat with the base model")  # fmt: skip
        if not (folder / marker).is_file():
            inner = folder / "adapter"  # a `phi2kit train` run folder holds its adapter there
            if flag == "--adapter" and (inner / marker).is_file():
                return f"{flag} {value}: a run folder; pass its adapter, {flag} {inner}"
            return f"{flag} {value}: no {marker} in it; pass a folder saved by save_pretrained"
    if args.adapter is not None:
        config = json.loads((Path(args.adapter) / "adapter_config.json").read_text())
        task = config.get("task_type")
        if task not in (None, "CAUSAL_LM"):
            return (
                f"--adapter {args.adapter}: a {task} adapter (a classifier, such as notebook "
                "03's) scores labels and cannot chat; pass a chat adapter (task_type "
                "CAUSAL_LM, notebook 06's outputs/06_chat/adapter)"
            )
    return None


def profile_error(args: argparse.Namespace) -> str | None:
    """The profile's refusal (no GPU, no bf16) in shell words, or None."""
    from phi2kit.profiles import ProfileError, get_profile

    try:
        get_profile(args.profile)
    except ProfileError as err:
        fix = "--profile t4" if "bfloat16" in str(err) else "--profile tiny to run on the CPU"
        return f"--profile {args.profile}: {str(err).split('. ')[0]}; pass {fix}"
    return None


def load_for_command(args: argparse.Namespace):
    """The model and tokenizer the flags name (``chat`` and ``app``), without the libraries'
    start-up notes: nothing a shell user can act on."""
    from phi2kit.logs import quiet_command

    quiet_command()
    return load_chat_model(
        args.profile, adapter=args.adapter, model=args.model, quantize_4bit=args.quantize_4bit
    )


def fail(command: str, message: str) -> int:
    """Print ``phi2kit COMMAND: error: MESSAGE`` on stderr; return exit code 2."""
    print(f"phi2kit {command}: error: {message}", file=sys.stderr)
    return 2


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
    problem = model_error(args) or profile_error(args)
    if problem:
        return fail("chat", problem)
    model, tokenizer = load_for_command(args)
    settings = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature}
    turns: list[tuple[str, str]] = []  # the whole conversation goes in with every message
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
        turns.append(("prompter", line.strip()))
        reply = ""
        for piece in stream_reply(model, tokenizer, turns, **settings):
            # each value extends the last one (text is only ever held back, never taken back)
            print(piece[len(reply) :], end="", file=stdout, flush=True)
            reply = piece
        print(file=stdout, flush=True)
        turns.append(("assistant", reply))
    return 0

"""``phi2kit chat``: multi-turn chat in the terminal, and the model flags and loading it shares with
``phi2kit app``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TextIO

from phi2kit.chat import load_chat_model, stream_reply, with_system
from phi2kit.commands import adapter_error, add_profile_argument, fail, folder_error
from phi2kit.profiles import get_profile

EXIT_WORDS = ("exit", "quit")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The model flags shared by ``phi2kit chat`` and the Gradio app."""
    add_profile_argument(parser)
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--adapter", default=None, help="LoRA adapter folder (on the base)")
    which.add_argument("--model", default=None, help="merged model folder instead of the base")
    parser.add_argument("--4bit", dest="quantize_4bit", action=argparse.BooleanOptionalAction,
                        default=None, help="load the base in nf4 (default: as the --adapter was "
                        "trained, by its phi2kit_adapter.json; else full precision)")  # fmt: skip
    parser.add_argument("--max-new-tokens", type=int, default=128, help="reply length limit")
    parser.add_argument("--temperature", type=float, default=0.0,
                        help="sampling temperature; 0 (default) is greedy, the same reply every "
                        "time")  # fmt: skip
    parser.add_argument("--system", default=None, metavar="TEXT",
                        help="a system prompt, put where training put one (before the first "
                        "user message): for an adapter trained on chats that had one")  # fmt: skip


def model_error(args: argparse.Namespace) -> str | None:
    """What is wrong with the model flags (one line, with the fix), or None; checked before
    any model loads. A classification adapter (notebook 03's) would only talk nonsense."""
    if args.max_new_tokens < 1:
        return f"--max-new-tokens {args.max_new_tokens}: must be at least 1, e.g. 128"
    if not args.temperature >= 0:  # NaN too: it would run greedy without a word
        return f"--temperature {args.temperature:g}: must be 0 (greedy) or more, e.g. 0.7"
    if args.adapter is not None:
        return adapter_error(args.adapter, "pass a chat adapter: RUN/adapter of `phi2kit train "
                             "chat --output-dir RUN`, or notebook 06's outputs/06_chat/adapter "
                             "(under the folder it ran in); or leave --adapter out to chat with "
                             "the base model")  # fmt: skip
    if args.model is not None:
        problem = folder_error("--model", args.model, "pass a merged model folder (notebook 05 "
                               "saves one: outputs/05_merging/merged), or leave --model out to "
                               "chat with the base model", "config.json")  # fmt: skip
        if problem or (Path(args.model) / "config.json").is_file():
            return problem
        if (Path(args.model) / "adapter_config.json").is_file():
            return f"--model {args.model}: an adapter, not a merged model; pass it as --adapter"
        return f"--model {args.model}: no config.json in it; pass a folder saved by " \
            "save_pretrained"  # fmt: skip
    return None


def adapter_note(adapter: str | Path | None) -> str | None:
    """A note when ``phi2kit train``'s ``run.json`` beside ``adapter`` names a task that does
    not chat (a sentiment adapter answers with a label): legal, but rarely what was meant."""
    from phi2kit.lora import trained_by  # torch: not for `phi2kit --help`

    run, task = trained_by(adapter) if adapter is not None else (None, None)
    if task in (None, "chat", "dpo"):
        return None
    return (f"note: --adapter {adapter} was trained by `phi2kit train {task}` ({run} says so), "
            "not on chats: expect replies in that task's form; a chat adapter comes from "
            "`phi2kit train chat` (or dpo)")


def load_for_command(args: argparse.Namespace):
    """The model, tokenizer and whether the base is nf4, as the flags name them (``chat`` and
    ``app``), without the libraries' start-up notes: nothing a shell user can act on."""
    from phi2kit.logs import quiet_command

    if note := adapter_note(args.adapter):
        print(f"phi2kit: {note}", file=sys.stderr)
    quiet_command()
    nf4 = args.quantize_4bit
    if nf4 is None:  # as the adapter was trained (QLoRA: on the nf4 base)
        from phi2kit.lora import adapter_base_4bit

        nf4 = bool(args.adapter and adapter_base_4bit(args.adapter))
        if nf4:
            print(f"phi2kit: --adapter {args.adapter} was trained on the nf4 base (its "
                  "phi2kit_adapter.json says so): loading the base in nf4; --no-4bit for the "
                  "full-precision base", file=sys.stderr)  # fmt: skip
    model, tokenizer = load_chat_model(args.profile, adapter=args.adapter, model=args.model,
                                       quantize_4bit=nf4)  # fmt: skip
    return model, tokenizer, nf4


def add_chat_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``phi2kit chat`` on an ``add_subparsers()`` object."""
    parser = subparsers.add_parser(
        "chat", help="chat in the terminal with the base model plus an adapter, or a merged model",
        description="Multi-turn chat in the '### Human: / ### Assistant:' format. One message "
        "per line; 'exit' or end of input quits. Example: phi2kit chat --profile tiny "
        "--adapter notebooks/outputs/06_chat/adapter")  # fmt: skip
    add_model_arguments(parser)
    parser.set_defaults(func=run_chat)
    return parser


def run_chat(args: argparse.Namespace, stdin: TextIO | None = None,
             stdout: TextIO | None = None) -> int:  # fmt: skip
    """Read messages from ``stdin`` line by line and print each reply as it is generated."""
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    if problem := model_error(args):
        return fail("chat", problem)
    get_profile(args.profile)  # ProfileError: phi2kit.commands.main says it in shell words
    model, tokenizer, _ = load_for_command(args)
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
        for piece in stream_reply(model, tokenizer, with_system(turns, args.system), **settings):
            # each value extends the last one (text is only ever held back, never taken back)
            print(piece[len(reply) :], end="", file=stdout, flush=True)
            reply = piece
        print(file=stdout, flush=True)
        turns.append(("assistant", reply))
    return 0

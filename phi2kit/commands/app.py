"""``phi2kit app``: a Gradio chat app over :mod:`phi2kit.chat` (the ``app`` extra, Gradio 6); its
API endpoint is ``/respond``."""

from __future__ import annotations

import argparse
from collections.abc import Iterator, Sequence
from typing import Any

from phi2kit.chat import STOP_STRINGS, Thread, stream_reply, with_system
from phi2kit.commands import fail
from phi2kit.commands.chat import add_model_arguments, load_for_command, model_error

HOST = "127.0.0.1"
_GRADIO_ROLES = {"user": "prompter", "assistant": "assistant"}


def to_turns(history: Sequence[Any] | None) -> Thread:
    """Gradio 6's messages (``{"role": "user", "content": "Hi"}``, the content a string or a
    list of parts, ``[{"type": "text", "text": "Hi"}]``) as ``(role, text)`` turns."""
    turns: Thread = []
    for item in history or []:
        if not isinstance(item, dict):
            raise ValueError(f"cannot read history item {item!r}")
        role = _GRADIO_ROLES.get(item.get("role", ""))
        if role is None:
            raise ValueError(f"unknown chat role {item.get('role')!r}: use user/assistant")
        turns.append((role, _content_text(item.get("content"))))
    return turns


def _content_text(content: Any) -> str:
    """The text of a Gradio message's content: a string, or a list of parts (files dropped)."""
    if isinstance(content, list):
        return " ".join(part for part in map(_content_text, content) if part)
    if isinstance(content, dict):
        return str(content.get("text") or "") if content.get("type", "text") == "text" else ""
    return str(content or "")


def port_error(host: str, port: int) -> str | None:
    """``--port N: cannot serve ...`` when nothing can listen on ``host:port`` (``--host H: ...``
    when the address is not this machine's), else None."""
    import errno
    import socket

    if not 0 < port < 65536:  # 0 ("any free port") would serve where no link says
        return f"--port {port}: a port is 1 to 65535, e.g. --port 7860"
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except socket.gaierror as err:  # not an address or a name that resolves
            return f"--host {host}: not an address ({err.strerror or err}); e.g. --host {HOST}"
        except OSError as err:
            if err.errno == errno.EADDRNOTAVAIL:
                return (f"--host {host}: not an address of this machine ({err.strerror}); "
                        f"--host {HOST} serves this machine, --host 0.0.0.0 every network")
            return (f"--port {port}: cannot serve on {host}:{port} ({err.strerror or err}); "
                    f"pass another --port, e.g. --port {port + 1}")  # fmt: skip
    return None


def make_chat_fn(model, tokenizer, *, max_new_tokens: int = 128, temperature: float = 0.0,
                 system: str | None = None):  # fmt: skip
    """``respond(message, history, max_new_tokens, temperature, stop_at_human)`` for Gradio's
    ``ChatInterface``: it yields the reply so far, so the page streams it."""

    def respond(message: str, history: Sequence[Any], max_new_tokens: int = max_new_tokens,
                temperature: float = temperature, stop_at_human: bool = True) -> Iterator[str]:
        if not message.strip():  # the page's box cannot send one; the API can
            yield "(type a message)"
            return
        turns = with_system([*to_turns(history), ("prompter", message.strip())], system)
        yield from stream_reply(model, tokenizer, turns, max_new_tokens=int(max_new_tokens),
                                temperature=float(temperature),
                                stop_strings=STOP_STRINGS if stop_at_human else ())  # fmt: skip

    return respond


def describe_model(profile: str, *, base: str | None, adapter: str | None,
                   quantize_4bit: bool = False) -> str:  # fmt: skip
    """One Markdown line: which base model (and precision) and which adapter answer."""
    shown_base = f"`{base}`" if base else "the tiny Phi shipped with phi2kit"
    bits = ", nf4" if quantize_4bit else ""
    tuned = f"**Adapter:** `{adapter}`" if adapter else (
        "**No adapter:** the base model, which has not learnt the chat format or when to stop")
    return f"**Model:** {shown_base} (profile `{profile}`{bits}) · {tuned}"


def build_app(model, tokenizer, *, description: str = "", max_new_tokens: int = 128,
              temperature: float = 0.0, system: str | None = None):  # fmt: skip
    """A ``gradio.ChatInterface`` around :func:`make_chat_fn`; call ``.launch()`` on it."""
    import gradio as gr

    settings = [
        gr.Slider(1, 1024, value=max_new_tokens, step=1, label="Max new tokens"),
        gr.Slider(0.0, 2.0, value=temperature, step=0.05, label="Temperature (0 = greedy)"),
        gr.Checkbox(value=True, label="Stop at '### Human:' or '### Assistant:' (the model "
                    "inventing a turn)"),
    ]
    return gr.ChatInterface(
        make_chat_fn(model, tokenizer, max_new_tokens=max_new_tokens, temperature=temperature,
                     system=system),
        additional_inputs=settings,
        additional_inputs_accordion=gr.Accordion("Generation settings", open=False),
        title="phi2kit chat", api_name="respond", flagging_mode="never",
        description=(f"{description}\n\nThe chat format of notebook 06 (OpenAssistant "
                     "threads): `### Human:` / `### Assistant:`.").strip())  # fmt: skip


def add_app_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``phi2kit app``."""
    parser = subparsers.add_parser(
        "app", help="serve the Gradio chat app",
        description="A Gradio chat app over a base model and an optional chat adapter (lesson "
        "06's), in the spirit of a Hugging Face Space.")  # fmt: skip
    add_model_arguments(parser)
    parser.add_argument("--host", default=HOST, help=f"address to serve on (default {HOST})")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument("--share", action="store_true", help="make a public Gradio link")
    parser.set_defaults(func=run_app)
    return parser


def run_app(args: argparse.Namespace) -> int:
    """Load the model, build the app and serve it until interrupted."""
    if problem := model_error(args) or port_error(args.host, args.port):
        return fail("app", problem)  # at once: nothing heavy is loaded yet
    import importlib.util

    from phi2kit.models import model_source
    from phi2kit.profiles import get_profile

    profile = get_profile(args.profile)  # ProfileError: phi2kit.commands.main says it
    if importlib.util.find_spec("gradio") is None:
        return fail("app", 'Gradio is not installed: pip install "phi2kit[app]" (or gradio)')
    model, tokenizer, nf4 = load_for_command(args)
    base = args.model or (model_source(profile) if profile.model_id else None)
    description = describe_model(profile.name, base=base, adapter=args.adapter,
                                 quantize_4bit=nf4)  # fmt: skip
    if (args.system or "").strip():
        description += f" · **System prompt:** {args.system.strip()}"
    app = build_app(model, tokenizer, description=description, max_new_tokens=args.max_new_tokens,
                    temperature=args.temperature, system=args.system)  # fmt: skip
    share = "a public link follows" if args.share else "--share for a public link"
    print(f"phi2kit app: serving on http://{args.host}:{args.port} ({share}; Ctrl-C stops)")
    # quiet: Gradio's own start-up lines speak of launch(share=True); the shell user has --share
    # show_error: what Gradio refuses from an API client (a word for a slider, a value out of
    # range) is said to the client, not hidden behind "Error"
    app.launch(server_name=args.host, server_port=args.port, share=args.share, quiet=True,
               show_error=True)  # fmt: skip
    return 0

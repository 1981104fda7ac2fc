"""A Gradio chat app over :mod:`phi2kit.chat`, in the spirit of a Hugging Face Space.

Needs the optional extra: ``pip install "phi2kit[app]"`` (Gradio 6). Then:

    phi2kit app --profile tiny --adapter notebooks/outputs/06_chat/adapter
    phi2kit app --profile t4 --adapter outputs/06_chat/adapter --4bit --share

The page says which model and adapter answer, streams each reply as it is generated, and
offers the settings a chat user expects: reply length, temperature (0 = greedy), and
whether to stop at ``### Human:``. The chat function (:func:`make_chat_fn`) does not need
Gradio; the API endpoint is ``/respond`` (``gradio_client``: ``client.predict(message,
max_new_tokens, temperature, stop_at_human, api_name="/respond")``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from phi2kit.chat import STOP_STRINGS, Thread, stream_reply
from phi2kit.commands.chat import (
    add_model_arguments,
    fail,
    load_for_command,
    model_error,
    profile_error,
)

ChatFn = Callable[..., Iterator[str]]
HOST = "127.0.0.1"
_GRADIO_ROLES = {"user": "prompter", "assistant": "assistant"}


def to_turns(history: Sequence[Any] | None) -> Thread:
    """Normalize a chat history to ``(role, text)`` turns.

    Accepts our own turns (``("prompter", "Hi")``) and Gradio 6's messages
    (``{"role": "user", "content": "Hi"}``, the content a string or a list of parts,
    ``[{"type": "text", "text": "Hi"}]``).
    """
    turns: Thread = []
    for item in history or []:
        if isinstance(item, dict):
            role = _GRADIO_ROLES.get(item.get("role", ""))
            if role is None:
                raise ValueError(f"unknown chat role {item.get('role')!r}: use user/assistant")
            turns.append((role, _content_text(item.get("content"))))
        elif len(item) == 2 and item[0] in ("prompter", "assistant"):
            turns.append((item[0], str(item[1])))
        else:
            raise ValueError(f"cannot read history item {item!r}")
    return turns


def _content_text(content: Any) -> str:
    """The text of a Gradio message's content: a string, or a list of parts (files dropped)."""
    if isinstance(content, list):
        parts = [_content_text(part) for part in content]
        return " ".join(part for part in parts if part)
    if isinstance(content, dict):
        return str(content.get("text") or "") if content.get("type", "text") == "text" else ""
    return str(content or "")


def port_error(host: str, port: int) -> str | None:
    """``--port N: in use ...`` when nothing can listen on ``host:port``, else None."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError as err:
            return (
                f"--port {port}: cannot serve on {host}:{port} ({err.strerror or err}); "
                f"pass another --port, e.g. --port {port + 1}"
            )
    return None


def make_chat_fn(
    model, tokenizer, *, max_new_tokens: int = 128, temperature: float = 0.0
) -> ChatFn:
    """``respond(message, history, max_new_tokens, temperature, stop_at_human)``.

    What Gradio's ``ChatInterface`` calls: ``history`` is Gradio's list of ``{"role",
    "content"}`` messages, the last three arguments come
    from the settings panel. It yields the reply so far, so the page streams it. The app
    keeps no state of its own: the whole conversation comes in with every call.
    """

    def respond(
        message: str,
        history: Sequence[Any],
        max_new_tokens: int = max_new_tokens,
        temperature: float = temperature,
        stop_at_human: bool = True,
    ) -> Iterator[str]:
        turns = [*to_turns(history), ("prompter", message.strip())]
        yield from stream_reply(
            model,
            tokenizer,
            turns,
            max_new_tokens=int(max_new_tokens),
            temperature=float(temperature),
            stop_strings=STOP_STRINGS if stop_at_human else (),
        )

    return respond


def describe_model(
    profile: str, *, base: str | None, adapter: str | None, quantize_4bit: bool = False
) -> str:
    """One Markdown line: which base model (and precision) and which adapter answer."""
    shown_base = f"`{base}`" if base else "the tiny Phi shipped with phi2kit"
    bits = ", nf4" if quantize_4bit else ""
    tuned = (
        f"**Adapter:** `{adapter}`"
        if adapter
        else "**No adapter:** the base model, which has not learnt the chat format or when to stop"
    )
    return f"**Model:** {shown_base} (profile `{profile}`{bits}) · {tuned}"


def build_app(
    model,
    tokenizer,
    *,
    description: str = "",
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    title: str = "phi2kit chat",
):  # -> gradio.ChatInterface
    """A ``gradio.ChatInterface`` around :func:`make_chat_fn`; call ``.launch()`` on it.

    ``description`` is shown under the title: pass :func:`describe_model`'s line.
    """
    try:
        import gradio as gr
    except ImportError as exc:
        raise ImportError(
            'the chat app needs Gradio: pip install "phi2kit[app]" (or pip install gradio)'
        ) from exc
    settings = [
        gr.Slider(1, 1024, value=max_new_tokens, step=1, label="Max new tokens"),
        gr.Slider(0.0, 2.0, value=temperature, step=0.05, label="Temperature (0 = greedy)"),
        gr.Checkbox(value=True, label="Stop at '### Human:' (the model inventing your turn)"),
    ]
    return gr.ChatInterface(
        make_chat_fn(model, tokenizer, max_new_tokens=max_new_tokens, temperature=temperature),
        additional_inputs=settings,
        additional_inputs_accordion=gr.Accordion("Generation settings", open=False),
        title=title,
        description=(
            f"{description}\n\nThe chat format of notebook 06 (OpenAssistant threads): "
            "`### Human:` / `### Assistant:`."
        ).strip(),
        api_name="respond",
        flagging_mode="never",
    )


def add_app_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``phi2kit app``."""
    parser = subparsers.add_parser(
        "app", help="serve the Gradio chat app",
        description="A Gradio chat app over a base model and an optional chat adapter (lesson "
        "06's), in the spirit of a Hugging Face Space.",
    )  # fmt: skip
    add_model_arguments(parser)
    parser.add_argument("--host", default=HOST, help=f"address to serve on (default {HOST})")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument("--share", action="store_true", help="make a public Gradio link")
    parser.set_defaults(func=run_app)
    return parser


def run_app(args: argparse.Namespace) -> int:
    """Load the model, build the app and serve it until interrupted."""
    import importlib.util

    from phi2kit.models import model_source
    from phi2kit.profiles import get_profile

    problem = model_error(args) or profile_error(args) or port_error(args.host, args.port)
    if importlib.util.find_spec("gradio") is None:
        problem = problem or 'Gradio is not installed: pip install "phi2kit[app]" (or gradio)'
    if problem:
        return fail("app", problem)
    profile = get_profile(args.profile)
    model, tokenizer = load_for_command(args)
    base = args.model or (model_source(profile) if profile.model_id else None)
    description = describe_model(
        profile.name, base=base, adapter=args.adapter, quantize_4bit=args.quantize_4bit
    )
    app = build_app(
        model,
        tokenizer,
        description=description,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
    )
    share = "a public link follows" if args.share else "--share for a public link"
    print(f"phi2kit app: serving on http://{args.host}:{args.port} ({share}; Ctrl-C stops)")
    # quiet: Gradio's own start-up lines speak of launch(share=True); the shell user has --share
    app.launch(server_name=args.host, server_port=args.port, share=args.share, quiet=True)
    return 0

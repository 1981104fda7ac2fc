"""A Gradio chat app over :mod:`phi2kit.chat`, in the spirit of a Hugging Face Space.

Needs the optional extra: ``pip install "phi2kit[app]"`` (Gradio). Then:

    python -m phi2kit.app --profile tiny --adapter notebooks/outputs/06_chat/adapter
    python -m phi2kit.app --profile t4 --adapter outputs/06_chat/adapter --4bit --share

The chat function (:func:`make_chat_fn`) does not need Gradio, so it is tested headless.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

from phi2kit.chat import add_model_arguments, chat_reply, load_chat_model, to_turns

ChatFn = Callable[[str, Sequence[Any]], str]


def make_chat_fn(model, tokenizer, *, max_new_tokens: int = 128) -> ChatFn:
    """``fn(message, history) -> reply``, the function Gradio's ``ChatInterface`` calls.

    ``history`` is what Gradio passes: a list of ``{"role", "content"}`` messages (or the
    older ``[user, bot]`` pairs). The app keeps no state of its own: the whole
    conversation comes in with every call.
    """

    def respond(message: str, history: Sequence[Any]) -> str:
        turns = [*to_turns(history), ("prompter", message.strip())]
        return chat_reply(model, tokenizer, turns, max_new_tokens=max_new_tokens)

    return respond


def build_app(
    model, tokenizer, *, max_new_tokens: int = 128, title: str = "phi2kit chat"
):  # -> gradio.ChatInterface
    """A ``gradio.ChatInterface`` around :func:`make_chat_fn`; call ``.launch()`` on it."""
    try:
        import gradio as gr
    except ImportError as exc:
        raise ImportError(
            'the chat app needs Gradio: pip install "phi2kit[app]" (or pip install gradio)'
        ) from exc
    return gr.ChatInterface(
        make_chat_fn(model, tokenizer, max_new_tokens=max_new_tokens),
        type="messages",
        title=title,
        description="Phi-2 fine-tuned on OpenAssistant conversations (### Human / ### Assistant).",
    )


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m phi2kit.app", description=__doc__.split("\n")[0]
    )
    add_model_arguments(parser)
    parser.add_argument("--share", action="store_true", help="make a public Gradio link")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    model, tokenizer = load_chat_model(
        args.profile, adapter=args.adapter, model=args.model, quantize_4bit=args.quantize_4bit
    )
    build_app(model, tokenizer, max_new_tokens=args.max_new_tokens).launch(share=args.share)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Chat with a tuned Phi-2 in the ``### Human: … ### Assistant: …`` format (notebook 06).

The history is kept as ``(role, text)`` turns (roles ``prompter``/``assistant``, as in
:mod:`phi2kit.data.oasst`), rendered with :func:`~phi2kit.data.oasst.format_chat`, and the
reply is generated (greedily, unless a temperature is set) and cut at the stop string
``"### Human:"``, in case the model starts to invent the user's next turn.
:func:`stream_reply` yields the reply as it grows, for the terminal and the Gradio app.

The terminal chat (``phi2kit chat``) and the Gradio app are :mod:`phi2kit.commands.chat`
and :mod:`phi2kit.commands.app`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import Any

from phi2kit.data.chat_format import HUMAN, Thread, fit_turns, format_chat
from phi2kit.generation import cut_at_stop, inference

STOP_STRINGS: tuple[str, ...] = (HUMAN,)
_GRADIO_ROLES = {"user": "prompter", "assistant": "assistant"}


def to_turns(history: Sequence[Any] | None) -> Thread:
    """Normalize a chat history to ``(role, text)`` turns.

    Accepts our own turns (``("prompter", "Hi")``), Gradio's ``messages`` format
    (``{"role": "user", "content": "Hi"}``; Gradio 6 passes the content as a list of parts,
    ``[{"type": "text", "text": "Hi"}]``) and Gradio's older pairs (``["Hi", "Hello!"]``, one
    pair per exchange).
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
        elif len(item) == 2:  # a (user, bot) pair
            turns.append(("prompter", str(item[0] or "")))
            if item[1] is not None:
                turns.append(("assistant", str(item[1])))
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


def fit_history(turns: Thread, tokenizer, max_tokens: int) -> Thread:
    """Drop the oldest exchanges until the prompt fits in ``max_tokens`` tokens.

    The last turn (the user's new message) is always kept, even if it alone is too long.
    """
    fitted = fit_turns(turns, tokenizer, max_tokens)
    return fitted[0] if fitted is not None else list(turns[-1:])


def sampling_kwargs(temperature: float = 0.0) -> dict:
    """``generate`` keywords: greedy at temperature 0, otherwise sampling at that temperature."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    return {"do_sample": True, "temperature": temperature} if temperature > 0 else {}


def _chat_prompt(model, tokenizer, turns: Thread, max_new_tokens: int) -> str:
    if not turns or turns[-1][0] != "prompter":
        raise ValueError("the history must end with the user's (prompter) message")
    limit = getattr(model.config, "max_position_embeddings", 2048) - max_new_tokens
    return format_chat(fit_history(turns, tokenizer, limit))


def chat_reply(
    model,
    tokenizer,
    turns: Thread,
    *,
    max_new_tokens: int = 128,
    stop_strings: Sequence[str] = STOP_STRINGS,
    temperature: float = 0.0,
) -> str:
    """The assistant's next reply to ``turns`` (which end with the user's message).

    Greedy decoding unless ``temperature > 0``; the reply ends at EOS or at the first stop
    string, and is stripped. Old exchanges are dropped if the prompt would not leave room
    for ``max_new_tokens``.
    """
    from phi2kit.generation import generate

    prompt = _chat_prompt(model, tokenizer, turns, max_new_tokens)
    out = generate(
        model,
        tokenizer,
        [prompt],
        max_new_tokens=max_new_tokens,
        stop_strings=stop_strings,
        **sampling_kwargs(temperature),
    )
    return out.texts[0].strip()


def _held_back(text: str, stop_strings: Sequence[str]) -> int:
    """How many trailing characters of ``text`` could be the start of a stop string."""
    return max(
        (k for s in stop_strings for k in range(1, len(s)) if text.endswith(s[:k])), default=0
    )


def stream_reply(
    model,
    tokenizer,
    turns: Thread,
    *,
    max_new_tokens: int = 128,
    stop_strings: Sequence[str] = STOP_STRINGS,
    temperature: float = 0.0,
) -> Iterator[str]:
    """Like :func:`chat_reply`, but yields the reply so far each time it grows.

    Generation runs in a thread behind a ``TextIteratorStreamer``. Text that may be the
    start of a stop string is held back until it is clear, so ``"### Hu"`` never flashes
    on screen. The last value equals :func:`chat_reply`'s reply (greedy). Closing the
    generator early (a Stop button) stops the generation too.
    """
    from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

    cancelled = threading.Event()

    class _Cancelled(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs) -> bool:
            return cancelled.is_set()

    prompt = _chat_prompt(model, tokenizer, turns, max_new_tokens)
    batch = tokenizer([prompt], return_tensors="pt").to(next(model.parameters()).device)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    kwargs = {
        **batch,
        "max_new_tokens": max_new_tokens,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "streamer": streamer,
        "stopping_criteria": StoppingCriteriaList([_Cancelled()]),
        **sampling_kwargs(temperature),
    }
    if stop_strings:
        kwargs.update(stop_strings=list(stop_strings), tokenizer=tokenizer)
    failed: list[BaseException] = []

    def run() -> None:
        try:
            with inference(model):  # eval mode and no_grad (thread-local: set in this thread)
                model.generate(**kwargs)
        except BaseException as exc:  # re-raised below: the reader must not wait forever
            failed.append(exc)
            streamer.end()

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    text, shown = "", ""
    try:
        for piece in streamer:
            text += piece
            visible, stopped = cut_at_stop(text, stop_strings)
            if not stopped:
                visible = visible[: len(visible) - _held_back(visible, stop_strings)]
            if visible.strip() != shown:
                shown = visible.strip()
                yield shown
            if stopped:
                break
        if failed:
            raise failed[0]
        if not shown:
            yield ""  # an empty reply (EOS at once) is still a reply
    finally:
        cancelled.set()
        worker.join()


class ChatSession:
    """A multi-turn conversation: ``session.send("Hi")`` returns the reply and keeps both."""

    def __init__(
        self, model, tokenizer, *, max_new_tokens: int = 128, temperature: float = 0.0
    ) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.max_new_tokens, self.temperature = max_new_tokens, temperature
        self.turns: Thread = []

    def _settings(self) -> dict:
        return {"max_new_tokens": self.max_new_tokens, "temperature": self.temperature}

    def send(self, message: str) -> str:
        turns = [*self.turns, ("prompter", message.strip())]
        reply = chat_reply(self.model, self.tokenizer, turns, **self._settings())
        self.turns = [*turns, ("assistant", reply)]
        return reply

    def stream(self, message: str) -> Iterator[str]:
        """:meth:`send`, yielding the reply as it grows; the exchange is kept at the end."""
        turns = [*self.turns, ("prompter", message.strip())]
        reply = ""
        for reply in stream_reply(self.model, self.tokenizer, turns, **self._settings()):
            yield reply
        self.turns = [*turns, ("assistant", reply)]

    def reset(self) -> None:
        self.turns = []


def load_chat_model(
    profile: str = "auto",
    *,
    adapter: str | None = None,
    model: str | None = None,
    quantize_4bit: bool = False,
):
    """``(model, tokenizer)`` for chatting: the base plus an adapter, or a merged model.

    Args:
        profile: Profile name (``tiny``, ``t4``, ``ampere`` or ``auto``).
        adapter: Folder of a saved LoRA adapter, put on the profile's base model.
        model: Folder of a merged model (notebook 05's ``save_merged``), used instead.
        quantize_4bit: Load the base in nf4 (as QLoRA trained it) instead of full precision.
    """
    from phi2kit.models import load_model, load_tokenizer
    from phi2kit.profiles import get_profile
    from phi2kit.twin import keep_nf4_layout_on_cpu

    if adapter and model:
        raise ValueError("pass either adapter= (base + adapter) or model= (merged), not both")
    prof = get_profile(profile)
    net = load_model(prof, quantize_4bit=quantize_4bit, source=model)
    if adapter:
        from peft import PeftModel

        net = PeftModel.from_pretrained(net, adapter)
    keep_nf4_layout_on_cpu(net)
    net.eval()
    tokenizer = load_tokenizer(prof, padding_side="left")
    return net, tokenizer

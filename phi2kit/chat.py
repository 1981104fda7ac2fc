"""Notebook 06's chat: :func:`tree_to_rows`, :func:`conversation_to_rows`, :func:`build_threads`,
:func:`format_chat` and :func:`to_examples` are its cells; the rest drives ``phi2kit chat`` and
``phi2kit app``."""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Iterator, Sequence

Thread = list[tuple[str, str]]

MESSAGE_FIELDS = ["message_id", "parent_id", "text", "role", "lang", "rank", "deleted",
                  "review_result", "created_date"]


def tree_to_rows(node, parent_id=None):
    """The messages of one exported tree as the hub's rows (nested replies -> parent_id)."""
    rows = [{**{k: node.get(k) for k in MESSAGE_FIELDS}, "parent_id": parent_id}]
    for reply in node.get("replies") or []:
        rows += tree_to_rows(reply, node["message_id"])
    return rows


def conversation_to_rows(conversation, k):
    """One conversation in the messages format (trl's and OpenAI's: a list of {"role", "content"})
    as the hub's rows: one path, each message the reply to the one before. A leading system
    message goes before the first user turn's text (the chat format has no system line)."""
    turns = [(m["role"], m["content"]) for m in conversation]
    if len(turns) > 1 and turns[0][0] == "system":
        turns = [(turns[1][0], f"{turns[0][1].strip()}\n\n{turns[1][1]}"), *turns[2:]]
    return [{"message_id": f"{k}-{i}", "parent_id": f"{k}-{i - 1}" if i else None, "text": text,
             "role": {"user": "prompter"}.get(role, role), "lang": None, "rank": None,
             "deleted": False, "review_result": None, "created_date": None}
            for i, (role, text) in enumerate(turns)]


def build_threads(messages, lang=None):
    """The main thread of every tree: the best-ranked usable reply at each step."""

    def usable(m):  # a message without a language (your own data) is kept
        in_lang = lang is None or m["lang"] in (None, lang)
        return not m["deleted"] and m["review_result"] is not False and in_lang

    def best_first(m):  # rank 0 first; unranked replies after ranked ones, the earliest first
        return (m["rank"] is None, m["rank"] or 0, m["created_date"] or "")

    replies = defaultdict(list)
    for m in messages:
        if m["parent_id"] is not None:
            replies[m["parent_id"]].append(m)
    threads = []
    for root in messages:
        if root["parent_id"] is not None or not usable(root):
            continue
        thread, node = [], root
        while node is not None:
            thread.append((node["role"], node["text"]))
            options = [m for m in replies[node["message_id"]] if usable(m)]
            node = min(options, key=best_first, default=None)
        while thread and thread[-1][0] != "assistant":
            thread.pop()  # a thread ends with an answer
        if thread:
            threads.append(thread)
    return threads


HUMAN, ASSISTANT = "### Human:", "### Assistant:"


def format_chat(turns, add_generation_prompt=True):
    """Turns as '### Human: ...' / '### Assistant: ...' lines, ending with '### Assistant:'."""
    lines = [f"{HUMAN if role == 'prompter' else ASSISTANT} {text.strip()}" for role, text in turns]
    return "\n".join(lines + [ASSISTANT] if add_generation_prompt else lines)


def to_examples(thread, tokenizer, max_length):
    """One prompt/completion per assistant turn, its oldest turns dropped until it fits."""
    lines = [format_chat([turn], add_generation_prompt=False) for turn in thread]
    sizes = [len(ids) + 1 for ids in tokenizer(lines)["input_ids"]]  # tokens of each line + newline
    n_tail = len(tokenizer(ASSISTANT)["input_ids"]) + 1  # the closing '### Assistant:', and EOS
    examples = []
    for i, (role, text) in enumerate(thread):
        if role != "assistant":
            continue
        completion = " " + text.strip()
        budget = max_length - n_tail - len(tokenizer(completion)["input_ids"])
        for start in [j for j in range(i) if thread[j][0] == "prompter"]:  # oldest turns go first
            if sum(sizes[start:i]) <= budget:
                examples.append({"prompt": format_chat(thread[start:i]), "completion": completion,
                                 "dropped_turns": start})
                break  # if no start fits, the last human turn + reply alone are too long: left out
    return examples


#: A reply ends before any turn marker: the model inventing the user's turn, or a second reply.
STOP_STRINGS: tuple[str, ...] = (HUMAN, ASSISTANT)


def fit_history(turns: Thread, tokenizer, max_tokens: int) -> Thread:
    """Drop the oldest exchanges until the prompt fits in ``max_tokens`` tokens (by
    :func:`to_examples`, for an empty reply); the user's new message is always kept."""
    reply_tokens = len(tokenizer(" ")["input_ids"]) + 1
    examples = to_examples([*turns, ("assistant", "")], tokenizer, max_tokens + reply_tokens)
    last = [ex["dropped_turns"] for ex in examples
            if ex["prompt"] == format_chat(turns[ex["dropped_turns"]:])]
    return list(turns[last[-1]:]) if last else list(turns[-1:])


def with_system(turns: Thread, system: str | None) -> Thread:
    """``turns`` with a system prompt where training put one (:func:`conversation_to_rows`):
    its text and a blank line before the first user message."""
    if not (system or "").strip() or not turns:
        return list(turns)
    return [(turns[0][0], f"{system.strip()}\n\n{turns[0][1]}"), *turns[1:]]


def sampling_kwargs(temperature: float = 0.0) -> dict:
    """``generate`` keywords: greedy at temperature 0, otherwise sampling at that temperature."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    return {"do_sample": True, "temperature": temperature} if temperature > 0 else {}


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
    """The reply to ``turns`` (ending with the user's message), yielded as it grows and cut at EOS
    or a stop string; text that may begin a stop string is held back, and closing the generator
    stops the generation thread."""
    from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

    from phi2kit.generation import cut_at_stop, inference  # torch: not for `phi2kit --help`

    cancelled = threading.Event()

    class _Cancelled(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs) -> bool:
            return cancelled.is_set()

    if not turns or turns[-1][0] != "prompter":
        raise ValueError("the history must end with the user's (prompter) message")
    limit = getattr(model.config, "max_position_embeddings", 2048) - max_new_tokens
    prompt = format_chat(fit_history(turns, tokenizer, limit))
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


def load_chat_model(
    profile: str = "auto",
    *,
    adapter: str | None = None,
    model: str | None = None,
    quantize_4bit: bool = False,
):
    """``(model, tokenizer)`` for chatting: the profile's base plus an ``adapter`` folder, or
    a merged ``model`` folder; the base in nf4 with ``quantize_4bit`` (as QLoRA trained it)."""
    from phi2kit.models import load_model, load_tokenizer
    from phi2kit.profiles import get_profile

    prof = get_profile(profile)
    net = load_model(prof, quantize_4bit=quantize_4bit, source=model)
    if adapter:
        from peft import PeftModel

        net = PeftModel.from_pretrained(net, adapter)
    net.eval()
    tokenizer = load_tokenizer(prof, padding_side="left")
    return net, tokenizer

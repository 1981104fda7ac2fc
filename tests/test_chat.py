"""The chat demo: stop strings cut a turn, history is kept, the CLI reads scripted stdin."""

import argparse
import importlib.util
import io

import pytest

from phi2kit.app import build_app, make_chat_fn
from phi2kit.chat import (
    ChatSession,
    add_chat_parser,
    chat_reply,
    fit_history,
    run_chat,
    to_turns,
)
from phi2kit.data.oasst import format_chat
from phi2kit.generation import generate

QUESTION = "Where does the otter live?"


def test_stop_string_cuts_the_invented_turn(tiny_model, tiny_tokenizer):
    turns = [("prompter", QUESTION)]
    free = generate(tiny_model, tiny_tokenizer, [format_chat(turns)], max_new_tokens=60)
    assert "### Human:" in free.texts[0]  # the base model invents the user's next turn
    reply = chat_reply(tiny_model, tiny_tokenizer, turns, max_new_tokens=60)
    assert "### Human" not in reply and reply
    assert free.texts[0].startswith(" " + reply)


def test_reply_needs_a_user_message_last(tiny_model, tiny_tokenizer):
    with pytest.raises(ValueError, match="prompter"):
        chat_reply(tiny_model, tiny_tokenizer, [("prompter", "Hi"), ("assistant", "Hello")])


def test_session_keeps_history(tiny_model, tiny_tokenizer):
    session = ChatSession(tiny_model, tiny_tokenizer, max_new_tokens=24)
    first = session.send(QUESTION)
    second = session.send("Can you keep it short?")
    assert session.turns == [
        ("prompter", QUESTION),
        ("assistant", first),
        ("prompter", "Can you keep it short?"),
        ("assistant", second),
    ]
    # the second reply saw the first exchange: it equals a reply to the whole history
    assert second == chat_reply(tiny_model, tiny_tokenizer, session.turns[:3], max_new_tokens=24)
    session.reset()
    assert session.turns == []


def test_app_chat_fn_uses_gradio_history(tiny_model, tiny_tokenizer):
    respond = make_chat_fn(tiny_model, tiny_tokenizer, max_new_tokens=24)
    history = [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": "Rivers."}]
    reply = respond("Is that true for all of them?", history)
    turns = [
        ("prompter", QUESTION),
        ("assistant", "Rivers."),
        ("prompter", "Is that true for all of them?"),
    ]
    assert isinstance(reply, str) and reply
    assert reply == chat_reply(tiny_model, tiny_tokenizer, turns, max_new_tokens=24)
    assert respond("Is that true for all of them?", [[QUESTION, "Rivers."]]) == reply


def test_to_turns_reads_every_history_form():
    ours = [("prompter", "a"), ("assistant", "b")]
    assert to_turns(ours) == ours
    assert (
        to_turns([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]) == ours
    )
    assert to_turns([["a", "b"], ["c", None]]) == [*ours, ("prompter", "c")]
    assert to_turns(None) == []
    with pytest.raises(ValueError, match="user/assistant"):
        to_turns([{"role": "system", "content": "x"}])


def test_fit_history_drops_oldest_exchanges(tiny_tokenizer):
    turns = [("prompter", "q1 " * 20), ("assistant", "a1 " * 20), ("prompter", "q2")]
    assert fit_history(turns, tiny_tokenizer, 1000) == turns
    assert fit_history(turns, tiny_tokenizer, 10) == [("prompter", "q2")]


def _chat_args(*argv):
    parser = argparse.ArgumentParser(prog="phi2kit")
    add_chat_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["chat", "--profile", "tiny", "--max-new-tokens", "16", *argv])


def test_cli_reads_scripted_stdin_until_exit(tiny_model, tiny_tokenizer):
    stdin = io.StringIO(f"{QUESTION}\n\nCan you keep it short?\nexit\nnever read\n")
    stdout = io.StringIO()
    assert run_chat(_chat_args(), stdin=stdin, stdout=stdout) == 0
    lines = stdout.getvalue().splitlines()
    assert len(lines) == 2 and all(line.startswith("assistant> ") for line in lines)
    session = ChatSession(tiny_model, tiny_tokenizer, max_new_tokens=16)
    expected = [session.send(QUESTION), session.send("Can you keep it short?")]
    assert [line.removeprefix("assistant> ") for line in lines] == expected


def test_cli_stops_at_end_of_input(tmp_path):
    stdout = io.StringIO()
    assert run_chat(_chat_args(), stdin=io.StringIO(QUESTION), stdout=stdout) == 0
    assert stdout.getvalue().count("assistant> ") == 1


def test_cli_refuses_adapter_and_model_together():
    with pytest.raises(SystemExit):
        _chat_args("--adapter", "a", "--model", "b")


@pytest.mark.skipif(importlib.util.find_spec("gradio") is not None, reason="gradio installed")
def test_app_without_gradio_says_how_to_install(tiny_model, tiny_tokenizer):
    with pytest.raises(ImportError, match=r"phi2kit\[app\]"):
        build_app(tiny_model, tiny_tokenizer)

"""The chat demo: stop strings cut a turn, history is kept, replies stream, the CLI reads
scripted stdin and works in a real terminal (a pseudo-terminal)."""

import argparse
import importlib.util
import io
import json
import socket
import sys
import time

import pytest
import torch

from phi2kit.chat import (
    _held_back,
    fit_history,
    format_chat,
    sampling_kwargs,
    stream_reply,
)
from phi2kit.commands.app import add_app_parser, describe_model, make_chat_fn, to_turns
from phi2kit.commands.chat import add_chat_parser, run_chat
from phi2kit.generation import generate

QUESTION = "Where does the otter live?"


def chat_reply(model, tokenizer, turns, **settings):
    """The whole reply: the last value :func:`stream_reply` yields."""
    *_, reply = stream_reply(model, tokenizer, turns, **settings)
    return reply


def test_stop_string_cuts_the_invented_turn(tiny_model, tiny_tokenizer):
    turns = [("prompter", QUESTION)]
    free = generate(tiny_model, tiny_tokenizer, [format_chat(turns)], max_new_tokens=60)
    assert "### Human:" in free.texts[0]  # the base model invents the user's next turn
    reply = chat_reply(tiny_model, tiny_tokenizer, turns, max_new_tokens=60)
    assert "### Human" not in reply and reply
    assert free.texts[0].startswith(" " + reply)


def test_a_reply_is_cut_at_either_turn_marker():
    from phi2kit.chat import STOP_STRINGS
    from phi2kit.generation import cut_at_stop

    for marker in ("### Human:", "### Assistant:"):  # a second reply is an invented turn too
        assert cut_at_stop(f"Mostly, yes.\n{marker} And", STOP_STRINGS) == ("Mostly, yes.", True)


def test_reply_needs_a_user_message_last(tiny_model, tiny_tokenizer):
    with pytest.raises(ValueError, match="prompter"):
        chat_reply(tiny_model, tiny_tokenizer, [("prompter", "Hi"), ("assistant", "Hello")])


def test_stream_grows_to_the_same_reply(tiny_model, tiny_tokenizer):
    turns = [("prompter", QUESTION)]
    pieces = list(stream_reply(tiny_model, tiny_tokenizer, turns, max_new_tokens=60))
    assert len(pieces) > 2  # it streams
    assert all(
        b.startswith(a) and len(b) > len(a) for a, b in zip(pieces, pieces[1:], strict=False)
    )
    assert pieces[-1] == chat_reply(tiny_model, tiny_tokenizer, turns, max_new_tokens=60)
    # the base model goes on to invent "### Human:": no piece of it ever reaches the screen
    assert not any("#" in piece for piece in pieces)


def test_stream_without_stop_strings_shows_the_invented_turn(tiny_model, tiny_tokenizer):
    turns = [("prompter", QUESTION)]
    *_, free = stream_reply(tiny_model, tiny_tokenizer, turns, max_new_tokens=60, stop_strings=())
    assert "### Human:" in free
    assert free.startswith(chat_reply(tiny_model, tiny_tokenizer, turns, max_new_tokens=60))


def test_closing_the_stream_stops_generation(tiny_model, tiny_tokenizer):
    turns = [("prompter", QUESTION)]
    *_, full = stream_reply(tiny_model, tiny_tokenizer, turns, max_new_tokens=200, stop_strings=())
    steps = []

    def slow_step(*args):  # 0.1 s a token, so the reader closes the stream early on
        steps.append(1)
        time.sleep(0.1)

    hook = tiny_model.register_forward_hook(slow_step)
    try:
        stream = stream_reply(
            tiny_model, tiny_tokenizer, turns, max_new_tokens=200, stop_strings=()
        )
        first = next(stream)
        stream.close()  # the Stop button: the generate thread is told to stop, and joined
        after_close = len(steps)
        time.sleep(0.5)
    finally:
        hook.remove()
    assert full.startswith(first) and len(first) < len(full)
    full_steps = len(tiny_tokenizer(full).input_ids)
    assert after_close < full_steps / 2, (after_close, full_steps)
    assert len(steps) == after_close  # nothing runs on in the background


def test_a_failing_generation_is_raised_not_waited_for(tiny_tokenizer):
    class Broken:
        config = type("Config", (), {"max_position_embeddings": 64})()
        training = False  # a model's mode: stream_reply generates in eval mode

        def eval(self):
            return self

        def train(self, mode=True):
            return self

        def parameters(self):
            yield torch.zeros(1)

        def generate(self, **kwargs):
            raise RuntimeError("CUDA out of memory (pretend)")

    with pytest.raises(RuntimeError, match="out of memory"):
        list(stream_reply(Broken(), tiny_tokenizer, [("prompter", QUESTION)]))


def test_held_back_is_a_stop_string_prefix():
    assert _held_back("Hello\n###", ["### Human:"]) == 3
    assert _held_back("Hello ### Hu", ["### Human:"]) == 6
    assert _held_back("Hello #1", ["### Human:"]) == 0
    assert _held_back("anything", []) == 0


def test_temperature_samples_and_zero_is_greedy(tiny_model, tiny_tokenizer):
    assert sampling_kwargs(0.0) == {}
    assert sampling_kwargs(0.7) == {"do_sample": True, "temperature": 0.7}
    with pytest.raises(ValueError, match="temperature"):
        sampling_kwargs(-1)
    turns = [("prompter", QUESTION)]
    greedy = chat_reply(tiny_model, tiny_tokenizer, turns, max_new_tokens=24)
    replies = set()
    for seed in range(4):
        torch.manual_seed(seed)
        replies.add(
            chat_reply(tiny_model, tiny_tokenizer, turns, max_new_tokens=24, temperature=1.5)
        )
    assert len(replies) > 1 and replies != {greedy}


def test_app_chat_fn_streams_with_gradio_history(tiny_model, tiny_tokenizer):
    respond = make_chat_fn(tiny_model, tiny_tokenizer, max_new_tokens=24)
    history = [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": "Rivers."}]
    turns = [
        ("prompter", QUESTION),
        ("assistant", "Rivers."),
        ("prompter", "Is that true for all of them?"),
    ]
    expected = chat_reply(tiny_model, tiny_tokenizer, turns, max_new_tokens=24)
    *_, reply = respond("Is that true for all of them?", history)
    assert isinstance(reply, str) and reply and reply == expected
    # Gradio 6 passes each content as a list of parts; older Gradio passed pairs
    parts = [{**m, "content": [{"type": "text", "text": m["content"]}]} for m in history]
    assert list(respond("Is that true for all of them?", parts))[-1] == expected
    # the settings panel's values: a shorter limit gives a prefix of the reply
    *_, short = respond("Is that true for all of them?", history, 2, 0.0, True)
    assert expected.startswith(short) and len(short) < len(expected)
    assert list(respond("  ", history)) == ["(type a message)"]  # the API can send an empty one


def test_app_says_which_model_and_adapter():
    line = describe_model("t4", base="microsoft/phi-2", adapter="out/adapter", quantize_4bit=True)
    assert "`microsoft/phi-2`" in line and "`t4`, nf4" in line and "`out/adapter`" in line
    assert "No adapter" in describe_model("tiny", base=None, adapter=None)


def test_to_turns_reads_every_history_form():
    ours = [("prompter", "a"), ("assistant", "b")]
    assert (
        to_turns([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]) == ours
    )
    with pytest.raises(ValueError, match="cannot read"):
        to_turns([["a", "b"]])  # Gradio 5's (user, bot) pairs: Gradio 6 sends messages
    assert to_turns(None) == []
    gradio6 = [{"role": "user", "content": [{"type": "text", "text": "a"}, {"path": "x.png"}]}]
    assert to_turns(gradio6) == [("prompter", "a")]
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
    first = chat_reply(tiny_model, tiny_tokenizer, [("prompter", QUESTION)], max_new_tokens=16)
    # the second reply saw the first exchange: it is the reply to the whole history
    history = [("prompter", QUESTION), ("assistant", first), ("prompter", "Can you keep it short?")]
    second = chat_reply(tiny_model, tiny_tokenizer, history, max_new_tokens=16)
    assert [line.removeprefix("assistant> ") for line in lines] == [first, second]


def test_a_system_prompt_goes_where_training_put_it(tiny_tokenizer, monkeypatch):
    """--system: its text and a blank line before the first user message, the prompt that
    training built from a chat opening with a system message (lesson 06, phi2kit train chat);
    in the terminal chat and in the app's chat function alike."""
    from phi2kit.chat import build_threads, conversation_to_rows, to_examples, with_system

    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": QUESTION},
            {"role": "assistant", "content": "By rivers."}, {"role": "user", "content": "Why?"},
            {"role": "assistant", "content": "Fish."}]  # fmt: skip
    (thread,) = build_threads(conversation_to_rows(chat, 0))
    trained = [ex["prompt"] for ex in to_examples(thread, tiny_tokenizer, 256)]
    turns = [("prompter", QUESTION), ("assistant", "By rivers."), ("prompter", "Why?")]
    assert format_chat(with_system(turns[:1], "Be brief.")) == trained[0]
    assert format_chat(with_system(turns, "Be brief.")) == trained[1]
    assert with_system(turns, None) == with_system(turns, " \n") == turns

    seen = []  # the turns each reply is generated from
    fake = lambda model, tokenizer, turns, **kw: (seen.append(turns), iter(["ok"]))[1]  # noqa: E731
    monkeypatch.setattr("phi2kit.commands.chat.stream_reply", fake)
    monkeypatch.setattr("phi2kit.commands.chat.load_for_command", lambda args: (0, 0, False))
    stdin = io.StringIO(f"{QUESTION}\nWhy?\n")
    assert run_chat(_chat_args("--system", "Be brief."), stdin=stdin, stdout=io.StringIO()) == 0
    assert seen[1] == [("prompter", f"Be brief.\n\n{QUESTION}"), ("assistant", "ok"),
                       ("prompter", "Why?")]  # fmt: skip
    monkeypatch.setattr("phi2kit.commands.app.stream_reply", fake)
    list(make_chat_fn(None, None, system="Be brief.")(QUESTION, []))
    assert seen[-1] == [("prompter", f"Be brief.\n\n{QUESTION}")]


def test_cli_stops_at_end_of_input(tmp_path):
    stdout = io.StringIO()
    assert run_chat(_chat_args(), stdin=io.StringIO(QUESTION), stdout=stdout) == 0
    assert stdout.getvalue().count("assistant> ") == 1


def test_the_command_prints_no_library_notes(tmp_path):
    """From a shell, in 4-bit (bitsandbytes loads): the reply on stdout, nothing on stderr (no
    note about bitsandbytes' optional ``kernels``, no transformers deprecation warning)."""
    import subprocess

    proc = subprocess.run([sys.executable, "-m", "phi2kit.commands.main", "chat", "--profile",
                           "tiny", "--4bit"],
                          input=QUESTION, capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("assistant> ") and len(proc.stdout.strip()) > 11, proc.stdout
    assert proc.stderr.strip() == "", proc.stderr[-2000:]


def test_cli_in_a_pseudo_terminal(tiny_model, tiny_tokenizer):
    # `phi2kit chat` as a person uses it: a real terminal, a prompt, a typed line, the reply
    pexpect = pytest.importorskip("pexpect")
    argv = ["-m", "phi2kit.commands.main", "chat", "--profile", "tiny", "--max-new-tokens", "16"]
    child = pexpect.spawn(sys.executable, argv, encoding="utf-8", timeout=120)
    try:
        child.expect_exact("'exit' or Ctrl-D quits.")
        child.expect_exact("you> ")
        child.sendline(QUESTION)
        child.expect_exact("assistant> ")
        child.expect_exact("you> ")  # the next prompt comes once the reply is complete
        reply = child.before.strip()
        child.sendline("exit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
    turns = [("prompter", QUESTION)]
    assert reply == chat_reply(tiny_model, tiny_tokenizer, turns, max_new_tokens=16)


def test_cli_refuses_adapter_and_model_together():
    with pytest.raises(SystemExit):
        _chat_args("--adapter", "a", "--model", "b")


# --- Bad input from the shell: one line naming the value and the fix, exit code 2 ----------


def _app_args(*argv):
    parser = argparse.ArgumentParser(prog="phi2kit")
    add_app_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["app", "--profile", "tiny", *argv])


def _one_error_line(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"phi2kit {command}: error: ") and "\n" not in err, err
    return err


@pytest.mark.parametrize("command", ["chat", "app"])
def test_missing_adapter_folder_is_one_line_exit_2(tmp_path, capsys, command):
    from phi2kit.commands.app import run_app

    missing = str(tmp_path / "no-such-adapter")
    if command == "chat":
        code = run_chat(_chat_args("--adapter", missing), stdin=io.StringIO(QUESTION))
    else:
        code = run_app(_app_args("--adapter", missing))
    assert code == 2
    err = _one_error_line(capsys, command)
    assert f"--adapter {missing}: no such folder" in err and "outputs/06_chat/adapter" in err
    assert "RUN/adapter of `phi2kit train chat --output-dir RUN`" in err


@pytest.mark.parametrize(
    "argv, said",
    [
        (["--model", "MISSING"], "--model MISSING: no such folder; pass a merged model folder"),
        (["--max-new-tokens", "0"], "--max-new-tokens 0: must be at least 1"),
        (["--temperature", "-1"], "--temperature -1: must be 0 (greedy) or more"),
        (["--temperature", "nan"], "--temperature nan: must be 0 (greedy) or more"),
        (["--model", "ADAPTER"], "--model ADAPTER: an adapter, not a merged model; pass it as "
                                 "--adapter"),
    ],
)
def test_bad_model_flags_are_one_line_exit_2(tmp_path, capsys, argv, said):
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text('{"task_type": "CAUSAL_LM"}')
    names = {"MISSING": str(tmp_path / "nope"), "ADAPTER": str(tmp_path / "adapter")}
    argv = [names.get(a, a) for a in argv]
    for name, value in names.items():
        said = said.replace(name, value)
    assert run_chat(_chat_args(*argv), stdin=io.StringIO(QUESTION)) == 2
    err = _one_error_line(capsys, "chat")
    assert said in err and "06_chat/adapter" not in err, err


def test_chat_refuses_a_classification_adapter(tmp_path, capsys):
    # notebook 03's adapter: PEFT writes task_type SEQ_CLS; chatting with it is nonsense
    adapter = tmp_path / "03_adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"task_type": "SEQ_CLS", "r": 16}')
    stdout = io.StringIO()
    assert run_chat(_chat_args("--adapter", str(adapter)), io.StringIO(QUESTION), stdout) == 2
    assert stdout.getvalue() == ""  # nothing loaded, nothing said
    err = _one_error_line(capsys, "chat")
    assert "SEQ_CLS" in err and "cannot chat" in err and "CAUSAL_LM" in err


def test_folder_without_adapter_config_is_refused(tmp_path, capsys):
    assert run_chat(_chat_args("--adapter", str(tmp_path)), stdin=io.StringIO(QUESTION)) == 2
    assert "no adapter_config.json" in _one_error_line(capsys, "chat")
    (tmp_path / "adapter").mkdir()  # a `phi2kit train` run folder: its adapter is inside
    (tmp_path / "adapter" / "adapter_config.json").write_text('{"task_type": "CAUSAL_LM"}')
    assert run_chat(_chat_args("--adapter", str(tmp_path)), stdin=io.StringIO(QUESTION)) == 2
    assert f"a run folder; pass its adapter, --adapter {tmp_path / 'adapter'}" in _one_error_line(
        capsys, "chat")
    config = str(tmp_path / "adapter" / "adapter_config.json")  # the file, not its folder
    assert run_chat(_chat_args("--adapter", config), stdin=io.StringIO(QUESTION)) == 2
    assert f"a file; pass the folder that holds it, --adapter {tmp_path / 'adapter'}" in (
        _one_error_line(capsys, "chat"))
    headlines = tmp_path / "my_headlines.csv"  # a file that is no part of an adapter
    headlines.write_text("positive,Sales rose\n")
    assert run_chat(_chat_args("--adapter", str(headlines)), stdin=io.StringIO(QUESTION)) == 2
    said = _one_error_line(capsys, "chat")
    assert f"--adapter {headlines}: a file, not a folder; pass a chat adapter" in said, said


def test_app_on_a_port_in_use_is_one_line_exit_2(capsys):
    import socket

    from phi2kit.commands.app import run_app

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert run_app(_app_args("--port", str(port))) == 2
    err = _one_error_line(capsys, "app")
    assert f"--port {port}" in err and f"--port {port + 1}" in err
    assert run_app(_app_args("--port", "99999")) == 2  # was an OverflowError traceback
    assert "--port 99999: a port is 1 to 65535" in _one_error_line(capsys, "app")
    assert run_app(_app_args("--port", "0")) == 2  # served on "port 0", then a traceback
    assert "--port 0: a port is 1 to 65535, e.g. --port 7860" in _one_error_line(capsys, "app")
    # an address that is not this machine's (TEST-NET-1, never assigned) is the host's fault
    assert run_app(_app_args("--host", "192.0.2.1", "--port", "7860")) == 2
    assert "--host 192.0.2.1: not an address of this machine" in _one_error_line(capsys, "app")
    assert run_app(_app_args("--host", "no such host", "--port", "7860")) == 2
    assert "--host no such host: not an address" in _one_error_line(capsys, "app")


@pytest.mark.parametrize("command", ["chat", "app"])
def test_profile_errors_speak_shell_words(monkeypatch, capsys, command):
    from phi2kit.commands.main import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with socket.socket() as free:  # a port nothing listens on: the profile is the error
        free.bind(("127.0.0.1", 0))
        port = str(free.getsockname()[1])
    assert main([command, "--profile", "t4", *(["--port", port] if command == "app" else [])]) == 2
    err = _one_error_line(capsys, command)
    assert "--profile tiny" in err and "PROFILE=" not in err and "Colab" not in err


def test_app_without_gradio_is_one_line_exit_2(capsys, monkeypatch):
    from phi2kit.commands.app import run_app

    find_spec = importlib.util.find_spec  # as if the "app" extra were not installed
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "gradio" else find_spec(name, *a))
    assert run_app(_app_args()) == 2
    assert 'pip install "phi2kit[app]"' in _one_error_line(capsys, "app")


@pytest.mark.parametrize("command", ["chat", "app"])
def test_an_adapter_trained_on_another_task_is_noted(tmp_path, capsys, monkeypatch, command):
    # `phi2kit train sentiment` writes run.json beside its adapter: a causal-LM adapter that
    # answers with a label; chat and app load it, saying so first
    import phi2kit.commands.chat as chat_command
    from phi2kit.commands.app import run_app

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"task_type": "CAUSAL_LM"}')
    (tmp_path / "run.json").write_text('{"task": "sentiment"}')
    loaded = []

    def stop_after_note():
        loaded.append(capsys.readouterr().err)
        raise SystemExit(0)  # the note came before any model would load

    monkeypatch.setattr("phi2kit.logs.quiet_command", stop_after_note)
    with pytest.raises(SystemExit):
        if command == "chat":
            run_chat(_chat_args("--adapter", str(adapter)), stdin=io.StringIO(QUESTION))
        else:
            run_app(_app_args("--adapter", str(adapter)))
    assert loaded and "trained by `phi2kit train sentiment`" in loaded[0], loaded
    assert loaded[0].startswith("phi2kit: note: --adapter ") and loaded[0].count("\n") == 1
    for task in ("chat", "dpo"):
        (tmp_path / "run.json").write_text(json.dumps({"task": task}))
        assert chat_command.adapter_note(adapter) is None
    (tmp_path / "run.json").unlink()  # a notebook's adapter: no run.json, nothing to say
    assert chat_command.adapter_note(adapter) is None


@pytest.mark.parametrize(("note", "flag", "nf4"), [
    ({"base_4bit": True}, [], True),  # a QLoRA adapter: its nf4 base, said on stderr
    ({"base_4bit": True}, ["--no-4bit"], False),
    ({"base_4bit": False}, [], False),
    (None, [], False),  # a notebook's adapter without a note: full precision, as before
    (None, ["--4bit"], True),
])  # fmt: skip
def test_the_base_is_loaded_as_the_adapter_was_trained(tmp_path, capsys, monkeypatch, note,
                                                       flag, nf4):  # fmt: skip
    import phi2kit.commands.chat as chat_command

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"task_type": "CAUSAL_LM"}')
    if note is not None:
        (adapter / "phi2kit_adapter.json").write_text(json.dumps(note))
    asked = []

    def load(profile, *, adapter, model, quantize_4bit):
        asked.append(quantize_4bit)
        raise SystemExit(0)  # what would load is all this test needs

    monkeypatch.setattr(chat_command, "load_chat_model", load)
    with pytest.raises(SystemExit):
        run_chat(_chat_args("--adapter", str(adapter), *flag), stdin=io.StringIO(QUESTION))
    assert asked == [nf4]
    said = capsys.readouterr().err
    assert ("trained on the nf4 base" in said) == (nf4 and not flag), said

"""Hub push: opt-in, private by default, token from the environment, never shown.

No network: huggingface_hub's ``HfApi`` is replaced by a recorder.
"""

from __future__ import annotations

import logging
import sys
import traceback
import types

import pytest

from phi2kit.commands import hub
from phi2kit.commands.train import main

# Built at run time so that no token-shaped string sits in the repository.
TOKEN = "hf_" + "Zq9xW2" * 6


class FakeApi:
    """Records what ``push_adapter`` asks of the Hub; ``fail`` makes the upload raise."""

    calls: list[tuple[str, dict]] = []
    fail: Exception | None = None

    def __init__(self, token=None):
        FakeApi.calls.append(("init", {"token": token}))

    def create_repo(self, repo_id, **kwargs):
        FakeApi.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, **kwargs):
        FakeApi.calls.append(("upload_folder", kwargs))
        if FakeApi.fail is not None:
            raise FakeApi.fail


@pytest.fixture()
def fake_hub(monkeypatch):
    import huggingface_hub

    FakeApi.calls, FakeApi.fail = [], None
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    return FakeApi


@pytest.fixture()
def no_token(monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setitem(sys.modules, "google.colab", None)  # not on Colab: import fails


def fake_colab(monkeypatch, get):
    userdata = types.SimpleNamespace(get=get)
    colab = types.ModuleType("google.colab")
    colab.userdata = userdata
    monkeypatch.setitem(sys.modules, "google", types.ModuleType("google"))
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    monkeypatch.setitem(sys.modules, "google.colab.userdata", userdata)


def adapter_folder(tmp_path):
    folder = tmp_path / "adapter"
    folder.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors", "optimizer.pt"):
        (folder / name).write_text("{}")
    return folder


# --- Where the token comes from ----------------------------------------------------------


def test_token_from_environment_else_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_TOKEN", f"  {TOKEN}\n")
    assert hub.require_token() == TOKEN
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setitem(sys.modules, "google.colab", None)  # not on Colab
    with pytest.raises(hub.HubError, match="HF_TOKEN"):
        hub.require_token()


def test_redact_removes_the_token_and_token_shaped_strings():
    text = f"401 Unauthorized for Bearer {TOKEN}; other hf_{'a1' * 10}"
    clean = hub.redact(text, TOKEN)
    assert TOKEN not in clean and "hf_a1" not in clean
    assert clean.startswith("401 Unauthorized for Bearer ***")
    assert hub.redact("nothing secret", None) == "nothing secret"


# --- Pushing -------------------------------------------------------------------------------


def test_push_is_private_by_default_and_uploads_no_pickles(tmp_path, fake_hub, caplog):
    folder = adapter_folder(tmp_path)
    with caplog.at_level(logging.DEBUG):
        url = hub.push_adapter(folder, "me/sentiment-lora", token=TOKEN)
    assert url == "https://huggingface.co/me/sentiment-lora"
    calls = dict(fake_hub.calls)
    assert calls["init"] == {"token": TOKEN}
    assert calls["create_repo"]["private"] is True
    patterns = calls["upload_folder"]["allow_patterns"]
    assert "*.safetensors" in patterns and not any(p.endswith((".pt", ".bin")) for p in patterns)
    assert calls["upload_folder"]["folder_path"] == str(folder)
    assert TOKEN not in caplog.text and "private" in caplog.text


def test_public_only_when_asked(tmp_path, fake_hub):
    hub.push_adapter(adapter_folder(tmp_path), "me/x", token=TOKEN, private=False)
    assert dict(fake_hub.calls)["create_repo"]["private"] is False


def test_refuses_a_folder_that_is_not_a_finished_adapter(tmp_path, fake_hub):
    with pytest.raises(hub.HubError, match="not a finished adapter"):
        hub.push_adapter(tmp_path, "me/x", token=TOKEN)
    assert fake_hub.calls == []


def test_a_hub_error_never_shows_the_token(tmp_path, fake_hub):
    fake_hub.fail = PermissionError(f"403 Forbidden: token {TOKEN} cannot write to me/x")
    with pytest.raises(hub.HubError) as exc:
        hub.push_adapter(adapter_folder(tmp_path), "me/x", token=TOKEN)
    err = exc.value
    assert "403 Forbidden" in str(err) and TOKEN not in str(err) and TOKEN not in repr(err)
    # The original exception is neither chained nor kept as context: a traceback of the
    # HubError cannot print it.
    assert err.__cause__ is None and err.__context__ is None
    assert TOKEN not in "".join(traceback.format_exception(err))


# --- The CLI -------------------------------------------------------------------------------


def test_train_push_without_token_fails_before_training(tmp_path, capsys, fake_hub, no_token):
    out = tmp_path / "run"
    argv = ["sentiment", "--profile", "tiny", "--output-dir", str(out), "--push-to-hub", "me/x"]
    assert main(argv) == 2
    assert "HF_TOKEN" in capsys.readouterr().err
    assert not out.exists() and fake_hub.calls == []


def test_train_pushes_privately_and_never_prints_the_token(tmp_path, capsys, fake_hub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    fake_hub.fail = RuntimeError(f"500 while uploading with {TOKEN}")
    out = tmp_path / "run"
    argv = ["sentiment", "--profile", "tiny", "--output-dir", str(out), "--steps", "2"]
    argv += ["--save-every", "2", "--no-eval", "--threads", "1", "--push-to-hub", "me/x"]
    assert main(argv) == 2  # the upload failed: exit code says so
    calls = dict(fake_hub.calls)
    assert calls["create_repo"]["private"] is True
    assert calls["upload_folder"]["folder_path"] == str(out / "adapter")
    printed = capsys.readouterr()
    assert "500 while uploading" in printed.err
    assert TOKEN not in printed.out + printed.err
    written = [p.read_bytes() for p in out.rglob("*") if p.is_file()]
    assert written and not any(TOKEN.encode() in data for data in written)

    fake_hub.fail, fake_hub.calls = None, []
    argv[argv.index(str(out))] = str(tmp_path / "run2")
    assert main([*argv, "--public"]) == 0
    assert dict(fake_hub.calls)["create_repo"]["private"] is False
    assert "public" in capsys.readouterr().out

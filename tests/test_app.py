"""The demo app for real: `phi2kit app` serves, answers through gradio_client,
streams, and works in a real headless browser (the system's Chromium, driven by Playwright).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

pytest.importorskip("gradio", reason='the app extra is not installed: pip install -e ".[app]"')

from local_servers import free_port, start, stop, wait_until_serving  # noqa: E402

from phi2kit.chat import stream_reply  # noqa: E402

QUESTION = "Where does the otter live?"
MAX_NEW = 40
# Debian's chromium, Ubuntu's chromium-browser, or Google Chrome (GitHub's runners have it).
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def find_chromium() -> str | None:
    """``PHI2KIT_CHROMIUM``, or the first Chromium-family browser on ``PATH``."""
    if os.environ.get("PHI2KIT_CHROMIUM"):
        return os.environ["PHI2KIT_CHROMIUM"]
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    """The app as a user starts it, in its own process, on a free port of 127.0.0.1."""
    log = tmp_path_factory.mktemp("app") / "app.log"
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "phi2kit.commands.main",
        "app",
        "--profile",
        "tiny",
        "--port",
        str(port),
    ]
    proc = start([*argv, "--max-new-tokens", str(MAX_NEW)], log, {"GRADIO_ANALYTICS_ENABLED": "0"})
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_until_serving(url, proc, log)
        yield url
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def expected_reply():
    """The tiny base model's greedy reply, computed here without the app."""
    from phi2kit.chat import load_chat_model

    model, tokenizer = load_chat_model("tiny")
    *_, reply = stream_reply(model, tokenizer, [("prompter", QUESTION)], max_new_tokens=MAX_NEW)
    assert reply
    return reply


def test_app_answers_through_gradio_client(app_url, expected_reply):
    from gradio_client import Client

    client = Client(app_url, verbose=False)
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    params = [p["parameter_name"] for p in api["/respond"]["parameters"]]
    assert params == ["message", "max_new_tokens", "temperature", "stop_at_human"]
    assert client.predict(QUESTION, MAX_NEW, 0.0, True, api_name="/respond") == expected_reply

    job = client.submit(QUESTION, MAX_NEW, 0.0, True, api_name="/respond")
    job.result()
    streamed = [o for o in job.outputs() if o]
    assert len(streamed) > 1 and streamed[-1] == expected_reply  # the reply arrives in pieces
    assert all(b.startswith(a) for a, b in zip(streamed, streamed[1:], strict=False))

    # the settings reach the model: a 3-token reply is a prefix of the long one
    short = client.predict(QUESTION, 3, 0.0, True, api_name="/respond")
    assert short and expected_reply.startswith(short) and len(short) < len(expected_reply)

    # a value the page's sliders cannot send: the client gets the app's message, not "Error"
    from gradio_client.exceptions import AppError

    for bad, said in (((QUESTION, "many", 0.0, True), "Expected a `float`"),
                      ((QUESTION, MAX_NEW, 7.5, True), "greater than maximum value 2.0")):
        with pytest.raises(AppError, match=said):
            client.predict(*bad, api_name="/respond")


def test_app_in_a_headless_browser(app_url, expected_reply, tmp_path):
    browser = find_chromium()
    if browser is None:
        pytest.skip(
            "no Chromium on PATH (apt-get install chromium, or set PHI2KIT_CHROMIUM); "
            ".ci/run installs it"
        )
    from playwright.sync_api import expect, sync_playwright

    shot = tmp_path / "app.png"
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"),  # a fresh user-data-dir
            executable_path=browser,
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1100, "height": 800},
        )
        try:
            page = context.new_page()
            # not "networkidle": the page keeps a queue connection open
            page.goto(app_url, wait_until="domcontentloaded")
            box = page.locator("textarea").first
            expect(box).to_be_visible(timeout=60_000)
            expect(page.get_by_text("Model:", exact=False).first).to_be_visible()
            expect(page.get_by_text("Generation settings").first).to_be_visible()
            box.fill(QUESTION)
            box.press("Enter")
            bot = page.locator('[data-testid="bot"]').last
            expect(bot).to_have_text(expected_reply, timeout=120_000)
            expect(page.locator('[data-testid="user"]').last).to_have_text(QUESTION)
            # the stream has ended when the Stop button gives way to Submit again
            expect(page.locator('[data-testid="submit-button"]').first).to_be_visible()
            page.screenshot(path=str(shot), full_page=True)
        finally:
            context.close()
    assert shot.stat().st_size > 10_000
    if os.environ.get("PHI2KIT_ARTIFACTS"):  # CI keeps the screenshot
        Path(os.environ["PHI2KIT_ARTIFACTS"]).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(os.environ["PHI2KIT_ARTIFACTS"]) / "app.png")

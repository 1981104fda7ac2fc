"""JupyterLab as a learner opens the course: `jupyter lab` in the repository serves the
lessons and the exercises, and a kernel that the server starts runs one of them to the end.

The test talks to the server only through its REST API and its kernel websocket, as the
JupyterLab page does, and shuts the server down through the API.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

pytest.importorskip("jupyterlab", reason='JupyterLab comes with the extra: pip install ".[course]"')
websocket = pytest.importorskip("websocket")  # websocket-client, a jupyter_server dependency

from local_servers import free_port, start, stop, wait_until_serving  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = "01_baseline_inference.ipynb"
CELL_TIMEOUT = 300


class Jupyter:
    def __init__(self, port: int, token: str) -> None:
        self.base, self.token = f"http://127.0.0.1:{port}", token

    def call(self, method: str, path: str, body: dict | None = None):
        request = urllib.request.Request(
            self.base + path,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            raw = response.read()
            return response.status, (json.loads(raw) if raw.strip()[:1] in (b"{", b"[") else raw)


def _message(session: str, code: str) -> dict:
    return {
        "header": {
            "msg_id": uuid.uuid4().hex,
            "msg_type": "execute_request",
            "session": session,
            "username": "test",
            "version": "5.3",
        },
        "parent_header": {},
        "metadata": {},
        "content": {
            "code": code,
            "silent": False,
            "store_history": True,
            "user_expressions": {},
            "allow_stdin": False,
            "stop_on_error": True,
        },
        "channel": "shell",
        "buffers": [],
    }


def execute(ws, session: str, code: str) -> tuple[dict, str]:
    """Run ``code`` in the kernel; return the execute_reply content and the printed text."""
    request = _message(session, code)
    ws.send(json.dumps(request))
    reply, idle, text = None, False, []
    deadline = time.monotonic() + CELL_TIMEOUT
    while reply is None or not idle:
        ws.settimeout(max(1.0, deadline - time.monotonic()))
        msg = json.loads(ws.recv())
        if msg.get("parent_header", {}).get("msg_id") != request["header"]["msg_id"]:
            continue
        kind = msg["header"]["msg_type"]
        if kind == "execute_reply":
            reply = msg["content"]
        elif kind == "status" and msg["content"]["execution_state"] == "idle":
            idle = True
        elif kind == "stream":
            text.append(msg["content"]["text"])
        elif kind == "error":
            text.append("\n".join(msg["content"]["traceback"]))
    return reply, "".join(text)


@pytest.fixture()
def jupyter(tmp_path):
    port, token = free_port(), secrets.token_hex(16)
    log = tmp_path / "jupyter.log"
    argv = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={ROOT}",
        *(["--allow-root"] if os.geteuid() == 0 else []),  # CI containers run as root
    ]
    env = {
        "PHI2KIT_PROFILE": "tiny",
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
        "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),  # no user settings leak in
    }
    proc = start(argv, log, env)
    try:
        wait_until_serving(f"http://127.0.0.1:{port}/api/status", proc, log)
        yield Jupyter(port, token), proc, log
    finally:
        stop(proc)


def test_jupyterlab_serves_and_runs_a_notebook(jupyter):
    server, proc, log = jupyter
    status, page = server.call("GET", "/lab")
    assert status == 200 and b"JupyterLab" in page

    status, folder = server.call("GET", "/api/contents/notebooks")
    listed = {item["name"] for item in folder["content"] if item["type"] == "notebook"}
    assert {p.name for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")} <= listed
    _, folder = server.call("GET", "/api/contents/exercises")  # the README's exercises too
    listed = {item["name"] for item in folder["content"] if item["type"] == "notebook"}
    assert {p.name for p in (ROOT / "exercises").glob("[0-9][0-9]_*.ipynb")} <= listed

    path = f"notebooks/{NOTEBOOK}"
    _, model = server.call("GET", f"/api/contents/{path}")
    cells = [c for c in model["content"]["cells"] if c["cell_type"] == "code"]
    _, session = server.call(
        "POST",
        "/api/sessions",
        {"path": path, "name": NOTEBOOK, "type": "notebook", "kernel": {"name": "python3"}},
    )
    kernel = session["kernel"]["id"]
    _, kernels = server.call("GET", "/api/kernels")
    assert kernel in {k["id"] for k in kernels}  # the server started it

    ws = websocket.create_connection(
        f"ws://127.0.0.1:{server.base.rsplit(':', 1)[1]}/api/kernels/{kernel}/channels",
        header=[f"Authorization: token {server.token}"],
        timeout=60,
    )
    try:
        client_session = uuid.uuid4().hex
        _, cwd = execute(ws, client_session, "import os; print(os.getcwd())")
        assert Path(cwd.strip()) == ROOT / "notebooks"  # as if opened in JupyterLab
        # The lesson's opening cells (set-up, parameters, versions), then its profile: the
        # whole lesson runs once per profile elsewhere (nbmake, tests/test_course_t4_cpu.py).
        for i, cell in enumerate(cells[:3]):
            source = "".join(cell["source"])
            reply, text = execute(ws, client_session, source)
            assert reply["status"] == "ok", f"cell {i} of {NOTEBOOK}:\n{source}\n{text}"
        assert "phi2kit" in text  # the versions cell printed phi2kit's version
        code = "from phi2kit.profiles import get_profile; print(get_profile(PROFILE).name)"
        reply, text = execute(ws, client_session, code)
        assert reply["status"] == "ok" and text.strip() == "tiny", text
    finally:
        ws.close()

    assert server.call("POST", "/api/shutdown")[0] == 200
    proc.wait(60)  # the server stops by itself, through its own API
    assert proc.returncode == 0, log.read_text()

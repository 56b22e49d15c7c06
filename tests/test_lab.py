"""``make lab`` starts JupyterLab here too (as root, no display) and it serves a notebook."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from cvhelpers.course.lab import lab_command

ROOT = Path(__file__).resolve().parents[1]


def test_root_and_no_display_get_their_flags():
    assert "--allow-root" in lab_command(is_root=True, has_display=True)
    assert "--allow-root" not in lab_command(is_root=False, has_display=True)
    assert "--no-browser" in lab_command(is_root=False, has_display=False)
    assert lab_command(["--port", "1"], is_root=True, has_display=False)[-2:] == ["--port", "1"]
    assert lab_command(["--allow-root"], is_root=True).count("--allow-root") == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.enable_socket  # the one test that talks to a server: its own, on 127.0.0.1
@pytest.mark.allow_hosts(["127.0.0.1"])
def test_the_lab_server_comes_up_and_serves_a_notebook(tmp_path):
    pytest.importorskip("jupyterlab")
    port, token = _free_port(), "cvc-test-token"
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env.update(HOME=str(tmp_path), JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"))  # a fresh user, no display
    server = subprocess.Popen(
        [sys.executable, "-m", "cvhelpers.course.lab", "--ip", "127.0.0.1", "--port", str(port),
         f"--IdentityProvider.token={token}", "--ServerApp.port_retries=0"],
        cwd=ROOT / "notebooks", env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/api/contents/00_setup_and_data.ipynb?token={token}"
    try:
        deadline, reply = time.monotonic() + 120, None
        while time.monotonic() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    reply = json.load(response)
                break
            except OSError:
                time.sleep(0.5)
        if reply is None:
            server.terminate()
            log = server.communicate(timeout=30)[0]
            pytest.fail(f"JupyterLab did not serve the notebook (exit {server.returncode}):\n{log[-3000:]}")
        assert reply["type"] == "notebook" and reply["content"]["cells"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/lab?token={token}", timeout=10) as page:
            assert page.status == 200 and b"JupyterLab" in page.read()
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()

"""The examples run as real tools: each --selftest serves, connects, verifies."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.engines


def run_example(*args: str) -> str:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_echo_server_selftest():
    out = run_example("examples/echo_server.py", "--selftest")
    assert "sha256 verified: True" in out


def test_echo_server_selftest_socket_engine():
    out = run_example("examples/echo_server.py", "--selftest", "--engine", "socket", "--mib", "2")
    assert "engine: socket" in out and "sha256 verified: True" in out


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_anyio_stream_selftest(backend):
    out = run_example("examples/anyio_stream.py", "--selftest", "--backend", backend)
    assert "sha256 verified: True" in out


def test_loopback_demo():
    out = run_example("examples/loopback_demo.py", "--mib", "64")
    assert "sha256 verified: True" in out


def test_bulk_sink_selftest():
    out = run_example("examples/bulk_sink.py", "--selftest")
    assert "4 senders verified: True" in out
    assert "buffers outstanding after close: 0" in out

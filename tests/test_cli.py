"""The command line: recv/send over loopback with verification, doctor dispatch."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_recv_send_verify():
    port = _free_port()
    recv = subprocess.Popen([sys.executable, "-m", "aiozcrx", "recv", "--host", "127.0.0.1",
                             "--port", str(port), "--verify"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        line = recv.stdout.readline()
        assert "listening on" in line
        send = subprocess.run([sys.executable, "-m", "aiozcrx", "send", "--port", str(port),
                               "--mib", "64"], capture_output=True, text=True, timeout=60)
        assert send.returncode == 0, send.stderr
        out, err = recv.communicate(timeout=60)
    finally:
        recv.kill()
    assert recv.returncode == 0, err
    assert "engine: " in out
    assert re.search(r"received 67108864 bytes", out)
    assert "verify: OK" in out


def test_doctor_and_nic_are_dispatched():
    r = subprocess.run([sys.executable, "-m", "aiozcrx", "doctor", "--json"], capture_output=True,
                       text=True, timeout=60)
    assert r.stdout.lstrip().startswith("{"), r.stderr
    r = subprocess.run([sys.executable, "-m", "aiozcrx", "nic", "--help"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and "setup" in r.stdout

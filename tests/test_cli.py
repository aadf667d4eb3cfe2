"""The command line, as a subprocess against real loopback peers: recv/send/demo with
verification, exit statuses, one-line errors (never a traceback), options checked
before anything is bound, doctor/nic dispatch."""

from __future__ import annotations

import hashlib
import signal
import socket
import struct
import subprocess
import sys

import pytest

from peers import has_rx_queues, payload, queued_interface

AIOZCRX = [sys.executable, "-m", "aiozcrx"]
PATTERN = bytes(range(256)) * 4096  # what `aiozcrx send` repeats: 1 MiB
QIF = queued_interface()  # lo, or the guest's simulated NIC


def _start_recv(*options: str) -> tuple[subprocess.Popen[str], int, str]:
    """`aiozcrx recv` on an ephemeral loopback port, once it listens: the process,
    the port, and its engine line. ("listening on" is the last line it prints before
    a connection, so nothing is left in the pipe's buffer for communicate() to miss.)"""
    recv = subprocess.Popen([*AIOZCRX, "recv", "--host", "127.0.0.1", "--port", "0", *options],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert recv.stdout is not None
    engine, line = recv.stdout.readline(), recv.stdout.readline()
    if not engine.startswith("engine: ") or not line.startswith("listening on 127.0.0.1:"):
        recv.kill()
        raise AssertionError(f"recv did not start: {engine!r} {line!r} {recv.communicate()}")
    return recv, int(line.rsplit(":", 1)[1]), engine


def _finish(proc: subprocess.Popen[str]) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _one_line_error(stderr: str, cmd: str = "recv") -> str:
    """The command's error: its last stderr line; never a traceback."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith(f"aiozcrx {cmd}: "), stderr
    return lines[-1]


def test_recv_send_verify_reports_the_digest():
    recv, port, engine = _start_recv("--verify")
    send = subprocess.run([*AIOZCRX, "send", "--port", str(port), "--mib", "5"],
                          capture_output=True, text=True, timeout=120)
    assert send.returncode == 0, send.stderr
    out, err = _finish(recv)
    assert recv.returncode == 0, err
    assert "fallback: " in engine
    assert "received 5242880 bytes" in out
    assert f"sha256: {hashlib.sha256(PATTERN * 5).hexdigest()}\n" in out
    assert "verify: OK" in out


def test_recv_verify_finds_other_bytes():
    data = payload(7, 3 << 20)
    recv, port, _ = _start_recv("--verify")
    with socket.create_connection(("127.0.0.1", port)) as c:
        c.sendall(data)
    out, err = _finish(recv)
    assert recv.returncode == 1, err
    assert f"received {len(data)} bytes" in out
    assert f"sha256: {hashlib.sha256(data).hexdigest()}\n" in out   # what arrived, hashed right
    assert f"verify: MISMATCH: the {len(data)} bytes `aiozcrx send` sends have sha256 " \
           f"{hashlib.sha256(PATTERN * 3).hexdigest()}" in out
    assert "Traceback" not in err


@pytest.mark.parametrize("options, words", [
    (["--port", "70000"], "--port: port must be 0..65535"),
    (["--port", "http"], "--port: port must be a number"),
    (["--engine", "fast"], "--engine: invalid choice: 'fast'"),
    (["--interface", "nosuch0"], "unknown interface 'nosuch0'"),
    pytest.param(["--interface", QIF, "--queue", "4096"], f"queue 4096 out of range: {QIF} has",
                 marks=pytest.mark.skipif(not has_rx_queues(QIF), reason="no interface lists rx queues")),
    (["--queue", "3"], "--queue needs --interface"),
    (["--interface", "lo", "--queue", "-1"], "--queue: queue must be 0 or more"),
    (["--area-size", "1000"], "--area-size must be a positive multiple of the page size"),
    (["--buf-size", "3K"], "--buf-size must be a power of two"),
    (["--area-size", "lots"], "--area-size: expected a size like"),
    (["--engine", "zcrx"], "--engine zcrx needs --interface and --queue"),
    (["--host", "no-such-host.invalid"], "cannot listen on no-such-host.invalid"),
])
def test_recv_checks_options_before_it_binds(options, words):
    # the port is taken: an option checked after binding would fail on that instead
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        run = subprocess.run([*AIOZCRX, "recv", "--host", "127.0.0.1", "--port", str(port), *options],
                             capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run
    assert words in _one_line_error(run.stderr), run.stderr
    assert len(run.stderr.splitlines()) == 1, run.stderr
    assert "listening" not in run.stdout


def test_recv_engine_that_cannot_run_here_is_one_line():
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        run = subprocess.run([*AIOZCRX, "recv", "--host", "127.0.0.1", "--port", str(port),
                              "--engine", "zcrx", "--interface", "lo", "--queue", "0"],
                             capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run
    assert "engine 'zcrx' unavailable: EOPNOTSUPP: lo" in _one_line_error(run.stderr)


def test_recv_port_in_use():
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        run = subprocess.run([*AIOZCRX, "recv", "--host", "127.0.0.1", "--port", str(port)],
                             capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run
    assert _one_line_error(run.stderr) == \
        f"aiozcrx recv: cannot listen on 127.0.0.1:{port}: Address already in use"


def test_recv_peer_reset_is_one_line():
    recv, port, _ = _start_recv()
    c = socket.create_connection(("127.0.0.1", port))
    c.sendall(b"x" * 100_000)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()  # RST
    out, err = _finish(recv)
    assert recv.returncode == 1, (out, err)
    line = _one_line_error(err)
    assert "connection from 127.0.0.1:" in line and "Connection reset by peer" in line, line
    assert "received" not in out


def test_recv_ctrl_c_is_one_line():
    recv, _, _ = _start_recv()   # listening: the loop runs and its SIGINT handler is set
    recv.send_signal(signal.SIGINT)
    out, err = _finish(recv)
    assert recv.returncode == 130, (out, err)
    assert _one_line_error(err) == "aiozcrx recv: interrupted"


def test_send_without_a_receiver_is_one_line():
    with socket.create_server(("127.0.0.1", 0)) as lst:
        port = lst.getsockname()[1]
    run = subprocess.run([*AIOZCRX, "send", "--port", str(port), "--mib", "1"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1, run
    assert _one_line_error(run.stderr, "send") == \
        f"aiozcrx send: cannot connect to 127.0.0.1:{port}: Connection refused"


def test_demo_runs_from_the_installed_package():
    run = subprocess.run([*AIOZCRX, "demo", "--mib", "8"], capture_output=True, text=True,
                         timeout=120, cwd="/")
    assert run.returncode == 0, run
    assert "engine: " in run.stdout and "fallback reason: " in run.stdout
    assert "received 8388608 bytes" in run.stdout
    assert f"sha256: {hashlib.sha256(PATTERN * 8).hexdigest()}" in run.stdout
    assert "verify: OK" in run.stdout


def test_doctor_and_nic_are_dispatched():
    r = subprocess.run([*AIOZCRX, "doctor", "--json"], capture_output=True, text=True, timeout=60)
    assert r.stdout.lstrip().startswith("{"), r.stderr
    r = subprocess.run([*AIOZCRX, "nic", "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "setup" in r.stdout

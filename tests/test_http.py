"""examples/http_server.py (h11 on aiozcrx) driven by real curl, on both loops."""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("h11", reason="h11 is needed by examples/http_server.py (the test extra)")

ROOT = Path(__file__).resolve().parent.parent
CURL = shutil.which("curl")
pytestmark = [pytest.mark.engines,
              pytest.mark.skipif(CURL is None, reason="curl is not installed (apt install curl)")]


def _load_example():
    spec = importlib.util.spec_from_file_location("aiozcrx_example_http_server",
                                                  ROOT / "examples" / "http_server.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


http_server = _load_example()


async def curl(*args: str) -> tuple[str, str]:
    # subprocess.run in a thread rather than loop.subprocess_exec: uvloop spawns
    # through libuv, and on the 7.2 User-Mode Linux guest kernel that corrupts page
    # maps ("BUG: Bad page map", see docs/guest-tier.md); this works on both loops
    proc = await asyncio.to_thread(
        subprocess.run, [CURL, "--silent", "--show-error", "--max-time", "30", *args],
        capture_output=True)
    assert proc.returncode == 0, f"curl {args}: rc {proc.returncode}: {proc.stderr.decode()}"
    return proc.stdout.decode(), proc.stderr.decode()


async def serve(engine: str = "auto"):
    server, app = await http_server.start("127.0.0.1", 0, engine)
    host, port = server.sockets[0].getsockname()[:2]
    return server, app, f"http://{host}:{port}"


async def close_and_check(server) -> None:
    rx = server.receiver
    server.close()
    await asyncio.wait_for(server.wait_closed(), 10)
    assert rx.stats()["buffers_outstanding"] == 0, rx.stats()


@pytest.mark.asyncio
@pytest.mark.parametrize("engine", ["auto", "socket"])
async def test_get_root(engine):
    server, app, base = await serve(engine)
    try:
        out, _ = await curl("--write-out", "\n%{http_code}", f"{base}/")
        body, code = out.rsplit("\n", 1)
        assert code == "200"
        assert body == f"hello from aiozcrx (engine {server.receiver.engine})\n"
        assert app.requests == 1
    finally:
        await close_and_check(server)


@pytest.mark.asyncio
@pytest.mark.parametrize("engine", ["auto", "socket"])
async def test_post_8mib_sha256(engine, tmp_path):
    data = os.urandom(8 << 20)
    path = tmp_path / "body.bin"
    path.write_bytes(data)
    server, app, base = await serve(engine)
    try:
        out, _ = await curl("--data-binary", f"@{path}", f"{base}/sha256")
        assert out.strip() == hashlib.sha256(data).hexdigest()
        # and without curl's Expect: 100-continue wait path
        out, _ = await curl("-H", "Expect:", "--data-binary", f"@{path}", f"{base}/sha256")
        assert out.strip() == hashlib.sha256(data).hexdigest()
        assert server.receiver.stats()["bytes"] >= 2 * len(data)
    finally:
        await close_and_check(server)


@pytest.mark.asyncio
async def test_keep_alive_several_requests_one_connection(tmp_path):
    data = os.urandom(1 << 20)
    path = tmp_path / "body.bin"
    path.write_bytes(data)
    server, app, base = await serve()
    try:
        # curl reuses one connection for the URLs of one command line; --next lets the
        # POST options apply to the third URL only
        out, err = await curl("--verbose", "--write-out", "[%{http_code}]\n",
                              f"{base}/", f"{base}/nope",
                              "--next", "--write-out", "[%{http_code}]\n",
                              "--data-binary", f"@{path}", f"{base}/sha256")
        assert out.count("[200]") == 2 and out.count("[404]") == 1, out
        assert hashlib.sha256(data).hexdigest() in out
        assert "not found" in out
        assert app.requests == 3
        assert app.connections == 1, err
    finally:
        await close_and_check(server)


@pytest.mark.asyncio
async def test_404_and_405():
    server, _app, base = await serve()
    try:
        out, _ = await curl("--write-out", "%{http_code}", "-o", os.devnull, f"{base}/missing")
        assert out == "404"
        out, _ = await curl("--include", "-X", "DELETE", f"{base}/")
        assert out.startswith("HTTP/1.1 405 Method Not Allowed\r\n"), out
        assert "allow: get, head" in out.lower()
        out, _ = await curl("--write-out", "%{http_code}", "-o", os.devnull, f"{base}/sha256")
        assert out == "405"
    finally:
        await close_and_check(server)


@pytest.mark.asyncio
async def test_bad_request_gets_400_and_close():
    server, _app, base = await serve()
    host, port = server.sockets[0].getsockname()[:2]
    try:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        reply = await asyncio.wait_for(reader.read(), 10)   # server closes after the 400
        writer.close()
        await writer.wait_closed()
        assert reply.startswith(b"HTTP/1.1 400"), reply
    finally:
        await close_and_check(server)


def test_selftest():
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "examples/http_server.py", "--selftest"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "sha256 verified: True" in proc.stdout
    assert "buffers outstanding after close: 0" in proc.stdout

"""The drop-in loop behind the servers people run, each started with the exact line
docs/dropin.md gives, driven by real clients: curl uploads of 64 MiB (sha256
checked), a websockets client. Each server runs in its own process on a listening
socket this test made (passed down: no port races, no readiness wait), on uvloop and on
the stock loop (AIOZCRX_LOOP). The server reports what its aiozcrx Receivers got,
so a pass means the bytes really went through aiozcrx."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
MiB = 1 << 20
SERVERS = ["uvicorn-h11", "uvicorn-httptools", "hypercorn", "aiohttp"]
LOOPS = ["uvloop", "asyncio"]

pytestmark = pytest.mark.engines


def _need(module: str) -> None:
    pytest.importorskip(module, reason=f"{module} is not installed (it is in the test extra)")


def _server_modules(kind: str) -> list[str]:
    return {"uvicorn-h11": ["uvicorn", "h11"], "uvicorn-httptools": ["uvicorn", "httptools"],
            "hypercorn": ["hypercorn"], "aiohttp": ["aiohttp"], "websockets": ["websockets"]}[kind]


class Server:
    def __init__(self, kind: str, loop: str, env_extra: dict | None = None):
        for m in _server_modules(kind):
            _need(m)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        env = dict(os.environ, AIOZCRX_LOOP=loop, PYTHONPATH=HERE, DROPIN_FD=str(self.sock.fileno()),
                   **(env_extra or {}))
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "dropin_servers.py"), kind],
            pass_fds=(self.sock.fileno(),), env=env, cwd=HERE,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> str:
        if self.proc.returncode is not None:
            return self.output
        self.proc.terminate()
        try:
            out, _ = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        self.sock.close()
        self.output = out.decode(errors="replace")
        return self.output


def curl(*args: str) -> str:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed (make test installs it with scripts/ensure-apt.sh)")
    r = subprocess.run(["curl", "-sS", "--fail", "--max-time", "120", "--retry", "0", *args],
                       capture_output=True, timeout=180)
    assert r.returncode == 0, r.stderr.decode()
    return r.stdout.decode()


@pytest.fixture(scope="module")
def upload_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("upload") / "64MiB.bin"
    data = os.urandom(64 * MiB)
    path.write_bytes(data)
    return str(path), hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("kind", SERVERS)
def test_http_upload_through_the_dropin_loop(kind, loop, upload_file):
    path, want = upload_file
    srv = Server(kind, loop)
    try:
        got = curl("--data-binary", f"@{path}", "-H", "Content-Type: application/octet-stream",
                   f"{srv.url}/upload")
        stats = json.loads(curl(f"{srv.url}/stats"))
    except BaseException as exc:
        raise AssertionError(f"{exc}\n--- server output:\n{srv.stop()}") from None
    finally:
        out = srv.stop()
    assert got.strip() == want, out
    assert stats["loop"].startswith("Zcrx"), stats
    assert stats["engines"] and set(stats["engines"]) <= {"zcrx", "zcrx-copy", "uring", "socket"}, stats
    assert stats["bytes"] >= 64 * MiB, stats          # the upload came through aiozcrx
    # these servers' protocols did not opt in to views: they were given bytes
    assert stats["bytes_copied"] >= 64 * MiB, stats


async def _ws_echo(url: str) -> None:
    from websockets.asyncio.client import connect

    rnd = os.urandom(4 * MiB)
    async with connect(url, max_size=None) as ws:
        for i in range(0, len(rnd), 256 * 1024):
            chunk = rnd[i:i + 256 * 1024]
            await ws.send(chunk)
            assert await asyncio.wait_for(ws.recv(), 60) == chunk
        await ws.send("text too")
        assert await asyncio.wait_for(ws.recv(), 60) == "text too"


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("kind", ["websockets", "uvicorn-httptools", "aiohttp"])
def test_websockets_through_the_dropin_loop(kind, loop):
    _need("websockets")
    srv = Server(kind, loop)
    try:
        path = "" if kind == "websockets" else "/ws"
        asyncio.run(asyncio.wait_for(_ws_echo(f"ws://127.0.0.1:{srv.port}{path}"), 120))
    finally:
        out = srv.stop()
    assert "Traceback" not in out, out


def test_bad_settings_fail_at_once_naming_the_variable():
    env = dict(os.environ, AIOZCRX_AREA_SIZE="lots", PYTHONPATH=HERE)
    r = subprocess.run([sys.executable, "-c", "import aiozcrx; aiozcrx.new_event_loop()"],
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert "AIOZCRX_AREA_SIZE" in r.stderr
    env = dict(os.environ, AIOZCRX_ENGINE="fast")
    r = subprocess.run([sys.executable, "-c", "import aiozcrx; aiozcrx.new_event_loop()"],
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "unknown engine 'fast'" in r.stderr


def test_loop_factory_runs_code_with_aiozcrx_transports():
    code = """
import asyncio, aiozcrx
class Echo(asyncio.Protocol):
    def connection_made(self, t): self.t = t
    def data_received(self, d): self.t.write(d if isinstance(d, bytes) else b"not bytes")
async def main():
    loop = asyncio.get_running_loop()
    srv = await loop.create_server(Echo, "127.0.0.1", 0)
    r, w = await asyncio.open_connection(*srv.sockets[0].getsockname()[:2])
    w.write(b"ping"); await w.drain()
    print(await r.readexactly(4), type(w.transport).__name__, srv.receiver.engine)
    w.close(); srv.close(); await srv.wait_closed()
with asyncio.Runner(loop_factory=aiozcrx.new_event_loop) as runner:
    runner.run(main())
"""
    if sys.version_info < (3, 11):
        code = code.replace("with asyncio.Runner(loop_factory=aiozcrx.new_event_loop) as runner:\n    runner.run(main())",
                            "loop = aiozcrx.new_event_loop(); asyncio.set_event_loop(loop); loop.run_until_complete(main())")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[:2] == ["b'ping'", "ZcrxTransport"], r.stdout


# ------------------------------------------------- aiozcrx.run: no policies
RUN_MAIN = """
import asyncio, sys, aiozcrx
class Echo(asyncio.Protocol):
    def connection_made(self, t): self.t = t
    def data_received(self, d): self.t.write(d)
KEEP = []
async def agen():
    try:
        yield 1
    finally:
        print("async generator closed")
async def main():
    loop = asyncio.get_running_loop()
    srv = await loop.create_server(Echo, "127.0.0.1", 0)
    r, w = await asyncio.open_connection(*srv.sockets[0].getsockname()[:2])
    w.write(b"ping"); await w.drain()
    got = await r.readexactly(4)
    w.close(); await w.wait_closed(); srv.close(); await srv.wait_closed()
    left = asyncio.ensure_future(asyncio.sleep(3600))   # cancelled by run() at the end
    g = agen(); await g.__anext__()                     # closed by run() at the end
    KEEP.append(g)  # (not by its finalizer: uvloop 0.23 in debug mode on CPython 3.12/3.13 crashes there)
    return [got.decode(), type(w.transport).__name__, type(loop).__name__.startswith("Zcrx")]
async def fails():
    raise KeyError("from main")
if sys.argv[1] == "main":
    print(aiozcrx.run(main()))
elif sys.argv[1] == "fails":
    try:
        aiozcrx.run(fails())
    except KeyError as e:
        print("raised", e)
else:
    print(aiozcrx.run(asyncio.sleep(0, result="debug"), debug=True))
"""

# asyncio's event loop policies as Python 3.16 will have them: gone (3.14 warns on
# their use). Nothing aiozcrx.run does may need them.
# asyncio as it will be in 3.16: every policy function raises, every policy class is
# gone. On 3.14+ the deprecated names are served (with a warning) by the modules'
# __getattr__ and the classes live on under underscored names: both go too. Nothing
# here may itself touch a deprecated name (the tests run under -W error).
POLICIES_GONE = """
import asyncio, asyncio.events, asyncio.unix_events
def gone(name):
    def call(*args, **kwargs):
        raise AssertionError(f"asyncio.{name}() called: event loop policies are deprecated in 3.14, gone in 3.16")
    return call
def no_policies(module, served):
    def __getattr__(name):
        if "EventLoopPolicy" in name:
            raise AttributeError(f"module {module.__name__!r} has no attribute {name!r}")
        return served(name)
    return __getattr__
for name in ("get_event_loop_policy", "set_event_loop_policy", "set_event_loop",
             "_get_event_loop_policy", "_set_event_loop_policy"):
    for module in (asyncio, asyncio.events):
        if name in vars(module) or not name.startswith("_"):
            setattr(module, name, gone(name))
for module in (asyncio, asyncio.events, asyncio.unix_events):
    for name in [n for n in vars(module) if "EventLoopPolicy" in n]:
        delattr(module, name)
    if "__getattr__" in vars(module):
        module.__getattr__ = no_policies(module, vars(module)["__getattr__"])
"""


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("policies", ["here", "gone"])
@pytest.mark.parametrize("run, says", [
    ("main", ["async generator closed", "['ping', 'ZcrxTransport', True]"]),
    ("fails", ["raised 'from main'"]),
    ("debug", ["debug"])])
def test_run_needs_no_event_loop_policy(loop, policies, run, says):
    """``aiozcrx.run(main())``: the drop-in loop without asyncio's policies
    (deprecated in 3.14, removed in 3.16), under -W error::DeprecationWarning and
    -X dev: main's result or exception, pending tasks cancelled and async
    generators closed at the end, nothing left behind on stderr."""
    code = (POLICIES_GONE if policies == "gone" else "") + RUN_MAIN
    r = subprocess.run([sys.executable, "-X", "dev", "-W", "error::DeprecationWarning", "-c", code, run],
                       capture_output=True, text=True, timeout=120, cwd=HERE,
                       env=dict(os.environ, AIOZCRX_LOOP=loop))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == says, r.stdout
    for bad in ("Warning", "never retrieved", "destroyed but it is pending", "Traceback"):
        assert bad not in r.stderr, r.stderr


def test_importing_aiozcrx_touches_no_policy():
    """The policy class (aiozcrx.loop.EventLoopPolicy) is made only when asked
    for: importing aiozcrx and making loops works with asyncio's policies gone."""
    code = POLICIES_GONE + """
import aiozcrx, aiozcrx.loop
loop = aiozcrx.new_event_loop(); loop.close()
try:
    aiozcrx.loop.EventLoopPolicy
except AttributeError as e:
    print("no policy:", e)
"""
    r = subprocess.run([sys.executable, "-W", "error::DeprecationWarning", "-c", code],
                       capture_output=True, text=True, timeout=60, cwd=HERE)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("no policy:"), r.stdout


def test_event_loop_policy_still_works():
    """For code that still sets a policy (deprecated with asyncio's in 3.14)."""
    code = """
import asyncio, warnings, aiozcrx.loop
warnings.simplefilter("ignore", DeprecationWarning)
asyncio.set_event_loop_policy(aiozcrx.loop.EventLoopPolicy())
loop = asyncio.new_event_loop()
print(type(loop).__name__)
loop.close()
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=HERE)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("Zcrx"), r.stdout

"""The drop-in loop against the stock loop, scenario by scenario (issue 21,
"asyncio's whole contract"). Each scenario runs on the loop the drop-in stands in
for and on ``aiozcrx.new_event_loop()`` over the same base (AIOZCRX_LOOP), and what
can be observed must match: the errno, the exception type and message, is_closing(),
what reaches stderr. Where uvloop has no behaviour of its own (``loop.sendfile``
is not implemented there) the stock asyncio loop is the reference for both bases.

Scenarios that look at stderr (``-X dev``: "Task exception was never retrieved",
"Task was destroyed but it is pending!") run in a child process: this file is also
a script, ``python tests/test_deviations.py SCENARIO LOOP``, which prints the
scenario's result as one JSON line."""

from __future__ import annotations

import asyncio
import io
import json
import os
import select
import shutil
import socket
import ssl
import subprocess
import sys
import threading

import pytest

from test_sendfile import Quiet as Peer  # a protocol with its connection_lost as a future

HERE = os.path.dirname(os.path.abspath(__file__))
BASES = ["asyncio", "uvloop"]
MiB = 1 << 20
# stderr lines that tell of a task or future left behind
LEFT_BEHIND = ("never retrieved", "destroyed but it is pending")

pytestmark = pytest.mark.engines


def new_loop(kind: str) -> asyncio.AbstractEventLoop:
    """``asyncio``/``uvloop``: the stock loops; ``dropin-asyncio``/``dropin-uvloop``:
    the drop-in loop over that base."""
    if kind == "asyncio":
        return asyncio.new_event_loop()
    if kind == "uvloop":
        import uvloop
        return uvloop.new_event_loop()
    import aiozcrx
    before = os.environ.get("AIOZCRX_LOOP")
    os.environ["AIOZCRX_LOOP"] = kind.split("-", 1)[1]
    try:
        return aiozcrx.new_event_loop()
    finally:
        if before is None:
            del os.environ["AIOZCRX_LOOP"]
        else:
            os.environ["AIOZCRX_LOOP"] = before


def run_on(kind: str, scenario, *args):
    loop = new_loop(kind)
    try:
        return loop.run_until_complete(scenario(*args))
    finally:
        loop.close()


def run_script(scenario: str, kind: str, *args: str) -> tuple[object, list[str]]:
    """Runs a scenario in a child process under ``-X dev``: (its result, the stderr
    lines that tell of a task or future left behind)."""
    proc = subprocess.run([sys.executable, "-X", "dev", __file__, scenario, kind, *args],
                          cwd=HERE, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    *_, last = proc.stdout.splitlines()
    left = [line for line in proc.stderr.splitlines() if any(s in line for s in LEFT_BEHIND)]
    return json.loads(last), left


def exc_info(exc: BaseException) -> list:
    return [type(exc).__name__, getattr(exc, "errno", None), str(exc)]


async def connect() -> tuple[asyncio.Transport, Peer, socket.socket]:
    """A TCP connection made by the running loop's create_connection (a ZcrxTransport
    on the drop-in loop) and its peer, a blocking socket."""
    loop = asyncio.get_running_loop()
    with socket.create_server(("127.0.0.1", 0)) as lst:
        transport, proto = await loop.create_connection(Peer, *lst.getsockname())
        peer, _ = lst.accept()
    return transport, proto, peer


def drain(sock: socket.socket, out: list, limit: int | None = None) -> None:
    """Reads ``sock`` until EOF (or ``limit`` bytes); appends the byte count."""
    n = 0
    while limit is None or n < limit:
        b = sock.recv(MiB if limit is None else min(MiB, limit - n))
        if not b:
            break
        n += len(b)
    out.append(n)


def big_file(tmp_path) -> str:
    """More than any socket buffer holds, so a sendfile() to a peer that does not
    read is still in progress."""
    path = tmp_path / "big.bin"
    with open(path, "wb") as f:
        f.truncate(64 * MiB)
    return str(path)


# ------------------------------------------------- 1. local_addr in use
async def local_addr_in_use() -> list:
    loop = asyncio.get_running_loop()
    with socket.create_server(("127.0.0.1", 0)) as lst, socket.create_server(("127.0.0.1", 0)) as busy:
        try:
            await loop.create_connection(asyncio.Protocol, *lst.getsockname(),
                                         local_addr=busy.getsockname())
        except OSError as exc:
            return exc_info(exc)
    raise AssertionError("connected from an address in use")


@pytest.mark.parametrize("base", BASES)
def test_local_addr_in_use_is_eaddrinuse(base):
    import errno
    ref, ours = run_on(base, local_addr_in_use), run_on(f"dropin-{base}", local_addr_in_use)
    assert ours[:2] == ref[:2] == ["OSError", errno.EADDRINUSE]
    if base == "asyncio":  # the drop-in's message is asyncio's on either base
        assert ours[2].split(":")[-1] == ref[2].split(":")[-1]


@pytest.mark.skipif(sys.version_info < (3, 12), reason="all_errors= is new in Python 3.12")
def test_local_addr_in_use_all_errors():
    async def scenario():
        loop = asyncio.get_running_loop()
        with socket.create_server(("127.0.0.1", 0)) as lst, \
                socket.create_server(("127.0.0.1", 0)) as busy:
            try:
                await loop.create_connection(asyncio.Protocol, *lst.getsockname(),
                                             local_addr=busy.getsockname(), all_errors=True)
            except ExceptionGroup as eg:  # noqa: F821 - 3.11+
                return [type(eg).__name__, eg.message, [e.errno for e in eg.exceptions]]
        raise AssertionError("connected from an address in use")

    assert run_on("dropin-asyncio", scenario) == run_on("asyncio", scenario)


# ------------------------------------------------------- 2. sendfile
async def sendfile_peer_closes(path: str) -> dict:
    """The peer reads a little, then resets the connection while the file is
    still being sent."""
    loop = asyncio.get_running_loop()
    transport, proto, peer = await connect()

    def read_then_reset() -> None:
        peer.recv(65536)
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
        peer.close()

    reader = threading.Thread(target=read_then_reset)
    reader.start()
    try:
        with open(path, "rb") as f:
            try:
                await loop.sendfile(transport, f)
                raised = None
            except Exception as exc:
                raised = exc
        closing_at_once = transport.is_closing()
        await asyncio.wait_for(proto.lost, 60)
    finally:
        await asyncio.to_thread(reader.join)
    return {"a ConnectionError": isinstance(raised, ConnectionError),
            "is_closing() when sendfile() has raised": closing_at_once,
            "is_closing() once lost": transport.is_closing()}


async def sendfile_in_a_task_peer_closes(path: str) -> dict:
    """As above with sendfile() in a task of its own that the application awaits
    (as a server's handler does): nothing is left unretrieved."""
    task = asyncio.ensure_future(sendfile_peer_closes(path))
    return await task


def test_sendfile_when_the_peer_resets(tmp_path):
    """(a) afterwards the transport is closing, as asyncio's; (d) nothing on
    stderr of a task or future whose exception nobody retrieved."""
    path = big_file(tmp_path)
    for scenario in ("sendfile_peer_closes", "sendfile_in_a_task_peer_closes"):
        ref, ref_left = run_script(scenario, "asyncio", path)
        assert ref == {"a ConnectionError": True, "is_closing() when sendfile() has raised": False,
                       "is_closing() once lost": True}
        for base in BASES:
            ours, left = run_script(scenario, f"dropin-{base}", path)
            assert (ours, left) == (ref, ref_left), (scenario, base)


async def sendfile_without_native_path(path: str) -> list:
    """Files and arguments os.sendfile cannot take, with and without fallback."""
    loop = asyncio.get_running_loop()
    results = []
    cases = [
        ("BytesIO", lambda: io.BytesIO(b"x" * 1000), {}),
        ("text mode", lambda: open(path, "r"), {}),
        ("count=0", lambda: open(path, "rb"), {"count": 0}),
        ("offset=-1", lambda: open(path, "rb"), {"offset": -1}),
        ("count='1'", lambda: open(path, "rb"), {"count": "1"}),
    ]
    for name, make_file, kw in cases:
        for fallback in (False, True):
            transport, proto, peer = await connect()
            got: list = []
            reader = threading.Thread(target=drain, args=(peer, got))
            reader.start()
            with make_file() as f:
                try:
                    sent = await loop.sendfile(transport, f, fallback=fallback, **kw)
                    outcome: list = ["sent", sent]
                except Exception as exc:
                    outcome = [type(exc).__name__, str(exc)]
            transport.close()
            await asyncio.wait_for(proto.lost, 60)
            await asyncio.to_thread(reader.join)
            peer.close()
            results.append([name, fallback, outcome, got[0]])
    return results


@pytest.mark.parametrize("base", BASES)
def test_sendfile_without_native_path(base, tmp_path):
    """(b) fallback=False where os.sendfile cannot be used is asyncio's
    SendfileNotAvailableError; with fallback the file goes through write()."""
    path = tmp_path / "small.bin"
    path.write_bytes(b"y" * 5000)
    ref = run_on("asyncio", sendfile_without_native_path, str(path))
    assert ["BytesIO", False, ["SendfileNotAvailableError", "not a regular file"], 0] in ref
    assert ["BytesIO", True, ["sent", 1000], 1000] in ref
    assert run_on(f"dropin-{base}", sendfile_without_native_path, str(path)) == ref


async def write_while_sendfile(path: str) -> dict:
    """write()/writelines() while loop.sendfile() is sending: refused (the bytes
    would land in the middle of the file); the peer gets the file alone."""
    loop = asyncio.get_running_loop()
    transport, proto, peer = await connect()
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        task = asyncio.ensure_future(loop.sendfile(transport, f))
        # the peer does not read yet: once bytes reach it, sendfile() is under way
        # and cannot finish (the file is larger than the socket buffers)
        while not select.select([peer], [], [], 0)[0]:
            await asyncio.sleep(0.001)
        refused = {}
        for name, call in (("write", lambda: transport.write(b"!")),
                           ("writelines", lambda: transport.writelines([b"!"]))):
            try:
                call()
                refused[name] = None
            except RuntimeError as exc:
                refused[name] = str(exc)
        got: list = []
        reader = threading.Thread(target=drain, args=(peer, got))
        reader.start()
        sent = await task
    transport.write(b"after")  # accepted again once sendfile() has returned
    transport.close()
    await asyncio.wait_for(proto.lost, 60)
    await asyncio.to_thread(reader.join)
    peer.close()
    return {"refused": refused, "sent": sent == size, "peer got": got[0] - size}


@pytest.mark.parametrize("base", BASES)
def test_write_while_sendfile_is_refused(base, tmp_path):
    """(c) as asyncio's transport: RuntimeError, nothing interleaved."""
    path = big_file(tmp_path)
    ref = run_on("asyncio", write_while_sendfile, path)
    assert ref["refused"]["write"] == "unable to write; sendfile is in progress"
    assert run_on(f"dropin-{base}", write_while_sendfile, path) == ref


# ------------------------------------------------------ TLS: certificates
@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is not installed (apt-get install openssl)")
    d = tmp_path_factory.mktemp("tls")
    cert, key = str(d / "cert.pem"), str(d / "key.pem")
    subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "7", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def server_context(cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


# ------------------------------------------------- 3. start_tls arguments
async def start_tls_bad_arguments(cert: str, key: str) -> list:
    loop = asyncio.get_running_loop()
    transport, proto, peer = await connect()
    ctx = ssl.create_default_context(cafile=cert)
    cases = [
        ("no transport, no context", None, None, {}),
        ("no transport", None, ctx, {}),
        ("no context", transport, None, {}),
        ("a str for a context", transport, "ctx", {}),
        ("a plain object", object(), ctx, {}),
        ("negative handshake timeout", transport, ctx, {"ssl_handshake_timeout": -1}),
        ("zero shutdown timeout", transport, ctx, {"ssl_shutdown_timeout": 0}),
    ]
    results = []
    for name, t, c, kw in cases:
        if "ssl_shutdown_timeout" in kw and sys.version_info < (3, 11):
            continue
        try:
            await loop.start_tls(t, proto, c, server_hostname="localhost", **kw)
            results.append([name, "accepted"])
        except (TypeError, ValueError) as exc:
            # the transport's repr differs from loop to loop
            message = str(exc).replace(repr(transport), "<transport>").replace(repr(t), "<transport>")
            results.append([name, type(exc).__name__, message])
    transport.close()
    peer.close()
    return results


@pytest.mark.parametrize("base", BASES)
def test_start_tls_checks_its_arguments_as_the_loop(base, certs):
    assert run_on(f"dropin-{base}", start_tls_bad_arguments, *certs) == \
        run_on(base, start_tls_bad_arguments, *certs)


# ------------------------------- 4. a closed server, the loop closed after it
def closed_server_pending_handshake(cert: str, key: str) -> dict:
    """A TLS server whose client connected but never starts its handshake; the
    server is closed, then the loop (no asyncio.run: nothing cancels tasks)."""
    import gc
    loop = new_loop(sys.argv[2])
    made = loop.create_future()

    def factory():
        if not made.done():
            made.set_result(None)
        return asyncio.Protocol()

    async def main():
        server = await asyncio.get_running_loop().create_server(
            factory, "127.0.0.1", 0, ssl=server_context(cert, key))
        client = socket.create_connection(server.sockets[0].getsockname()[:2])
        await made  # accepted: its handshake is pending
        server.close()
        return client

    client = loop.run_until_complete(main())
    loop.close()
    gc.collect()
    client.close()
    return {"closed": True}


@pytest.mark.parametrize("base", BASES)
def test_closing_the_loop_after_a_closed_server(base, certs):
    """Nothing of aiozcrx's is left pending for the loop's close to destroy. uvloop
    has no task per accepted connection: nothing on stderr on either; the stock
    asyncio loop has one (its own _accept_connection2, destroyed while the
    handshake waits), the drop-in loop none of its own."""
    ref, ref_left = run_script("closed_server_pending_handshake", base, *certs)
    ours, left = run_script("closed_server_pending_handshake", f"dropin-{base}", *certs)
    assert ours == ref
    assert not [line for line in left if "aiozcrx" in line or "Zcrx" in line], left
    if base == "uvloop":
        assert left == ref_left == []
    else:
        assert len(left) <= len(ref_left)


# ------------------------------------------- 5. socket keys over TLS
async def tls_socket_keys(cert: str, key: str) -> dict:
    """get_extra_info("sockname"/"peername"/"socket") over TLS, on both ends, in
    every callback up to connection_lost and right after the connection is made."""
    loop = asyncio.get_running_loop()
    keys = ("sockname", "peername", "socket")
    seen: dict[str, set] = {}

    class P(asyncio.Protocol):
        def __init__(self, side):
            self.side = side
            self.lost = loop.create_future()

        def note(self, when):
            seen.setdefault(f"{self.side} {when}", set()).update(
                k for k in keys if self.transport.get_extra_info(k) is None)

        def connection_made(self, transport):
            self.transport = transport
            self.note("connection_made")
            if self.side == "server":
                transport.write(b"s" * 100000)
                transport.close()

        def data_received(self, data):
            self.note("data_received")

        def eof_received(self):
            self.note("eof_received")

        def connection_lost(self, exc):
            self.lost.set_result(None)

    servers: list[P] = []
    server = await loop.create_server(lambda: servers.append(P("server")) or servers[-1],
                                      "127.0.0.1", 0, ssl=server_context(cert, key))
    client_ctx = ssl.create_default_context(cafile=cert)
    for _ in range(20):
        t, p = await loop.create_connection(lambda: P("client"), *server.sockets[0].getsockname()[:2],
                                            ssl=client_ctx, server_hostname="localhost")
        p.note("create_connection returned")
        assert t.get_extra_info("sockname") == t.get_extra_info("socket").getsockname()
        await asyncio.wait_for(p.lost, 60)
    for s in servers:
        await asyncio.wait_for(s.lost, 60)
    server.close()
    await server.wait_closed()
    return {k: sorted(v) for k, v in sorted(seen.items())}


@pytest.mark.parametrize("base", BASES)
def test_tls_socket_keys(base, certs):
    """No key is None in any callback either loop made (which callbacks come
    differs: on 3.10 asyncio's SSL protocol, under the drop-in loop on either base,
    may close before the client's eof_received where uvloop's calls it)."""
    ref = run_on(base, tls_socket_keys, *certs)
    ours = run_on(f"dropin-{base}", tls_socket_keys, *certs)
    for seen in (ref, ours):
        assert {"client connection_made", "server connection_made",
                "client create_connection returned"} <= set(seen), seen
        assert all(v == [] for v in seen.values()), seen


if __name__ == "__main__":
    name, kind, *args = sys.argv[1:]
    scenario = globals()[name]
    if asyncio.iscoroutinefunction(scenario):
        result = run_on(kind, scenario, *args)
    else:
        result = scenario(*args)
    print(json.dumps(result))

"""TLS over aiozcrx transports: asyncio's SSL protocol on a ZcrxTransport, against
real TLS peers (asyncio's and uvloop's own TLS, the stdlib's blocking ssl sockets,
curl). A self-signed certificate is made at test time with the openssl command.
Every async test runs on the stock loop and on uvloop (conftest), on the engines
the host runs."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading

import pytest

import aiozcrx
from aiozcrx import streams
from aiozcrx.server import create_connection, create_server
from peers import payload, tcp_pair, wait_until

pytestmark = pytest.mark.engines
ENGINES = ["uring", "socket"]
# and the real zcrx path where it runs (the 7.x guest; skipped on the host, with the reason)
WITH_ZCRX = [*ENGINES, pytest.param("zcrx-copy", marks=pytest.mark.guest)]
MiB = 1 << 20
HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(autouse=True)
def _zcrx_copy_or_skip(request):
    callspec = getattr(request.node, "callspec", None)
    if callspec is not None and callspec.params.get("engine") == "zcrx-copy":
        request.getfixturevalue("need_zcrx_copy")


def open_fds() -> int:
    """Open fds, not counting /dev/null: libuv (uvloop) opens it once per process
    on its first TCP connection and keeps it (a reserve for running out of fds)."""
    gc.collect()
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            n += os.readlink(f"/proc/self/fd/{fd}") != "/dev/null"
        except OSError:
            pass  # the listing's own fd
    return n


class Certs:
    def __init__(self, cert: str, key: str):
        self.cert, self.key = cert, key

    def server(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.cert, self.key)
        return ctx

    def client(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.cert)


@pytest.fixture(scope="session")
def certs(tmp_path_factory) -> Certs:
    """A self-signed certificate for localhost and 127.0.0.1, made now."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is not installed (apt-get install openssl): "
                    "the TLS tests make their certificate with it")
    d = tmp_path_factory.mktemp("tls")
    cert, key = str(d / "cert.pem"), str(d / "key.pem")
    subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", key, "-out", cert, "-days", "7", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    return Certs(cert, key)


class Echo(asyncio.Protocol):
    """Writes back what it gets; records what it was given and its transport."""

    instances: list["Echo"] = []

    def __init__(self):
        self.types: set[type] = set()
        self.lost = asyncio.get_running_loop().create_future()
        Echo.instances.append(self)

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.types.add(type(data))
        self.transport.write(data)

    def connection_lost(self, exc):
        if not self.lost.done():
            self.lost.set_result(exc)


class Collect(asyncio.Protocol):
    """Keeps everything it gets (as bytes), for checking order and completeness."""

    def __init__(self, name: str = ""):
        self.name = name
        self.chunks: list[bytes] = []
        self.made = asyncio.get_running_loop().create_future()
        self.lost = asyncio.get_running_loop().create_future()
        self.eof = False

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)

    def connection_made(self, transport):
        self.transport = transport
        self.made.set_result(transport)

    def data_received(self, data):
        self.chunks.append(bytes(data))

    def eof_received(self):
        self.eof = True

    def connection_lost(self, exc):
        if not self.lost.done():
            self.lost.set_result(exc)


async def echo_roundtrip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes) -> bytes:
    """Writes ``data`` while reading the echo back (both directions at once)."""
    async def send():
        for i in range(0, len(data), 256 * 1024):
            writer.write(data[i:i + 256 * 1024])
            await writer.drain()

    sender = asyncio.ensure_future(send())
    got = await asyncio.wait_for(reader.readexactly(len(data)), 120)
    await sender
    return got


# ------------------------------------------------------------------ server side
@pytest.mark.asyncio
@pytest.mark.parametrize("engine", WITH_ZCRX)
async def test_tls_server_echoes_to_the_loops_own_tls_client(engine, certs):
    """aiozcrx.create_server(ssl=) against asyncio's (or uvloop's) own TLS client:
    8 MiB both ways, bytes in == bytes out; the protocol gets plaintext bytes and
    sees the TLS session through get_extra_info; the ciphertext came through aiozcrx."""
    fds = open_fds()
    Echo.instances = []
    data = payload(11, 8 * MiB + 17)
    server = await create_server(Echo, "127.0.0.1", 0, engine=engine, ssl=certs.server())
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=certs.client(),
                                                   server_hostname="localhost")
    assert await echo_roundtrip(reader, writer, data) == data
    (proto,) = Echo.instances
    t = proto.transport
    assert proto.types == {bytes}
    assert isinstance(t.get_extra_info("ssl_object"), ssl.SSLObject)
    assert t.get_extra_info("cipher") == writer.get_extra_info("cipher")
    assert t.get_extra_info("peercert") is None          # the client sent no certificate
    assert t.get_extra_info("sslcontext") is not None
    assert t.get_extra_info("aiozcrx_engine") == engine  # the raw transport below is ours
    assert t.get_extra_info("peername") == writer.get_extra_info("sockname")
    stats = server.receiver.stats()
    assert stats["bytes"] >= len(data)                   # ciphertext is a little longer
    assert stats["bytes_as_views"] == 0                  # TLS: copied into the SSL object
    writer.close()
    await writer.wait_closed()
    assert await asyncio.wait_for(proto.lost, 30) is None
    server.close()
    await server.wait_closed()
    assert open_fds() == fds


@pytest.mark.asyncio
@pytest.mark.parametrize("engine", ENGINES)
async def test_tls_streams_both_ends_aiozcrx(engine, certs):
    """aiozcrx.start_server and aiozcrx.open_connection, both with ssl=: an
    upload hashed by the server (length-prefixed: TLS has no half close)."""
    fds = open_fds()
    data = payload(12, 6 * MiB + 5)

    async def handler(reader, writer):
        n = int(await reader.readline())
        h = hashlib.sha256()
        while n:
            chunk = await reader.read(min(n, 1 << 16))
            assert chunk
            h.update(chunk)
            n -= len(chunk)
        writer.write(h.hexdigest().encode() + b"\n")
        await writer.drain()
        writer.close()

    server = await streams.start_server(handler, "127.0.0.1", 0, engine=engine, ssl=certs.server(),
                                        ssl_handshake_timeout=60, ssl_shutdown_timeout=30)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await streams.open_connection("localhost", port, engine=engine, ssl=certs.client(),
                                                   ssl_handshake_timeout=60)
    assert writer.get_extra_info("aiozcrx_engine") == engine
    assert writer.get_extra_info("peercert")["subject"] == ((("commonName", "localhost"),),)
    writer.write(b"%d\n" % len(data))
    writer.write(data)
    await writer.drain()
    assert (await asyncio.wait_for(reader.readline(), 120)).strip().decode() == hashlib.sha256(data).hexdigest()
    assert await asyncio.wait_for(reader.read(), 30) == b""  # the server's close_notify, then EOF
    writer.close()
    await writer.wait_closed()
    server.close()
    await server.wait_closed()
    assert open_fds() == fds


# ------------------------------------------------------------------ client side
@pytest.mark.asyncio
@pytest.mark.parametrize("engine", WITH_ZCRX)
async def test_tls_client_against_the_loops_own_tls_server(engine, certs):
    fds = open_fds()
    data = payload(13, 8 * MiB + 3)

    async def handler(reader, writer):
        writer.write(data)
        await writer.drain()
        writer.close()

    plain = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=certs.server())
    port = plain.sockets[0].getsockname()[1]
    transport, proto = await create_connection(Collect, "127.0.0.1", port, engine=engine,
                                               ssl=certs.client(), server_hostname="localhost")
    rx = transport.get_extra_info("aiozcrx_receiver_stats")
    assert rx["engine"] == engine
    assert await asyncio.wait_for(proto.lost, 60) is None
    assert proto.data == data
    if sys.version_info >= (3, 11):
        assert proto.eof  # close_notify read as EOF (3.10's SSL protocol calls it only on TCP EOF)
    plain.close()
    await plain.wait_closed()
    await wait_until(lambda: open_fds() == fds, "the connection's Receiver and socket are closed")


@pytest.mark.asyncio
async def test_tls_client_refuses_a_certificate_for_another_name(certs):
    """server_hostname is checked: a mismatch raises the ssl module's verification
    error, and nothing stays open."""
    plain = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0, ssl=certs.server())
    port = plain.sockets[0].getsockname()[1]
    fds = open_fds()
    with pytest.raises(ssl.SSLCertVerificationError, match="(?i)hostname"):
        await create_connection(Collect, "127.0.0.1", port, engine="uring", ssl=certs.client(),
                                server_hostname="not-localhost.example")
    # the default context (ssl=True) does not trust a self-signed certificate
    with pytest.raises(ssl.SSLCertVerificationError):
        await streams.open_connection("localhost", port, engine="socket", ssl=True)
    await wait_until(lambda: open_fds() == fds, "the failed connections are closed")
    plain.close()
    await plain.wait_closed()


@pytest.mark.asyncio
@pytest.mark.parametrize("engine", ENGINES)
async def test_failed_handshakes_do_not_stop_the_server(engine, certs):
    """A client that does not trust the certificate, and one that speaks no TLS at
    all, are dropped; the next good client is served; nothing leaks."""
    fds = open_fds()
    Echo.instances = []
    server = await create_server(Echo, "127.0.0.1", 0, engine=engine, ssl=certs.server())
    port = server.sockets[0].getsockname()[1]
    with pytest.raises(ssl.SSLCertVerificationError):
        await asyncio.open_connection("127.0.0.1", port, ssl=ssl.create_default_context(),
                                      server_hostname="localhost")
    # plain text where a ClientHello should be: the server's SSL protocol fails and closes
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.0\r\n\r\n")
    await writer.drain()
    try:
        leftover = await asyncio.wait_for(reader.read(), 30)
    except ConnectionResetError:
        leftover = b""
    assert b"HTTP" not in leftover
    writer.close()
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=certs.client(),
                                                   server_hostname="localhost")
    assert await echo_roundtrip(reader, writer, b"after the failures") == b"after the failures"
    assert len([p for p in Echo.instances if hasattr(p, "transport")]) == 1
    writer.close()
    await writer.wait_closed()
    server.close()
    await server.wait_closed()
    await wait_until(lambda: open_fds() == fds, "every connection is closed")


@pytest.mark.asyncio
@pytest.mark.parametrize("engine", ENGINES)
async def test_handshake_timeouts(engine, certs):
    """ssl_handshake_timeout on both sides: a peer that never answers the
    handshake is dropped (server) or raises ConnectionAbortedError (client)."""
    fds = open_fds()
    server = await create_server(Echo, "127.0.0.1", 0, engine=engine, ssl=certs.server(),
                                 ssl_handshake_timeout=0.2)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)  # and says nothing
    try:
        assert await asyncio.wait_for(reader.read(), 60) == b""
    except ConnectionResetError:
        pass
    writer.close()
    server.close()
    await server.wait_closed()

    # a listener that never accepts: the kernel completes the connection, nobody answers
    silent = socket.create_server(("127.0.0.1", 0))
    port = silent.getsockname()[1]
    with pytest.raises(ConnectionAbortedError):
        await create_connection(Collect, "127.0.0.1", port, engine=engine, ssl=certs.client(),
                                server_hostname="localhost", ssl_handshake_timeout=0.2)
    silent.close()
    await wait_until(lambda: open_fds() == fds, "every connection is closed")


@pytest.mark.asyncio
async def test_bad_tls_arguments_are_typed_errors(certs):
    with pytest.raises(TypeError, match="SSLContext"):
        await create_server(Echo, "127.0.0.1", 0, ssl=True)       # a server needs its certificate
    with pytest.raises(TypeError, match="SSLContext"):
        await create_connection(Collect, "127.0.0.1", 1, ssl="yes")
    with pytest.raises(ValueError, match="server_hostname is only meaningful with ssl"):
        await create_connection(Collect, "127.0.0.1", 1, server_hostname="x")
    with pytest.raises(ValueError, match="ssl_handshake_timeout is only meaningful with ssl"):
        await create_server(Echo, "127.0.0.1", 0, ssl_handshake_timeout=5)
    with pytest.raises(ValueError, match="ssl_shutdown_timeout should be a positive number"):
        await create_server(Echo, "127.0.0.1", 0, ssl=certs.server(), ssl_shutdown_timeout=0)
    with pytest.raises(ValueError, match="server_hostname"):
        a, b = socket.socketpair()
        try:
            await create_connection(Collect, sock=a, ssl=certs.client())
        finally:
            a.close()
            b.close()
    with pytest.raises(TypeError, match="sslcontext is expected to be an instance of ssl.SSLContext"):
        a, b = socket.socketpair()
        try:
            async with aiozcrx.Receiver(engine="uring") as rx:
                t, p = await rx.wrap(a, Collect)
                await aiozcrx.start_tls(t, p, "not a context")
        finally:
            b.close()


# ---------------------------------------------------------------- STARTTLS
class StartTlsServer(asyncio.Protocol):
    """Plain text first: "STARTTLS\r\n" is answered "OK\r\n", then the
    connection is upgraded with aiozcrx.start_tls and the protocol echoes.

    Reading is paused before OK goes out, so the ClientHello waits for the SSL
    protocol. Plaintext can reach data_received before start_tls() has returned
    (the client may finish its side of the handshake and send at once): it is
    kept and echoed once the TLS transport is known."""

    def __init__(self, ctx: ssl.SSLContext):
        self.ctx = ctx
        self.buf = b""
        self.tls = False
        self.early: list[bytes] = []
        self.upgraded = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        if self.tls:
            if self.upgraded.done():
                self.transport.write(data)
            else:
                self.early.append(bytes(data))
            return
        self.buf += bytes(data)
        if self.buf == b"STARTTLS\r\n":
            self.tls = True
            # nothing more may be read as plaintext: the ClientHello can come as
            # soon as OK is out, before start_tls() below has run
            self.transport.pause_reading()
            self.transport.write(b"OK\r\n")
            asyncio.ensure_future(self._upgrade())
        else:
            assert b"STARTTLS\r\n".startswith(self.buf), self.buf

    async def _upgrade(self):
        try:
            self.transport = await aiozcrx.start_tls(self.transport, self, self.ctx, server_side=True)
        except BaseException as exc:
            self.upgraded.set_exception(exc)
            raise
        self.upgraded.set_result(self.transport)
        for data in self.early:
            self.transport.write(data)
        self.early.clear()


@pytest.mark.asyncio
@pytest.mark.parametrize("engine", WITH_ZCRX)
async def test_starttls_server_with_the_loops_own_client(engine, certs):
    """STARTTLS on an aiozcrx server, the client is the loop's own transport
    upgraded with its own loop.start_tls (asyncio's or uvloop's)."""
    fds = open_fds()
    loop = asyncio.get_running_loop()
    protos: list[StartTlsServer] = []
    server = await create_server(lambda: protos.append(StartTlsServer(certs.server())) or protos[-1],
                                 "127.0.0.1", 0, engine=engine)
    port = server.sockets[0].getsockname()[1]
    transport, client = await loop.create_connection(lambda: Collect("client"), "127.0.0.1", port)
    transport.write(b"STARTTLS\r\n")
    await wait_until(lambda: client.data == b"OK\r\n", "the server answers OK")
    client.chunks.clear()
    tls = await loop.start_tls(transport, client, certs.client(), server_hostname="localhost")
    server_t = await asyncio.wait_for(protos[0].upgraded, 60)
    assert isinstance(server_t.get_extra_info("ssl_object"), ssl.SSLObject)
    assert server_t.get_extra_info("aiozcrx_engine") == engine
    data = payload(14, 3 * MiB + 1)
    tls.write(data)
    await wait_until(lambda: sum(map(len, client.chunks)) >= len(data), "the echo is back")
    assert client.data == data
    tls.close()
    await asyncio.wait_for(client.lost, 30)
    server.close()
    await server.wait_closed()
    assert open_fds() == fds


def _blocking_starttls_server(lst: socket.socket, ctx: ssl.SSLContext, out: dict) -> None:
    """The stdlib's blocking ssl socket as the peer: reads STARTTLS in plain text,
    answers OK, wraps the socket, echoes until the client closes."""
    try:
        conn, _ = lst.accept()
        with conn:
            conn.settimeout(120)
            line = b""
            while not line.endswith(b"\r\n"):
                line += conn.recv(1)
            assert line == b"STARTTLS\r\n", line
            conn.sendall(b"OK\r\n")
            with ctx.wrap_socket(conn, server_side=True) as tls:
                n = 0
                while True:
                    chunk = tls.recv(1 << 16)
                    if not chunk:
                        break
                    tls.sendall(chunk)
                    n += len(chunk)
                out["echoed"] = n
    except BaseException as exc:  # reported by the test
        out["error"] = exc


@pytest.mark.asyncio
@pytest.mark.parametrize("engine", ENGINES)
async def test_starttls_client_streams(engine, certs):
    """STARTTLS from an aiozcrx stream client (aiozcrx.streams.start_tls: on every
    Python and on uvloop) against the stdlib's blocking TLS server."""
    fds = open_fds()
    lst = socket.create_server(("127.0.0.1", 0))
    out: dict = {}
    th = threading.Thread(target=_blocking_starttls_server, args=(lst, certs.server(), out))
    th.start()
    try:
        reader, writer = await streams.open_connection("127.0.0.1", lst.getsockname()[1], engine=engine)
        writer.write(b"STARTTLS\r\n")
        assert await asyncio.wait_for(reader.readline(), 60) == b"OK\r\n"
        await streams.start_tls(writer, certs.client(), server_hostname="localhost")
        assert writer.get_extra_info("peercert")["subject"] == ((("commonName", "localhost"),),)
        assert writer.get_extra_info("aiozcrx_engine") == engine
        data = payload(15, 4 * MiB + 9)
        assert await echo_roundtrip(reader, writer, data) == data
        writer.close()
        await writer.wait_closed()
    finally:
        await asyncio.get_running_loop().run_in_executor(None, th.join, 120)
        lst.close()
    assert "error" not in out, out.get("error")
    assert out["echoed"] == len(data)
    assert open_fds() == fds


@pytest.mark.asyncio
@pytest.mark.skipif(sys.version_info < (3, 11), reason="StreamWriter.start_tls is Python 3.11+")
async def test_streamwriter_start_tls_on_the_stock_loop_takes_zcrx_transports(certs):
    """asyncio's own StreamWriter.start_tls -> loop.start_tls accepts a
    ZcrxTransport (on the stock loop; uvloop refuses it, see the drop-in test)."""
    if not isinstance(asyncio.get_running_loop(), asyncio.SelectorEventLoop):
        pytest.skip("uvloop's loop.start_tls accepts only uvloop transports: "
                    "aiozcrx.streams.start_tls and the drop-in loop cover uvloop")
    lst = socket.create_server(("127.0.0.1", 0))
    out: dict = {}
    th = threading.Thread(target=_blocking_starttls_server, args=(lst, certs.server(), out))
    th.start()
    try:
        reader, writer = await streams.open_connection("127.0.0.1", lst.getsockname()[1], engine="uring")
        writer.write(b"STARTTLS\r\n")
        assert await asyncio.wait_for(reader.readline(), 60) == b"OK\r\n"
        await writer.start_tls(certs.client(), server_hostname="localhost")
        assert writer.get_extra_info("aiozcrx_engine") == "uring"
        data = payload(16, 1 * MiB)
        assert await echo_roundtrip(reader, writer, data) == data
        writer.close()
        await writer.wait_closed()
    finally:
        await asyncio.get_running_loop().run_in_executor(None, th.join, 120)
        lst.close()
    assert out.get("echoed") == len(data), out


# ------------------------------------------------------------ the drop-in loop
def _run_dropin(base: str, engine: str, coro_fn, monkeypatch):
    monkeypatch.setenv("AIOZCRX_LOOP", base)
    monkeypatch.setenv("AIOZCRX_ENGINE", engine)
    loop = aiozcrx.new_event_loop()
    try:
        return loop.run_until_complete(asyncio.wait_for(coro_fn(), 180))
    finally:
        loop.close()


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("base", ["uvloop", "asyncio"])
def test_dropin_loop_tls_everywhere(base, engine, certs, monkeypatch):
    """On the drop-in loop: create_server(ssl=), create_connection(ssl=),
    connect_accepted_socket(ssl=) and start_tls (also StreamWriter.start_tls on
    3.11+) all run over ZcrxTransports, on both base loops."""

    async def main():
        loop = asyncio.get_running_loop()
        assert type(loop).__name__.startswith("Zcrx")
        # create_server + create_connection, both TLS
        server = await loop.create_server(Echo, "127.0.0.1", 0, ssl=certs.server())
        port = server.sockets[0].getsockname()[1]
        t, p = await loop.create_connection(Collect, "127.0.0.1", port, ssl=certs.client(),
                                            server_hostname="localhost")
        assert t.get_extra_info("aiozcrx_engine") == engine
        t.write(b"hello over tls")
        await wait_until(lambda: p.data == b"hello over tls", "the echo")
        t.close()
        await p.lost
        server.close()
        await server.wait_closed()

        # connect_accepted_socket(ssl=): this end answers the handshake
        a, b = tcp_pair()
        client_task = asyncio.ensure_future(
            asyncio.open_connection(sock=b, ssl=certs.client(), server_hostname="localhost"))
        Echo.instances = []
        st, sp = await loop.connect_accepted_socket(Echo, a, ssl=certs.server())
        assert st.get_extra_info("aiozcrx_engine") == engine
        reader, writer = await client_task
        assert await echo_roundtrip(reader, writer, b"accepted") == b"accepted"
        writer.close()
        await asyncio.wait_for(sp.lost, 30)

        # loop.start_tls on a ZcrxTransport (uvloop's own would refuse it)
        server = await create_server(lambda: StartTlsServer(certs.server()), "127.0.0.1", 0, engine="socket")
        port = server.sockets[0].getsockname()[1]
        t, p = await loop.create_connection(lambda: Collect("client"), "127.0.0.1", port)
        assert type(t).__name__ == "ZcrxTransport"
        t.write(b"STARTTLS\r\n")
        await wait_until(lambda: p.data == b"OK\r\n", "OK")
        p.chunks.clear()
        tls = await loop.start_tls(t, p, certs.client(), server_hostname="localhost")
        tls.write(b"upgraded")
        await wait_until(lambda: p.data == b"upgraded", "the echo over TLS")
        tls.close()
        await p.lost
        if sys.version_info >= (3, 11):  # StreamWriter.start_tls goes through loop.start_tls
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"STARTTLS\r\n")
            assert await reader.readline() == b"OK\r\n"
            await writer.start_tls(certs.client(), server_hostname="localhost")
            assert writer.get_extra_info("aiozcrx_engine") == engine
            assert await echo_roundtrip(reader, writer, b"stream upgraded") == b"stream upgraded"
            writer.close()
            await writer.wait_closed()
        server.close()
        await server.wait_closed()
        return True

    assert _run_dropin(base, engine, main, monkeypatch)


# ---------------------------------------------------- real servers, real curl
@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
@pytest.mark.parametrize("kind", ["uvicorn-httptools", "aiohttp"])
def test_https_upload_through_the_dropin_loop(kind, loop, engine, certs, upload_file):
    """curl uploads 64 MiB over HTTPS to uvicorn / aiohttp on the drop-in loop,
    started with their own TLS options; the sha256 the app computed matches, and
    the loop's Receivers got the (encrypted) bytes."""
    from test_dropin import MiB as _MiB, Server, curl

    path, want = upload_file
    srv = Server(kind, loop, env_extra={"DROPIN_TLS_CERT": certs.cert, "DROPIN_TLS_KEY": certs.key,
                                        "AIOZCRX_ENGINE": engine})
    url = f"https://127.0.0.1:{srv.port}"
    try:
        got = curl("--cacert", certs.cert, "--data-binary", f"@{path}",
                   "-H", "Content-Type: application/octet-stream", f"{url}/upload")
        stats = json.loads(curl("--cacert", certs.cert, f"{url}/stats"))
    except BaseException as exc:
        raise AssertionError(f"{exc}\n--- server output:\n{srv.stop()}") from None
    finally:
        out = srv.stop()
    assert got.strip() == want, out
    assert stats["loop"].startswith("Zcrx"), stats
    assert stats["engines"] == [engine], stats
    assert stats["bytes"] >= 64 * _MiB, stats  # the ciphertext came through aiozcrx


@pytest.fixture(scope="module")
def upload_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("upload") / "64MiB.bin"
    data = os.urandom(64 * MiB)
    path.write_bytes(data)
    return str(path), hashlib.sha256(data).hexdigest()

"""ZcrxTransport and ZcrxServer against asyncio's own: ``get_extra_info`` (every key
the loop's socket and TLS transports answer), ``set_protocol``/``get_protocol``
mid-stream, Server ``close_clients()``/``abort_clients()``. Each scenario runs on
the loop's own transport or server as the reference, and on aiozcrx's, with the
same assertions. Every async test runs on the stock loop and on uvloop."""

from __future__ import annotations

import asyncio
import socket
import ssl
import sys
import threading

import pytest

import aiozcrx
from aiozcrx.server import create_connection, create_server
from peers import payload, tcp_pair, wait_until
from test_tls import Certs, certs, open_fds  # noqa: F401 - certs is a fixture

pytestmark = [pytest.mark.engines, pytest.mark.asyncio]
ENGINES = ["uring", "socket"]
KINDS = ["loop", *ENGINES]  # "loop": the running loop's own transport, the reference
MiB = 1 << 20

SOCKET_KEYS = ("socket", "sockname", "peername")
TLS_KEYS = ("sslcontext", "ssl_object", "peercert", "cipher", "compression")
MISSING = object()


def _describe(t: asyncio.BaseTransport, tls: bool) -> dict:
    """What a transport answers, in terms two different sockets can share."""
    sock = t.get_extra_info("socket")
    d = {
        # the protocol as the kernel has it (uvloop makes its sockets with proto 0)
        "socket": (sock.family, sock.type, sock.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL)),
        "sockname is the socket's": t.get_extra_info("sockname") == sock.getsockname(),
        "peername is the socket's": t.get_extra_info("peername") == sock.getpeername(),
        "peername": t.get_extra_info("peername"),
        "unknown key gives the default": t.get_extra_info("no such key", MISSING) is MISSING,
    }
    if not tls:
        for key in TLS_KEYS:
            d[key] = t.get_extra_info(key, MISSING) is MISSING
    else:
        d["ssl_object"] = type(t.get_extra_info("ssl_object"))
        d["peercert"] = t.get_extra_info("peercert")
        d["cipher"] = t.get_extra_info("cipher")
        d["compression"] = t.get_extra_info("compression")
    return d


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
async def test_get_extra_info_answers_as_the_loops_own_transport(engine, tls, certs):
    loop = asyncio.get_running_loop()
    server_ctx = certs.server() if tls else None
    ctx = certs.client() if tls else None
    tls_kw = {"ssl": ctx, "server_hostname": "localhost"} if tls else {}

    async def handler(reader, writer):
        await reader.read()
        writer.close()

    server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=server_ctx)
    addr = server.sockets[0].getsockname()
    ref_t, _ = await loop.create_connection(asyncio.Protocol, *addr, **tls_kw)
    our_t, _ = await create_connection(asyncio.Protocol, *addr, engine=engine, **tls_kw)
    try:
        assert _describe(our_t, tls) == _describe(ref_t, tls)
        assert our_t.get_extra_info("peername") == addr
        if tls:
            # the context passed in is the one reported, as asyncio does
            assert our_t.get_extra_info("sslcontext") is ctx
            assert ref_t.get_extra_info("sslcontext") is ctx
            assert our_t.get_extra_info("ssl_object").version() == ref_t.get_extra_info("ssl_object").version()
        # no key the stock loop's transports know is missing from the lists above
        if isinstance(loop, asyncio.SelectorEventLoop):
            known = set(ref_t._ssl_protocol._extra) if tls else set(ref_t._extra)
            assert known <= set(SOCKET_KEYS + TLS_KEYS), known
    finally:
        ref_t.close()
        our_t.close()
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("engine", ENGINES)
async def test_get_extra_info_server_side(engine):
    """An accepted connection: the loop's own server and an aiozcrx server answer
    the same for the same kind of client."""
    loop = asyncio.get_running_loop()
    made: dict[str, asyncio.Future] = {"loop": loop.create_future(), "ours": loop.create_future()}

    def factory(which):
        class P(asyncio.Protocol):
            def connection_made(self, transport):
                made[which].set_result(transport)
        return P

    ref = await loop.create_server(factory("loop"), "127.0.0.1", 0)
    ours = await create_server(factory("ours"), "127.0.0.1", 0, engine=engine)
    clients = []
    for srv in (ref, ours):
        clients.append(socket.create_connection(srv.sockets[0].getsockname()[:2]))
    try:
        ref_t = await asyncio.wait_for(made["loop"], 30)
        our_t = await asyncio.wait_for(made["ours"], 30)
        d_ref, d_ours = _describe(ref_t, False), _describe(our_t, False)
        assert d_ref.pop("peername") == clients[0].getsockname()
        assert d_ours.pop("peername") == clients[1].getsockname()
        assert d_ours == d_ref
    finally:
        for c in clients:
            c.close()
        for srv in (ref, ours):
            srv.close()
        await ours.wait_closed()


# ------------------------------------------------------------ set_protocol
class Part(asyncio.Protocol):
    """Collects what it is given; can switch the transport to ``successor`` once
    it has ``switch_at`` bytes, or pause there."""

    def __init__(self, switch_at: int | None = None, successor: asyncio.BaseProtocol | None = None,
                 pause_at: int | None = None):
        self.chunks: list[bytes] = []
        self.types: set[type] = set()
        self.switch_at, self.successor, self.pause_at = switch_at, successor, pause_at
        self.switched = False
        self.paused = False
        self.made = 0
        self.eof = False
        self.lost = asyncio.get_running_loop().create_future()

    @property
    def nbytes(self) -> int:
        return sum(map(len, self.chunks))

    def connection_made(self, transport):
        self.made += 1
        self.transport = transport

    def data_received(self, data):
        assert not self.switched, "data after set_protocol() went to the old protocol"
        self.types.add(type(data))
        self.chunks.append(bytes(data))
        if self.switch_at is not None and self.nbytes >= self.switch_at:
            self.transport.set_protocol(self.successor)
            self.successor.transport = self.transport
            assert self.transport.get_protocol() is self.successor
            self.switched = True
        if self.pause_at is not None and self.nbytes >= self.pause_at and not self.paused:
            self.transport.pause_reading()
            self.paused = True

    def eof_received(self):
        self.eof = True

    def connection_lost(self, exc):
        self.lost.set_result(exc)


class BufferedPart(asyncio.BufferedProtocol):
    def __init__(self):
        self.buf = bytearray(65536)
        self.chunks: list[bytes] = []
        self.eof = False
        self.made = 0
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.made += 1

    def get_buffer(self, sizehint):
        return self.buf

    def buffer_updated(self, nbytes):
        self.chunks.append(bytes(self.buf[:nbytes]))

    def eof_received(self):
        self.eof = True

    def connection_lost(self, exc):
        self.lost.set_result(exc)


class ViewPart(Part, aiozcrx.ViewProtocol):
    pass


async def _attach(kind: str, sock: socket.socket, factory, views: str = "always"):
    """(transport, protocol, closer) on the loop's own transport or an aiozcrx one."""
    loop = asyncio.get_running_loop()
    if kind == "loop":
        t, p = await loop.connect_accepted_socket(factory, sock)
        return t, p, None
    rx = aiozcrx.Receiver(engine=kind, views=views)
    rx.open()
    t, p = await rx.wrap(sock, factory)
    return t, p, rx


def _send_then_close(sock: socket.socket, data: bytes) -> threading.Thread:
    def run():
        with sock:
            sock.sendall(data)
    th = threading.Thread(target=run)
    th.start()
    return th


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("successor", ["protocol", "buffered"])
async def test_set_protocol_inside_data_received(kind, successor):
    """Switching inside data_received: the bytes after the switch go to the new
    protocol, none lost or repeated, in order; the new protocol gets
    eof_received and connection_lost, not connection_made (as asyncio)."""
    data = payload(21, 4 * MiB + 7)
    a, b = tcp_pair()
    new = Part() if successor == "protocol" else BufferedPart()
    t, first, rx = await _attach(kind, a, lambda: Part(switch_at=MiB, successor=new))
    th = _send_then_close(b, data)
    try:
        assert await asyncio.wait_for(new.lost, 60) is None
        assert first.switched and not first.lost.done()
        assert b"".join(first.chunks) + b"".join(new.chunks) == data
        assert new.eof and new.made == 0 and first.made == 1
    finally:
        await asyncio.get_running_loop().run_in_executor(None, th.join, 60)
        if rx is not None:
            rx.close()


@pytest.mark.parametrize("kind", KINDS)
async def test_set_protocol_while_paused(kind):
    """Paused, switched from outside any callback, resumed: the new protocol gets
    everything the old one did not (what aiozcrx kept back while pausing too)."""
    data = payload(22, 4 * MiB + 3)
    a, b = tcp_pair()
    t, first, rx = await _attach(kind, a, lambda: Part(pause_at=MiB))
    th = _send_then_close(b, data)
    try:
        await wait_until(lambda: first.paused, "the first protocol has paused reading")
        new = Part()
        new.transport = t
        t.set_protocol(new)
        t.resume_reading()
        assert await asyncio.wait_for(new.lost, 60) is None
        assert b"".join(first.chunks) + b"".join(new.chunks) == data
        assert new.eof and not first.lost.done()
    finally:
        await asyncio.get_running_loop().run_in_executor(None, th.join, 60)
        if rx is not None:
            rx.close()


@pytest.mark.parametrize("engine", ENGINES)
async def test_set_protocol_follows_the_views_decision(engine):
    """Receiver(views="opt-in"): a bytes protocol switched to a ViewProtocol gets
    views from then on (and the other way round gets bytes)."""
    data = payload(23, 2 * MiB)
    a, b = tcp_pair()
    viewer = ViewPart(switch_at=MiB, successor=Part())
    t, first, rx = await _attach(engine, a, lambda: Part(switch_at=MiB // 2, successor=viewer),
                                 views="opt-in")
    th = _send_then_close(b, data)
    try:
        last = viewer.successor
        assert await asyncio.wait_for(last.lost, 60) is None
        assert b"".join(first.chunks + viewer.chunks + last.chunks) == data
        assert first.types == {bytes} and last.types <= {bytes}
        assert viewer.types == {memoryview}
    finally:
        await asyncio.get_running_loop().run_in_executor(None, th.join, 60)
        rx.close()


@pytest.mark.parametrize("engine", ENGINES)
async def test_set_protocol_on_the_tls_transport(engine, certs):
    """Over TLS the application's transport is asyncio's SSL transport: its
    set_protocol switches the plaintext stream, none lost or repeated."""
    data = payload(24, 3 * MiB + 1)

    async def handler(reader, writer):
        writer.write(data)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=certs.server())
    new = Part()
    t, first = await create_connection(lambda: Part(switch_at=MiB, successor=new),
                                       *server.sockets[0].getsockname()[:2], engine=engine,
                                       ssl=certs.client(), server_hostname="localhost")
    try:
        assert await asyncio.wait_for(new.lost, 60) is None
        assert b"".join(first.chunks) + b"".join(new.chunks) == data
    finally:
        server.close()
        await server.wait_closed()


# -------------------------------------------------- close_clients / abort_clients
class Flood(asyncio.Protocol):
    """Writes ``DATA`` at once: more than the socket buffers hold, so the rest
    waits in the transport's write buffer."""

    DATA = payload(25, 16 * MiB)
    made: list["Flood"] = []

    def __init__(self):
        self.lost = asyncio.get_running_loop().create_future()
        Flood.made.append(self)

    def connection_made(self, transport):
        self.transport = transport
        transport.write(self.DATA)

    def connection_lost(self, exc):
        self.lost.set_result(exc)


async def _server(kind: str):
    loop = asyncio.get_running_loop()
    if kind == "loop":
        if sys.version_info < (3, 13):
            pytest.skip("asyncio's Server.close_clients()/abort_clients() are 3.13+ (aiozcrx's "
                        "exist on every Python: the other parameters)")
        if not isinstance(loop, asyncio.SelectorEventLoop):
            pytest.skip("uvloop's Server has no close_clients()/abort_clients() (the reference "
                        "is asyncio's 3.13 Server)")
        return await loop.create_server(Flood, "127.0.0.1", 0)
    return await create_server(Flood, "127.0.0.1", 0, engine=kind)


async def _slow_clients(addr, n: int) -> list[socket.socket]:
    """Clients with a small receive buffer (no autotuning), not reading yet."""
    loop = asyncio.get_running_loop()
    out = []
    for _ in range(n):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        s.setblocking(False)
        await loop.sock_connect(s, addr)
        out.append(s)
    return out


async def _read_all(s: socket.socket) -> tuple[int, str]:
    """Bytes read until the end, and how it ended ("eof" or "reset")."""
    loop = asyncio.get_running_loop()
    n = 0
    try:
        while True:
            chunk = await loop.sock_recv(s, 1 << 18)
            if not chunk:
                return n, "eof"
            n += len(chunk)
    except ConnectionResetError:
        return n, "reset"


@pytest.mark.parametrize("kind", KINDS)
async def test_close_clients_flushes_then_closes_and_keeps_serving(kind):
    fds = open_fds()
    Flood.made = []
    server = await _server(kind)
    addr = server.sockets[0].getsockname()[:2]
    clients = await _slow_clients(addr, 3)
    try:
        await wait_until(lambda: len(Flood.made) == 3 and all(
            hasattr(p, "transport") and p.transport.get_write_buffer_size() > 0 for p in Flood.made),
            "every connection has data waiting in its transport's write buffer")
        server.close_clients()
        assert all(p.transport.is_closing() for p in Flood.made)
        await asyncio.sleep(0)
        assert not any(p.lost.done() for p in Flood.made), "closed before its buffer was written"
        results = await asyncio.gather(*(_read_all(c) for c in clients))
        assert results == [(len(Flood.DATA), "eof")] * 3   # all of it, then a clean end
        assert await asyncio.gather(*(p.lost for p in Flood.made)) == [None] * 3
        assert server.is_serving()                          # still accepting
        (late,) = await _slow_clients(addr, 1)
        clients.append(late)
        await wait_until(lambda: len(Flood.made) == 4 and hasattr(Flood.made[3], "transport"),
                         "the server accepted another client (connection_made has run)")
        server.close()
        server.close_clients()                              # lets wait_closed() return
        assert await _read_all(late) == (len(Flood.DATA), "eof")
        await asyncio.wait_for(server.wait_closed(), 60)
    finally:
        for c in clients:
            c.close()
        server.close()
    assert open_fds() == fds


@pytest.mark.parametrize("kind", KINDS)
async def test_abort_clients_drops_the_write_buffers(kind):
    fds = open_fds()
    Flood.made = []
    server = await _server(kind)
    addr = server.sockets[0].getsockname()[:2]
    clients = await _slow_clients(addr, 3)
    try:
        await wait_until(lambda: len(Flood.made) == 3 and all(
            hasattr(p, "transport") and p.transport.get_write_buffer_size() > 0 for p in Flood.made),
            "every connection has data waiting in its transport's write buffer")
        server.abort_clients()
        assert all(p.transport.is_closing() for p in Flood.made)
        # connection_lost(None) without waiting for any client to read
        assert await asyncio.wait_for(asyncio.gather(*(p.lost for p in Flood.made)), 30) == [None] * 3
        for n, how in await asyncio.gather(*(_read_all(c) for c in clients)):
            assert n < len(Flood.DATA)                      # what was buffered is gone
        assert server.is_serving()
        server.close()
        await asyncio.wait_for(server.wait_closed(), 60)
    finally:
        for c in clients:
            c.close()
        server.close()
    assert open_fds() == fds

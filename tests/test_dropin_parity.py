"""The drop-in loop against its own base loop, on what uvloop's own test suite
(`make test-peers`, tests/peer/) found different. Each scenario runs on the base
loop (uvloop's, or the stock asyncio loop) as the reference, then on aiozcrx's
drop-in loop over that base, and must see the same."""

from __future__ import annotations

import asyncio
import contextvars
import socket
import ssl
import sys

import pytest
import uvloop

import aiozcrx
from test_tls import certs  # noqa: F401 - a fixture

BASES = ["uvloop", "asyncio"]


def run_on(loop_kind: str, base: str, coro_fn, monkeypatch):
    """``coro_fn()`` on a new loop: the base loop ("base") or the drop-in loop over
    it ("dropin")."""
    if loop_kind == "base":
        loop = uvloop.new_event_loop() if base == "uvloop" else asyncio.new_event_loop()
    else:
        monkeypatch.setenv("AIOZCRX_LOOP", base)
        loop = aiozcrx.new_event_loop()
        assert type(loop).__name__.startswith("Zcrx")
    try:
        return loop.run_until_complete(asyncio.wait_for(coro_fn(), 60))
    finally:
        loop.close()


def both(base: str, coro_fn, monkeypatch):
    """(what the base loop sees, what the drop-in loop sees)."""
    return (run_on("base", base, coro_fn, monkeypatch),
            run_on("dropin", base, coro_fn, monkeypatch))


def nodelay(t: asyncio.BaseTransport) -> bool:
    return bool(t.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))


@pytest.mark.parametrize("base", BASES)
def test_tcp_nodelay_as_the_base_loop_sets_it(base, monkeypatch):
    """uvloop sets TCP_NODELAY on every TCP transport; asyncio only where the socket
    object says proto == IPPROTO_TCP (not on a plain ``socket.socket()``, proto 0).
    uvloop's test_create_server_1 / test_create_connection_open_con_sock."""

    async def scenario():
        loop = asyncio.get_running_loop()
        seen = {}
        accepted = loop.create_future()

        class Server(asyncio.Protocol):
            def connection_made(self, t):
                accepted.set_result(nodelay(t))

        for name, listener in (("proto 0", socket.socket()),
                               ("proto 6", socket.socket(socket.AF_INET, socket.SOCK_STREAM,
                                                         socket.IPPROTO_TCP))):
            listener.bind(("127.0.0.1", 0))
            server = await loop.create_server(Server, sock=listener)
            addr = server.sockets[0].getsockname()
            client = socket.socket(listener.family, listener.type, listener.proto)
            client.connect(addr)
            t, _ = await loop.create_connection(asyncio.Protocol, sock=client)
            seen[name] = (await accepted, nodelay(t))
            accepted = loop.create_future()
            t.close()
            server.close()
            await server.wait_closed()
        return seen

    ref, ours = both(base, scenario, monkeypatch)
    assert ours == ref
    assert ref["proto 6"] == (True, True)


def error_of(awaitable_fn):
    async def scenario():
        try:
            await awaitable_fn()
        except Exception as e:
            return type(e), str(e)
        return None
    return scenario


@pytest.mark.parametrize("base", BASES)
def test_create_server_without_an_address(base, monkeypatch):
    """No host, no port, no sock: a ValueError, not a bind on every interface at a
    port name lookup cannot resolve (uvloop's test_create_server_2)."""
    scenario = error_of(lambda: asyncio.get_running_loop().create_server(asyncio.Protocol))
    ref, ours = both(base, scenario, monkeypatch)
    assert ours == ref
    assert ref[0] is ValueError


@pytest.mark.parametrize("how", ["create_connection", "connect_accepted_socket"])
@pytest.mark.parametrize("base", BASES)
def test_connection_setup_cancelled_at_once(base, how, monkeypatch):
    """``create_connection(sock=)`` / ``connect_accepted_socket`` cancelled right after
    their first step: cancelled (not done), and the socket closed with the new
    transport (uvloop's test_create_connection_sock_cancel_detaches and _fd_leak)."""

    async def scenario():
        loop = asyncio.get_running_loop()
        lst = socket.create_server(("127.0.0.1", 0))
        a = socket.create_connection(lst.getsockname())
        b, _ = lst.accept()
        lst.close()
        sock = a if how == "create_connection" else b
        events = []

        class P(asyncio.Protocol):
            def connection_made(self, t):
                events.append("made")

            def connection_lost(self, exc):
                events.append("lost")

        task = asyncio.ensure_future(getattr(loop, how)(P, sock=sock))
        await asyncio.sleep(0)
        task.cancel()
        try:
            await task
            outcome = "done"
        except asyncio.CancelledError:
            outcome = "cancelled"
        fileno = sock.fileno()
        await asyncio.sleep(0.01)
        (b if sock is a else a).close()
        return outcome, fileno, events

    ref, ours = both(base, scenario, monkeypatch)
    assert ours[:2] == ref[:2] == ("cancelled", -1)
    # the protocol hears of it as on asyncio (connection_made, then connection_lost);
    # uvloop drops such a transport without connection_lost, aiozcrx does not
    assert ours[2] == ["made", "lost"]
    if base == "asyncio":
        assert ref[2] == ours[2]


@pytest.mark.parametrize("base", BASES)
def test_start_tls_argument_errors(base, monkeypatch):
    """A wrong sslcontext is reported first, then a transport the loop cannot
    upgrade, with the base loop's types and words (uvloop's test_start_tls_wrong_args)."""

    async def scenario():
        loop = asyncio.get_running_loop()
        seen = []
        for ctx in (None, ssl.create_default_context()):
            try:
                await loop.start_tls(None, None, ctx)
            except Exception as e:
                seen.append((type(e), str(e)))
        return seen

    ref, ours = both(base, scenario, monkeypatch)
    assert ours == ref
    assert "SSLContext, got None" in ref[0][1] and "is not supported by start_tls()" in ref[1][1]


class TlsInTlsServer(asyncio.Protocol):
    """The server of TLS over TLS: its own start_tls (the second layer) on the
    transport of the first, then an echo.

    It pauses reading in ``connection_made``: the client's inner ClientHello may
    arrive in the same read as its outer Finished, and the outer SSL protocol
    delivers it right after ``connection_made`` (asyncio's ``_on_handshake_complete``
    then ``_do_read``); without the pause those bytes reach this protocol's
    ``data_received`` before ``start_tls`` runs (a task, one iteration later) and
    the inner handshake waits for ever, on any loop. Whether the two records
    share a read is timing (a late wake-up coalesces them), so the test pauses as
    a correct server must. What arrives after the inner handshake but before
    ``start_tls`` has returned its transport is kept (``early``) and echoed then."""

    def __init__(self, ctx):
        self.ctx = ctx
        self.transport = None
        self.early = b""

    def connection_made(self, transport):
        transport.pause_reading()  # start_tls resumes it, on its new protocol

        async def upgrade():
            inner = await asyncio.get_running_loop().start_tls(transport, self, self.ctx,
                                                               server_side=True)
            self.transport = inner
            if self.early:
                inner.write(self.early.upper())
        self.task = asyncio.ensure_future(upgrade())

    def data_received(self, data):
        if self.transport is None:
            self.early += data
        else:
            self.transport.write(data.upper())


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio's SSL transport takes start_tls "
                    "from 3.11 on (_start_tls_compatible): on 3.10 both base loops refuse TLS over TLS, "
                    "and so does the drop-in loop")
@pytest.mark.parametrize("base", BASES)
def test_start_tls_over_tls(base, certs, monkeypatch):
    """start_tls on a TLS transport (TLS over TLS), both ends on the loop: the
    uvloop base's start_tls refuses asyncio's SSL transport, the drop-in loop
    upgrades it itself (uvloop's test_create_server_ssl_over_ssl)."""

    async def scenario():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: TlsInTlsServer(certs.server()), "127.0.0.1", 0,
                                          ssl=certs.server())
        port = server.sockets[0].getsockname()[1]
        got = loop.create_future()

        class Client(asyncio.Protocol):
            def data_received(self, data):
                got.set_result(data)

        proto = Client()
        outer, _ = await loop.create_connection(lambda: proto, "127.0.0.1", port,
                                                ssl=certs.client(), server_hostname="localhost")
        inner = await loop.start_tls(outer, proto, certs.client(), server_hostname="localhost")
        inner.write(b"tls in tls")
        data = await got
        layers = type(inner.get_extra_info("ssl_object")).__name__
        inner.close()
        server.close()
        await server.wait_closed()
        return data, layers

    ref, ours = both(base, scenario, monkeypatch)
    assert ours == ref == (b"TLS IN TLS", "SSLObject")


@pytest.mark.parametrize("base", BASES)
def test_buffered_protocol_by_duck_typing(base, monkeypatch):
    """A protocol with get_buffer/buffer_updated that does not derive from
    asyncio.BufferedProtocol: uvloop feeds it through them (asyncio calls its
    data_received, which it lacks). uvloop's test_create_server_buffered_1."""

    async def scenario():
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        loop.set_exception_handler(lambda loop, ctx: None)  # asyncio: the AttributeError

        class Proto(asyncio.BaseProtocol):
            got = b""

            def get_buffer(self, sizehint):
                self.buf = bytearray(50)
                return self.buf

            def buffer_updated(self, n):
                self.got += bytes(self.buf[:n])

            def eof_received(self):
                pass

            def connection_lost(self, exc):
                done.set_result((self.got, type(exc)))

        server = await loop.create_server(Proto, "127.0.0.1", 0)
        with socket.create_connection(server.sockets[0].getsockname()) as s:
            s.sendall(b"a" * 1000)
            s.shutdown(socket.SHUT_WR)
            result = await done
        server.close()
        await server.wait_closed()
        return result

    ref, ours = both(base, scenario, monkeypatch)
    assert ours == ref
    assert ref == ((b"a" * 1000, type(None)) if base == "uvloop" else (b"", AttributeError))


@pytest.mark.parametrize("base", BASES)
def test_a_transports_fd_is_its_own(base, monkeypatch):
    """add_reader/add_writer/remove_reader/remove_writer on the fd of an open
    transport raise RuntimeError, as both base loops do for theirs; the transport
    goes on working (uvloop's test_transport_get_extra_info)."""

    async def scenario():
        loop = asyncio.get_running_loop()

        async def echo(reader, writer):
            writer.write(await reader.read(100))
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname())
        fd = writer.get_extra_info("socket").fileno()
        seen = []
        for call in (lambda: loop.add_reader(fd, print), lambda: loop.add_writer(fd, print),
                     lambda: loop.remove_reader(fd), lambda: loop.remove_writer(fd)):
            try:
                call()
                seen.append("allowed")
            except RuntimeError as e:
                seen.append("is used by transport" in str(e))
        writer.write(b"still works")
        seen.append(await reader.read(100))
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        return seen

    ref, ours = both(base, scenario, monkeypatch)
    assert ours == ref == [True, True, True, True, b"still works"]


CVAR: contextvars.ContextVar[str] = contextvars.ContextVar("aiozcrx_parity", default="outer")


class Ctx(asyncio.Protocol):
    """Records the context variable each callback sees; sets it in some."""

    def __init__(self, views=False):
        loop = asyncio.get_running_loop()
        self.seen: dict[str, str] = {}
        self.first = loop.create_future()
        self.lost = loop.create_future()
        self.paused = loop.create_future()

    def connection_made(self, t):
        self.seen["connection_made"] = CVAR.get()
        CVAR.set("set in connection_made")

    def data_received(self, data):
        self.seen.setdefault("data_received", CVAR.get())
        if not self.first.done():
            self.first.set_result(None)

    def eof_received(self):
        self.seen["eof_received"] = CVAR.get()
        return True

    def pause_writing(self):
        self.seen["pause_writing"] = CVAR.get()
        self.paused.set_result(None)

    def resume_writing(self):
        self.seen["resume_writing"] = CVAR.get()

    def connection_lost(self, exc):
        self.seen["connection_lost"] = CVAR.get()
        self.lost.set_result(None)


class CtxViews(Ctx, aiozcrx.ViewProtocol):
    pass


class CtxBuffered(Ctx, asyncio.BufferedProtocol):
    def get_buffer(self, sizehint):
        self.buf = bytearray(4096)
        return self.buf

    def buffer_updated(self, n):
        Ctx.data_received(self, bytes(self.buf[:n]))


@pytest.mark.parametrize("proto", [Ctx, CtxViews, CtxBuffered], ids=["bytes", "views", "buffered"])
@pytest.mark.parametrize("base", BASES)
def test_callback_contexts(base, proto, monkeypatch):
    """Which context each protocol callback runs in: the reading ones in a context
    of the connection's own, made from where it was made (two client connections
    of one loop made in different contexts each see their own; on aiozcrx they
    shared their Receiver's); pause_writing, resume_writing and connection_lost
    in the caller's on asyncio and in the connection's on uvloop, which also
    shows data_received what connection_made set (uvloop's test_context.py).
    asyncio 3.15+ gives each transport a context too: connection_made,
    data_received, resume_writing and connection_lost run in it there,
    pause_writing in write()'s caller's."""

    async def scenario():
        loop = asyncio.get_running_loop()
        lst = socket.create_server(("127.0.0.1", 0))
        results = []
        for name in ("A", "B"):
            async def connect():
                CVAR.set(name)
                return await loop.create_connection(proto, *lst.getsockname())
            t, p = await loop.create_task(connect())
            peer, _ = lst.accept()
            peer.sendall(b"x")
            await p.first
            peer.shutdown(socket.SHUT_WR)
            await asyncio.sleep(0.05)

            def fill():
                CVAR.set("writer")
                t.set_write_buffer_limits(high=1024, low=0)
                while not p.paused.done():
                    t.write(b"q" * 65536)
            fill()
            peer.setblocking(False)
            while "resume_writing" not in p.seen:
                try:
                    while peer.recv(1 << 20):
                        pass
                except BlockingIOError:
                    pass
                await asyncio.sleep(0.01)

            def close():
                CVAR.set("closer")
                t.close()
            loop.call_soon(close)
            await p.lost
            peer.close()
            results.append(p.seen)
        lst.close()
        return results, CVAR.get()

    ref, ours = both(base, scenario, monkeypatch)
    assert ours == ref
    connection_context = base == "uvloop" or sys.version_info >= (3, 15)
    assert [r["data_received"] for r in ref[0]] == (
        ["set in connection_made"] * 2 if connection_context else ["A", "B"])

"""aiozcrx.server: create_server / create_connection on the engines this kernel
runs. Each async test runs on asyncio and uvloop (conftest hook)."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import threading

import pytest

from aiozcrx.receiver import Receiver
from aiozcrx.server import ZcrxServer, create_connection, create_server
from peers import join, payload, start_sender, stream_sha256, wait_until
from test_streams import open_fds

pytestmark = [pytest.mark.engines, pytest.mark.asyncio]
ENGINES = ["uring", "socket"]
MiB = 1 << 20


class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, view):
        self.transport.write(view)

    def eof_received(self):
        return False


class Sink(asyncio.Protocol):
    def __init__(self):
        self.sha = hashlib.sha256()
        self.bytes = 0
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, view):
        assert isinstance(view, (memoryview, bytes))
        self.sha.update(view)
        self.bytes += len(view)

    def eof_received(self):
        return False

    def connection_lost(self, exc):
        if not self.lost.done():
            self.lost.set_result(exc)


def echo_client(port: int, data: bytes, out: dict, key) -> None:
    """Blocking client in a thread: sends data while reading the echo."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        got = []

        def reader():
            while True:
                b = s.recv(1 << 16)
                if not b:
                    break
                got.append(b)

        t = threading.Thread(target=reader)
        t.start()
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        t.join(30)
        out[key] = b"".join(got)


@pytest.mark.parametrize("engine", ENGINES)
async def test_echo_server_threads(engine):
    fds = open_fds()
    loop = asyncio.get_running_loop()
    server = await create_server(Echo, "127.0.0.1", 0, engine=engine)
    assert isinstance(server, ZcrxServer)
    assert server.is_serving() and server.get_loop() is loop
    rx = server.receiver
    assert rx.engine == engine
    port = server.sockets[0].getsockname()[1]
    datas = {i: payload(i, (i + 1) * 700_001) for i in range(4)}
    out: dict = {}
    threads = [threading.Thread(target=echo_client, args=(port, d, out, i)) for i, d in datas.items()]
    for t in threads:
        t.start()
    await asyncio.wait_for(loop.run_in_executor(None, lambda: [t.join() for t in threads]), 60)
    for i, d in datas.items():
        assert hashlib.sha256(out[i]).digest() == hashlib.sha256(d).digest()
    async with server:
        pass
    assert not server.is_serving() and server.sockets == ()
    stats = rx.stats()
    assert stats["buffers_outstanding"] == 0 and stats["connections"] == 0
    assert rx._closed
    assert open_fds() == fds


@pytest.mark.parametrize("engine", ENGINES)
async def test_bulk_from_other_process(engine):
    fds = open_fds()
    protos = []
    got = asyncio.Event()

    def factory():
        p = Sink()
        protos.append(p)
        got.set()
        return p

    total = 32 * MiB
    server = await create_server(factory, "127.0.0.1", 0, engine=engine, area_size=4 * MiB)
    proc = start_sender(server.sockets[0].getsockname()[1], 11, total)
    await asyncio.wait_for(got.wait(), 30)
    assert await asyncio.wait_for(protos[0].lost, 60) is None
    assert await join(proc) == 0
    assert protos[0].bytes == total
    assert protos[0].sha.hexdigest() == stream_sha256(11, total)
    server.close()
    await asyncio.wait_for(server.wait_closed(), 10)
    assert server.receiver.stats()["buffers_outstanding"] == 0
    assert open_fds() == fds


async def test_wait_closed_waits_for_connections():
    server = await create_server(Echo, "127.0.0.1", 0, engine="uring")
    port = server.sockets[0].getsockname()[1]
    s = socket.create_connection(("127.0.0.1", port))
    await wait_until(lambda: server.receiver.stats()["connections"], "the connection is attached")
    server.close()
    waiter = asyncio.ensure_future(server.wait_closed())
    await asyncio.sleep(0.05)
    assert not waiter.done()  # the connection is still open
    s.close()                  # EOF -> Echo closes its side
    await asyncio.wait_for(waiter, 10)
    assert server.receiver._closed


async def test_serve_forever_cancel_and_abort_clients():
    fds = open_fds()
    server = await create_server(Echo, "127.0.0.1", 0, engine="socket", start_serving=False)
    assert not server.is_serving()
    port = server.sockets[0].getsockname()[1]
    task = asyncio.ensure_future(server.serve_forever())
    await asyncio.sleep(0)
    assert server.is_serving()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"ping")
    assert await asyncio.wait_for(reader.readexactly(4), 10) == b"ping"
    server.abort_clients()
    assert await asyncio.wait_for(reader.read(), 10) == b""
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not server.is_serving() and server.receiver._closed
    writer.close()
    await writer.wait_closed()
    assert open_fds() == fds


async def test_factory_error_reported_server_keeps_serving():
    loop = asyncio.get_running_loop()
    errors = []
    loop.set_exception_handler(lambda loop, ctx: errors.append(ctx))
    calls = 0

    def factory():
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ValueError("boom")
        return Echo()

    try:
        async with await create_server(factory, "127.0.0.1", 0, engine="uring") as server:
            port = server.sockets[0].getsockname()[1]
            r1, w1 = await asyncio.open_connection("127.0.0.1", port)
            assert await asyncio.wait_for(r1.read(), 10) == b""  # closed at once
            w1.close()
            r2, w2 = await asyncio.open_connection("127.0.0.1", port)
            w2.write(b"hello")
            w2.write_eof()
            assert await asyncio.wait_for(r2.read(), 10) == b"hello"
            w2.close()
        assert server.receiver.stats()["buffers_outstanding"] == 0
    finally:
        loop.set_exception_handler(None)
    assert any(isinstance(c.get("exception"), ValueError) for c in errors)


async def test_bad_arguments():
    with pytest.raises(TypeError, match="SSLContext"):  # a server needs its certificate
        await create_server(Echo, "127.0.0.1", 0, ssl=True)
    with pytest.raises(TypeError):
        await create_server(Echo, "127.0.0.1", 0, nonsense=1)
    with pytest.raises(ValueError, match="engine"):
        await create_server(Echo, "127.0.0.1", 0, engine="nope")
    with pytest.raises(ConnectionRefusedError):
        lst = socket.create_server(("127.0.0.1", 0))
        port = lst.getsockname()[1]
        lst.close()
        await create_connection(Sink, "127.0.0.1", port)


@pytest.mark.parametrize("engine", ENGINES)
async def test_create_connection_owns_receiver(engine):
    """Client side against a plain asyncio server; its Receiver closes with it."""
    fds = open_fds()
    data = payload(5, 6 * MiB + 123)

    async def handler(reader, writer):
        writer.write(data)
        await writer.drain()
        writer.close()

    plain = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = plain.sockets[0].getsockname()[1]
    transport, proto = await create_connection(Sink, "127.0.0.1", port, engine=engine)
    rx = transport._link.owner
    assert rx.engine == engine
    assert transport.get_extra_info("peername")[1] == port
    assert await asyncio.wait_for(proto.lost, 30) is None
    await asyncio.sleep(0)
    assert rx._closed and rx.stats()["buffers_outstanding"] == 0
    assert proto.sha.digest() == hashlib.sha256(data).digest()
    plain.close()
    await plain.wait_closed()
    assert open_fds() == fds


async def test_create_connection_shared_receiver():
    fds = open_fds()
    plain = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = plain.sockets[0].getsockname()[1]
    async with Receiver(engine="uring") as rx:
        pairs = [await create_connection(Sink, "127.0.0.1", port, receiver=rx) for _ in range(3)]
        for _t, p in pairs:
            await asyncio.wait_for(p.lost, 10)
        await asyncio.sleep(0)
        assert not rx._closed and rx.stats()["connections"] == 0
    assert rx.stats()["buffers_outstanding"] == 0
    plain.close()
    await plain.wait_closed()
    assert open_fds() == fds


async def test_copy_mode_delivers_bytes():
    types = set()

    class Types(Echo):
        def data_received(self, data):
            types.add(type(data))
            super().data_received(data)

    async with await create_server(Types, "127.0.0.1", 0, engine="uring", copy=True) as server:
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        data = payload(2, 1 * MiB)
        writer.write(data)
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), 30) == data
        writer.close()
        await writer.wait_closed()
    assert types == {bytes}

"""aiozcrx.anyio: ByteStreams on anyio's asyncio backend (stock loop and uvloop);
trio is refused with a clear error."""

from __future__ import annotations

import hashlib
import importlib.util
import socket
import threading

import anyio
import anyio.abc
import pytest

from aiozcrx.anyio import ZcrxListener, ZcrxStream, connect_tcp, create_tcp_listener
from peers import payload
from test_streams import open_fds

pytestmark = pytest.mark.engines
BACKENDS = [pytest.param({"backend": "asyncio"}, id="asyncio"),
            pytest.param({"backend": "asyncio", "backend_options": {"use_uvloop": True}},
                         id="uvloop")]
MiB = 1 << 20


def run(fn, how):
    return anyio.run(fn, **how)


@pytest.mark.parametrize("engine", ["uring", "socket"])
@pytest.mark.parametrize("how", BACKENDS)
def test_listener_connect_round_trip(how, engine):
    fds = open_fds()
    data = payload(21, 4 * MiB + 5)

    async def main():
        listener = await create_tcp_listener("127.0.0.1", 0, engine=engine)
        assert isinstance(listener, ZcrxListener)
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        assert listener.server.receiver.engine == engine

        async def handler(stream):
            # echo with zero-copy views; send() copies what the socket does not take
            async with stream:
                assert isinstance(stream, anyio.abc.ByteStream)
                while True:
                    try:
                        view = await stream.receive_view()
                    except anyio.EndOfStream:
                        break
                    with view:
                        assert isinstance(view, memoryview) and view.readonly
                        await stream.send(view)
                await stream.send_eof()

        async with anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, handler)
            stream = await connect_tcp("127.0.0.1", port, engine=engine)
            assert isinstance(stream, ZcrxStream)
            assert stream.extra(anyio.abc.SocketAttribute.remote_port) == port
            assert stream.extra(anyio.abc.SocketAttribute.remote_address) == ("127.0.0.1", port)

            async def sender():
                for i in range(0, len(data), 1 << 20):
                    await stream.send(data[i:i + (1 << 20)])
                await stream.send_eof()

            tg.start_soon(sender)
            h = hashlib.sha256()
            n = 0
            while True:
                try:
                    chunk = await stream.receive(100_000)
                except anyio.EndOfStream:
                    break
                assert isinstance(chunk, bytes) and 0 < len(chunk) <= 100_000
                h.update(chunk)
                n += len(chunk)
            assert n == len(data) and h.digest() == hashlib.sha256(data).digest()
            rx = stream.transport._receiver
            await stream.aclose()
            with pytest.raises(anyio.ClosedResourceError):
                await stream.receive()
            tg.cancel_scope.cancel()
        await anyio.sleep(0)
        assert rx._closed and rx.stats()["buffers_outstanding"] == 0
        await listener.aclose()
        with anyio.fail_after(10):
            await listener.wait_closed()
        assert listener.server.receiver.stats()["buffers_outstanding"] == 0

    run(main, how)
    assert open_fds() == fds


@pytest.mark.parametrize("how", BACKENDS)
def test_connect_tcp_plain_peer_eof_and_views(how):
    """connect_tcp against a plain socket server in a thread; views released."""
    fds = open_fds()
    data = payload(8, 2 * MiB)
    lst = socket.create_server(("127.0.0.1", 0))
    port = lst.getsockname()[1]

    def serve():
        conn, _ = lst.accept()
        with conn:
            conn.sendall(data)
            conn.shutdown(socket.SHUT_WR)
            rest = b""
            while b := conn.recv(65536):
                rest += b
        result.append(rest)

    result = []
    t = threading.Thread(target=serve)
    t.start()

    async def main():
        async with await connect_tcp("127.0.0.1", port, engine="uring", read_high=64 * 1024) as s:
            h = hashlib.sha256()
            views = []
            while True:
                try:
                    v = await s.receive_view(50_000)
                except anyio.EndOfStream:
                    break
                assert len(v) <= 50_000
                h.update(v)
                views.append(v)
                if len(views) > 8:
                    views.pop(0).release()
            assert h.digest() == hashlib.sha256(data).digest()
            rx = s.transport._receiver
            assert rx.stats()["buffers_outstanding"] > 0  # the views still held
            for v in views:
                v.release()
            assert rx.stats()["buffers_outstanding"] == 0
            with pytest.raises(anyio.EndOfStream):
                await s.receive()
            await s.send(b"bye")
            await s.send_eof()
        await anyio.sleep(0)
        assert rx._closed

    run(main, how)
    t.join(10)
    lst.close()
    assert result == [b"bye"]
    assert open_fds() == fds


@pytest.mark.skipif(importlib.util.find_spec("trio") is None,
                    reason="trio is not installed (not in the test extra)")
def test_trio_refused():
    async def main():
        with pytest.raises(RuntimeError, match="trio is not supported"):
            await connect_tcp("127.0.0.1", 1)
        with pytest.raises(RuntimeError, match="trio is not supported"):
            await create_tcp_listener("127.0.0.1", 0)

    anyio.run(main, backend="trio")


@pytest.mark.parametrize("how", BACKENDS)
def test_receive_cancelled_then_usable(how):
    fds = open_fds()

    async def main():
        lst = socket.create_server(("127.0.0.1", 0))
        port = lst.getsockname()[1]
        s = await connect_tcp("127.0.0.1", port)
        conn, _ = lst.accept()
        with anyio.move_on_after(0.05) as scope:
            await s.receive()
        assert scope.cancelled_caught
        conn.sendall(b"abc")
        assert await s.receive() == b"abc"
        conn.close()
        with pytest.raises(anyio.EndOfStream):
            await s.receive()
        await s.aclose()
        lst.close()

    run(main, how)
    assert open_fds() == fds

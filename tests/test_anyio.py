"""aiozcrx.anyio: ByteStreams on anyio's asyncio backend (stock loop and uvloop) and
on its trio backend. Every test runs on all three (``how``); the engines are
uring and socket on the host, and zcrx-copy too in the guest (``make test``)."""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import ssl
import struct
import threading

import anyio
import anyio.abc
import anyio.to_thread
import pytest

from aiozcrx.anyio import ZcrxListener, ZcrxStream, connect_tcp, create_tcp_listener
from peers import payload, start_many, start_sender, stream_sha256

pytestmark = pytest.mark.engines
BACKENDS = [pytest.param({"backend": "asyncio"}, id="asyncio"),
            pytest.param({"backend": "asyncio", "backend_options": {"use_uvloop": True}},
                         id="uvloop"),
            pytest.param({"backend": "trio"}, id="trio")]
ENGINES = ["uring", "socket", pytest.param("zcrx-copy", marks=pytest.mark.guest)]
MiB = 1 << 20


@pytest.fixture(autouse=True)
def _zcrx_copy_or_skip(request):
    callspec = getattr(request.node, "callspec", None)
    if callspec is not None and callspec.params.get("engine") == "zcrx-copy":
        request.getfixturevalue("need_zcrx_copy")  # skipped on the host, with the reason


def run(fn, how, *args):
    return anyio.run(fn, *args, **how)


def open_fds() -> set:
    """The sockets, rings, eventfds and epoll instances this process holds (the
    pipes of multiprocessing are not ours to count)."""
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:") or "io_uring" in target or "eventfd" in target \
                or "eventpoll" in target:
            out.add((fd, target))
    return out


async def until(predicate, what: str, timeout: float = 60.0) -> None:
    """Waits for a condition on either backend (tests wait on conditions, never
    durations); fails, naming it, only if it never holds within a generous time."""
    try:
        with anyio.fail_after(timeout):
            while not predicate():
                await anyio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout} s waiting until {what}") from None


async def join(proc) -> int:
    await anyio.to_thread.run_sync(proc.join, 60)
    return proc.exitcode


def small_buffer_listener() -> socket.socket:
    """A loopback listener whose connections hold at most ~128 KiB unread."""
    lst = socket.socket()
    lst.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)  # inherited by accept()
    lst.bind(("127.0.0.1", 0))
    lst.listen()
    return lst


async def connect_small_sndbuf(port: int, engine: str = "auto"):
    """connect_tcp whose socket holds at most ~128 KiB unsent: with a peer that reads
    nothing, a send of a few MiB waits for room (whatever the machine's tcp_wmem)."""
    s = await connect_tcp("127.0.0.1", port, engine=engine)
    s.extra(anyio.abc.SocketAttribute.raw_socket).setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF,
                                                             64 * 1024)
    return s


async def receive_all(stream, *, views: bool = False) -> tuple[int, str]:
    """Reads to EOF: (bytes, sha256 hex)."""
    h = hashlib.sha256()
    n = 0
    while True:
        try:
            if views:
                with await stream.receive_view() as v:
                    assert isinstance(v, memoryview) and v.readonly and v.nbytes
                    h.update(v)
                    n += v.nbytes
            else:
                chunk = await stream.receive(100_000)
                assert isinstance(chunk, bytes) and 0 < len(chunk) <= 100_000
                h.update(chunk)
                n += len(chunk)
        except anyio.EndOfStream:
            return n, h.hexdigest()


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("how", BACKENDS)
def test_listener_connect_round_trip(how, engine):
    """Echo over a listener and connect_tcp: bytes in == bytes out, EOF both ways,
    both Receivers closed with every buffer back."""
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
            n, digest = await receive_all(stream)
            assert n == len(data) and digest == hashlib.sha256(data).hexdigest()
            stats = stream.transport.stats()
            assert stats["bytes_received"] == len(data) and stats["bytes_written"] == len(data)
            rx = stream.transport._link.owner
            await stream.aclose()
            with pytest.raises(anyio.ClosedResourceError):
                await stream.receive()
            with pytest.raises(anyio.ClosedResourceError):
                await stream.send(b"x")
            tg.cancel_scope.cancel()
        await until(lambda: rx._closed, "the connection's own Receiver is closed")
        assert rx.stats()["buffers_outstanding"] == 0
        await listener.aclose()
        with pytest.raises(anyio.ClosedResourceError):
            await listener.accept()
        with anyio.fail_after(60):
            await listener.wait_closed()
        assert listener.server.receiver._closed
        assert listener.server.receiver.stats()["buffers_outstanding"] == 0

    run(main, how)
    assert open_fds() == fds


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("how", BACKENDS)
def test_listener_sender_process_sha256(how, engine):
    """A sender in another process streams 8 MiB and closes: the handler's views
    hash to what was sent, and it ends with EndOfStream."""
    fds = open_fds()
    total = 8 * MiB + 3

    async def main():
        listener = await create_tcp_listener("127.0.0.1", 0, engine=engine)
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        proc = start_sender(port, 5, total)
        stream = await listener.accept()
        async with stream:
            n, digest = await receive_all(stream, views=True)
            rx = listener.server.receiver
            assert rx.stats()["buffers_outstanding"] == 0  # every view released
        assert (n, digest) == (total, stream_sha256(5, total))
        assert await join(proc) == 0
        await listener.aclose()
        with anyio.fail_after(60):
            await listener.wait_closed()
        assert rx._closed and rx.stats()["bytes"] >= total

    run(main, how)
    assert open_fds() == fds


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("how", BACKENDS)
def test_listener_serves_several_connections(how, engine):
    """serve() hands each of 8 concurrent connections to its own handler; all
    share the listener's Receiver, which closes after the last of them."""
    fds = open_fds()
    sizes = [300_000 * (i + 1) + i for i in range(8)]
    seeds = [40 + i for i in range(8)]

    async def main():
        listener = await create_tcp_listener("127.0.0.1", 0, engine=engine)
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        rx = listener.server.receiver
        results: dict[int, tuple[int, str]] = {}
        peak = [0]

        async def handler(stream):
            async with stream:
                head = b""
                while len(head) < 4:  # the sender's 4-byte index
                    head += await stream.receive(4 - len(head))
                peak[0] = max(peak[0], rx.stats()["connections"])
                results[struct.unpack("<I", head)[0]] = await receive_all(stream, views=True)

        proc = start_many(port, sizes, seeds)
        async with anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, handler)
            await until(lambda: len(results) == len(sizes), "every connection was served")
            tg.cancel_scope.cancel()
        assert await join(proc) == 0
        for i, (size, seed) in enumerate(zip(sizes, seeds)):
            assert results[i] == (size, hashlib.sha256(payload(seed, size)).hexdigest()), i
        assert peak[0] >= 1
        await listener.aclose()
        with anyio.fail_after(60):
            await listener.wait_closed()
        assert rx._closed and rx.stats()["buffers_outstanding"] == 0

    run(main, how)
    assert open_fds() == fds


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("how", BACKENDS)
def test_connect_tcp_plain_peer_eof_and_views(how, engine):
    """connect_tcp against a plain socket server in a thread; views held keep
    their buffers out of the kernel's hands until released; after send_eof,
    send raises ClosedResourceError."""
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
        async with await connect_tcp("127.0.0.1", port, engine=engine, read_high=64 * 1024) as s:
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
            rx = s.transport._link.owner
            assert rx.stats()["buffers_outstanding"] > 0  # the views still held
            for v in views:
                v.release()
            assert rx.stats()["buffers_outstanding"] == 0
            with pytest.raises(anyio.EndOfStream):
                await s.receive()
            await s.send(b"bye")
            await s.send_eof()
            with pytest.raises(anyio.ClosedResourceError):
                await s.send(b"after eof")
        await until(lambda: rx._closed, "the connection's Receiver is closed")

    run(main, how)
    t.join(60)
    lst.close()
    assert result == [b"bye"]
    assert open_fds() == fds


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("how", BACKENDS)
def test_peer_reset_breaks_receive_and_a_waiting_send(how, engine):
    """The peer resets while our send waits for room (the peer never reads):
    the waiting send and the next receive raise BrokenResourceError, caused by
    ConnectionResetError; the Receiver closes with every buffer back."""
    fds = open_fds()

    async def main():
        lst = small_buffer_listener()
        s = await connect_small_sndbuf(lst.getsockname()[1], engine)
        conn, _ = lst.accept()
        lst.close()
        conn.sendall(b"hello")
        assert await s.receive() == b"hello"
        outcome = []

        async def sender():
            try:
                await s.send(bytes(4 * MiB))  # far more than the two buffers hold
            except Exception as exc:  # noqa: BLE001 - checked below
                outcome.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(sender)
            # once some bytes went out, the send waits for room (trio) or for the
            # transport's buffer to drain (asyncio): the peer reads nothing
            await until(lambda: s.transport.stats()["bytes_written"] > 0, "the send started")
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()  # unread data + linger 0: a reset
        assert len(outcome) == 1 and isinstance(outcome[0], anyio.BrokenResourceError)
        with pytest.raises(anyio.BrokenResourceError) as info:
            await s.receive()
        assert isinstance(info.value.__cause__, ConnectionResetError)
        rx = s.transport._link.owner
        await s.aclose()
        await until(lambda: rx._closed, "the connection's Receiver is closed")
        assert rx.stats()["buffers_outstanding"] == 0

    run(main, how)
    assert open_fds() == fds


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
        rx = s.transport._link.owner
        await s.aclose()
        await until(lambda: rx._closed, "the connection's Receiver is closed")
        lst.close()

    run(main, how)
    assert open_fds() == fds


@pytest.mark.parametrize("how", BACKENDS)
def test_bad_input_and_refused_connections(how):
    """Typed errors, nothing left open: a refused connection, an engine that
    cannot run here, keywords that do not exist."""
    fds = open_fds()
    with socket.create_server(("127.0.0.1", 0)) as lst:
        closed_port = lst.getsockname()[1]  # closed at the end of the block: refused

    async def main():
        with pytest.raises(ConnectionRefusedError):
            await connect_tcp("127.0.0.1", closed_port, engine="uring")
        with pytest.raises(TypeError, match="no_such_option"):
            await connect_tcp("127.0.0.1", closed_port, no_such_option=1)
        with pytest.raises(ValueError, match="engine"):
            await create_tcp_listener("127.0.0.1", 0, engine="no-such-engine")
        # no TLS of this layer's own, on any backend: a ValueError naming anyio's TLSStream
        for ssl_arg in (True, ssl.create_default_context()):
            with pytest.raises(ValueError, match="TLSStream"):
                await create_tcp_listener("127.0.0.1", 0, ssl=ssl_arg)
            with pytest.raises(ValueError, match="TLSStream"):
                await connect_tcp("127.0.0.1", closed_port, ssl=ssl_arg)
        from aiozcrx.errors import ZcrxUnavailable
        lst = socket.create_server(("127.0.0.1", 0))
        with pytest.raises(ZcrxUnavailable, match="no queue API"):  # lo is no NIC
            await connect_tcp("127.0.0.1", lst.getsockname()[1], engine="zcrx",
                              interface="lo", queue=0)
        with pytest.raises(ZcrxUnavailable, match="no queue API"):
            await create_tcp_listener("127.0.0.1", 0, engine="zcrx", interface="lo", queue=0)
        lst.close()

    run(main, how)
    assert open_fds() == fds


# ----------------------------------------------------------- trio specifics
TRIO = {"backend": "trio"}


def test_trio_receiver_keyword_refused():
    async def main():
        with pytest.raises(TypeError, match="asyncio only"):
            await connect_tcp("127.0.0.1", 1, receiver=object())
        with pytest.raises(TypeError, match="local_addr"):
            await connect_tcp("127.0.0.1", 1, local_addr=("127.0.0.1", 0))

    run(main, TRIO)


@pytest.mark.parametrize("engine", ["uring", "socket"])
def test_trio_aclose_wakes_a_send_waiting_for_room(engine):
    """Under trio send() waits on the socket itself: closing the stream wakes it
    (notify_closing before the transport closes the fd) with ClosedResourceError."""
    fds = open_fds()

    async def main():
        lst = small_buffer_listener()
        s = await connect_small_sndbuf(lst.getsockname()[1], engine)
        conn, _ = lst.accept()
        lst.close()
        outcome = []

        async def sender():
            try:
                await s.send(bytes(4 * MiB))
            except Exception as exc:  # noqa: BLE001 - checked below
                outcome.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(sender)
            await until(lambda: s.transport.stats()["bytes_written"] > 0, "the send started")
            await s.aclose()
        assert len(outcome) == 1 and isinstance(outcome[0], anyio.ClosedResourceError)
        conn.close()

    run(main, TRIO)
    assert open_fds() == fds


@pytest.mark.parametrize("host", ["127.0.0.1", None])
def test_trio_pending_accept_ends_when_the_listener_closes(host):
    """accept() waiting under trio (on one listening socket, or on IPv4 and IPv6
    ones) raises ClosedResourceError once the listener is closed."""
    fds = open_fds()

    async def main():
        listener = await create_tcp_listener(host, 0, engine="uring")
        outcome = []

        async def accept():
            try:
                await listener.accept()
            except Exception as exc:  # noqa: BLE001 - checked below
                outcome.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(accept)
            await anyio.wait_all_tasks_blocked()
            await listener.aclose()
        assert len(outcome) == 1 and isinstance(outcome[0], anyio.ClosedResourceError)
        with anyio.fail_after(60):
            await listener.wait_closed()

    run(main, TRIO)
    assert open_fds() == fds


def test_trio_loop_adapter(caplog):
    """TrioLoop, what engines and transports see of trio: callbacks in order,
    timers, a reader on an eventfd, and a callback's exception logged."""
    from aiozcrx.anyio import _trio

    async def main():
        loop = _trio.current_loop()
        assert _trio.current_loop() is loop  # one per run
        calls = []
        loop.call_soon(calls.append, 1)
        loop.call_soon(calls.append, 2)
        loop.call_soon(lambda: 1 / 0)
        loop.call_later(0.01, calls.append, "later")
        loop.call_later(0.01, calls.append, "cancelled").cancel()
        await until(lambda: "later" in calls, "the timer fired")
        assert calls == [1, 2, "later"]
        efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        try:
            woke = []
            loop.add_reader(efd, lambda: woke.append(os.eventfd_read(efd)))
            os.eventfd_write(efd, 3)
            await until(lambda: woke == [3], "the reader ran")
            assert loop.remove_reader(efd) and not loop.remove_reader(efd)
        finally:
            os.close(efd)
        return loop

    with caplog.at_level(logging.ERROR, logger="aiozcrx"):
        loop = run(main, TRIO)
    assert any(r.exc_info and r.exc_info[0] is ZeroDivisionError for r in caplog.records)
    with pytest.raises(RuntimeError, match="trio run"):
        loop.call_soon(print)

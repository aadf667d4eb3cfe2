"""Wake-ups (engines/wake.py, engines/ring.py "Wake-ups"): the ring engines learn of
new completions from the ring's eventfd, or from each armed connection's socket
where the kernel signals that eventfd late (one RCU grace period after a socket
completion, seen on 6.18.44-fc builds). Both paths run here on every kernel
(``wake=`` forces one); what is asserted is behaviour and the kernel's state right
after a syscall returns, never a time."""

from __future__ import annotations

import asyncio
import hashlib
import os
import select
import socket
import struct

import pytest

import aiozcrx
from aiozcrx import _kernel
from aiozcrx.engines.wake import WAKE_ENV, choose_wake, kernel_wake
from peers import Listener, accept_sinks, join, queued, start_sender, stream_sha256, tcp_pair, wait_until
from test_fast_path import connected_pair
from test_transport import MiB, Sink

pytestmark = [pytest.mark.engines]

WAKES = ["eventfd", "socket"]
RING_ENGINES = ["uring", pytest.param("zcrx-copy", marks=pytest.mark.guest)]


def need_engine(engine, request):
    if engine == "zcrx-copy":
        request.getfixturevalue("need_zcrx_copy")  # skips, with the reason, without 7.1+


def readable(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])


class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.t = transport
        self.lost = asyncio.get_running_loop().create_future()

    def data_received(self, view):
        self.t.write(bytes(view))

    def connection_lost(self, exc):
        if not self.lost.done():
            self.lost.set_result(exc)


# -- the probe -----------------------------------------------------------------

def test_probe_answers_the_same_every_time():
    """The start-up probe decides on the kernel's state right after write()
    returns, not on a time: asked again and again, it says the same."""
    answers = {_kernel.probe_eventfd_inline() for _ in range(20)}
    assert len(answers) == 1, answers
    k = kernel_wake()
    assert k.inline is answers.pop()
    assert ("inline" in k.summary) is k.inline and ("DEFERRED" in k.summary) is (not k.inline)


def test_auto_takes_the_socket_path_exactly_where_the_kernel_defers(monkeypatch):
    monkeypatch.delenv(WAKE_ENV, raising=False)
    path, why = choose_wake("auto")
    assert path == ("eventfd" if kernel_wake().inline else "socket"), why
    monkeypatch.setenv(WAKE_ENV, "eventfd")
    assert choose_wake("auto")[0] == "eventfd"
    assert choose_wake("socket") == ("socket", "wake='socket' was asked for")
    monkeypatch.setenv(WAKE_ENV, "sockets")
    with pytest.raises(ValueError, match="AIOZCRX_WAKE must be one of 'auto', 'eventfd', 'socket'"):
        choose_wake("auto")


@pytest.mark.parametrize("bad,error", [("epoll", ValueError), (1, TypeError)])
def test_a_wrong_wake_is_a_clear_error(bad, error):
    with pytest.raises(error, match="wake must be"):
        aiozcrx.Receiver(engine="uring", wake=bad)


# -- the path in use never relies on a signal this kernel defers ----------------

@pytest.mark.asyncio
@pytest.mark.parametrize("engine", RING_ENGINES)
@pytest.mark.parametrize("wake", ["auto", *WAKES])
async def test_the_chosen_wake_source_is_ready_when_the_peers_send_returns(engine, wake, request,
                                                                           monkeypatch):
    """Right after the peer's send() returns, one of the fds the loop waits on for
    this ring must be readable already once the bytes are in our socket (AF_UNIX:
    delivered inside send(); TCP on loopback for zcrx-copy, which receives TCP
    only: delivered in the sender's softirq, checked through the receive queue).
    With ``wake="auto"`` that holds on every kernel: it fails when the path in use
    waits for a signal this kernel defers. The eventfd path forced on a kernel that
    defers is late by design: there only its bytes are checked."""
    need_engine(engine, request)
    monkeypatch.delenv(WAKE_ENV, raising=False)
    ours, peer = socket.socketpair() if engine == "uring" else tcp_pair()
    async with aiozcrx.Receiver(engine=engine, wake=wake) as rx:
        _, proto = await rx.wrap(ours, Sink)
        peer.sendall(b"a")
        await wait_until(lambda: proto.bytes == 1, "the first byte (the request is armed)")
        eng = rx._engine
        late_by_design = eng.wake == "eventfd" and kernel_wake().inline is False
        for i in range(20):
            # no await between the send and the check: the loop cannot take it
            peer.send(b"b")
            ready = [fd for fd in eng.wake_fds() if readable(fd)]
            # (until the task work runs, in our own io_uring_enter, the byte
            # stays in the socket's receive queue)
            arrived = queued(ours, 1) > 0
            if arrived and not late_by_design:
                assert ready, (f"nothing the loop waits on is readable after send #{i} "
                               f"(wake={eng.wake}: {eng.wake_reason}; kernel: {kernel_wake().summary})")
            await wait_until(lambda: proto.bytes == 2 + i, f"byte {2 + i}")
        st = rx.stats()
    peer.close()
    assert st["wake"] == eng.wake and st["wake_reason"]
    if wake != "auto":
        assert st["wake"] == wake
    if st["wake"] == "socket":
        assert st["socket_wakeups"] > 0
    if wake == "auto" and kernel_wake().inline is False:
        assert "wake: socket" in rx.fallback_reason


# -- both paths deliver everything ------------------------------------------------

@pytest.mark.asyncio
@pytest.mark.parametrize("engine", RING_ENGINES)
@pytest.mark.parametrize("wake", WAKES)
async def test_echo_round_trips_on_each_path(engine, wake, request):
    need_engine(engine, request)
    a, b = tcp_pair()
    b.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    n = 300
    async with aiozcrx.Receiver(engine=engine, wake=wake) as rx:
        _, proto = await rx.wrap(a, Echo)

        def client() -> bytes:
            got = bytearray()
            for i in range(n):
                msg = i.to_bytes(4, "big") * 16
                b.sendall(msg)
                want = len(got) + len(msg)
                while len(got) < want:
                    chunk = b.recv(want - len(got))
                    assert chunk, "echo ended early"
                    got += chunk
            return bytes(got)

        got = await asyncio.wait_for(asyncio.to_thread(client), 120)
        st = rx.stats()
    b.close()
    assert got == b"".join(i.to_bytes(4, "big") * 16 for i in range(n))
    assert st["wake"] == wake
    assert st["buffers_outstanding"] == 0


@pytest.mark.asyncio
@pytest.mark.parametrize("engine", RING_ENGINES)
@pytest.mark.parametrize("wake", WAKES)
async def test_many_connections_in_bulk_on_each_path(engine, wake, request):
    """16 senders at once, 4 MiB each, and slow views kept for a while: every byte,
    every buffer back."""
    need_engine(engine, request)
    lst = Listener()
    conns, total = 16, 4 * MiB
    procs = [start_sender(lst.port, 100 + i, total) for i in range(conns)]
    async with aiozcrx.Receiver(engine=engine, wake=wake, area_size=8 * MiB) as rx:
        protos = await accept_sinks(rx, lst, conns, Sink)
        results = await asyncio.wait_for(asyncio.gather(*(p.lost for p in protos)), 180)
        st = rx.stats()
    lst.close()
    for proc in procs:
        assert await join(proc) == 0
    assert results == [None] * conns
    assert sorted(p.sha.hexdigest() for p in protos) == \
        sorted(stream_sha256(100 + i, total) for i in range(conns))
    assert st["buffers_outstanding"] == 0
    assert st["wake"] == wake
    # many sockets ready in one epoll batch: the first reader's pump delivers the
    # others' data too, and their own empty wake-ups are no sign of a stuck socket
    assert st.get("socket_parks", 0) == 0


@pytest.mark.asyncio
@pytest.mark.parametrize("engine", RING_ENGINES)
@pytest.mark.parametrize("wake", WAKES)
async def test_pause_and_resume_on_each_path(engine, wake, request):
    """pause_reading() with data still coming: nothing arrives while paused (the
    socket is no reader then: no spin), everything after resume_reading()."""
    need_engine(engine, request)
    a, b = tcp_pair()
    total = 2 * MiB
    data = os.urandom(total)
    async with aiozcrx.Receiver(engine=engine, wake=wake) as rx:
        t, proto = await rx.wrap(a, Sink)
        b.sendall(data[:4096])
        await wait_until(lambda: proto.bytes == 4096, "the first block")
        t.pause_reading()
        await wait_until(lambda: not rx._engine.conns[next(iter(rx._engine.conns))].armed,
                         "the request has ended")
        wakes = rx.stats()["socket_wakeups"]
        b.sendall(data[4096:8192])
        await wait_until(lambda: queued(a, 4096) >= 4096, "the bytes wait in our socket")
        for _ in range(50):
            await asyncio.sleep(0)
        assert proto.bytes == 4096
        # the paused connection's readable socket did not wake the loop
        assert rx.stats()["socket_wakeups"] == wakes
        t.resume_reading()
        send = asyncio.create_task(asyncio.to_thread(b.sendall, data[8192:]))
        await wait_until(lambda: proto.bytes == total, "every byte")
        await send
        st = rx.stats()
    b.close()
    assert proto.sha.hexdigest() == hashlib.sha256(data).hexdigest()
    assert st["buffers_outstanding"] == 0


@pytest.mark.asyncio
@pytest.mark.parametrize("engine", RING_ENGINES)
@pytest.mark.parametrize("wake", WAKES)
async def test_reset_with_data_queued_reaches_connection_lost_on_each_path(engine, wake, request):
    """The peer sends, then resets before we read: the bytes, then
    ConnectionResetError. On the socket path the reset socket stays readable
    while the multishot request does not read its error: the dispatcher tells the
    engine after a few empty wake-ups, and it cancels the request (whose re-arm
    reads the error) instead of letting the loop spin; counted, not timed."""
    need_engine(engine, request)
    total = 96 * 1024  # fits any receive buffer (rmem_max caps SO_RCVBUF; 6.1: 208 KiB)
    data = os.urandom(total)
    a, b = connected_pair(rcvbuf=1 * MiB)
    b.sendall(data)
    await wait_until(lambda: queued(a, total) >= total, "all of it in our receive queue")
    b.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    b.close()  # RST
    async with aiozcrx.Receiver(engine=engine, wake=wake) as rx:
        _, proto = await rx.wrap(a, Sink)
        exc = await asyncio.wait_for(proto.lost, 60)
        st = rx.stats()
    assert isinstance(exc, ConnectionResetError), exc
    assert proto.sha.hexdigest() == hashlib.sha256(data).hexdigest()
    if wake == "socket":
        # no spin: fewer than SOCKET_IDLE_LIMIT (4) empty wake-ups in a row
        # before each report (which cancels or parks), counted, not timed
        assert st["socket_idle_wakeups"] <= 3 * (st["completions"] + 1) + 4 * st["socket_idle_reports"]

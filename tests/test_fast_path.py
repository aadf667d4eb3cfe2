"""The fast path's mechanics, driven through the real kernel: the C pump (one call
per wake-up, eventfd off while it works) and the uring engine's posted-buffer
window (a few cache-warm buffers in the kernel's ring, widened for bursts and
narrowed again). What is asserted is behaviour: every byte arrives, buffers come
back, wake-ups find work; never a time."""

from __future__ import annotations

import asyncio
import hashlib
import socket

import pytest

import aiozcrx
from aiozcrx._kernel import PUMP_BUSY, PUMP_PENDING
from peers import Listener, join, queued, start_sender, stream_sha256, wait_until
from test_transport import MiB, Sink

pytestmark = [pytest.mark.engines, pytest.mark.asyncio]


async def test_uring_views_held_beyond_the_posted_window():
    """Only a window of buffers is in the kernel's ring at a time; a protocol that
    holds many more views than that still gets every byte, and the free ones keep
    going back."""
    area, buf = 4 * MiB, 64 * 1024
    total = 32 * MiB
    hold = 40  # > the 8-buffer window, < the 64 buffers of the area

    class Holder(Sink):
        def data_received(self, view):
            super().data_received(view)
            self.kept.append(view)
            if len(self.kept) > hold:
                self.kept.pop(0).release()

    lst = Listener()
    proc = start_sender(lst.port, 22, total)
    # max_held=area: this connection may hold more than the default quarter
    async with aiozcrx.Receiver(engine="uring", area_size=area, buf_size=buf, max_held=area) as rx:
        _, proto = await rx.wrap(await lst.accept(), Holder)
        assert await asyncio.wait_for(proto.lost, 120) is None
        st = rx.stats()
        assert st["views_outstanding"] == len(proto.kept) == hold
        # incremental buffers: a buffer may hold several of the views
        assert 0 < st["buffers_outstanding"] <= hold
        assert st["post_window"] <= st["buffers_total"]
        assert st["buffers_posted"] <= st["post_window"]
        # the window never exceeded what was free: posted + held + free stack == area
        assert st["buffers_posted"] + st["buffers_outstanding"] <= st["buffers_total"]
        for v in proto.kept:
            v.release()
        proto.kept.clear()
        assert rx.stats()["buffers_outstanding"] == 0
    lst.close()
    assert await join(proc) == 0
    assert proto.bytes == total
    assert proto.sha.hexdigest() == stream_sha256(22, total)


class Acker(asyncio.Protocol):
    """Hashes what arrives; writes one b"k" for the first `first` bytes and then
    for every further `step` bytes."""

    def __init__(self, first: int, step: int):
        self.sha = hashlib.sha256()
        self.bytes = 0
        self.step = step
        self.next_ack = first
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, view):
        self.sha.update(view)
        self.bytes += len(view)
        while self.bytes >= self.next_ack:
            self.transport.write(b"k")
            self.next_ack += self.step

    def eof_received(self):
        return False

    def connection_lost(self, exc):
        if not self.lost.done():
            self.lost.set_result(exc)


def connected_pair(rcvbuf: int = 0) -> tuple[socket.socket, socket.socket]:
    """(server side, client side) of a loopback TCP connection."""
    lsock = socket.create_server(("127.0.0.1", 0))
    if rcvbuf:
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # inherited by accept()
    client = socket.create_connection(("127.0.0.1", lsock.getsockname()[1]))
    server_sock, _ = lsock.accept()
    lsock.close()
    return server_sock, client


def ping_pong(client: socket.socket, first: bytes, pings: int, size: int) -> None:
    """Blocking peer: sends `first`, then `pings` messages of `size` bytes, each
    only after the previous one was acknowledged; then half-closes."""
    client.settimeout(60)
    if first:
        client.sendall(first)
        assert client.recv(1) == b"k"
    for i in range(pings):
        client.sendall(bytes([i & 0xFF]) * size)
        assert client.recv(1) == b"k"
    client.shutdown(socket.SHUT_WR)
    assert client.recv(1) == b""
    client.close()


def ping_pong_sha(first: bytes, pings: int, size: int) -> str:
    h = hashlib.sha256(first)
    for i in range(pings):
        h.update(bytes([i & 0xFF]) * size)
    return h.hexdigest()


async def test_pump_wakeups_find_work():
    """The kernel signals the eventfd for completions it posts inside our own
    io_uring_enter; with the eventfd switched off while the pump works, a wake-up
    that finds nothing is rare. A ping-pong makes one wake-up per message: before
    the eventfd was switched off, about every other one came back empty."""
    pings, size = 400, 100
    server_sock, client = connected_pair()
    async with aiozcrx.Receiver(engine="uring") as rx:
        _, proto = await rx.wrap(server_sock, lambda: Acker(size, size))
        await asyncio.wait_for(asyncio.to_thread(ping_pong, client, b"", pings, size), 60)
        assert await asyncio.wait_for(proto.lost, 30) is None
        st = rx.stats()
    assert proto.sha.hexdigest() == ping_pong_sha(b"", pings, size)
    assert st["buffers_outstanding"] == 0
    if not st["eventfd_paused"]:
        pytest.skip("the eventfd stays on during the pump on this architecture (only x86's "
                    "ordering makes switching it off safe; see EVFD_OFF_IS_SAFE in _c/dispatch.c)")
    # How many wake-ups find nothing depends on how the scheduler interleaves the
    # peer and the loop: a rate, measured by benchmarks/wakeups.py, not asserted here.
    assert 0 <= st["idle_wakeups"] <= st["wakeups"], st


async def test_uring_window_widens_for_a_burst_then_narrows():
    """A burst queued before receiving starts runs the kernel out of posted buffers
    (ENOBUFS ends the multishot request): the window doubles and the request is
    re-armed with nothing lost. A long ping-pong afterwards takes one buffer per
    round, and the window comes back down to where it started."""
    burst = 3 * MiB
    ping, pings = 100, 700
    first = bytes(range(256)) * (burst // 256)
    # room in the receive queue for the whole burst before receiving starts
    server_sock, client = connected_pair(rcvbuf=8 * MiB)
    async with aiozcrx.Receiver(engine="uring", area_size=32 * MiB, buf_size=64 * 1024) as rx:
        start_window = rx.stats()["post_window"]
        peer = asyncio.create_task(asyncio.to_thread(ping_pong, client, first, pings, ping))
        # let the whole burst sit in the socket's receive queue first
        await wait_until(lambda: queued(server_sock, burst) >= burst, "the burst is queued")
        _, proto = await rx.wrap(server_sock, lambda: Acker(burst, ping))
        await asyncio.wait_for(peer, 60)
        assert await asyncio.wait_for(proto.lost, 30) is None
        st = rx.stats()
    assert proto.bytes == burst + ping * pings
    assert proto.sha.hexdigest() == ping_pong_sha(first, pings, ping)
    assert st["buffers_outstanding"] == 0
    assert st["post_window_grows"] >= 1, st
    assert st["post_window_shrinks"] >= 1, st
    assert st["post_window"] == start_window, st


@pytest.mark.parametrize("reuse", [True, False], ids=["reuse", "no-reuse"])
async def test_views_user_code_can_reach_are_never_taken_over(reuse):
    """The dispatcher may point a view at the next buffer only when nothing else
    can see it. A protocol that keeps views, slices, exporters (`view.obj`) and
    weak references, on a small area recycled ~30 times over, must find each of
    them still showing the bytes it was given; the views it dropped are reused."""
    import random
    import weakref

    total = 8 * MiB
    data = random.Random(5).randbytes(total)
    keep_at_most = 24  # of the 64 buffers

    class Watcher(asyncio.Protocol):
        def __init__(self):
            self.bytes = 0
            self.calls = 0
            self.kept = []  # (offset, object exposing the buffer)
            self.last_ref = None
            self.bad = []
            self.lost = asyncio.get_running_loop().create_future()

        def check(self, off, obj):
            got = bytes(memoryview(obj))
            if got != data[off:off + len(got)]:
                self.bad.append(off)

        def data_received(self, view):
            if self.last_ref is not None:
                ref, copy = self.last_ref
                seen = ref()
                if seen is view or (seen is not None and bytes(seen) != copy):
                    self.bad.append(("weakref", self.bytes))
                self.last_ref = None
            off = self.bytes
            if view != data[off:off + len(view)]:
                self.bad.append(off)
            self.bytes += len(view)
            self.calls += 1
            k = self.calls % 5
            if k == 0:
                self.kept.append((off, view))
            elif k == 1:
                self.kept.append((off + 1, view[1:]))
            elif k == 2:
                self.kept.append((off, view.obj))
            elif k == 3:
                self.last_ref = (weakref.ref(view), bytes(view))
            # k == 4: dropped, the reusable case
            while len(self.kept) > keep_at_most:
                self.check(*self.kept.pop(0))

        def eof_received(self):
            return False

        def connection_lost(self, exc):
            if not self.lost.done():
                self.lost.set_result(exc)

    server_sock, client = connected_pair()

    def send():
        client.sendall(data)
        client.close()

    async with aiozcrx.Receiver(engine="uring", area_size=256 * 1024, buf_size=4096,
                                max_held=256 * 1024) as rx:
        in_effect = rx._engine.dispatcher.set_view_reuse(reuse)
        _, proto = await rx.wrap(server_sock, Watcher)
        await asyncio.wait_for(asyncio.to_thread(send), 60)
        assert await asyncio.wait_for(proto.lost, 60) is None
        while proto.kept:
            proto.check(*proto.kept.pop(0))
        proto.last_ref = None
        st = rx.stats()
    assert proto.bad == []
    assert proto.bytes == total
    assert st["buffers_outstanding"] == 0
    if in_effect:
        assert st["reused_views"] > 0
    else:
        assert st["reused_views"] == 0


@pytest.mark.parametrize("engine,buf_size", [
    ("uring", 4096), ("uring", 65536),
    pytest.param("zcrx-copy", 4096, marks=pytest.mark.guest),
])
async def test_reset_with_data_queued_still_reaches_connection_lost(engine, buf_size, request):
    """The peer sends, then resets the connection (RST) before we read a byte. The
    queued bytes are still delivered, and then connection_lost(ConnectionResetError).
    The kernel's multishot RECV that drains the last of them goes back to waiting for
    a wake-up that never comes (it counts a FIN as "more to read", not a reset); the
    engine's reset watch notices the quiet, errored socket and re-arms, which reads
    the error."""
    import random
    import struct

    if engine == "zcrx-copy":
        request.getfixturevalue("need_zcrx_copy")  # skips, with the reason, without 7.1+
    total = 4 * MiB
    data = random.Random(9).randbytes(total)
    server_sock, client = connected_pair(rcvbuf=16 * MiB)
    client.sendall(data)
    await wait_until(lambda: queued(server_sock, total) >= total, "all of it is in our receive queue")
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()  # RST
    await asyncio.sleep(0.05)
    async with aiozcrx.Receiver(engine=engine, buf_size=buf_size) as rx:
        _, proto = await rx.wrap(server_sock, Sink)
        exc = await asyncio.wait_for(proto.lost, 30)
        st = rx.stats()
    assert isinstance(exc, ConnectionResetError), exc
    assert proto.bytes == total
    assert proto.sha.hexdigest() == hashlib.sha256(data).hexdigest()
    assert st["buffers_outstanding"] == 0


# -- one wake-up, as cheap as the kernel allows ------------------------------
# The loop's reader on the ring's eventfd is the C dispatcher's on_wake: it reads
# the eventfd with an IORING_OP_READ that rides in the io_uring_enter it makes
# anyway, pumps, and calls the engine's Python (its slow path) only when there is
# something to decide. What is asserted: the counts the dispatcher keeps, and the
# eventfd's state, never a time.

class SlowPathLog:
    """Stands between the dispatcher and the engine's slow path: records what
    each call had to decide, then hands it on."""

    def __init__(self, rx):
        self.engine = rx._engine
        self.calls = []
        self.engine.dispatcher.set_slow_path(self)

    def __call__(self, n, control, state):
        e = self.engine
        coming = e._scheduled or e._tw_timer is not None  # a pump is on its way already
        self.calls.append({"control": control is not None,
                           "busy": state == PUMP_BUSY,
                           "pending": state == PUMP_PENDING and not coming,
                           "starved": bool(e.starved), "throttled": bool(e.throttled),
                           "closing": e.closed})
        return e._after_pump(n, control, state)

    def without_reason(self) -> list:
        return [c for c in self.calls if not any(c.values())]


def eventfd_readable(rx) -> bool:
    import select

    p = select.poll()
    p.register(rx._engine.ring.eventfd, select.POLLIN)
    return bool(p.poll(0))


@pytest.mark.parametrize("wake,evfd_read", [("eventfd", "sqe"), ("eventfd", "read(2)"), ("socket", "sqe")])
async def test_data_only_wakeups_run_no_python_of_ours(wake, evfd_read):
    """The peer sends one record at a time, the next only once the last was
    delivered: every wake-up then has nothing but data. None of them calls into
    the engine's Python. On the eventfd path each resets the eventfd inside the
    round (by the read SQE in the enter, or by read(2)), so after a round it is not
    readable (no wake-up that would find nothing); on the socket path the socket's
    reader (Dispatcher.socket_wake) is as free of Python. The end of the stream,
    which needs a decision, does go through the slow path."""
    size, records = 4096, 40
    server_sock, client = connected_pair()
    async with aiozcrx.Receiver(engine="uring", wake=wake) as rx:
        want_sqe = evfd_read == "sqe"
        if rx._engine.dispatcher.set_eventfd_sqe(want_sqe) != want_sqe:
            pytest.skip("this kernel has no IORING_OP_READ: the eventfd is read with read(2)")
        log = SlowPathLog(rx)
        _, proto = await rx.wrap(server_sock, lambda: Acker(1 << 40, 1 << 40))
        sent = b""

        def send(i):
            nonlocal sent
            rec = bytes([i & 0xFF]) * size
            client.sendall(rec)
            sent += rec

        send(0)  # the first may land before the request is armed: whatever path takes it
        await wait_until(lambda: proto.bytes == len(sent), "the first record is delivered")
        s0 = rx.stats()
        calls0 = len(log.calls)
        for i in range(1, records):
            send(i)
            await wait_until(lambda: proto.bytes == len(sent), f"record {i} is delivered")
            # (on the socket path a kernel that defers the eventfd's signal may set it late)
            if s0["eventfd_paused"] and wake == "eventfd":
                assert not eventfd_readable(rx), f"the eventfd is readable after record {i}'s round"
        s1 = rx.stats()
        assert len(log.calls) == calls0, log.calls[calls0:]
        assert s1["slow_path_calls"] == s0["slow_path_calls"]
        wakeups = s1["wakeups"] - s0["wakeups"]
        if wake == "socket":
            assert s1["socket_wakeups"] - s0["socket_wakeups"] >= 1
        else:
            assert wakeups >= 1
        if want_sqe:
            assert s1["eventfd_read"] == "sqe"
            # every wake-up found the counter set and reset it inside the enter
            assert s1["eventfd_sqe_reads"] - s0["eventfd_sqe_reads"] == wakeups
            assert s1["eventfd_reads"] == s0["eventfd_reads"]
        else:
            assert s1["eventfd_read"] == "read(2)"
            assert s1["eventfd_reads"] - s0["eventfd_reads"] == wakeups
            assert s1["eventfd_sqe_reads"] == s0["eventfd_sqe_reads"]
        client.shutdown(socket.SHUT_WR)
        assert await asyncio.wait_for(proto.lost, 30) is None
        st = rx.stats()
    client.close()
    assert proto.sha.hexdigest() == hashlib.sha256(sent).hexdigest()
    assert st["slow_path_calls"] > s1["slow_path_calls"]  # the end of the stream
    assert log.without_reason() == []
    assert st["buffers_outstanding"] == 0


async def test_eventfd_read_falls_back_to_read2_when_the_sq_is_full():
    """No room in the SQ for the eventfd's read: that wake-up reads it with read(2),
    before its enter, and the next ones ride in the enter again. Nothing is lost
    and the eventfd is not left readable."""
    from aiozcrx._kernel import UD_NOP, user_data

    size = 4096
    server_sock, client = connected_pair()
    # the eventfd's own mechanics: its path forced (on a kernel that defers the
    # signal each record is 12-20 ms late here, and still arrives)
    async with aiozcrx.Receiver(engine="uring", wake="eventfd") as rx:
        if rx.stats()["eventfd_read"] != "sqe":
            pytest.skip("this kernel has no IORING_OP_READ: the eventfd is read with read(2)")
        _, proto = await rx.wrap(server_sock, lambda: Acker(1 << 40, 1 << 40))
        client.sendall(b"a" * size)
        await wait_until(lambda: proto.bytes == size, "the first record is delivered")
        s0 = rx.stats()
        ring = rx._engine.ring
        for _ in range(ring.sq_entries):  # the pump left the SQ empty: fill it, unsubmitted
            ring.prep_nop(user_data(UD_NOP, 0, 0))
        client.sendall(b"b" * size)
        await wait_until(lambda: proto.bytes == 2 * size, "the second record is delivered")
        s1 = rx.stats()
        assert s1["eventfd_reads"] - s0["eventfd_reads"] == 1
        if s1["eventfd_paused"]:
            assert not eventfd_readable(rx)
        client.sendall(b"c" * size)
        await wait_until(lambda: proto.bytes == 3 * size, "the third record is delivered")
        s2 = rx.stats()
        assert s2["eventfd_reads"] == s1["eventfd_reads"]
        assert s2["eventfd_sqe_reads"] - s1["eventfd_sqe_reads"] == s2["wakeups"] - s1["wakeups"] >= 1
        client.close()
        assert await asyncio.wait_for(proto.lost, 30) is None
    assert proto.sha.hexdigest() == hashlib.sha256(b"a" * size + b"b" * size + b"c" * size).hexdigest()


@pytest.mark.parametrize("engine", ["uring", pytest.param("zcrx-copy", marks=pytest.mark.guest)])
async def test_slow_path_only_with_something_to_decide(engine, request):
    """A bulk stream through the engine: every call the dispatcher made into the
    engine's Python had something to decide (a control list, a kick to schedule, a
    recheck timer to set when none is on its way, starved or throttled connections,
    a close), every wake-up reset the eventfd inside its enter, and every byte
    arrived."""
    if engine == "zcrx-copy":
        request.getfixturevalue("need_zcrx_copy")
    total = 16 * MiB
    lst = Listener()
    proc = start_sender(lst.port, 31, total)
    async with aiozcrx.Receiver(engine=engine) as rx:
        log = SlowPathLog(rx)
        _, proto = await rx.wrap(await lst.accept(), Sink)
        assert await asyncio.wait_for(proto.lost, 120) is None
        st = rx.stats()
    lst.close()
    assert await join(proc) == 0
    assert proto.bytes == total
    assert proto.sha.hexdigest() == stream_sha256(31, total)
    assert log.without_reason() == []
    assert st["slow_path_calls"] == len(log.calls) >= 1  # the end of the stream at least
    assert st["wakeups"] >= 1
    if st["eventfd_read"] == "sqe":
        assert st["eventfd_sqe_reads"] == st["wakeups"]
        assert st["eventfd_reads"] == 0
    assert st["buffers_outstanding"] == 0


async def test_one_completion_per_wake_up_reuses_the_last_view():
    """A ping-pong makes one completion per wake-up. The round's last view, once the
    protocol dropped it, is parked with its buffer already given back, and the next
    wake-up's completion reuses it: one view object made for hundreds of
    deliveries, and no buffer held between wake-ups."""
    from aiozcrx import _fastpath
    if not _fastpath.VIEW_REUSE:
        pytest.skip("view reuse is compiled out for this interpreter (see lease.c)")
    pings, size = 300, 100
    server_sock, client = connected_pair()
    async with aiozcrx.Receiver(engine="uring") as rx:
        _, proto = await rx.wrap(server_sock, lambda: Acker(size, size))
        peer = asyncio.create_task(asyncio.to_thread(ping_pong, client, b"", pings, size))
        # between two pings nothing is held: the parked view has no buffer
        await wait_until(lambda: proto.bytes >= size * (pings // 2), "half the pings arrived")
        assert rx.stats()["buffers_outstanding"] == 0
        await asyncio.wait_for(peer, 60)
        assert await asyncio.wait_for(proto.lost, 30) is None
        st = rx.stats()
    assert proto.sha.hexdigest() == ping_pong_sha(b"", pings, size)
    assert st["buffers_outstanding"] == 0
    assert st["completions"] >= pings
    # every delivery but the first took over the view the previous one was given
    # (pieces merged into one view are one delivery)
    assert st["reused_views"] == st["completions"] - st["merged_completions"] - 1, st


async def test_watches_tick_without_a_loop_timer():
    """The engine's periodic watch (connections reset with data queued) ticks for
    as long as connections exist, from a timerfd the loop reads, not from a loop
    timer: while any loop timer is pending, each sleep of the loop is an epoll_wait
    with a timeout, which arms and cancels a kernel hrtimer on every wake-up (6 %
    of the receiver's CPU with a 4 KiB record per wake-up, benchmarks/wakefloor.py).
    The stock loop's pending timers are its `_scheduled` heap: asyncio has no
    public way to list them."""
    loop = asyncio.get_running_loop()
    if not hasattr(loop, "_scheduled"):
        pytest.skip("this loop does not show its pending timers")
    pings, size = 50, 100
    server_sock, client = connected_pair()
    async with aiozcrx.Receiver(engine="uring") as rx:
        _, proto = await rx.wrap(server_sock, lambda: Acker(size, size))
        ticker = rx._engine._reset_ticker
        client.settimeout(60)
        for i in range(pings):  # data, then an open and quiet connection
            await asyncio.to_thread(client.sendall, bytes([i]) * size)
            assert await asyncio.to_thread(client.recv, 1) == b"k"
        ticks = ticker.ticks
        await wait_until(lambda: ticker.ticks >= ticks + 2, "the watch ticked twice more")
        assert ticker.running
        ours = [h for h in loop._scheduled if not h.cancelled()]
        assert ours == [], ours
        client.close()
        assert await asyncio.wait_for(proto.lost, 30) is None
        # no connection left: the ticker stops at its next tick
        await wait_until(lambda: not ticker.running, "the watch stopped")
    assert proto.bytes == pings * size


async def test_incremental_buffers_pieces_kept_and_merged_stay_intact():
    """Engine uring's buffers are filled piece by piece where the kernel can
    (IOU_PBUF_RING_INC): small messages share a buffer, back-to-back pieces of one
    request can arrive as one view, and a buffer goes back only when the kernel is
    done with it and no view over any piece is left. A protocol keeps every third
    view while thousands of small messages go through a 1 MiB area many times
    over: every kept view still shows its bytes, every call is a completion or a
    run of merged ones, and nothing is held at the end."""
    import random

    rng = random.Random(13)
    sizes = [rng.randrange(1, 3000) for _ in range(6000)]
    data = rng.randbytes(sum(sizes))
    area, buf = 1 * MiB, 64 * 1024

    class Keeper(Sink):
        def __init__(self):
            super().__init__()
            self.pos = 0
            self.kept_at: list[tuple[int, memoryview]] = []
            self.bad = 0

        def data_received(self, view):
            super().data_received(view)
            if self.calls % 3 == 0:
                self.kept_at.append((self.pos, view))
            # under the share (a view counts as a whole buffer toward max_held,
            # however small): the area keeps cycling
            if len(self.kept_at) > 8:
                off, old = self.kept_at.pop(0)
                self.bad += bytes(old) != data[off:off + len(old)]
                old.release()
            self.pos += len(view)

    server_sock, client = connected_pair()

    def send() -> None:
        client.settimeout(60)
        pos = 0
        for n in sizes:
            client.sendall(data[pos:pos + n])
            pos += n
        client.shutdown(socket.SHUT_WR)
        client.close()

    async with aiozcrx.Receiver(engine="uring", area_size=area, buf_size=buf, max_held=area) as rx:
        if not rx.stats().get("incremental_buffers"):
            pytest.skip("this kernel has no incremental provided buffers (IOU_PBUF_RING_INC, 6.12+)")
        _, proto = await rx.wrap(server_sock, Keeper)
        await asyncio.wait_for(asyncio.to_thread(send), 60)
        assert await asyncio.wait_for(proto.lost, 60) is None
        for off, view in proto.kept_at:
            proto.bad += bytes(view) != data[off:off + len(view)]
            view.release()
        proto.kept_at.clear()
        st = rx.stats()
        assert st["views_outstanding"] == 0 and st["buffers_outstanding"] == 0, st
    assert proto.bad == 0
    assert proto.bytes == len(data)
    assert proto.sha.hexdigest() == hashlib.sha256(data).hexdigest()
    # each data_received call is one completion plus the pieces merged into it
    assert st["completions"] - st["merged_completions"] == proto.calls, st


async def test_a_busy_stream_lets_the_loop_run_other_callbacks():
    """However fast the data comes, one pump delivers at most a budget of
    completions (PUMP_BUDGET, 1024, give or take the round it was passed in) and
    then lets the loop's other callbacks run; the rest follows with a call_soon.
    A ticker rescheduling itself with call_soon counts loop iterations; no
    iteration may deliver more than a few pumps' worth. On this host the receiver usually outruns the sender, so an
    unbounded pump stays short here too; the guest's simulated NIC with its
    64 MiB area is where one wake-up used to run for seconds."""
    total = 256 * MiB
    lst = Listener()
    proc = start_sender(lst.port, 41, total)
    loop = asyncio.get_running_loop()
    per_tick = [0]
    worst = [0]
    ticking = [True]

    def tick():
        worst[0] = max(worst[0], per_tick[0])
        per_tick[0] = 0
        if ticking[0]:
            loop.call_soon(tick)

    class Counter(Sink):
        def data_received(self, view):
            per_tick[0] += 1
            super().data_received(view)

    async with aiozcrx.Receiver(engine="uring", buf_size=4096, cq_entries=256) as rx:
        _, proto = await rx.wrap(await lst.accept(), Counter)
        loop.call_soon(tick)
        assert await asyncio.wait_for(proto.lost, 120) is None
        ticking[0] = False
        st = rx.stats()
    lst.close()
    assert await join(proc) == 0
    assert proto.bytes == total
    assert proto.sha.hexdigest() == stream_sha256(41, total)
    assert proto.calls == st["completions"] - st["merged_completions"]
    # Per pump: the budget + the round that passed it (a CQ's worth, and what
    # overflowed: another). Several pumps can share one iteration (the wake-up, a
    # kick, the task-work recheck timer), so the bound is a few budgets: loose, but
    # far below what an unbounded pump delivered in the guest (33,080).
    assert worst[0] <= 8 * 1024, (worst[0], st)

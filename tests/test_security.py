"""Regression tests for the security review (issue 20): each test reproduces one
finding on the code it was found on (commit 9722297) and holds the fix.

What the library promises, and against whom: docs/security.md."""

from __future__ import annotations

import asyncio
import os
import select
import socket
import sys

import pytest

import aiozcrx
from peers import Listener, join, start_sender, stream_sha256, tcp_pair, wait_until
from test_transport import MiB, Sink

KiB = 1 << 10


def _pool_area(nbufs: int = 16, buf_size: int = 4096):
    """A free-list Area (the socket engine's kind) over memory of its own."""
    from aiozcrx import _kernel

    area = _kernel.new_area(_kernel.map_area(nbufs * buf_size), buf_size)
    area.setup_pool()
    return area


def _recv_views(area, pair: tuple[socket.socket, socket.socket], n: int, slot: int = 0,
                gen: int = 1) -> list[memoryview]:
    """``n`` one-byte views received by connection (slot, gen) through Area.recv."""
    sock, peer = pair
    views = []
    for _ in range(n):
        peer.sendall(b"x")
        v = None
        while v is None:  # the byte may not have arrived yet: wait for it, not for a time
            select.select([sock], [], [])
            v = area.recv(sock.fileno(), slot, gen)
        assert isinstance(v, memoryview) and len(v) == 1
        views.append(v)
    return views


def _file_at(path, fd: int) -> None:
    """Opens a new regular file at ``path`` as fd number ``fd`` (closed before)."""
    new = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    if new != fd:
        os.dup2(new, fd, inheritable=False)
        os.close(new)


@pytest.fixture
def conn():
    a, b = tcp_pair()
    a.setblocking(False)
    yield a, b
    a.close()
    b.close()


# -- 1. a closed user's wake-up fd is never written ---------------------------
# An Area shared by two engines (share_with=) kept one wake-up fd, the one of the
# engine that set it: when that engine closed first, the fd number stayed in the
# area, and a later release wrote 8 bytes into whatever held that number then.

@pytest.mark.parametrize("wake", ["share", "starved"])
def test_closed_users_wakeup_fd_is_never_written(wake, conn, tmp_path):
    area = _pool_area()
    evfd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    if wake == "share":
        area.set_share(2, evfd)  # the first user's fair share and its wake-up
    area.add_user()  # a second engine receives into the area (share_with=)
    area.bind_slot(0, 1)
    views = _recv_views(area, conn, 2)
    if wake == "share":
        assert area.over_share(0, 1)  # the connection holds its share: stopped
    else:
        area.set_wake(evfd, True)  # the first user waits for a buffer to come back
    # the first user closes: its ring and its eventfd go; the area lives on for
    # the second user
    os.close(evfd)
    area.close()
    victim = tmp_path / "victim"
    _file_at(victim, evfd)  # an unrelated file now holds that fd number
    try:
        for v in views:
            v.release()  # back under the share / a buffer back: nobody to wake
    finally:
        os.close(evfd)
    assert victim.stat().st_size == 0
    area.close()


@pytest.mark.guest
@pytest.mark.asyncio
async def test_share_with_source_closed_first_never_writes_its_old_eventfd(need_zcrx_copy, tmp_path):
    """The Receiver an instance was shared from closes first, while a connection of
    the importing Receiver is stopped over its share; releasing that connection's
    views writes nothing into the file that took the closed eventfd's number, and
    wakes the importer's own loop reader instead: its stream completes."""
    total, held = 4 * MiB, 256 * KiB
    lst = Listener()
    proc = start_sender(lst.port, 61, total)
    rx1 = aiozcrx.Receiver(engine="zcrx-copy", area_size=2 * MiB, max_held=held, over_share="pause")
    rx1.open()
    rx2 = aiozcrx.Receiver(engine="zcrx-copy", share_with=rx1, max_held=held, over_share="pause")
    rx2.open()
    try:
        _, keeper = await rx2.wrap(await lst.accept(), lambda: Sink(keep=True))
        await wait_until(lambda: rx2.stats().get("share_stops", 0) >= 1, "the importer's connection is stopped")
        old_evfd = rx1._engine.ring.eventfd
        rx1.close()
        victim = tmp_path / "victim"
        _file_at(victim, old_evfd)
        try:
            keeper.release_kept()  # back under its share: its engine is woken
        finally:
            os.close(old_evfd)
        assert victim.stat().st_size == 0
        assert await asyncio.wait_for(keeper.lost, 120) is None
    finally:
        rx2.close()
        rx1.close()
    lst.close()
    assert await join(proc) == 0
    assert keeper.sha.hexdigest() == stream_sha256(61, total)


# -- 3. one area, two engines: each owns its connections' state ---------------
# Both engines' slot tables start at slot 0, generation 1: the area's per-connection
# state (views held, over the share, back under it) was keyed by (slot, gen) alone,
# so the two engines' first connections were one entry. And a NODEV flush went
# through the ring of the Receiver the instance came from, closed or not.

@pytest.mark.guest
@pytest.mark.asyncio
async def test_share_with_two_engines_first_connections_are_throttled_and_resumed_apart(need_zcrx_copy):
    total, held = 4 * MiB, 256 * KiB
    lst = Listener()
    async with aiozcrx.Receiver(engine="zcrx-copy", area_size=2 * MiB, max_held=held, over_share="pause") as rx1:
        async with aiozcrx.Receiver(engine="zcrx-copy", share_with=rx1, max_held=held, over_share="pause") as rx2:
            p1 = start_sender(lst.port, 71, total)
            _, k1 = await rx1.wrap(await lst.accept(), lambda: Sink(keep=True))
            p2 = start_sender(lst.port, 73, total)
            _, k2 = await rx2.wrap(await lst.accept(), lambda: Sink(keep=True))
            for rx in (rx1, rx2):  # each engine stops its own connection at its share
                await wait_until(lambda: rx.stats().get("share_stops", 0) >= 1,
                                 f"{rx.engine} stopped its connection at its share")
            k1.release_kept()
            k2.release_kept()
            assert await asyncio.wait_for(k1.lost, 120) is None
            assert await asyncio.wait_for(k2.lost, 120) is None
        await join(p1)
        await join(p2)
    lst.close()
    assert k1.sha.hexdigest() == stream_sha256(71, total)
    assert k2.sha.hexdigest() == stream_sha256(73, total)


@pytest.mark.guest
@pytest.mark.asyncio
async def test_pause_at_the_share_takes_no_more_than_the_share(need_zcrx_copy):
    """over_share="pause": once the connection is stopped and its request has ended,
    its views hold about its share, not the area. Each request takes at most what is
    left of the share (RECV_ZC's len): a cancel lands only after the kernel has run
    the pending receive, which on loopback took the sender's whole send buffer (276
    buffers for a share of 64, and with a second connection the whole area: the
    test above then waited for ever, seen under load)."""
    total, held = 4 * MiB, 256 * KiB
    lst = Listener()
    async with aiozcrx.Receiver(engine="zcrx-copy", area_size=2 * MiB, max_held=held, over_share="pause") as rx:
        proc = start_sender(lst.port, 77, total)
        t, keeper = await rx.wrap(await lst.accept(), lambda: Sink(keep=True))
        conn = t._conn
        await wait_until(lambda: rx.stats().get("share_stops", 0) >= 1 and not conn.armed,
                         "the connection stopped at its share, its request ended")
        share = held // rx.stats()["buffer_size"]
        # a completion may fill less than its buffer: the limit is in bytes
        assert rx.stats()["buffers_outstanding"] <= 2 * share, rx.stats()
        keeper.release_kept()
        assert await asyncio.wait_for(keeper.lost, 120) is None
    lst.close()
    assert await join(proc) == 0
    assert keeper.sha.hexdigest() == stream_sha256(77, total)


@pytest.mark.guest
@pytest.mark.asyncio
async def test_share_with_source_closed_mid_stream_importer_refills_through_its_own_ring(need_zcrx_copy):
    total = 8 * MiB  # four times the area: the kernel needs the refills flushed
    lst = Listener()
    proc = start_sender(lst.port, 75, total)
    rx1 = aiozcrx.Receiver(engine="zcrx-copy", area_size=2 * MiB)
    rx1.open()
    try:
        async with aiozcrx.Receiver(engine="zcrx-copy", share_with=rx1) as rx2:
            _, sink = await rx2.wrap(await lst.accept(), Sink)
            await sink.got_data.wait()
            rx1.close()  # its ring goes; the instance lives on in rx2's
            assert await asyncio.wait_for(sink.lost, 120) is None
            stats = rx2.stats()
    finally:
        rx1.close()
    lst.close()
    assert await join(proc) == 0
    assert sink.sha.hexdigest() == stream_sha256(75, total)
    assert stats["refill_errors"] == 0


def test_area_users_keep_their_connections_apart(conn):
    """The same (slot, generation) in two users of one area: two connections."""
    area = _pool_area()
    other = area.add_user()
    area.bind_slot(0, 1)
    area.bind_slot(0, 1, other)  # the second engine's first connection
    views = _recv_views(area, conn, 2)
    assert area.held(0, 1) == 2
    assert area.held(0, 1, other) == 0
    area.set_share(2, -1)
    area.set_share(2, -1, other)
    assert area.over_share(0, 1) and not area.over_share(0, 1, other)
    for v in views:
        v.release()
    assert area.take_back(other) == []
    assert area.take_back() == [0]
    area.close(other)
    area.close()


# -- 2. fork: the child never touches the parent's ring -----------------------
# A process that forked while a Receiver was open: in the child, releasing a view
# wrote into the refill region (MADV_DONTFORK: SIGSEGV) or, for a kernel-allocated
# region, into the parent's live refill ring; a pump there would have taken the
# parent's completions. Views inherited across fork are inert in the child (their
# release does nothing, they read as zeros), and every Receiver and transport
# method raises ProcessForked (docs/security.md, "A forked child").

FORK_CHILD = r'''
import asyncio, gc, os, sys, traceback
import aiozcrx
from peers import tcp_pair

ENGINE, KW = sys.argv[1], eval(sys.argv[2])
SIZE = 64 * 1024


class Keep(asyncio.Protocol):
    def __init__(self):
        self.kept = []

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, view):
        self.kept.append(view)


def child(rx, transport, proto):
    """What a forked child does with what it inherited; its exit status says how it went."""
    try:
        for v in proto.kept:
            if bytes(v) != bytes(len(v)):  # no crash; the parent's data is not there
                print("CHILD read data of the parent", flush=True)
                return 3
        views = proto.kept
        proto.kept = []
        for v in views:
            v.release()  # inert: nothing is written anywhere
        del views, v
        gc.collect()
        calls = {"Receiver.stats": rx.stats, "Receiver.wrap": lambda: rx.wrap(None, Keep),
                 "Receiver.close": rx.close, "transport.pause_reading": transport.pause_reading,
                 "transport.write": lambda: transport.write(b"x"), "transport.close": transport.close,
                 "transport.abort": transport.abort,
                 # what the loop would run next: the dispatcher's reader, or the socket
                 # engine's recv() from the parent's socket
                 "the loop's reader": rx._engine.dispatcher.on_wake if hasattr(rx._engine, "dispatcher")
                 else lambda: rx._engine.area.recv(transport._fileno, 0, 1)}
        for name, call in calls.items():
            try:
                r = call()
                if asyncio.iscoroutine(r):
                    r.send(None)  # runs to its first await (no loop runs in this child)
            except aiozcrx.ProcessForked as e:
                if "opened in another process (fork)" not in str(e):
                    print("CHILD", name, "said", e, flush=True)
                    return 4
            else:
                print("CHILD", name, "did not raise", flush=True)
                return 5
        return 0
    except BaseException:
        traceback.print_exc()
        return 2


async def main():
    a, b = tcp_pair()
    async with aiozcrx.Receiver(engine=ENGINE, **KW) as rx:
        transport, proto = await rx.wrap(a, Keep)
        b.sendall(bytes(range(256)) * (SIZE // 256))
        while sum(len(v) for v in proto.kept) < SIZE:  # waits for the data, not for a time
            await asyncio.sleep(0.001)
        before = rx.stats()["buffers_outstanding"]
        pid = os.fork()
        if pid == 0:
            os._exit(child(rx, transport, proto))
        _, status = os.waitpid(pid, 0)
        print("CHILD EXIT", os.waitstatus_to_exitcode(status), flush=True)
        # the parent's views, buffers and ring are as they were
        assert b"".join(proto.kept) == bytes(range(256)) * (SIZE // 256)
        assert rx.stats()["buffers_outstanding"] == before > 0
        proto.kept.clear()
        gc.collect()
        assert rx.stats()["buffers_outstanding"] == 0
        b.sendall(b"more")
        b.close()
        while not proto.kept:
            await asyncio.sleep(0.001)
        assert bytes(proto.kept[0]) == b"more"
    print("PARENT OK", flush=True)


asyncio.run(main())
'''


def _fork_case(engine: str, **kw):
    r = _run_script(FORK_CHILD, engine, repr(kw))
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    assert "CHILD EXIT 0" in r.stdout, (r.stdout, r.stderr)
    assert "PARENT OK" in r.stdout, (r.stdout, r.stderr)


# The 7.2 guest kernel (User-Mode Linux) cannot fork a process that has an io_uring
# ring and a MADV_DONTFORK mapping: "BUG: Bad page map" when the memory goes, then
# a kernel panic, whatever the child does (seen with a bare Ring, a registered
# buffer ring and fork + _exit). Host kernels fork it fine.
NO_RING_FORK_HERE = pytest.mark.skipif(os.environ.get("AIOZCRX_GUEST") == "1",
                                       reason="the UML guest kernel panics when a process with a "
                                              "ring and a MADV_DONTFORK mapping forks")


@pytest.mark.parametrize("engine", [pytest.param("uring", marks=NO_RING_FORK_HERE), "socket"])
def test_forked_child_leaves_the_parents_receiver_alone(engine):
    _fork_case(engine)


# The same for a zcrx area cannot run in the 7.2 guest (NO_RING_FORK_HERE), and
# the host has no zcrx: the zcrx case runs on a refill ring and CQ in plain memory
# (tests/fakering.py), laid out and driven as the kernel does; what it checks is
# the C code's, which is the same on any kernel.
FAKE_FORK = r'''
import gc, os, sys
import aiozcrx
from fakering import FakeZcrx, PAGE

z = FakeZcrx(kernel_region=sys.argv[1] == "kernel")
kept = []
z.connect(kept.append)
for page in range(4):
    z.data(page, bytes([page + 1]) * 100)
assert z.run() == (4, None) and len(kept) == 4
before = z.refill_bytes()
pid = os.fork()
if pid == 0:
    code = 0
    kept[0].release()   # inert here: nothing written into the refill ring
    del kept[0]
    if any(bytes(v) != bytes(len(v)) for v in kept):  # no crash, no data of the parent
        code = 3
    kept.clear()
    gc.collect()
    for name, call in (("Dispatcher.run", z.run), ("Dispatcher.kick", z.d.kick),
                       ("Area.publish", lambda: z.area.publish(True))):
        try:
            call()
        except aiozcrx.ProcessForked as e:
            if "opened in another process (fork)" not in str(e):
                code = 4
        else:
            print("CHILD", name, "did not raise", flush=True)
            code = 5
    os._exit(code)
_, status = os.waitpid(pid, 0)
print("CHILD EXIT", os.waitstatus_to_exitcode(status), flush=True)
assert z.refill_bytes() == before, "the child wrote into the refill ring"
assert [bytes(v) for v in kept] == [bytes([p + 1]) * 100 for p in range(4)]
kept.clear()
gc.collect()
z.area.publish(True)
assert sorted(z.consume_refills()) == [(p * PAGE, 100) for p in range(4)]
print("PARENT OK", flush=True)
'''


def _run_script(script: str, *args: str):
    import subprocess
    import sys
    import textwrap

    env = dict(os.environ, PYTHONPATH=os.path.dirname(__file__) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script), *args],
                          capture_output=True, text=True, env=env, timeout=120)


def _script_ok(script: str, *args: str, marker: str = "ALL OK") -> None:
    """``script`` in a subprocess (a crash is its exit status): it must exit 0 and
    print ``marker``."""
    r = _run_script(script, *args)
    assert r.returncode == 0 and marker in r.stdout, (r.returncode, r.stdout[-4000:], r.stderr[-4000:])


@pytest.mark.parametrize("region", ["user", "kernel"])
def test_forked_child_never_touches_the_parents_zcrx_refill_ring(region):
    r = _run_script(FAKE_FORK, region)
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    assert "CHILD EXIT 0" in r.stdout, (r.stdout, r.stderr)
    assert "PARENT OK" in r.stdout, (r.stdout, r.stderr)


# -- 4. out of memory inside drain(): no completion is lost -------------------
# An allocation that failed part-way through a batch of completions abandoned the
# rest of the batch (the CQ head had moved past it): those buffers never went back
# to the kernel, and an end of stream among them was never reported. Now a delivery
# that cannot be made fails its connection (a UD_NOMEM record: connection_lost with
# ENOMEM) and its buffer goes back at once; every other record is kept in the
# dispatcher until it can be handed over, and the next pump hands it over.
# The failures are CPython's own (_testcapi.set_nomemory): every allocation index of
# a drain in turn, and every one from some index on.

NOMEM = r'''
import gc, sys
import _testcapi
from fakering import F_MORE, PAGE, FakeZcrx, user_data
from aiozcrx._kernel import UD_NOMEM, ud_kind
PAGES = 6
bad = []


def run_out_of_memory(z, start, stop):
    """z.run() with allocation ``start`` and those up to ``stop`` failing."""
    _testcapi.set_nomemory(start, stop)
    try:
        return z.run()[1], False
    except MemoryError:
        return None, True
    finally:
        _testcapi.remove_mem_hooks()


def case(start, stop):
    z = FakeZcrx(nbufs=16)
    kept = []
    z.connect(kept.append, slot=0, gen=1)
    for page in range(PAGES):
        z.data(page, bytes([page + 1]) * 100)
    z.post(user_data(0, 1), 0, 0)           # the end of its stream (EOF)
    z.data(PAGES, b"late", slot=1, gen=1)   # data for a slot nobody has
    records = []
    try:
        control, raised = run_out_of_memory(z, start, stop)
    except MemoryError:
        # 3.12+: the interpreter's own handling of the drain's MemoryError ran out
        # of memory too, and the exception left run_out_of_memory's frame unhandled
        _testcapi.remove_mem_hooks()
        control, raised = None, True
    records += control or []
    for _ in range(3):                      # memory is back: what waited comes now
        _n, control = z.run()
        records += control or []
    where = f"set_nomemory({start}, {stop}), raised={raised}"
    got = [bytes(v) for v in kept]
    want = [bytes([p + 1]) * 100 for p in range(PAGES)]
    failed = [r for r in records if r[0] & 0xFFFFFFFF == 0 and
              (r[3] is not None or ud_kind(r[0]) == UD_NOMEM)]
    if got != want[:len(got)] or (len(got) < PAGES and not failed):
        bad.append(f"{where}: delivered {len(got)} of {PAGES} pages with no failure reported: {records}")
    ends = [r for r in records if r[0] == user_data(0, 1) and r[1] == 0 and not r[2] & F_MORE]
    if len(ends) != 1:
        bad.append(f"{where}: the end of stream was reported {len(ends)} times: {records}")
    kept.clear()
    gc.collect()
    z.area.publish(True)
    back = sorted(off // PAGE for off, _len in z.consume_refills())
    if back != list(range(PAGES + 1)) or z.area.outstanding:
        bad.append(f"{where}: buffers back to the kernel {back}, {z.area.outstanding} still out")
    if z.queued_cqes():
        bad.append(f"{where}: {z.queued_cqes()} completions left in the CQ")


def many_records(start):
    """More records than one batch has room for: the CQ waits, then all come, once, in order."""
    z = FakeZcrx(nbufs=4, cq_entries=1024)
    for i in range(600):
        z.post(user_data(i, 1, kind=4), 0, 0)  # NOPs: one record each
    try:
        records = run_out_of_memory(z, start, start + 10000)[0] or []
    except MemoryError:  # 3.12+, as in case()
        _testcapi.remove_mem_hooks()
        records = []
    for _ in range(4):
        records += z.run()[1] or []
    if [r[0] for r in records] != [user_data(i, 1, kind=4) for i in range(600)] or z.queued_cqes():
        bad.append(f"many_records({start}): {len(records)} records, {z.queued_cqes()} CQEs left")
    return z.d.stats()["nomem_stalls"]


for start in range(1, 80):
    case(start, start + 1)   # that one allocation fails
    # every allocation from that one on fails, for far longer than a drain allocates
    # (not for ever: with stop=0 CPython 3.12's own exception handling spins for
    # ever once it cannot allocate; 3.10 and 3.11 recover)
    case(start, start + 10000)
if not sum(many_records(start) for start in range(1, 8)):
    bad.append("the CQ never had to wait for room: the case is not tested")
print("\n".join(bad[:10]) or "ALL OK", flush=True)
sys.exit(1 if bad else 0)
'''


def test_out_of_memory_inside_drain_loses_no_completion():
    pytest.importorskip("_testcapi", reason="needs CPython's _testcapi (set_nomemory)")
    _script_ok(NOMEM)


class _RecvRunsOutOfMemory:
    """The socket engine's Area, whose recv() for one fd fails as memory runs out."""

    def __init__(self, area, fd: int):
        self._area, self._fd = area, fd

    def recv(self, fd, slot, gen):
        if fd == self._fd:
            raise MemoryError
        return self._area.recv(fd, slot, gen)

    def __getattr__(self, name):
        return getattr(self._area, name)


@pytest.mark.asyncio
@pytest.mark.parametrize("engine", ["uring", "socket"])
async def test_a_delivery_out_of_memory_ends_its_connection_with_enomem(engine):
    import errno

    from aiozcrx._kernel import CQE_F_MORE, UD_NOMEM, user_data

    a, b = tcp_pair()
    c, d = tcp_pair()
    async with aiozcrx.Receiver(engine=engine) as rx:
        _, victim = await rx.wrap(a, Sink)
        _, other = await rx.wrap(c, Sink)
        eng = rx._engine
        conn = next(x for x in eng.conns.values() if x.fd == a.fileno())
        if engine == "socket":
            eng.area = _RecvRunsOutOfMemory(eng.area, a.fileno())
            b.sendall(b"lost")
        else:
            # what the C dispatcher records when a view cannot be made (see the test above)
            eng._handle([(user_data(UD_NOMEM, conn.slot, conn.gen), -errno.ENOMEM, CQE_F_MORE, None)])
        exc = await asyncio.wait_for(victim.lost, 30)
        assert isinstance(exc, OSError) and exc.errno == errno.ENOMEM, exc
        assert rx.stats()["nomem_connections"] == 1
        d.sendall(b"hello")  # the other connection goes on
        await wait_until(lambda: other.bytes == 5, "the other connection got its data")
    for s in (b, d):
        s.close()


# -- 5. low: the C types are safe whatever Python does with them --------------

UNINIT = r'''
import sys
from aiozcrx._fastpath import Area, CopySink, Dispatcher, Lease
from fakering import FakeZcrx

# raw-address entry points (own_mapping, setup_*, bind_ring, bind_eventfd) are
# given no address: an uninitialised object must refuse them before it looks
ARGS = [(), (0,), (1,), (0, 0), (1, 1), (0, 0, 0), (1, 1, 1), (0, 0, 0, 0), (1, 0, 1, 0),
        (0, 0, 0, 0, 0, 0, 0, 0), (None,), ([],), (-1,), (-1, -1)]


def poke(obj):
    for name in sorted(dir(obj)):
        if name.startswith("__") and name != "__call__":
            continue
        try:
            attr = getattr(obj, name)
        except Exception:
            continue
        if not callable(attr):
            continue
        for args in ARGS:
            try:
                attr(*args)
            except Exception:
                pass
    for view in (lambda: memoryview(obj), lambda: repr(obj)):
        try:
            view()
        except Exception:
            pass


for t in (Area, Dispatcher, CopySink):
    poke(t.__new__(t))
    print("poked", t.__name__, flush=True)
try:
    Lease.__new__(Lease)
    sys.exit("Lease.__new__ made a Lease")
except TypeError:
    pass
# an uninitialised CopySink given as a connection's sink
z = FakeZcrx()
z.connect(CopySink.__new__(CopySink))
z.data(0, b"x" * 10)
n, control = z.run()
assert control and control[0][3] is not None, control  # its failure is reported
# an Area or Dispatcher cannot be initialised twice under the objects made from it
for again in (lambda: z.area.__init__(z.area_addr, 4096, 4096),
              lambda: z.d.__init__(z.area, [], khead=z.khead, ktail=z.ktail, mask=63, cqes=z.cqes,
                                   cqe_size=32)):
    try:
        again()
        sys.exit("initialised twice")
    except RuntimeError:
        pass
print("ALL OK", flush=True)
'''


def test_c_types_made_without_their_constructor_raise_instead_of_crashing():
    _script_ok(UNINIT)


CLEARED = r'''
import ctypes, gc, sys
from aiozcrx._fastpath import Dispatcher
from fakering import FakeZcrx

# tp_clear is what the garbage collector calls on an object of a reference cycle;
# another object of the cycle may still call it afterwards
TP_CLEAR = 24 + 8 * 21  # its offset in PyTypeObject (64-bit CPython 3.8+)
clear = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.py_object).from_address(id(Dispatcher) + TP_CLEAR)
z = FakeZcrx()
kept = []
z.connect(kept.append)
z.data(0, b"x" * 10)
clear(z.d)
for call in (z.d.run, z.d.kick, z.d.on_wake, lambda: z.d.pump(-1), lambda: z.d.socket_wake(0),
             lambda: z.d.bind(0, 2), z.d.stats, z.d.take_quiet, lambda: z.d.slot_stats(0), z.d.close):
    try:
        call()
    except Exception:
        pass
print("ALL OK", flush=True)
'''


def test_dispatcher_used_after_the_garbage_collectors_clear_does_not_crash():
    _script_ok(CLEARED)


def test_a_completion_of_unknown_kind_is_counted_and_its_buffer_goes_back():
    """user_data of no kind we issue (a bug, or an SQE that is not ours): it reaches
    no connection, even one whose slot and generation it names, any buffer it
    carries goes back to the kernel, and stats() counts it."""
    from fakering import PAGE, FakeZcrx, user_data

    z = FakeZcrx()
    kept = []
    z.connect(kept.append, slot=0, gen=1)
    z.post(user_data(0, 1, kind=0x42), 100, 0, 3 * PAGE)   # names connection (0, 1), with data
    z.post(user_data(5, 0, kind=0), 0, 0)                   # nothing
    z.data(1, b"mine")                                      # the connection's own
    n, control = z.run()
    assert [bytes(v) for v in kept] == [b"mine"]
    assert control is None  # nothing for the engine to decide
    assert z.d.stats()["unknown_completions"] == 2
    kept.clear()
    z.area.publish(True)
    assert sorted(off // PAGE for off, _ in z.consume_refills()) == [1, 3]
    assert z.area.outstanding == 0


BLOCKING_RECV = r'''
from peers import tcp_pair
from test_security import _pool_area

area = _pool_area()
area.bind_slot(0, 1)
a, b = tcp_pair()  # blocking sockets, nothing sent
assert a.getblocking()
print("RESULT", area.recv(a.fileno(), 0, 1), flush=True)  # "would block", at once
'''


def test_area_recv_never_blocks_even_on_a_blocking_socket():
    """Area.recv (the socket engine's read) holds the GIL: on a socket left in
    blocking mode it must not wait for data (it would stop every thread)."""
    import subprocess

    try:
        r = _run_script(BLOCKING_RECV)
    except subprocess.TimeoutExpired:
        pytest.fail("Area.recv waited for data on a blocking socket")
    assert r.returncode == 0 and "RESULT None" in r.stdout, (r.stdout, r.stderr)


# -- low: nothing leaks, nothing is ignored, when registration fails ---------

@pytest.mark.asyncio
@pytest.mark.parametrize("engine,step,exc", [
    ("zcrx-copy", "register_zcrx", RuntimeError("not an OSError")),
    ("zcrx-copy", "register_zcrx", MemoryError()),
    ("zcrx-copy", "register_zcrx", KeyboardInterrupt()),
    ("uring", "register_pbuf_ring", RuntimeError("not an OSError")),
    ("uring", "register_pbuf_ring", KeyboardInterrupt()),
])
async def test_a_registration_failing_with_any_exception_releases_ring_and_area(engine, step, exc, monkeypatch):
    """The step of open() that registers with the kernel raising anything, not only
    an OSError (the ring fd leaked then, and the area stayed mapped): the error
    goes up as it was, and every fd and mapping open() made is gone."""
    from aiozcrx import _kernel
    from peers import is_mapped, open_fds

    made = []
    real_map = _kernel.map_area

    def map_area(length, **kw):
        m = real_map(length, **kw)
        made.append(m.addr)
        return m

    def fail(*args, **kw):
        raise exc

    monkeypatch.setattr(_kernel, "map_area", map_area)
    monkeypatch.setattr(_kernel, step, fail)
    fds = open_fds()
    with pytest.raises(type(exc)):
        aiozcrx.Receiver(engine=engine).open()
    assert open_fds() == fds
    assert made and not any(is_mapped(a) for a in made)  # the area went with it


FAIL_DONTFORK = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdlib.h>
#include <sys/mman.h>
/* madvise(MADV_DONTFORK) call number $FAIL_DONTFORK_CALL fails with ENOMEM */
int madvise(void *addr, size_t len, int advice)
{
    static int (*real)(void *, size_t, int);
    static int calls;
    if (!real)
        real = (int (*)(void *, size_t, int))dlsym(RTLD_NEXT, "madvise");
    const char *n = getenv("FAIL_DONTFORK_CALL");
    if (advice == MADV_DONTFORK && n && ++calls == atoi(n)) {
        errno = ENOMEM;
        return -1;
    }
    return real(addr, len, advice);
}
"""

OPEN_ZCRX = r'''
import asyncio, errno, aiozcrx
async def main():
    try:
        async with aiozcrx.Receiver(engine="zcrx-copy"):
            print("OPENED", flush=True)
    except aiozcrx.ZcrxUnavailable as e:
        print("ERRNO", errno.errorcode[e.errno], "|", e, flush=True)
asyncio.run(main())
'''


@pytest.mark.guest
@pytest.mark.parametrize("call,what", [(1, "the area"), (2, "the refill region")])
def test_madvise_dontfork_failing_fails_the_registration(call, what, need_zcrx_copy, tmp_path):
    """MADV_DONTFORK keeps pinned memory out of forked children (docs/security.md):
    when it fails, for the area (call 1) or for the refill region registration
    maps (call 2, in C), opening fails with the error instead of going on."""
    import shutil
    import subprocess
    import sys

    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("needs a C compiler for the LD_PRELOAD shim")
    (tmp_path / "shim.c").write_text(FAIL_DONTFORK)
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(tmp_path / "shim.so"), str(tmp_path / "shim.c"), "-ldl"],
                   check=True)
    env = dict(os.environ, LD_PRELOAD=str(tmp_path / "shim.so"), FAIL_DONTFORK_CALL=str(call))
    r = subprocess.run([sys.executable, "-c", OPEN_ZCRX], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "ERRNO ENOMEM" in r.stdout and "MADV_DONTFORK" in r.stdout, (what, r.stdout)


def test_fuzz_the_c_types():
    """tests/fuzz_fastpath.py: hypothesis drives the Dispatcher and Area through a
    fake kernel (completions of every sort, connections coming and going, views
    released in any order) and Area's calls with any numbers; a few seconds, in a
    subprocess (a crash fails the test, not the run)."""
    import subprocess
    import sys

    pytest.importorskip("hypothesis")
    here = os.path.dirname(__file__)
    env = dict(os.environ, PYTHONPATH=here + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, os.path.join(here, "fuzz_fastpath.py"), "60"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, (r.returncode, r.stdout[-3000:], r.stderr[-3000:])

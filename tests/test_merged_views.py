"""Merged views: completions of one connection that arrived together and lie back
to back in the area become one view and one ``data_received`` call
(``Receiver(max_view=...)``, docs/concepts.md "Merged views").

What must hold, whatever merges: the bytes in order; a view valid until released
and never aliased by a later one; every buffer (niov) a merged view covers given
back exactly once when it goes (one refill entry per completion: the area's
``buffers_returned`` equals the completions, its free count is back to full);
``max_view`` honoured; fair shares counted in buffers, so that over_share
"copy"/"pause" still bound what one connection holds.

The zcrx tests run in the User-Mode Linux guest (engine zcrx-copy, marked
``guest``) and on its simulated NIC (engine zcrx, marked ``nic``); on the host
they are skipped with the reason. The option's checks and the uring engine's
merging (pieces of one incremental buffer) run on the host.
"""

from __future__ import annotations

import asyncio
import hashlib

import pytest

import aiozcrx
from peers import Listener, join, start_many, start_sender, stream_sha256, wait_until, payload
from test_guest_nic import kernel_log, listen, state_dir, zc  # noqa: F401 - the NIC fixtures
from test_transport import MiB, Sink

PAGE = 4096


class Recorder(Sink):
    """Sink that also records every delivery's length and checks that no earlier
    view it keeps was changed under it (no aliasing by a later view)."""

    def __init__(self, keep: bool = False, check_every: int = 0):
        super().__init__(keep=keep)
        self.sizes: list[int] = []
        self.digests: list[bytes] = []
        self.check_every = check_every

    def data_received(self, view):
        self.sizes.append(len(view))
        if self.keep:
            self.digests.append(hashlib.sha1(view).digest())
        super().data_received(view)
        if self.check_every and len(self.kept) % self.check_every == 0:
            self.check_kept()

    def check_kept(self) -> None:
        for v, d in zip(self.kept, self.digests):
            assert hashlib.sha1(v).digest() == d, "a kept view changed: aliased by a later one"

    def release_kept(self, *, keep: bool = False) -> None:
        self.check_kept()
        super().release_kept(keep=keep)
        self.digests.clear()


def niovs(views) -> int:
    """Buffers the kept views hold. In copy mode (zcrx-copy) every completion
    starts a page of its own, so a view of n bytes covers ceil(n / 4096) pages."""
    return sum(-(-len(v) // PAGE) for v in views if isinstance(v, memoryview))


def assert_all_back(stats: dict) -> None:
    """Every buffer back once: none held, the free count full, one return per
    completion (a merged view gives back one niov per completion it gathered)."""
    assert stats["buffers_outstanding"] == 0, stats
    assert stats["views_outstanding"] == 0, stats
    assert stats["buffers_free"] == stats["buffers_total"], stats
    assert stats["buffers_returned"] == stats["completions"], stats


# --------------------------------------------------------------------------
# host: the C dispatcher on a fake zcrx ring (tests/fakering.py): which
# completions merge, what a merged view holds and gives back
# --------------------------------------------------------------------------
def fake(max_view: int | None = None, nbufs: int = 16):
    from fakering import FakeZcrx
    z = FakeZcrx(nbufs=nbufs)
    if max_view is not None:
        z.d.set_max_view(max_view)
    views: list = []
    z.connect(views.append, slot=0, gen=1)
    return z, views


def fill(z, pages, *, slot=0, gen=1, length=PAGE, last_more=True):
    """Posts full pages (each its own completion, as the kernel does) with a
    recognisable payload; the stream's bytes."""
    from fakering import F_MORE
    out = b""
    for i, page in enumerate(pages):
        body = bytes([(page * 7 + j) & 0xFF for j in range(length)])
        more = F_MORE if (last_more or i < len(pages) - 1) else 0
        z.data(page, body, slot=slot, gen=gen, flags=more)
        out += body
    return out


def test_fake_contiguous_pages_become_one_view_and_go_back_once_each():
    z, views = fake()
    want = fill(z, [2, 3, 4, 5])
    z.run()
    assert [len(v) for v in views] == [4 * PAGE]
    assert bytes(views[0]) == want
    st = z.area.stats()
    assert (st["buffers_outstanding"], st["views_outstanding"]) == (4, 1)
    assert z.area.held(0, 1) == 4
    assert z.d.stats()["merged_completions"] == 3
    views.clear()
    z.area.publish(True)
    back = z.consume_refills()
    assert sorted(off for off, _ in back) == [2 * PAGE, 3 * PAGE, 4 * PAGE, 5 * PAGE]
    assert all(length == PAGE for _, length in back)
    st = z.area.stats()
    assert st["buffers_outstanding"] == 0 and st["buffers_returned"] == 4
    assert z.area.held(0, 1) == 0


def test_fake_what_does_not_merge():
    from fakering import F_MORE, user_data
    z, views = fake()
    fill(z, [5, 3])                                   # not ascending: two views
    fill(z, [8], length=100)                          # ends mid-page ...
    fill(z, [9])                                      # ... so the next does not join it
    z.data(10, b"x" * PAGE, slot=1, gen=1)            # another connection between
    fill(z, [11])
    z.post(user_data(0, 2), PAGE, F_MORE, 12 * PAGE)  # another generation of the slot
    z.connect(views.append, slot=1, gen=1)
    z.run()
    assert [len(v) for v in views] == [PAGE, PAGE, 100, PAGE, PAGE, PAGE]
    assert z.d.stats()["merged_completions"] == 0
    assert z.d.stats()["dropped_completions"] == 1   # the other generation's


def test_fake_a_run_without_f_more_at_its_end_is_merged_and_reported_once():
    from fakering import F_MORE, user_data
    z, views = fake()
    want = fill(z, [0, 1, 2], last_more=False)
    fill(z, [3])                                      # a new request's first page: not joined
    _n, control = z.run()
    assert [len(v) for v in views] == [3 * PAGE, PAGE]
    assert bytes(views[0]) == want
    ends = [r for r in control or [] if r[0] == user_data(0, 1) and not r[2] & F_MORE]
    assert len(ends) == 1 and ends[0][1] == 3 * PAGE


@pytest.mark.parametrize("max_view, sizes", [(0, [PAGE] * 5), (PAGE, [PAGE] * 5),
                                             (2 * PAGE, [2 * PAGE, 2 * PAGE, PAGE]),
                                             (3 * PAGE - 1, [2 * PAGE, 2 * PAGE, PAGE]),
                                             (1 << 20, [5 * PAGE])])
def test_fake_max_view_caps_a_merged_view(max_view, sizes):
    z, views = fake(max_view)
    want = fill(z, range(5))
    z.run()
    assert [len(v) for v in views] == sizes
    assert b"".join(bytes(v) for v in views) == want
    assert z.area.stats()["buffers_outstanding"] == 5
    views.clear()
    z.area.publish(True)
    assert len(z.consume_refills()) == 5


def test_fake_kept_views_are_never_aliased_and_reused_views_give_back_all_pages():
    """A view nobody keeps is reused for the next delivery (view reuse): its pages
    go back then, every one; a kept view keeps its bytes."""
    z, views = fake()
    kept = []
    z.slots[0] = lambda v: (kept.append(v) if len(kept) < 1 else None)
    first = fill(z, [0, 1])
    fill(z, [4, 5, 6])
    z.run()
    assert bytes(kept[0]) == first
    z.area.publish(True)
    # the second delivery's view was parked, its three pages back; the kept view's two held
    assert sorted(off // PAGE for off, _ in z.consume_refills()) == [4, 5, 6]
    assert z.area.stats()["buffers_outstanding"] == 2
    kept.clear()
    z.area.publish(True)
    assert sorted(off // PAGE for off, _ in z.consume_refills()) == [0, 1]


def test_fake_over_the_share_counts_buffers_not_views():
    from fakering import user_data
    UD_OVER_SHARE = 5
    z, views = fake()
    z.area.set_share(4, -1)
    fill(z, range(6))
    _n, control = z.run()
    assert [len(v) for v in views] == [6 * PAGE]
    over = [r for r in control or [] if r[0] == (user_data(0, 1) & ~(0xFF << 32)) | (UD_OVER_SHARE << 32)]
    assert len(over) == 1 and over[0][1] == 6, control
    assert z.area.over_share(0, 1)
    views.clear()                               # all six back: under half the share again
    assert z.area.take_back() == [0]


def test_fake_copy_sink_gets_one_bytes_per_merged_run():
    from aiozcrx._fastpath import CopySink
    z, _views = fake()
    got = []
    copied = [0]
    z.slots[0] = CopySink(got.append, copied)
    want = fill(z, [7, 8, 9])
    z.run()
    assert got == [want] and copied[0] == len(want)
    z.area.publish(True)
    assert len(z.consume_refills()) == 3
    assert z.area.stats()["buffers_outstanding"] == 0


@pytest.mark.parametrize("descending", [True, False])
def test_fake_refills_published_in_descending_order(descending):
    """So that the kernel, which hands niovs out last in first out, hands them out
    ascending (docs/concepts.md, "Merged views")."""
    z, views = fake(max_view=0)
    assert z.area.set_refill_order(descending) is descending
    fill(z, range(8))
    z.run()
    for v in views:                             # released in delivery order
        v.release()
    views.clear()
    z.area.publish(True)
    offs = [off // PAGE for off, _ in z.consume_refills()]
    assert offs == (list(range(7, -1, -1)) if descending else list(range(8)))
    # mixed order: sorted
    fill(z, [3, 0, 6, 1])
    z.run()
    for i in (0, 2, 1, 3):                      # pages 3, 6, 0, 1
        views[i].release()
    views.clear()
    z.area.publish(True)
    offs = [off // PAGE for off, _ in z.consume_refills()]
    assert offs == ([6, 3, 1, 0] if descending else [3, 6, 0, 1])
    assert z.area.stats()["refill_sorted"] == (1 if descending else 0)


# --------------------------------------------------------------------------
# host: the option
# --------------------------------------------------------------------------
@pytest.mark.parametrize("bad, exc", [(-1, ValueError), (1 << 31, ValueError),
                                      ("64K", TypeError), (True, TypeError), (4096.0, TypeError)])
def test_max_view_bad_values_are_typed_errors(bad, exc):
    with pytest.raises(exc, match="max_view"):
        aiozcrx.Receiver(max_view=bad)


@pytest.mark.asyncio
@pytest.mark.parametrize("max_view", [0, 8192])
async def test_uring_merged_pieces_honour_max_view(max_view):
    """Engine uring merges pieces of one incremental buffer; max_view caps what it
    gathers (0: none). A single completion is whole whatever its size."""
    total = 8 * MiB + 777
    lst = Listener()
    proc = start_sender(lst.port, 71, total)
    async with aiozcrx.Receiver(engine="uring", max_view=max_view) as rx:
        if not rx.stats().get("incremental_buffers"):
            pytest.skip("this kernel has no incremental buffer consumption (IOU_PBUF_RING_INC): "
                        "engine uring merges nothing")
        _, proto = await rx.wrap(await lst.accept(), Recorder)
        assert await asyncio.wait_for(proto.lost, 120) is None
        stats = rx.stats()
    lst.close()
    assert await join(proc) == 0
    assert proto.sha.hexdigest() == stream_sha256(71, total)
    assert stats["max_view"] == max_view
    if max_view == 0:
        assert stats["merged_completions"] == 0
        assert proto.calls == stats["completions"]
    else:
        # a view larger than max_view is one completion, never a merge
        assert proto.calls + stats["merged_completions"] == stats["completions"]
    assert stats["buffers_outstanding"] == 0


# --------------------------------------------------------------------------
# guest: engine zcrx-copy (NODEV)
# --------------------------------------------------------------------------
ENGINE = "zcrx-copy"


@pytest.mark.asyncio
@pytest.mark.parametrize("max_view", [None, 16384, 4096])
@pytest.mark.guest
@pytest.mark.usefixtures("need_zcrx_copy")
async def test_bulk_bytes_in_order_cap_honoured_every_niov_back(max_view):
    """A bulk stream through a small area (refill churn): bytes in order, no view
    over max_view, merges where the cap allows (a bulk stream always has some),
    none at 4096, and every buffer back exactly once."""
    total = 24 * MiB + 1234
    kw = {} if max_view is None else {"max_view": max_view}
    lst = Listener()
    proc = start_sender(lst.port, 81, total)
    async with aiozcrx.Receiver(engine=ENGINE, area_size=4 * MiB, **kw) as rx:
        _, proto = await rx.wrap(await lst.accept(), Recorder)
        assert await asyncio.wait_for(proto.lost, 300) is None
    stats = rx.stats()
    lst.close()
    assert await join(proc) == 0
    assert proto.bytes == total
    assert proto.sha.hexdigest() == stream_sha256(81, total)
    cap = stats["max_view"]
    assert cap == (max_view if max_view is not None else aiozcrx.config.DEFAULT_MAX_VIEW)
    assert max(proto.sizes) <= max(cap, PAGE)
    assert proto.calls + stats["merged_completions"] == stats["completions"]
    if cap <= PAGE:
        assert stats["merged_completions"] == 0 and max(proto.sizes) <= PAGE
    else:
        assert stats["merged_completions"] > 0, stats
    assert_all_back(stats)


@pytest.mark.asyncio
@pytest.mark.guest
@pytest.mark.usefixtures("need_zcrx_copy")
async def test_slow_consumer_holds_merged_views_counted_in_buffers():
    """A consumer that keeps every view: what it holds is counted in buffers
    (niovs), a merged view as many as it covers; the kept views never change
    (no later view aliases them); released, every buffer comes back."""
    total = 12 * MiB + 99
    area = 8 * MiB
    lst = Listener()
    proc = start_sender(lst.port, 83, total)
    async with aiozcrx.Receiver(engine=ENGINE, area_size=area, max_held=area) as rx:
        _, proto = await rx.wrap(await lst.accept(), lambda: Recorder(keep=True, check_every=64))
        await wait_until(lambda: proto.bytes >= 2 * MiB, "2 MiB delivered", timeout=120)
        st = rx.stats()
        held = niovs(proto.kept)
        # counted in buffers: what the views cover, not how many views there are
        assert st["buffers_outstanding"] == held, (st, held, len(proto.kept))
        assert st["views_outstanding"] == len(proto.kept)
        proto.release_kept(keep=True)
        # go on keeping for a while, then let go for good
        await wait_until(lambda: proto.bytes >= 6 * MiB, "6 MiB delivered", timeout=120)
        assert rx.stats()["buffers_outstanding"] == niovs(proto.kept)
        proto.release_kept()
        assert await asyncio.wait_for(proto.lost, 300) is None
    stats = rx.stats()
    lst.close()
    await join(proc)
    assert proto.bytes == total
    assert proto.sha.hexdigest() == stream_sha256(83, total)
    assert stats["merged_completions"] > 0
    assert_all_back(stats)


class Pauser(Recorder):
    """Pauses reading every `every` bytes and resumes from a later loop turn."""

    def __init__(self, every: int):
        super().__init__()
        self.every = every
        self.next_pause = every
        self.pauses = 0

    def data_received(self, view):
        super().data_received(view)
        if self.bytes >= self.next_pause:
            self.next_pause = self.bytes + self.every
            self.pauses += 1
            self.transport.pause_reading()
            loop = asyncio.get_running_loop()
            loop.call_soon(loop.call_soon, self.transport.resume_reading)


@pytest.mark.asyncio
@pytest.mark.guest
@pytest.mark.usefixtures("need_zcrx_copy")
async def test_pause_reading_mid_stream_with_merged_views():
    total = 16 * MiB + 4321
    lst = Listener()
    proc = start_sender(lst.port, 85, total)
    async with aiozcrx.Receiver(engine=ENGINE, area_size=4 * MiB) as rx:
        _, proto = await rx.wrap(await lst.accept(), lambda: Pauser(every=768 * 1024))
        assert await asyncio.wait_for(proto.lost, 300) is None
    stats = rx.stats()
    lst.close()
    assert await join(proc) == 0
    assert proto.pauses >= 10
    assert proto.bytes == total
    assert proto.sha.hexdigest() == stream_sha256(85, total)
    assert_all_back(stats)


@pytest.mark.asyncio
@pytest.mark.guest
@pytest.mark.usefixtures("need_zcrx_copy")
@pytest.mark.parametrize("over_share", ["copy", "pause"])
async def test_merged_views_over_the_share(over_share):
    """A consumer that keeps views, with a small share: counted in buffers, its
    merged views bring it to the share; "copy" then gives bytes (the views it
    holds stay within the share plus the one view that crossed it), "pause"
    stops it until it releases. Bytes in order either way."""
    total = 8 * MiB + 17
    share = 256 * 1024
    lst = Listener()
    proc = start_sender(lst.port, 87, total)
    async with aiozcrx.Receiver(engine=ENGINE, area_size=8 * MiB, max_held=share,
                                over_share=over_share) as rx:
        _, proto = await rx.wrap(await lst.accept(), lambda: Recorder(keep=True))
        if over_share == "copy":
            assert await asyncio.wait_for(proto.lost, 300) is None
            views = [v for v in proto.kept if isinstance(v, memoryview)]
            biggest = max(-(-len(v) // PAGE) for v in views)
            assert share // PAGE <= niovs(views) < share // PAGE + biggest
            assert bytes in proto.types, "nothing was copied over the share"
            assert rx.stats()["share_copies"] > 0
            proto.release_kept()
        else:
            await wait_until(lambda: rx.stats().get("share_stops", 0) >= 1, "the share stops it", timeout=120)
            held = rx.stats()["buffers_outstanding"]
            assert held == niovs(proto.kept) >= share // PAGE
            while not proto.lost.done():
                proto.release_kept(keep=True)
                await wait_until(lambda: proto.lost.done() or rx.stats()["buffers_outstanding"] > 0,
                                 "more data after the release", timeout=120)
            assert proto.lost.result() is None
            proto.release_kept()
    stats = rx.stats()
    lst.close()
    await join(proc)
    assert proto.bytes == total
    assert proto.sha.hexdigest() == stream_sha256(87, total)
    assert_all_back(stats)


class Churner(Recorder):
    """Keeps some views and releases them out of order: every third view is kept,
    and every 16 deliveries the kept ones go, newest first."""

    def data_received(self, view):
        super().data_received(view)
        if self.calls % 3 == 0:
            self.kept.append(view)
            self.digests.append(hashlib.sha1(view).digest())
        if self.calls % 16 == 0:
            self.check_kept()
            for v in reversed(self.kept):
                v.release()
            self.kept.clear()
            self.digests.clear()


@pytest.mark.asyncio
@pytest.mark.guest
@pytest.mark.usefixtures("need_zcrx_copy")
async def test_churn_many_connections_views_released_out_of_order():
    n = 8
    sizes = [2 * MiB + 4093 * i for i in range(n)]
    seeds = [900 + i for i in range(n)]
    lst = Listener()
    proc = start_many(lst.port, sizes, seeds)
    async with aiozcrx.Receiver(engine=ENGINE, area_size=4 * MiB) as rx:
        protos = []
        for _ in range(n):
            _, p = await rx.wrap(await lst.accept(), Churner)
            protos.append(p)
        results = await asyncio.wait_for(asyncio.gather(*(p.lost for p in protos)), 300)
        assert all(r is None for r in results)
        for p in protos:
            p.release_kept()
    stats = rx.stats()
    lst.close()
    await join(proc)
    import struct
    want = {hashlib.sha256(struct.pack("<I", i) + payload(s, z)).hexdigest()
            for i, (z, s) in enumerate(zip(sizes, seeds))}
    assert {p.sha.hexdigest() for p in protos} == want
    assert_all_back(stats)


# --------------------------------------------------------------------------
# the simulated NIC: engine zcrx (the page pool takes refills itself)
# --------------------------------------------------------------------------
@pytest.mark.asyncio
@pytest.mark.nic
@pytest.mark.parametrize("max_view", [None, 4096])
async def test_nic_bulk_merged_views(sim_nic, zc, listen, max_view):
    """Over the NIC: header/data split into the queue's page pool, refills
    published in descending order so that the pool hands out ascending niovs:
    merged views (none at 4096), bytes in order, every niov back once."""
    q, port, total = 1, 9141, 48 * MiB + 5
    zc(q, port)
    kw = {} if max_view is None else {"max_view": max_view}
    lst = listen(sim_nic.addr, port)
    async with aiozcrx.Receiver(engine="zcrx", interface=sim_nic.name, queue=q, **kw) as rx:
        proc = start_sender(lst.port, 91, total, host=sim_nic.addr, netns=sim_nic.peer_ns)
        _, proto = await rx.wrap(await lst.accept(), Recorder)
        assert await asyncio.wait_for(proto.lost, 600) is None
        assert await join(proc, 600) == 0
    stats = rx.stats()
    assert proto.bytes == total
    assert proto.sha.hexdigest() == stream_sha256(91, total)
    cap = stats["max_view"]
    assert max(proto.sizes) <= max(cap, PAGE)
    assert proto.calls + stats["merged_completions"] == stats["completions"]
    if cap <= PAGE:
        assert stats["merged_completions"] == 0
    else:
        assert stats["merged_completions"] > 0, stats
    assert_all_back(stats)


@pytest.mark.asyncio
@pytest.mark.nic
async def test_nic_slow_consumer_merged_views_counted_in_buffers(sim_nic, zc, listen):
    """Held merged views on a NIC queue: held counted in niovs (a view's niovs
    from its bytes: a frag may start mid-page, so at most one more than its
    pages), kept views unchanged; all back after release."""
    q, port, total = 1, 9143, 24 * MiB + 3
    zc(q, port)
    lst = listen(sim_nic.addr, port)
    async with aiozcrx.Receiver(engine="zcrx", interface=sim_nic.name, queue=q) as rx:
        proc = start_sender(lst.port, 93, total, host=sim_nic.addr, netns=sim_nic.peer_ns)
        _, proto = await rx.wrap(await lst.accept(), lambda: Recorder(keep=True, check_every=64))
        await wait_until(lambda: proto.bytes >= 4 * MiB, "4 MiB delivered", timeout=300)
        st = rx.stats()
        views = [v for v in proto.kept if isinstance(v, memoryview)]
        assert st["views_outstanding"] == len(views)
        assert niovs(views) <= st["buffers_outstanding"] <= niovs(views) + len(views)
        proto.release_kept()
        assert await asyncio.wait_for(proto.lost, 600) is None
        assert await join(proc, 600) == 0
    stats = rx.stats()
    assert proto.sha.hexdigest() == stream_sha256(93, total)
    assert_all_back(stats)

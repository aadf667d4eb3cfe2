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

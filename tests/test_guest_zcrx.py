"""The real zcrx path: IORING_OP_RECV_ZC on a ZCRX_REG_NODEV instance (Linux 7.1+).

These run in the User-Mode Linux guest (`make test` boots it); on the host they are
skipped with the reason, and inside the guest a skip is a failure (conftest.py).
"""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
import textwrap

import pytest

import aiozcrx
from peers import Listener, area_full, join, payload, start_many, start_sender, stream_sha256, wait_until
from test_guest_nic import assert_copied
from test_transport import MiB, Sink

pytestmark = [pytest.mark.guest, pytest.mark.usefixtures("need_zcrx_copy")]
ENGINE = "zcrx-copy"


@pytest.mark.asyncio
async def test_zcrx_copy_256mib_sha256():
    total = 256 * MiB
    lst = Listener()
    proc = start_sender(lst.port, 31, total)
    async with aiozcrx.Receiver(engine=ENGINE) as rx:
        transport, proto = await rx.wrap(await lst.accept(), Sink)
        assert await asyncio.wait_for(proto.lost, 300) is None
        stats = rx.stats()
        assert transport.get_extra_info("aiozcrx_engine") == ENGINE
    lst.close()
    assert await join(proc) == 0
    assert proto.bytes == total
    assert proto.sha.hexdigest() == stream_sha256(31, total)
    assert stats["buffers_outstanding"] == 0
    assert stats["nodev"] is True
    # completions carry at most one page in copy mode
    assert stats["completions"] >= total // 4096
    # a NODEV instance takes buffers back only through ZCRX_CTRL_FLUSH_RQ
    assert stats["refill_flushes"] > 0


@pytest.mark.asyncio
async def test_kernel_copy_statistics_count_what_nodev_copied():
    """7.2's statistics region: a NODEV instance copies every byte it delivers,
    and the kernel's counters (Receiver.stats() kernel_copy_*) say how many."""
    total = 16 * MiB + 12345
    lst = Listener()
    proc = start_sender(lst.port, 41, total)
    async with aiozcrx.Receiver(engine=ENGINE) as rx:
        assert rx.stats()["kernel_copy_bytes"] == rx.stats()["kernel_copy_count"] == 0
        _, proto = await rx.wrap(await lst.accept(), Sink)
        assert await asyncio.wait_for(proto.lost, 300) is None
        live = rx.stats()
    stats = rx.stats()
    lst.close()
    assert await join(proc) == 0
    assert proto.sha.hexdigest() == stream_sha256(41, total)
    assert_copied(stats, total)
    # the last counters survive close()
    assert (live["kernel_copy_count"], live["kernel_copy_bytes"]) == \
        (stats["kernel_copy_count"], stats["kernel_copy_bytes"])


@pytest.mark.asyncio
async def test_zcrx_copy_64_connections():
    n = 64
    sizes = [128 * 1024 + 4093 * i for i in range(n)]
    seeds = [500 + i for i in range(n)]
    lst = Listener()
    proc = start_many(lst.port, sizes, seeds)
    import hashlib
    import struct
    async with aiozcrx.Receiver(engine=ENGINE) as rx:
        protos = []
        for _ in range(n):
            _, p = await rx.wrap(await lst.accept(), Sink)
            protos.append(p)
        results = await asyncio.wait_for(asyncio.gather(*(p.lost for p in protos)), 300)
        assert all(r is None for r in results)
        assert rx.stats()["buffers_outstanding"] == 0
    lst.close()
    await join(proc)
    want = {hashlib.sha256(struct.pack("<I", i) + payload(s, z)).hexdigest()
            for i, (z, s) in enumerate(zip(sizes, seeds))}
    assert {p.sha.hexdigest() for p in protos} == want


@pytest.mark.asyncio
async def test_zcrx_copy_held_views_exhaust_area_then_recover():
    """Hold every view until the area runs dry: the multishot ends (ENOMEM) or stays
    armed but stalls (KERNEL-NOTES); after release the transport must go on and
    nothing may be lost. A 7.2 kernel also reports the exhaustion."""
    area = 2 * MiB
    total = 24 * MiB
    lst = Listener()
    proc = start_sender(lst.port, 37, total)
    async with aiozcrx.Receiver(engine=ENGINE, area_size=area, max_held=area) as rx:
        _, proto = await rx.wrap(await lst.accept(), lambda: Sink(keep=True))
        await wait_until(lambda: area_full(rx), "every buffer of the area is held", timeout=120)
        assert 0 < sum(len(v) for v in proto.kept) <= area
        assert proto.bytes < total
        proto.release_kept()
        assert await asyncio.wait_for(proto.lost, 120) is None
        stats = rx.stats()
    lst.close()
    await join(proc)
    assert proto.bytes == total
    assert proto.sha.hexdigest() == stream_sha256(37, total)
    assert stats["buffers_outstanding"] == 0
    assert stats["starved"] >= 1
    if stats.get("notifications") == "on":
        # NODEV: the kernel notifies copies (all of it is), never exhaustion
        # (ALLOC_FAIL comes only from a NIC queue's page pool: io_uring/zcrx.c)
        assert stats["notifications_copy"] >= 1
        assert stats["notifications_no_buffers"] == 0


@pytest.mark.asyncio
async def test_close_with_views_outstanding_then_register_again():
    lst = Listener()
    proc = start_sender(lst.port, 41, 1 * MiB)
    rx = aiozcrx.Receiver(engine=ENGINE, area_size=4 * MiB, max_held=4 * MiB)
    async with rx:
        _, proto = await rx.wrap(await lst.accept(), lambda: Sink(keep=True))
        await asyncio.wait_for(proto.lost, 60)
    await join(proc)
    kept = proto.kept
    # one view per kept delivery (merged views: a view may hold several buffers)
    st = rx.stats()
    assert st["views_outstanding"] == len(kept) > 0 and st["buffers_outstanding"] >= len(kept)
    # the ring and registration are gone; the views still read right
    import hashlib
    h = hashlib.sha256()
    for v in kept:
        h.update(v)
    assert h.hexdigest() == stream_sha256(41, 1 * MiB)
    # a new Receiver registers a new instance while the old views live
    proc = start_sender(lst.port, 43, 2 * MiB)
    async with aiozcrx.Receiver(engine=ENGINE, area_size=4 * MiB) as rx2:
        _, p2 = await rx2.wrap(await lst.accept(), Sink)
        assert await asyncio.wait_for(p2.lost, 60) is None
    await join(proc)
    lst.close()
    assert p2.sha.hexdigest() == stream_sha256(43, 2 * MiB)
    kept.clear()
    del v
    gc.collect()
    assert rx.stats()["buffers_outstanding"] == 0


@pytest.mark.asyncio
async def test_auto_picks_zcrx_copy_here(monkeypatch):
    from aiozcrx.engines.wake import WAKE_ENV, kernel_wake
    monkeypatch.delenv(WAKE_ENV, raising=False)
    async with aiozcrx.Receiver() as rx:
        assert rx.engine == "zcrx-copy"
        # the engines passed over; and where this kernel signals the ring's eventfd
        # late, the wake-up path auto took because of it (concepts, "Wake-ups")
        engines, _, wake = rx.fallback_reason.partition("; ")
        assert engines == "zcrx: no interface= given"
        if kernel_wake().inline is False:
            assert wake.startswith("wake: socket: this kernel signals the ring's eventfd late")
        else:
            assert wake == ""


@pytest.mark.asyncio
async def test_kernel_allocated_refill_region():
    lst = Listener()
    proc = start_sender(lst.port, 47, 8 * MiB)
    async with aiozcrx.Receiver(engine=ENGINE, kernel_region=True) as rx:
        _, p = await rx.wrap(await lst.accept(), Sink)
        assert await asyncio.wait_for(p.lost, 60) is None
    await join(proc)
    lst.close()
    assert p.sha.hexdigest() == stream_sha256(47, 8 * MiB)


def _run_child(code: str, prefix: list[str], env_extra=None) -> subprocess.CompletedProcess:
    env = dict(os.environ, **(env_extra or {}))
    tests_dir = os.path.dirname(__file__)
    env["PYTHONPATH"] = tests_dir + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(prefix + [sys.executable, "-c", textwrap.dedent(code)],
                          capture_output=True, text=True, env=env, timeout=120)


CHILD = """
import asyncio, errno, aiozcrx
async def main():
    try:
        async with aiozcrx.Receiver(engine="zcrx-copy", area_size=AREA):
            print("OPENED")
    except aiozcrx.ZcrxUnavailable as e:
        print("ERRNO", errno.errorcode[e.errno])
        print("MSG", e)
    async with aiozcrx.Receiver(area_size=AREA) as rx:
        print("AUTO", rx.engine, "|", rx.fallback_reason)
asyncio.run(main())
"""


def test_without_cap_net_admin_is_typed_and_auto_falls_back():
    r = _run_child(CHILD.replace("AREA", str(4 * MiB)),
                   ["setpriv", "--bounding-set", "-net_admin", "--inh-caps", "-net_admin"])
    assert r.returncode == 0, r.stderr
    assert "ERRNO EPERM" in r.stdout
    assert "CAP_NET_ADMIN" in r.stdout
    assert "AUTO uring | " in r.stdout and "zcrx-copy: EPERM" in r.stdout


def test_non_root_small_memlock_names_the_limit():
    # nobody, keeping CAP_NET_ADMIN (ambient), with an 8 MiB RLIMIT_MEMLOCK and a
    # 16 MiB area: the kernel cannot pin it
    code = "import resource; resource.setrlimit(resource.RLIMIT_MEMLOCK, (8 << 20, 8 << 20))\n" + \
        CHILD.replace("AREA", str(16 * MiB))
    # CAP_DAC_READ_SEARCH too: nobody must read the checkout wherever it lies (a clone
    # in a mode-0700 mktemp directory failed with ModuleNotFoundError); it does not
    # touch the memlock accounting (only CAP_IPC_LOCK does)
    caps = "+net_admin,+dac_read_search"
    r = _run_child(code, ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                          "--inh-caps", caps, "--ambient-caps", caps])
    assert r.returncode == 0, r.stderr
    assert "ERRNO ENOMEM" in r.stdout, r.stdout
    assert "RLIMIT_MEMLOCK is 8388608 bytes" in r.stdout
    assert "ulimit -l" in r.stdout


@pytest.mark.asyncio
async def test_second_ring_imports_the_instance():
    """Export/import: a second Receiver (its own ring) receives through the first
    one's zcrx instance on its own connections; buffers go back through the
    shared refill ring."""
    lst = Listener()
    async with aiozcrx.Receiver(engine=ENGINE) as rx1:
        async with aiozcrx.Receiver(engine=ENGINE, share_with=rx1) as rx2:
            assert rx2.stats()["imported"] is True
            assert rx2.stats()["zcrx_id"] is not None
            p1 = start_sender(lst.port, 51, 8 * MiB)
            _, a = await rx1.wrap(await lst.accept(), Sink)
            p2 = start_sender(lst.port, 53, 8 * MiB)
            _, b = await rx2.wrap(await lst.accept(), Sink)
            assert await asyncio.wait_for(a.lost, 60) is None
            assert await asyncio.wait_for(b.lost, 60) is None
            assert rx2.stats()["completions"] > 0
            assert rx1.stats()["buffers_outstanding"] == 0
        await join(p1)
        await join(p2)
    lst.close()
    assert a.sha.hexdigest() == stream_sha256(51, 8 * MiB)
    assert b.sha.hexdigest() == stream_sha256(53, 8 * MiB)


@pytest.mark.asyncio
async def test_notifications_are_counted_and_rearmed():
    """7.2 zcrx notifications on a NODEV instance: the kernel says it copied (once:
    NODEV is all copies, so it is not re-armed), and never ALLOC_FAIL (that comes
    only from a NIC queue's page pool); exhausting and refilling the area three
    times goes on without them (the watchdog kicks what stalls), losing nothing."""
    area = 1 * MiB
    lst = Listener()
    proc = start_sender(lst.port, 57, 16 * MiB)
    async with aiozcrx.Receiver(engine=ENGINE, area_size=area, max_held=area) as rx:
        assert rx.stats()["notifications"] == "on"
        _, proto = await rx.wrap(await lst.accept(), lambda: Sink(keep=True))
        for _ in range(3):  # exhaust, release, exhaust again ...
            await wait_until(lambda: area_full(rx), "every buffer of the area is held", timeout=120)
            proto.release_kept(keep=True)
        proto.keep = False
        assert await asyncio.wait_for(proto.lost, 120) is None
        s = rx.stats()
    await join(proc)
    lst.close()
    assert proto.sha.hexdigest() == stream_sha256(57, 16 * MiB)
    assert s["notifications_copy"] == 1
    assert s["notifications_no_buffers"] == 0
    assert s.get("notification_rearm_errors", 0) == 0


@pytest.mark.asyncio
@pytest.mark.parametrize("notifications", [True, False])
async def test_full_socket_before_arming_never_stalls(notifications):
    """The sender fills the socket buffer before RECV_ZC is armed, then streams on.
    In copy mode the area runs dry again and again (hundreds of NO_BUFFERS per GB
    with nothing held); a request that stalls with data in the socket must be
    kicked, with notifications (7.2) and without them (the watchdog)."""
    total = 512 * MiB
    lst = Listener()
    proc = start_sender(lst.port, 61, total)
    conn = await lst.accept()
    await asyncio.sleep(0.5)  # the socket buffer fills up
    async with aiozcrx.Receiver(engine=ENGINE, notifications=notifications) as rx:
        _, proto = await rx.wrap(conn, Sink)
        assert await asyncio.wait_for(proto.lost, 240) is None
        s = rx.stats()
    lst.close()
    await join(proc)
    assert proto.bytes == total
    assert proto.sha.hexdigest() == stream_sha256(61, total)
    assert s["buffers_outstanding"] == 0
    assert (s.get("notifications") == "on") == notifications

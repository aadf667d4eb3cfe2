"""Engine choice and bad input: typed errors naming errno and cause, before the
kernel is touched where possible, and no leaked fd or mapping either way."""

from __future__ import annotations

import asyncio
import errno
import glob

import pytest

import aiozcrx
from peers import has_rx_queues, open_fds, queued_interface, receiver_mappings, tcp_pair, wait_until

QIF = queued_interface()  # lo, or the guest's simulated NIC
NEEDS_QUEUES = pytest.mark.skipif(not has_rx_queues(QIF), reason="no interface here lists its rx queues in sysfs")




def _rx_queues(ifname: str) -> int:
    return len(glob.glob(f"/sys/class/net/{ifname}/queues/rx-*"))


@pytest.mark.parametrize("ifname", ["lo", "eth0"])
@pytest.mark.asyncio
async def test_zcrx_on_interface_without_queue_api_is_typed(ifname):
    if not _rx_queues(ifname):
        pytest.skip(f"{ifname} not present here")
    # warm-up: first-time imports and allocator growth are not leaks
    with pytest.raises(aiozcrx.ZcrxUnavailable):
        aiozcrx.Receiver(engine="zcrx", interface=ifname, queue=0).open()
    fds, maps = open_fds(), len(receiver_mappings())
    with pytest.raises(aiozcrx.ZcrxUnavailable) as ei:
        async with aiozcrx.Receiver(engine="zcrx", interface=ifname, queue=0):
            pass
    e = ei.value
    assert isinstance(e, OSError)
    assert e.errno == errno.EOPNOTSUPP
    assert e.engine == "zcrx"
    assert "EOPNOTSUPP" in str(e) and ifname in str(e) and "queue API" in str(e)
    assert open_fds() == fds
    assert len(receiver_mappings()) == maps


@pytest.mark.asyncio
async def test_zcrx_copy_on_this_kernel_is_typed(need_no_nodev):
    with pytest.raises(aiozcrx.ZcrxUnavailable):
        aiozcrx.Receiver(engine="zcrx-copy").open()
    fds, maps = open_fds(), len(receiver_mappings())
    with pytest.raises(aiozcrx.ZcrxUnavailable) as ei:
        async with aiozcrx.Receiver(engine="zcrx-copy"):
            pass
    assert ei.value.errno == errno.EINVAL
    assert "ZCRX_REG_NODEV" in str(ei.value) and "7.1" in str(ei.value)
    assert open_fds() == fds and len(receiver_mappings()) == maps


@pytest.fixture
def need_no_nodev():
    from conftest import zcrx_copy_reason
    if zcrx_copy_reason() is None:
        pytest.skip("this kernel has ZCRX_REG_NODEV; the refusal is tested where it lacks it")


@pytest.mark.asyncio
async def test_auto_falls_back_and_says_why(need_no_nodev):
    async with aiozcrx.Receiver(engine="auto", interface="lo", queue=0) as rx:
        assert rx.engine == "uring"
        reason = rx.fallback_reason
        assert "zcrx: EOPNOTSUPP: lo" in reason
        assert "zcrx-copy: EINVAL" in reason
        names = [n for n, ok, _ in rx.engines_tried]
        assert names == ["zcrx", "zcrx-copy", "uring"]


@pytest.mark.parametrize("kwargs, why", [
    (dict(interface="nosuch0", queue=16), "zcrx: unknown interface 'nosuch0': it is not in `ip link`"),
    pytest.param(dict(interface=QIF, queue=99), f"zcrx: queue 99 out of range: {QIF} has", marks=NEEDS_QUEUES),
])
@pytest.mark.asyncio
async def test_auto_with_a_nic_queue_this_machine_lacks_falls_back(kwargs, why):
    """The snippets in the docs say interface="eth0", queue=16: where there is no such
    interface or queue, "auto" still receives, and says why zcrx was passed over."""

    async def receive_over_the_fallback() -> None:
        async with aiozcrx.Receiver(engine="auto", **kwargs) as rx:
            assert rx.engines_tried[0][:2] == ("zcrx", False)
            assert rx.fallback_reason.startswith(why)
            assert rx.engine in ("zcrx-copy", "uring", "socket")
            a, b = tcp_pair()
            got = bytearray()

            class Sink(asyncio.Protocol):
                def data_received(self, view):
                    got.extend(view)

            await rx.wrap(b, Sink)
            a.sendall(b"over the fallback")
            a.close()
            await wait_until(lambda: bytes(got) == b"over the fallback", "the bytes sent")

    await receive_over_the_fallback()  # warm-up: first-time imports and allocator growth
    fds, maps = open_fds(), len(receiver_mappings())
    await receive_over_the_fallback()
    assert open_fds() == fds and len(receiver_mappings()) == maps


@pytest.mark.asyncio
async def test_auto_without_interface_skips_zcrx_with_reason():
    async with aiozcrx.Receiver() as rx:
        assert rx.engines_tried[0] == ("zcrx", False, "no interface= given")
        assert rx.engine in ("zcrx-copy", "uring")


@pytest.mark.parametrize("kwargs, words", [
    (dict(engine="zcrx", interface="nosuch0", queue=0), "unknown interface 'nosuch0'"),
    pytest.param(dict(engine="zcrx", interface=QIF, queue=99), "queue 99 out of range", marks=NEEDS_QUEUES),
    (dict(engine="uring", interface="nosuch0"), "unknown interface 'nosuch0'"),
    (dict(interface="lo", queue=-1), "non-negative"),
    (dict(queue=0), "needs interface"),
    (dict(area_size=4096 * 10 + 1), "multiple of the page size"),
    (dict(area_size=0), "positive multiple"),
    (dict(rq_entries=1000), "power of two"),
    (dict(rq_entries=65536), "power of two between 1 and 32768"),
    (dict(engine="dpdk"), "unknown engine 'dpdk'"),
    (dict(engine="zcrx"), "needs interface= and queue="),
    (dict(buf_size=1000), "buf_size"),
])
def test_bad_input_raises_before_touching_the_kernel(kwargs, words):
    with pytest.raises(ValueError):  # warm-up: first-time imports and allocator growth
        aiozcrx.Receiver(**kwargs)
    fds, maps = open_fds(), len(receiver_mappings())
    with pytest.raises(ValueError) as ei:
        aiozcrx.Receiver(**kwargs)
    assert words in str(ei.value)
    assert open_fds() == fds and len(receiver_mappings()) == maps


@pytest.mark.asyncio
async def test_failed_open_leaks_nothing_repeatedly():
    """A registration the kernel refuses must unwind ring, eventfd, area and refill
    region every time."""
    with pytest.raises(aiozcrx.ZcrxUnavailable):  # warm-up: imports, allocator growth
        async with aiozcrx.Receiver(engine="zcrx", interface="lo", queue=0):
            pass
    fds, maps = open_fds(), len(receiver_mappings())
    for _ in range(20):
        with pytest.raises(aiozcrx.ZcrxUnavailable):
            async with aiozcrx.Receiver(engine="zcrx", interface="lo", queue=0):
                pass
    assert open_fds() == fds and len(receiver_mappings()) == maps


@pytest.mark.asyncio
@pytest.mark.parametrize("engine", ["uring", "socket", "auto"])
async def test_area_that_cannot_be_mapped_is_typed_and_leaks_nothing(engine):
    """16 TiB passes validation (it is a valid size) but cannot be mapped: a typed
    error naming the size and the fix, and the ring made before it is gone."""
    kw = dict(engine=engine, area_size=1 << 44, buf_size=1 << 30)
    with pytest.raises(aiozcrx.EngineUnavailable):  # the first run imports what it needs
        async with aiozcrx.Receiver(**kw):
            pass
    fds, maps = open_fds(), len(receiver_mappings())
    for _ in range(5):
        with pytest.raises(aiozcrx.EngineUnavailable) as info:
            async with aiozcrx.Receiver(**kw):
                pass
        assert info.value.errno == errno.ENOMEM
        assert "17592186044416-byte area" in str(info.value) and "smaller area_size" in str(info.value)
    assert open_fds() == fds and len(receiver_mappings()) == maps


@pytest.mark.asyncio
async def test_open_close_cycles_leak_nothing():
    for engine in ("uring", "socket"):  # warm-up: first-time imports, allocator growth
        async with aiozcrx.Receiver(engine=engine):
            pass
    fds, maps = open_fds(), len(receiver_mappings())
    for engine in ("uring", "socket"):
        for _ in range(10):
            async with aiozcrx.Receiver(engine=engine):
                pass
    assert open_fds() == fds and len(receiver_mappings()) == maps


def test_errors_are_oserrors_with_errno():
    e = aiozcrx.ZcrxUnavailable("zcrx", errno.EPERM, "registering zcrx needs CAP_NET_ADMIN", "run as root")
    assert isinstance(e, OSError) and isinstance(e, aiozcrx.EngineUnavailable)
    assert e.errno == errno.EPERM
    assert e.reason == "EPERM: registering zcrx needs CAP_NET_ADMIN"
    assert "fix: run as root" in str(e)


@pytest.mark.parametrize("engine", [
    "uring", "socket",
    pytest.param("zcrx-copy", marks=pytest.mark.guest),
])
@pytest.mark.asyncio
async def test_running_out_of_fds_while_opening_is_typed_and_leaks_nothing(engine, request):
    """With the process's fd limit only a few above what is open, a Receiver needs
    more fds than there are (its ring, eventfd and timerfds, or the socket engine's
    epoll): opening either works or fails with a typed error naming the cause, and
    either way no fd or mapping it made is left behind."""
    import os
    import resource

    if engine == "zcrx-copy":
        request.getfixturevalue("need_zcrx_copy")  # skips, with the reason, without 7.1+
    async with aiozcrx.Receiver(engine=engine):  # warm-up: imports, allocator growth
        pass
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    fds, maps = open_fds(), len(receiver_mappings())
    used = {int(fd) for fd in os.listdir("/proc/self/fd")}
    free = [n for n in range(max(used) + 8) if n not in used]  # new fds take the lowest
    failed = []
    try:
        for spare in range(0, 6):
            # exactly `spare` fds can be made: the limit is the next free number after them
            resource.setrlimit(resource.RLIMIT_NOFILE, (free[spare], hard))
            try:
                async with aiozcrx.Receiver(engine=engine):
                    pass
            except aiozcrx.EngineUnavailable as e:
                assert e.errno == errno.EMFILE, e
                assert "RLIMIT_NOFILE" in str(e) and "ulimit -n" in str(e), e
                failed.append(spare)
            finally:
                resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            assert open_fds() == fds, spare
            assert len(receiver_mappings()) == maps, spare
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert 0 in failed  # no spare fd at all: it cannot open

"""Large zcrx receive buffers: ``Receiver(rx_buf_len=...)`` (Linux 7.0+).

- Everywhere: the argument is checked before any kernel object exists, and a
  kernel that cannot take it refuses with ``ZcrxBufferSizeRefused`` naming why
  (the host's 6.x: no rx_buf_len; the guest's 7.2: NODEV takes only the page size).
- ``nic`` (the simulated NIC of ``run-in-guest.sh --nic``, whose netdevsim takes
  rx_page_size up to 64 KiB): 16/32/64 KiB granted with every byte verified and
  completions larger than a page; refusals by the driver's range and by an area
  whose memory is not physically contiguous, each typed; ``"auto"`` taking the
  largest the queue accepts, or the page size with the reason recorded.

The non-contiguous area is made for the test (``fragmented_mapping``): pages moved
into place in reverse order with mremap, so that no two neighbours are neighbours
in physical memory (checked from /proc/self/pagemap before it is used). The kernel
does the refusing.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import hashlib
import os

import pytest

import aiozcrx
from aiozcrx import _kernel
from aiozcrx.config import PAGE_SIZE
from aiozcrx.errors import ZcrxBufferSizeRefused, ZcrxUnavailable
from peers import join, start_sender, stream_sha256
from test_transport import MiB


def kernel_version() -> tuple[int, int]:
    major, minor = os.uname().release.split(".")[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


class SizeSink(asyncio.Protocol):
    """Hashes the stream and notes the largest piece delivered at once."""

    def __init__(self):
        self.sha = hashlib.sha256()
        self.bytes = 0
        self.calls = 0
        self.largest = 0
        self.lost = asyncio.get_running_loop().create_future()

    def data_received(self, view):
        self.sha.update(view)
        self.bytes += len(view)
        self.calls += 1
        self.largest = max(self.largest, len(view))

    def connection_lost(self, exc):
        if not self.lost.done():
            self.lost.set_result(exc)


# --------------------------------------------------------------------------
# everywhere: bad values, and a kernel without the knob
# --------------------------------------------------------------------------
@pytest.mark.parametrize("value, exc, words", [
    (3 * PAGE_SIZE, ValueError, "power of two"),
    (PAGE_SIZE // 2, ValueError, "power of two"),
    (1 << 20, ValueError, "524288"),
    ("64K", ValueError, "'auto'"),
    (True, TypeError, "int"),
    (16.0 * 1024, TypeError, "int"),
])
def test_bad_rx_buf_len_is_refused_before_any_kernel_object(value, exc, words):
    with pytest.raises(exc, match="rx_buf_len") as info:
        aiozcrx.Receiver(rx_buf_len=value)
    assert words in str(info.value)


def test_rx_buf_len_must_divide_the_area_and_is_the_zcrx_engines_knob():
    with pytest.raises(ValueError, match=r"area_size \(196608\) must be a multiple of rx_buf_len"):
        aiozcrx.Receiver(area_size=3 * 65536, rx_buf_len=128 * 1024)
    for engine in ("uring", "socket"):
        with pytest.raises(ValueError, match="takes buf_size= instead"):
            aiozcrx.Receiver(engine=engine, rx_buf_len=16384)
    # the page size and "auto" are fine anywhere a zcrx engine may open
    aiozcrx.Receiver(rx_buf_len=PAGE_SIZE)
    aiozcrx.Receiver(rx_buf_len="auto")


@pytest.mark.asyncio
async def test_zcrx_copy_refuses_large_buffers_with_a_typed_error():
    """NODEV copies a page at a time: the kernel refuses more (7.2: EOPNOTSUPP);
    a kernel before 7.0 has no rx_buf_len at all (EINVAL). Either way the error is
    typed and names the cause; nothing stays open."""
    with pytest.raises(ZcrxUnavailable) as info:
        async with aiozcrx.Receiver(engine="zcrx-copy", rx_buf_len=16384):
            pass
    e = info.value
    if kernel_version() < (7, 0):
        assert isinstance(e, ZcrxBufferSizeRefused) and e.refused_by == "kernel"
        assert e.errno == errno.EINVAL and "needs Linux 7.0+" in str(e)
    elif not isinstance(e, ZcrxBufferSizeRefused):
        # 7.0: no NODEV at all (7.1+); the ordinary refusal
        assert "ZCRX_REG_NODEV" in str(e)
    else:
        assert e.refused_by == "nodev" and e.errno == errno.EOPNOTSUPP
        assert e.rx_buf_len == 16384 and "only the page size" in str(e) and "fix:" in str(e)


@pytest.mark.guest
@pytest.mark.usefixtures("need_zcrx_copy")
@pytest.mark.asyncio
async def test_zcrx_copy_auto_takes_the_page_size_and_says_why():
    async with aiozcrx.Receiver(engine="zcrx-copy", rx_buf_len="auto") as rx:
        st = rx.stats()
        assert st["rx_buf_len"] == st["buffer_size"] == PAGE_SIZE
        assert st["rx_buf_len_requested"] == "auto"
        assert "takes only the page size" in st["rx_buf_len_fallback"]
        assert "rx_buf_len: auto took the page size" in rx.fallback_reason


def test_refusal_words_for_a_driver_without_the_queue_config(monkeypatch):
    """No driver in reach lacks QCFG_RX_PAGE_SIZE but has the queue API (the guest's
    netdevsim has both), so the kernel's EOPNOTSUPP for it is fed to the advice here:
    it names the driver's missing queue config and the way out."""
    from aiozcrx.config import Config
    from aiozcrx.engines import advice
    monkeypatch.setattr(advice, "_kernel_version", lambda: (7, 2))
    cfg = Config(engine="zcrx", interface="lo", queue=0, rx_buf_len=32768)
    e = advice.rx_buf_len_error("zcrx", cfg, OSError(errno.EOPNOTSUPP, "x"), 32768, nodev=False,
                                contiguous=1 << 21)
    assert isinstance(e, ZcrxBufferSizeRefused) and e.refused_by == "driver"
    assert "QCFG_RX_PAGE_SIZE" in str(e) and "rx_buf_len='auto'" in str(e)
    # a refusal that is not about the size keeps the ordinary words
    e = advice.rx_buf_len_error("zcrx", cfg, OSError(errno.EPERM, "x"), 32768, nodev=False, contiguous=None)
    assert not isinstance(e, ZcrxBufferSizeRefused) and "CAP_NET_ADMIN" in str(e)


def test_area_contiguity_reads_the_physical_layout():
    """The diagnosis of an ERANGE: a mapping whose pages are reversed in physical
    order allows one page; None where pagemap shows no frame numbers."""
    m = fragmented_mapping(16)
    try:
        got = _kernel.area_contiguity(m)
        if got is None:
            assert os.geteuid() != 0 or not _pfns_visible(), "pagemap shows frames to root"
        else:
            assert got == PAGE_SIZE
    finally:
        _kernel.unmap(m)


# --------------------------------------------------------------------------
# a mapping that is not physically contiguous (made for the refusal tests)
# --------------------------------------------------------------------------
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                       ctypes.c_long]
_libc.mremap.restype = ctypes.c_void_p
_libc.mremap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_int, ctypes.c_void_p]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
PROT_RW, MAP_PRIVATE_ANON = 3, 0x22
MREMAP_MAYMOVE, MREMAP_FIXED = 1, 2
MAP_FAILED = ctypes.c_void_p(-1).value


def _pfns_visible() -> bool:
    m = _libc.mmap(None, PAGE_SIZE, PROT_RW, MAP_PRIVATE_ANON, -1, 0)
    ctypes.memset(m, 1, PAGE_SIZE)
    try:
        with open("/proc/self/pagemap", "rb") as f:
            f.seek(m // PAGE_SIZE * 8)
            return int.from_bytes(f.read(8), "little") & ((1 << 55) - 1) != 0
    finally:
        _libc.munmap(m, PAGE_SIZE)


def fragmented_mapping(pages: int) -> _kernel.AreaMapping:
    """``pages`` anonymous pages, each written, placed in reverse order of where
    they were faulted in: page i of the result is page pages-1-i of the source. So
    neighbours here are never neighbours in physical memory ascending."""
    size = pages * PAGE_SIZE
    src = _libc.mmap(None, size, PROT_RW, MAP_PRIVATE_ANON, -1, 0)
    dst = _libc.mmap(None, size, PROT_RW, MAP_PRIVATE_ANON, -1, 0)
    assert src != MAP_FAILED and dst != MAP_FAILED
    for i in range(pages):
        ctypes.memset(src + i * PAGE_SIZE, 0x5A, PAGE_SIZE)  # faulted in ascending order
    for i in range(pages):
        got = _libc.mremap(src + (pages - 1 - i) * PAGE_SIZE, PAGE_SIZE, PAGE_SIZE,
                           MREMAP_MAYMOVE | MREMAP_FIXED, dst + i * PAGE_SIZE)
        assert got == dst + i * PAGE_SIZE, os.strerror(ctypes.get_errno())
    return _kernel.AreaMapping(dst, size)


@pytest.fixture
def fragmented_area(monkeypatch):
    """The next area a Receiver maps is ``fragmented_mapping`` (its size asked for);
    checked to allow only a page per buffer."""
    made = []

    def map_area(length: int, *, hugepages: bool = False) -> _kernel.AreaMapping:
        m = fragmented_mapping(length // PAGE_SIZE)
        assert _kernel.area_contiguity(m) == PAGE_SIZE, "the fragmented area came out contiguous"
        made.append(m)
        return m

    monkeypatch.setattr(_kernel, "map_area", map_area)
    return made


# --------------------------------------------------------------------------
# the simulated NIC: granted, refused, auto
# --------------------------------------------------------------------------
nic = pytest.mark.nic


# the simulated NIC's fixtures (`aiozcrx nic setup`/teardown, the kernel log
# check, listeners) live with the NIC tests
from test_guest_nic import kernel_log, listen, state_dir, zc  # noqa: E402,F401


async def _stream(rx, lst, seed, total, nic_) -> SizeSink:
    proc = start_sender(lst.port, seed, total, host=nic_.addr, netns=nic_.peer_ns)
    _, proto = await rx.wrap(await lst.accept(), SizeSink)
    assert await asyncio.wait_for(proto.lost, 600) is None
    assert await join(proc, 600) == 0
    return proto


@nic
@pytest.mark.asyncio
@pytest.mark.parametrize("size", [16 * 1024, 32 * 1024, 64 * 1024])
async def test_large_buffers_granted_and_every_byte_arrives(sim_nic, zc, listen, size):
    q, port, total = 1, 9301 + size // 16384, 24 * MiB + 4321
    zc(q, port, "tcp4")
    lst = listen(sim_nic.addr, port)
    async with aiozcrx.Receiver(engine="zcrx", interface=sim_nic.name, queue=q, area_size=16 * MiB,
                                rq_entries=4096, rx_buf_len=size, max_view=0) as rx:
        # max_view=0: one view per completion (no merged views), so that each
        # data_received shows what one completion carried
        st = rx.stats()
        assert st["rx_buf_len"] == st["rx_buf_len_requested"] == size
        # the area counts buffers of the granted size (one per completion)
        assert st["buffer_size"] == size and st["buffers_total"] == 16 * MiB // size
        proto = await _stream(rx, lst, 300 + size // 1024, total, sim_nic)
        stats = rx.stats()
    assert proto.bytes == total
    assert proto.sha.hexdigest() == stream_sha256(300 + size // 1024, total)
    # a completion carries more than a page, never more than a buffer
    assert PAGE_SIZE < proto.largest <= size
    assert stats["kernel_copy_bytes"] == 0 and stats["buffers_outstanding"] == 0
    assert "rx_buf_len_fallback" not in stats
    print(f"rx_buf_len {size}: {stats['completions']} completions, "
          f"{total / stats['completions']:.0f} bytes each on average, largest {proto.largest}")


async def refused(sim_nic, q: int, **options) -> ZcrxBufferSizeRefused:
    """The typed error a zcrx Receiver on ``q`` with ``options`` opens with."""
    with pytest.raises(ZcrxBufferSizeRefused) as info:
        async with aiozcrx.Receiver(engine="zcrx", interface=sim_nic.name, queue=q, **options):
            pass
    return info.value


@nic
@pytest.mark.asyncio
async def test_size_outside_the_drivers_range_is_refused_naming_the_driver(sim_nic, zc):
    """The simulated NIC takes up to 64 KiB (netdevsim's ndo_validate_qcfg,
    ERANGE beyond, as bnxt says it); the area allows more, so the driver is named."""
    q = 1
    zc(q, 9311, "tcp4")
    e = await refused(sim_nic, q, area_size=16 * MiB, rq_entries=4096, rx_buf_len=128 * 1024)
    assert (e.errno, e.refused_by, e.rx_buf_len) == (errno.ERANGE, "driver", 128 * 1024), str(e)
    assert e.contiguous is not None and e.contiguous >= 128 * 1024
    assert "out of its driver's range" in str(e) and "fix:" in str(e)
    # and the queue is free again: the page size registers at once
    async with aiozcrx.Receiver(engine="zcrx", interface=sim_nic.name, queue=q, area_size=4 * MiB,
                                rq_entries=1024) as rx:
        assert rx.stats()["rx_buf_len"] == PAGE_SIZE


@nic
@pytest.mark.asyncio
async def test_area_not_contiguous_is_refused_naming_huge_pages(sim_nic, zc, fragmented_area):
    q = 1
    zc(q, 9312, "tcp4")
    e = await refused(sim_nic, q, area_size=1 * MiB, rq_entries=256, rx_buf_len=16 * 1024)
    assert (e.errno, e.refused_by, e.contiguous) == (errno.ERANGE, "area", PAGE_SIZE)
    assert "not physically contiguous" in str(e) and "hugepages=True" in str(e)
    assert len(fragmented_area) == 1


@nic
@pytest.mark.asyncio
async def test_merged_views_over_large_buffers_return_every_buffer_once(sim_nic, zc, listen):
    """Merged views (the default max_view) over 32 KiB buffers: a view may cover
    several buffers; the stream arrives intact and every buffer goes back."""
    q, port, total, size = 1, 9399, 24 * MiB + 99, 32 * 1024
    zc(q, port, "tcp4")
    lst = listen(sim_nic.addr, port)
    async with aiozcrx.Receiver(engine="zcrx", interface=sim_nic.name, queue=q, area_size=16 * MiB,
                                rq_entries=4096, rx_buf_len=size) as rx:
        assert rx.stats()["rx_buf_len"] == size
        proto = await _stream(rx, lst, 399, total, sim_nic)
        stats = rx.stats()
    assert proto.bytes == total and proto.sha.hexdigest() == stream_sha256(399, total)
    assert proto.largest <= 256 * 1024  # the default max_view
    assert stats["kernel_copy_bytes"] == 0 and stats["buffers_outstanding"] == 0
    # one buffer per completion, each back once, merged into a view or not
    assert stats["buffers_returned"] == stats["completions"]

@nic
@pytest.mark.asyncio
async def test_auto_takes_the_largest_the_queue_accepts(sim_nic, zc, listen):
    q, port, total = 1, 9313, 8 * MiB
    zc(q, port, "tcp4")
    lst = listen(sim_nic.addr, port)
    async with aiozcrx.Receiver(engine="zcrx", interface=sim_nic.name, queue=q, area_size=16 * MiB,
                                rq_entries=4096, rx_buf_len="auto") as rx:
        st = rx.stats()
        assert st["rx_buf_len"] == st["buffer_size"] == 64 * 1024
        assert st["rx_buf_len_requested"] == "auto" and "rx_buf_len_fallback" not in st
        assert "rx_buf_len" not in rx.fallback_reason
        proto = await _stream(rx, lst, 313, total, sim_nic)
    assert proto.sha.hexdigest() == stream_sha256(313, total)


@nic
@pytest.mark.asyncio
async def test_auto_on_a_fragmented_area_falls_back_to_the_page_size_with_the_reason(
        sim_nic, zc, listen, fragmented_area):
    q, port, total = 1, 9314, 4 * MiB
    zc(q, port, "tcp4")
    lst = listen(sim_nic.addr, port)
    async with aiozcrx.Receiver(engine="zcrx", interface=sim_nic.name, queue=q, area_size=1 * MiB,
                                rq_entries=256, rx_buf_len="auto") as rx:
        st = rx.stats()
        assert st["rx_buf_len"] == st["buffer_size"] == PAGE_SIZE
        reason = st["rx_buf_len_fallback"]
        # every size tried, each refused for the area
        for kib in (64, 32, 16, 8):
            assert f"{kib} KiB: ERANGE" in reason, reason
        assert "not physically contiguous" in reason
        assert rx.fallback_reason.startswith("rx_buf_len: auto took the page size")
        proto = await _stream(rx, lst, 314, total, sim_nic)
    assert proto.sha.hexdigest() == stream_sha256(314, total)

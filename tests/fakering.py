"""A zcrx completion queue and refill ring in plain memory, driven by hand.

The C dispatcher (``aiozcrx._fastpath.Dispatcher``) and ``Area`` run exactly as a
zcrx engine runs them, but the completions are written here and drained with
``Dispatcher.run()`` (no syscall): tests of what the C code does with the
completions it is given, on any kernel. The memory is laid out as the kernel
lays out its own: 32-byte CQEs (RECV_ZC), a refill region of head, tail and
16-byte entries, an area of 4 KiB pages, each in a mapping of its own that the
Area owns (unmapped with it), MADV_DONTFORK where register_zcrx asks for it.
"""

from __future__ import annotations

import ctypes
import mmap
import struct

from aiozcrx import _kernel
from aiozcrx._fastpath import Area, Dispatcher

PAGE = 4096
UD_RECV = _kernel.UD_RECV
F_MORE = _kernel.CQE_F_MORE

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                       ctypes.c_long]


def user_data(slot: int, gen: int, kind: int = UD_RECV) -> int:
    """The user_data of a request (the layout is aiozcrx/_c/protocol.h's)."""
    return _kernel.user_data(kind, slot, gen)


def _map(length: int, *, shared: bool = False, dontfork: bool = False) -> int:
    flags = (mmap.MAP_SHARED if shared else mmap.MAP_PRIVATE) | mmap.MAP_ANONYMOUS
    addr = _libc.mmap(None, length, mmap.PROT_READ | mmap.PROT_WRITE, flags, -1, 0)
    if addr in (None, ctypes.c_void_p(-1).value):
        raise OSError(ctypes.get_errno(), "mmap")
    if dontfork:
        _kernel.dontfork(_kernel.AreaMapping(addr, length))
    return int(addr)


class FakeZcrx:
    """One area, one refill ring, one CQ and the Dispatcher over them.

    ``kernel_region``: the refill region is a shared mapping a forked child
    inherits (as the one a ring fd maps for ``kernel_region=True``); otherwise it
    is private and MADV_DONTFORK (as our own region is).
    """

    def __init__(self, *, nbufs: int = 16, cq_entries: int = 64, rq_entries: int = 64,
                 kernel_region: bool = False, user: int | None = None) -> None:
        self.nbufs = nbufs
        self.area_addr = _map(nbufs * PAGE, dontfork=True)
        self.area = Area(self.area_addr, nbufs * PAGE, PAGE)
        self.area.own_mapping(self.area_addr, nbufs * PAGE)
        self.region_len = PAGE + rq_entries * 16
        self.region = _map(self.region_len, shared=kernel_region, dontfork=not kernel_region)
        self.area.own_mapping(self.region, self.region_len)
        # head at 0, tail at 64, entries from one page on
        self.rq_entries = rq_entries
        self.area.setup_zcrx(self.region, self.region + 64, self.region + PAGE, rq_entries, 0, 0, -1, False)
        self.cq_entries = cq_entries
        self.cq_len = 128 + cq_entries * 32
        self.cq = _map(self.cq_len)  # a fake CQ: nobody unmaps it (a few pages per test)
        self.khead, self.ktail, self.cqes = self.cq, self.cq + 64, self.cq + 128
        self.slots: list = []
        kw = {} if user is None else {"user": user}
        self.d = Dispatcher(self.area, self.slots, khead=self.khead, ktail=self.ktail,
                            mask=cq_entries - 1, cqes=self.cqes, cqe_size=32, **kw)

    # -- connections and completions
    def connect(self, sink, slot: int = 0, gen: int = 1) -> None:
        while len(self.slots) <= slot:
            self.slots.append(None)
        self.d.bind(slot, gen)
        self.slots[slot] = sink

    def _u32(self, addr: int) -> int:
        return struct.unpack("<I", ctypes.string_at(addr, 4))[0]

    def _put_u32(self, addr: int, v: int) -> None:
        ctypes.memmove(addr, struct.pack("<I", v & 0xffffffff), 4)

    def post(self, ud: int, res: int, flags: int = 0, off: int = 0) -> None:
        """Posts one 32-byte CQE (as the kernel does: entry, then the tail)."""
        tail = self._u32(self.ktail)
        if tail - self._u32(self.khead) >= self.cq_entries:
            raise RuntimeError("fake CQ full")
        at = self.cqes + (tail & (self.cq_entries - 1)) * 32
        ctypes.memmove(at, struct.pack("<QiIQQ", ud, res, flags, off, 0), 32)
        self._put_u32(self.ktail, tail + 1)

    def data(self, page: int, payload: bytes, slot: int = 0, gen: int = 1, flags: int = F_MORE) -> None:
        """The kernel placed ``payload`` at the start of area page ``page`` for (slot, gen)."""
        ctypes.memmove(self.area_addr + page * PAGE, payload, len(payload))
        self.post(user_data(slot, gen), len(payload), flags, page * PAGE)

    def run(self):
        return self.d.run()

    def queued_cqes(self) -> int:
        return self._u32(self.ktail) - self._u32(self.khead)

    # -- the refill ring
    def refill_bytes(self) -> bytes:
        """The refill region as the kernel would read it (head, tail, entries)."""
        return ctypes.string_at(self.region, self.region_len)

    def consume_refills(self) -> list[tuple[int, int]]:
        """Takes the published refill entries, as the kernel does: (offset, length)."""
        head, tail = self._u32(self.region), self._u32(self.region + 64)
        out = []
        for i in range(head, tail):
            off, length, _pad = struct.unpack(
                "<QII", ctypes.string_at(self.region + PAGE + (i & (self.rq_entries - 1)) * 16, 16))
            out.append((off, length))
        self._put_u32(self.region, tail)
        return out

"""The kernel ABI layer: io_uring rings, zcrx registration, provided buffer rings.

This module and the two compiled modules under it (``_abi``: cffi, syscalls and
structs; ``_fastpath``: the buffer exporter and the C completion dispatcher) are the
only code that sees addresses. Everything above works with the objects defined
here. Functions return Python values or raise ``OSError`` with the kernel's errno;
turning an errno into advice is the engines' job (they know the context).

(It was ``_ring.py``, a name that read as a sibling of ``engines/ring.py``, the
engines' ring mechanics; this is the kernel interface below them.)
"""

from __future__ import annotations

import bisect
import errno
import mmap
import os
import struct
from dataclasses import dataclass
from typing import Callable, Literal, Protocol, Union

from ._abi import ffi, lib
from ._fastpath import PUMP_BUDGET as _PUMP_BUDGET
from ._fastpath import Area, Dispatcher
from .errors import process_forked

# -- the compiled objects' types --
# aiozcrx._fastpath has no stubs (mypy sees Area and Dispatcher as Any): these
# Protocols say what the engines call on them (aiozcrx/_c/area.c, dispatch.c), and
# the functions below that make them return them as these types.

#: what a sink is given: a view over the area, bytes with copy=True
Delivery = Union[memoryview, bytes]
#: a connection's sink: called with each delivery (by the C dispatcher, from the
#: slots list where None means dropped; by the socket engine); the one name for it
Sink = Callable[[Delivery], object]
#: one record of the control list: (user_data, res, cqe flags, a sink's exception)
Control = tuple[int, int, int, Union[BaseException, None]]
#: the dispatcher's slow path: (completions, control list or None, pump state)
SlowPath = Callable[[int, Union[list[Control], None], int], object]


class AreaLike(Protocol):
    """aiozcrx._fastpath.Area: the receive area, its buffers' leases and refills."""

    @property
    def outstanding(self) -> int: ...  # buffers held by user space

    @property
    def nbufs(self) -> int: ...

    @property
    def free_in_kernel(self) -> int: ...  # buffers the kernel can take now (see area.c)

    def own_mapping(self, addr: int, length: int, /) -> None: ...
    def setup_zcrx(self, rq_head: int, rq_tail: int, rq_rqes: int, rq_entries: int,
                   rq_area_token: int, zcrx_id: int, ring_fd: int, nodev: bool,
                   buf_size: int = ..., /) -> None: ...
    def setup_pbuf(self, addr: int, entries: int, window: int, incremental: bool = ..., /) -> None: ...
    def advise_hugepages(self) -> int: ...
    def setup_pool(self) -> None: ...
    def publish(self, force: bool = ..., /) -> None: ...
    # a view (for user 0's connection); b"" at EOF; False: every pooled buffer is
    # held; None: nothing to read
    def recv(self, fd: int, slot: int, gen: int, /) -> memoryview | Literal[b"", False] | None: ...
    # `user`: the engine the call is for (0: the one that made the area; an engine
    # sharing it has the index add_user() gave it): each owns its wake-ups and its
    # connections' (slot, gen) state (see AreaUser in aiozcrx/_c/common.h)
    def set_share(self, buffers: int, wake_fd: int, user: int = ..., /) -> None: ...
    def bind_slot(self, slot: int, gen: int = ..., user: int = ..., /) -> int: ...
    def over_share(self, slot: int, gen: int, user: int = ..., /) -> bool: ...
    def take_back(self, user: int = ..., /) -> list[int]: ...
    def held(self, slot: int, gen: int, user: int = ..., /) -> int: ...
    def set_refill_order(self, descending: bool, /) -> bool: ...
    def set_wake(self, fd: int, starved: bool, user: int = ..., /) -> None: ...
    def add_user(self, ring_fd: int = ..., zcrx_id: int = ..., /) -> int: ...
    def close(self, user: int = ..., /) -> None: ...
    def stats(self) -> dict[str, int]: ...  # "closed", "area_unmapped": bool


class DispatcherLike(Protocol):
    """aiozcrx._fastpath.Dispatcher: the C completion dispatcher of one ring."""

    @property
    def pumping(self) -> bool: ...
    # flags the engine sets for on_wake (see aiozcrx/_c/dispatch.c)
    revive_wanted: bool
    unthrottle_wanted: bool
    recheck_pending: bool
    # re-arming starved connections (revive_budget in aiozcrx/_c/dispatch.c)
    revive_after: int  # the oldest starved connection's mark

    def starve_mark(self, at_enter: bool, /) -> int: ...
    def revive_budget(self) -> int: ...
    def revive_took(self, n: int, /) -> None: ...

    # called by Ring.dispatcher: addresses of the ring and of the C helpers
    def bind_ring(self, *, owner: object, ring: int, enter: int, sq_space: int, sq_flags: int,
                  cq_flags: int, sq_entries: int, getevents: int, pending_mask: int,
                  evfd_disabled_bit: int) -> None: ...
    def bind_eventfd(self, fd: int, *, prep_read: int, withdraw: int, user_data: int) -> None: ...
    def run(self) -> tuple[int, list[Control] | None]: ...
    def pump(self, eventfd: int, /) -> tuple[int, list[Control] | None, int]: ...
    def on_wake(self) -> None: ...
    def kick(self) -> None: ...
    def socket_wake(self, slot: int, /) -> None: ...
    def set_slow_path(self, slow_path: SlowPath | None, /) -> None: ...
    def set_eventfd_sqe(self, on: bool, /) -> bool: ...
    def set_view_reuse(self, on: bool, /) -> bool: ...
    def set_timing(self, on: bool, /) -> None: ...
    def set_share_copy(self, on: bool, /) -> None: ...
    def set_max_view(self, nbytes: int, /) -> None: ...
    def stats(self) -> dict[str, int | str]: ...  # "eventfd_read": "sqe" or "read(2)"
    def slot_stats(self, slot: int, /) -> tuple[int, int]: ...
    def bind(self, slot: int, gen: int = ..., /) -> int: ...
    def halt(self) -> None: ...
    def close(self) -> None: ...
    def take_quiet(self) -> list[int]: ...

PAGE_SIZE = mmap.PAGESIZE
# Completions one Dispatcher pump delivers before the loop's other callbacks get a
# turn (dispatch.c); the engine's slow path counts its rounds against it too.
PUMP_BUDGET: int = _PUMP_BUDGET

# The protocol with the C dispatcher, defined once in aiozcrx/_c/protocol.h and
# read here from the compiled module. user_data: bits 0..31 a slot, 32..39 the
# kind, 40..63 the generation of the connection using the slot when the request
# was issued (see engines/base.py).
UD_KIND_SHIFT: int = lib.UD_KIND_SHIFT
UD_KIND_MASK: int = lib.UD_KIND_MASK
UD_GEN_SHIFT: int = lib.UD_GEN_SHIFT
UD_GEN_MASK: int = lib.UD_GEN_MASK
UD_SLOT_MASK: int = lib.UD_SLOT_MASK
UD_RECV: int = lib.UD_KIND_RECV
UD_CANCEL: int = lib.UD_KIND_CANCEL
UD_NOTIF: int = lib.UD_KIND_NOTIF
UD_NOP: int = lib.UD_KIND_NOP
UD_OVER_SHARE: int = lib.UD_KIND_OVER_SHARE  # made by the C dispatcher: a connection's views hold its share
UD_EVFD: int = lib.UD_KIND_EVFD  # the C dispatcher's read of the ring's eventfd (never leaves the dispatcher)
UD_SOCK_IDLE: int = lib.UD_KIND_SOCK_IDLE  # made by the C dispatcher: a socket keeps waking us for nothing
UD_NOMEM: int = lib.UD_KIND_NOMEM  # made by the C dispatcher: a delivery failed for want of memory
# Dispatcher.pump()'s state, as the slow path is told it
PUMP_IDLE: int = lib.PUMP_IDLE  # the eventfd will tell of new work
PUMP_PENDING: int = lib.PUMP_PENDING  # work is queued that an enter did not find: look again later
PUMP_BUSY: int = lib.PUMP_BUSY  # the round limit was reached: continue after the loop's other callbacks


def user_data(kind: int, slot: int, gen: int) -> int:
    return ((gen & UD_GEN_MASK) << UD_GEN_SHIFT) | (kind << UD_KIND_SHIFT) | slot


def ud_kind(ud: int) -> int:
    return (ud >> UD_KIND_SHIFT) & UD_KIND_MASK


def ud_slot(ud: int) -> int:
    return ud & UD_SLOT_MASK


def ud_gen(ud: int) -> int:
    return (ud >> UD_GEN_SHIFT) & UD_GEN_MASK


CQE_F_MORE = lib.AZX_CQE_F_MORE
ZCRX_REG_NODEV = lib.AZX_ZCRX_REG_NODEV
#: io_uring_query_zcrx.features: the kernel takes rx_buf_len (7.0+)
ZCRX_FEATURE_RX_PAGE_SIZE = 1 << 0
ZCRX_CTRL_FLUSH_RQ = lib.AZX_ZCRX_CTRL_FLUSH_RQ
ZCRX_CTRL_ARM_NOTIFICATION = lib.AZX_ZCRX_CTRL_ARM_NOTIFICATION
ZCRX_NOTIF_NO_BUFFERS = lib.AZX_ZCRX_NOTIF_NO_BUFFERS
ZCRX_NOTIF_COPY = lib.AZX_ZCRX_NOTIF_COPY
# a notification CQE's res (7.2): which event, a type, not a mask
ZCRX_EVENT_ALLOC_FAIL = lib.AZX_ZCRX_EVENT_ALLOC_FAIL
ZCRX_EVENT_COPY = lib.AZX_ZCRX_EVENT_COPY
OP_RECV_ZC = lib.AZX_OP_RECV_ZC
OP_RECV = lib.AZX_OP_RECV
OP_READ = lib.AZX_OP_READ


def _check(ret: int, what: str) -> int:
    if ret < 0:
        raise OSError(-ret, f"{what}: {os.strerror(-ret)}")
    return ret


def probe_eventfd_inline() -> bool:
    """Whether this kernel signals a DEFER_TASKRUN ring's eventfd inside the
    socket wake-up that queues a completion (True), or later, from an RCU
    callback (False): see aiozcrx/_c/wakeprobe.c. Decided by the kernel's state
    right after a syscall, never by a time: one unreadable trial proves deferral,
    inline takes five readable ones (~0.1-0.3 ms each).
    OSError where no such ring can be made here."""
    ret = lib.azx_probe_eventfd_inline()
    if ret < 0:
        raise OSError(-ret, f"eventfd wake-up probe: {os.strerror(-ret)}")
    return bool(ret)


class Ring:
    """An io_uring instance set up for a single-threaded event loop.

    SINGLE_ISSUER | DEFER_TASKRUN: completions are posted only when we call
    ``enter()``, from the loop thread, so the loop decides when work happens. The
    registered eventfd becomes readable when completions are pending as task work,
    which is what ``loop.add_reader`` waits on.
    """

    def __init__(self, *, sq_entries: int = 256, cq_entries: int = 8192, cqe32: bool = False,
                 timers: int = 0):
        # The CQ size asked for is the one we get: the kernel wants cq >= sq, so a
        # small CQ gets a small SQ (a full SQ is submitted and retried, see _prep).
        sq_entries = min(sq_entries, cq_entries)
        base = lib.AZX_SETUP_SINGLE_ISSUER | lib.AZX_SETUP_DEFER_TASKRUN
        if cqe32:
            base |= lib.AZX_SETUP_CQE32
        self._r = ffi.new("struct azx_ring *")
        self._r.fd = -1
        self._pid = os.getpid()  # a forked child never submits to or enters it (_check_process)
        ret = -errno.EINVAL
        # optional flags first; older kernels reject them with EINVAL
        # TASKRUN_FLAG matters: one io_uring_enter runs only a bounded batch of
        # deferred task work (20 items on 6.10+), and the eventfd is signalled only
        # when work is added to an empty list. Work left over therefore never wakes
        # us again; the flag (IORING_SQ_TASKRUN) is how we see it is there.
        want = lib.AZX_SETUP_SUBMIT_ALL | lib.AZX_SETUP_COOP_TASKRUN | lib.AZX_SETUP_TASKRUN_FLAG
        for extra in (want, lib.AZX_SETUP_SUBMIT_ALL | lib.AZX_SETUP_TASKRUN_FLAG,
                      lib.AZX_SETUP_SUBMIT_ALL, 0):
            ret = lib.azx_ring_setup(sq_entries, cq_entries, base | extra, self._r)
            if ret != -errno.EINVAL:
                break
        _check(ret, "io_uring_setup")
        self.fd: int = self._r.fd
        self.flags: int = self._r.flags
        self.features: int = self._r.features
        self.sq_entries: int = self._r.sq_entries
        self.cq_entries: int = self._r.cq_entries
        self.cqe_size: int = self._r.cqe_size
        self.eventfd = -1
        # the engine's periodic watches (engines.ring.Ticker): made with the ring so
        # that running out of fds fails here, where the caller cleans up, and they
        # go with the ring
        self.timers: list[PeriodicTimer] = []
        try:
            self.eventfd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            _check(lib.azx_register_eventfd(self._r, self.eventfd), "IORING_REGISTER_EVENTFD")
            for _ in range(timers):
                self.timers.append(PeriodicTimer())
        except BaseException:
            self.close()
            raise

    @property
    def closed(self) -> bool:
        return self.fd < 0

    def _check_process(self) -> None:
        # the SQ and CQ are mapped MAP_SHARED: a forked child would write the
        # parent's SQEs and take its completions (docs/security.md)
        if os.getpid() != self._pid:
            raise process_forked("ring")

    def enter(self, min_complete: int = 0) -> int:
        """Submits queued SQEs and runs deferred task work (posting completions)."""
        self._check_process()
        while True:
            ret = lib.azx_enter(self._r, min_complete, lib.AZX_ENTER_GETEVENTS)
            if ret != -errno.EINTR:
                break
        if ret in (-errno.EAGAIN, -errno.EBUSY):
            return 0  # CQ overflow backlog: retried on the next round
        return _check(ret, "io_uring_enter")

    def _prep(self, fn: Callable[..., int], *args: int) -> None:
        self._check_process()
        ret = fn(self._r, *args)
        if ret == -errno.EBUSY:  # SQ full: submit what is queued, then retry once
            self.enter(0)
            ret = fn(self._r, *args)
        _check(ret, "io_uring SQE")

    def prep_recv_zc(self, fd: int, zcrx_id: int, ud: int, limit: int = 0) -> None:
        """A multishot RECV_ZC; ``limit`` > 0: it ends after that many bytes."""
        self._prep(lib.azx_prep_recv_zc, fd, zcrx_id, limit, ud)

    def prep_recv_pbuf(self, fd: int, bgid: int, ud: int) -> None:
        self._prep(lib.azx_prep_recv_pbuf, fd, bgid, ud)

    def prep_cancel(self, target_ud: int, ud: int) -> None:
        self._prep(lib.azx_prep_cancel, target_ud, ud)

    def prep_nop(self, ud: int) -> None:
        self._prep(lib.azx_prep_nop, ud)

    def supports_op(self, op: int) -> bool:
        return bool(lib.azx_probe_op(self._r, op) == 1)

    def dispatcher(self, area: AreaLike, slots: list[Sink | None], *, copy: bool,
                   user: int = 0) -> DispatcherLike:
        """The C completion dispatcher for this ring (see ``Dispatcher.on_wake``),
        delivering for area user ``user`` (see ``AreaLike``)."""
        r = self._r
        d: DispatcherLike = Dispatcher(
            area, slots,
            khead=int(r.cq_khead), ktail=int(r.cq_ktail),
            mask=int(r.cq_mask),
            cqes=int(r.cq_cqes), cqe_size=self.cqe_size, copy=copy, user=user,
        )
        # Without TASKRUN_FLAG the kernel cannot tell us that work is left, and the
        # eventfd must then stay on: pending_mask 0 makes pump() keep both simple.
        flagged = bool(self.flags & lib.AZX_SETUP_TASKRUN_FLAG)
        d.bind_ring(
            owner=r, ring=int(ffi.cast("uintptr_t", r)),
            enter=int(ffi.cast("uintptr_t", ffi.addressof(lib, "azx_enter"))),
            sq_space=int(ffi.cast("uintptr_t", ffi.addressof(lib, "azx_sq_space"))),
            sq_flags=int(r.sq_flags), cq_flags=int(r.cq_flags),
            sq_entries=self.sq_entries, getevents=lib.AZX_ENTER_GETEVENTS,
            pending_mask=(lib.AZX_SQ_TASKRUN | lib.AZX_SQ_CQ_OVERFLOW) if flagged else 0,
            evfd_disabled_bit=lib.AZX_CQ_EVENTFD_DISABLED,
        )
        # A wake-up's eventfd read travels in the io_uring_enter the pump makes
        # anyway (IORING_OP_READ, RWF_NOWAIT) instead of a read(2) of its own;
        # without the opcode the dispatcher keeps read(2).
        read_op = self.supports_op(OP_READ)
        d.bind_eventfd(
            self.eventfd,
            prep_read=int(ffi.cast("uintptr_t", ffi.addressof(lib, "azx_prep_read_nowait"))) if read_op else 0,
            withdraw=int(ffi.cast("uintptr_t", ffi.addressof(lib, "azx_sqe_withdraw"))) if read_op else 0,
            user_data=user_data(UD_EVFD, 0, 0),
        )
        return d

    def close(self) -> None:
        """Closes the ring. The kernel tears down registrations (zcrx, buffer rings);
        the memory they used is ours and stays mapped until its Area goes away."""
        if self._r.fd >= 0:
            lib.azx_ring_close(self._r)
        self.fd = -1
        if self.eventfd >= 0:
            os.close(self.eventfd)
            self.eventfd = -1
        for timer in self.timers:
            timer.close()


@dataclass
class AreaMapping:
    addr: int
    length: int


def map_area(length: int, *, hugepages: bool = False) -> AreaMapping:
    """Anonymous private memory for receive buffers."""
    err = ffi.new("int *")
    p = lib.azx_mmap_anon(length, 1 if hugepages else 0, err)
    if p == ffi.NULL:
        what = "mmap(MAP_HUGETLB)" if hugepages else "mmap"
        hint = " (reserve huge pages: sysctl vm.nr_hugepages)" if hugepages else ""
        raise OSError(err[0], f"{what} of {length} bytes: {os.strerror(err[0])}{hint}")
    return AreaMapping(int(ffi.cast("uintptr_t", p)), length)


#: how the OSError of a failed madvise(MADV_DONTFORK) begins (engines.advice reads it)
DONTFORK = "madvise(MADV_DONTFORK)"


def dontfork(m: AreaMapping) -> None:
    """Keeps memory the kernel pins out of fork()ed children (see aiozcrx/_c/memory.c)."""
    _check(lib.azx_dontfork(m.addr, m.length), DONTFORK)


class PeriodicTimer:
    """A timerfd (CLOCK_MONOTONIC, non-blocking) that expires every ``period``
    seconds while armed; the loop watches its ``fd`` as a reader.

    Why not ``loop.call_later``: while any loop timer is pending, every sleep of
    the event loop is an ``epoll_wait`` with a timeout, which arms and cancels a
    kernel hrtimer on each wake-up: 6 % of the receiver's CPU with one 4 KiB
    record per wake-up (benchmarks/wakefloor.py). A timerfd's period runs in the
    kernel once armed, and the loop sleeps without a timeout.
    """

    def __init__(self) -> None:
        self.fd: int = _check(lib.azx_timerfd_create(), "timerfd_create")
        self.armed = False

    def arm(self, period: float) -> None:
        _check(lib.azx_timerfd_period(self.fd, max(1, int(period * 1e9))), "timerfd_settime")
        self.armed = True

    def disarm(self) -> None:
        if self.armed and self.fd >= 0:
            _check(lib.azx_timerfd_period(self.fd, 0), "timerfd_settime")
        self.armed = False

    def expirations(self) -> int:
        """Expirations since the last call (and clears the fd's readiness); 0 if none."""
        try:
            return int.from_bytes(os.read(self.fd, 8), "little")
        except BlockingIOError:
            return 0

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self.armed = False


def unmap(m: AreaMapping) -> None:
    lib.azx_munmap(m.addr, m.length)


def new_area(m: AreaMapping, buf_size: int) -> AreaLike:
    """An Area over a mapping it takes ownership of (unmapped when the Area dies)."""
    area: AreaLike = Area(m.addr, m.length, buf_size)
    area.own_mapping(m.addr, m.length)
    return area


class ZcrxStats:
    """The statistics the kernel keeps for one zcrx instance (7.2): how often and
    how much it copied into the area instead of placing data there (copy fallback:
    every byte of a NODEV instance; on a NIC queue, a flow that is not steered to
    it). The kernel writes them into our refill region as it copies.

    The region belongs to the Area (unmapped with it): the engine reads only while
    its ring is open and calls ``close()`` at teardown; after that ``read()``
    returns the last values read.
    """

    def __init__(self, area: AreaLike, addr: int):
        self._area: AreaLike | None = area  # keeps the mapping's owner alive
        self._p = ffi.cast("uint64_t *", addr)
        self._last = (0, 0)

    def read(self) -> tuple[int, int]:
        """(copy_count, copy_bytes): copy-fallback events and bytes so far."""
        if self._p is not None:
            self._last = (int(self._p[0]), int(self._p[1]))
        return self._last

    def twin(self) -> "ZcrxStats":
        """Another reader of the same counters (an imported instance's engine),
        closed on its own."""
        t = ZcrxStats.__new__(ZcrxStats)
        t._area, t._p, t._last = self._area, self._p, self._last
        return t

    def close(self) -> None:
        """No more reading (the memory may be unmapped already: no read here)."""
        self._p = None
        self._area = None


@dataclass
class ZcrxInfo:
    zcrx_id: int
    rq_entries: int
    rx_buf_len: int
    rq_area_token: int
    nodev: bool
    stats: ZcrxStats | None = None


def register_zcrx(ring: Ring, area: AreaLike, mapping: AreaMapping, *, if_idx: int, rxq: int,
                  rq_entries: int, nodev: bool, kernel_region: bool = False,
                  rx_buf_len: int = 0, notif_ud: int = 0, notif_mask: int = 0,
                  stats: bool = False) -> ZcrxInfo:
    """IORING_REGISTER_ZCRX_IFQ; attaches the refill ring to ``area``.

    The refill region (user memory by default, kernel memory mapped from the ring
    when ``kernel_region``) becomes owned by ``area``: it is unmapped with it.
    ``stats``: ask for the kernel's statistics region (7.2; kernels before refuse
    the descriptor with EINVAL), read through ``ZcrxInfo.stats``.
    """
    out = ffi.new("struct azx_zcrx_info *")
    flags = ZCRX_REG_NODEV if nodev else 0
    dontfork(mapping)
    ret = lib.azx_zcrx_register(ring._r, if_idx, rxq, rq_entries, flags, mapping.addr,
                                mapping.length, 1 if kernel_region else 0, rx_buf_len,
                                notif_ud, notif_mask, 1 if stats else 0, out)
    _check(ret, DONTFORK + " of the refill region" if out.dontfork_failed else "IORING_REGISTER_ZCRX_IFQ")
    area.own_mapping(int(out.region_addr), int(out.region_len))
    # the kernel writes back the buffer size it used (7.0+; 0 before: the page
    # size): one buffer per completion, what the area counts and returns
    granted = int(out.rx_buf_len) or PAGE_SIZE
    area.setup_zcrx(int(out.rq_head), int(out.rq_tail), int(out.rq_rqes), int(out.rq_entries),
                    int(out.rq_area_token), int(out.zcrx_id), ring.fd, nodev, granted)
    return ZcrxInfo(int(out.zcrx_id), int(out.rq_entries), granted,
                    int(out.rq_area_token), nodev,
                    ZcrxStats(area, int(out.stats)) if out.stats else None)


def zcrx_ctrl(ring: Ring, zcrx_id: int, op: int, arg0: int = 0) -> None:
    _check(lib.azx_zcrx_ctrl(ring._r, zcrx_id, op, arg0), "IORING_REGISTER_ZCRX_CTRL")


def zcrx_export(ring: Ring, zcrx_id: int) -> int:
    """Exports a zcrx instance as a file descriptor (ZCRX_CTRL_EXPORT, 6.19+)."""
    return _check(lib.azx_zcrx_export(ring._r, zcrx_id), "ZCRX_CTRL_EXPORT")


def zcrx_import(ring: Ring, zcrx_fd: int) -> int:
    """Imports an exported instance into ``ring``; returns its id there."""
    out = ffi.new("struct azx_zcrx_info *")
    _check(lib.azx_zcrx_import(ring._r, zcrx_fd, out), "IORING_REGISTER_ZCRX_IFQ(IMPORT)")
    return int(out.zcrx_id)


def query_zcrx() -> dict[str, int] | None:
    """IO_URING_QUERY_ZCRX (6.19+): None where the kernel cannot answer."""
    out = ffi.new("struct azx_query_zcrx *")
    if lib.azx_query_zcrx(out) < 0:
        return None
    return {
        "register_flags": int(out.register_flags),
        "area_flags": int(out.area_flags),
        "nr_ctrl_opcodes": int(out.nr_ctrl_opcodes),
        "features": int(out.features),
        "rq_hdr_size": int(out.rq_hdr_size),
        "rq_hdr_alignment": int(out.rq_hdr_alignment),
        "nodev": bool(out.register_flags & ZCRX_REG_NODEV),
        "notifications": bool(out.features & lib.AZX_ZCRX_FEATURE_NOTIFICATION),
        "rx_buf_len": bool(out.features & ZCRX_FEATURE_RX_PAGE_SIZE),
    }


def _pfns(addr: int, length: int) -> list[int] | None:
    """The page frame number of each page of [addr, addr+length) from
    /proc/self/pagemap; None where it shows none (no CAP_SYS_ADMIN) or a page is
    not present."""
    first, count = addr // PAGE_SIZE, length // PAGE_SIZE
    try:
        with open("/proc/self/pagemap", "rb") as f:
            f.seek(first * 8)
            raw = f.read(count * 8)
    except OSError:
        return None
    if len(raw) != count * 8:
        return None
    pfn_mask, present = (1 << 55) - 1, 1 << 63
    out = []
    for (entry,) in struct.iter_unpack("<Q", raw):
        if not entry & present or not entry & pfn_mask:
            return None
        out.append(entry & pfn_mask)
    return out


def map_area_contiguous(length: int, unit: int) -> tuple[AreaMapping, str]:
    """Anonymous memory for a zcrx area whose buffers of ``unit`` bytes each lie
    in one physically contiguous run (what rx_buf_len needs), where the kernel has
    no huge pages (User-Mode Linux): maps twice ``length`` and 16 MiB more (what the
    per-CPU lists may hold scattered comes first), faults it in in order
    (the page allocator then hands out runs, after whatever scattered pages its
    per-CPU lists held), reads the frames from /proc/self/pagemap and keeps the
    first ``length`` bytes in which every break between runs falls on a ``unit``
    boundary; the rest is unmapped. Returns the mapping and how it was found
    ("window at +N", or why the plain first ``length`` bytes were kept)."""
    m = map_area(2 * length + (16 << 20))
    view = ffi.buffer(ffi.cast("char *", m.addr), m.length)
    for off in range(0, m.length, PAGE_SIZE):
        view[off:off + 1] = b"\0"  # one write per page, in order
    pfns = _pfns(m.addr, m.length)
    start, how = 0, "no page frame numbers (needs CAP_SYS_ADMIN): the first bytes kept"
    if pfns is not None:
        n, per = length // PAGE_SIZE, unit // PAGE_SIZE
        breaks = [i for i in range(1, len(pfns)) if pfns[i] != pfns[i - 1] + 1]
        how = "no window with every break on a buffer boundary: the first bytes kept"
        for cand in [0, *breaks]:
            if cand + n > len(pfns):
                break
            lo = bisect.bisect_right(breaks, cand)
            hi = bisect.bisect_left(breaks, cand + n)
            if all((b - cand) % per == 0 for b in breaks[lo:hi]):
                start, how = cand, f"window at +{cand * PAGE_SIZE}"
                break
    keep = AreaMapping(m.addr + start * PAGE_SIZE, length)
    if start:
        unmap(AreaMapping(m.addr, start * PAGE_SIZE))
    tail = m.addr + m.length - (keep.addr + length)
    if tail:
        unmap(AreaMapping(keep.addr + length, tail))
    return keep, how


def area_contiguity(m: AreaMapping) -> int | None:
    """The largest buffer size (a power of two, bytes) that every physically
    contiguous run of the mapping's pages is a multiple of: what the kernel asks
    of a zcrx area's DMA segments for ``rx_buf_len`` (io_area_max_shift, 7.0+;
    an IOMMU can merge runs into longer segments, never split them). None where
    /proc/self/pagemap shows no page frame numbers (they need CAP_SYS_ADMIN) or a
    page is not present."""
    pfns = _pfns(m.addr, m.length)
    if not pfns:
        return None
    largest, run = 1 << 62, 1
    for prev, pfn in zip(pfns, pfns[1:]):
        if pfn == prev + 1:
            run += 1
        else:
            largest = min(largest, (run & -run) * PAGE_SIZE)
            run = 1
    return min(largest, (run & -run) * PAGE_SIZE)


def register_pbuf_ring(ring: Ring, area: AreaLike, *, bgid: int, window: int, incremental: bool = True) -> bool:
    """A provided buffer ring for the buffers of ``area`` (IORING_REGISTER_PBUF_RING).

    Room for all of them; ``window`` of them posted at a time (``Area`` keeps the
    rest, most recently used first, and widens the window when the kernel runs out).

    ``incremental``: ask for IOU_PBUF_RING_INC (6.12+), where the kernel fills a
    buffer piece by piece instead of spending a whole buffer on each receive, so a
    small message takes only its size and back-to-back pieces can be delivered as
    one view. A kernel without it refuses the flag (EINVAL) and gets the plain ring.
    Returns whether the ring is incremental.
    """
    entries = 1
    while entries < area.nbufs:
        entries <<= 1
    ring_len = max(PAGE_SIZE, entries * 16)
    m = map_area(ring_len)
    try:
        dontfork(m)
    except BaseException:
        unmap(m)
        raise
    inc = incremental
    ret = lib.azx_pbuf_register(ring._r, m.addr, entries, bgid, lib.AZX_PBUF_RING_INC if inc else 0)
    if ret == -errno.EINVAL and inc:
        inc = False
        ret = lib.azx_pbuf_register(ring._r, m.addr, entries, bgid, 0)
    if ret < 0:
        unmap(m)
        _check(ret, "IORING_REGISTER_PBUF_RING")
    area.own_mapping(m.addr, m.length)
    area.setup_pbuf(m.addr, entries, window, inc)
    return inc

"""Engines "zcrx" (RECV_ZC on a NIC hardware queue: true zero copy) and
"zcrx-copy" (the same path on a ZCRX_REG_NODEV instance, 7.1+: the kernel
copies into our area)."""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct
import termios
import time
import warnings
from typing import TYPE_CHECKING

from .. import _kernel
from .._kernel import UD_NOTIF, user_data
from ..config import AUTO_RX_BUF_LEN
from ..errors import ZcrxUnavailable
from .advice import area_error, device_removed, rx_buf_len_error, zcrx_error
from .linkwatch import LinkWatch, interface_exists
from .base import Conn, EngineLoop, ReadEvents
from .ring import RingEngine, Ticker

if TYPE_CHECKING:
    from ..config import Config


# NIC queues this process has registered: (ifindex, queue) -> None while a ring of
# ours holds it, else when (time.monotonic()) that ring was closed. Tells an
# EEXIST that is only our own unbinding still under way (see _wait_released).
_HELD = None
_our_queues: dict[tuple[int, int], float | None] = {}


def _queue_bound(ifname: str, queue: int) -> bool | None:
    """Whether RX ``queue`` of ``ifname`` has an io_uring memory provider (the
    netdev family's QUEUE_GET ``io-uring`` attribute, 6.15+); None if the kernel
    cannot tell. (Imported here only on this error path.)"""
    from .. import _netlink  # noqa: PLC0415
    try:
        queues = _netlink.netdev_queues(ifname)
    except OSError:
        return None
    return any(q["type"] == "rx" and q["id"] == queue and q["io_uring"] for q in queues)


def _ioctl_inq(fd: int) -> int:
    try:
        inq: int = struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]
    except OSError:
        return 0
    return inq


class ZcrxEngine(RingEngine):
    """RECV_ZC into a registered area; "zcrx" on a NIC queue, "zcrx-copy" with NODEV."""

    cqe32 = True
    TIMERS = 2  # the reset watch and the stall watchdog

    def __init__(self, config: Config, *, nodev: bool, share_with: ZcrxEngine | None = None) -> None:
        self.name = "zcrx-copy" if nodev else "zcrx"  # before the base: it sizes by name
        super().__init__(config)
        self.nodev = nodev
        if not nodev:
            # which of area_size / rq_entries took the NIC queue's larger default
            # (stats()["nic_defaults"]); an imported instance has the other's area
            self.stats["nic_defaults"] = (share_with.stats.get("nic_defaults", ()) if share_with is not None
                                          else config.defaulted())
        self.share_with = share_with
        self.shared_from: ZcrxEngine | None = None
        self.info: _kernel.ZcrxInfo | None = None
        self.zcrx_id = 0
        self._watchdog: Ticker | None = None  # made on first use (see _exhaustion_seen)
        self._watch_marks: dict[int, int] = {}
        self._quiet_ticks = 0
        self._waiting_head: tuple[Conn, int] | None = None  # the starved queue's head at the last tick
        self._kick_pending = False
        self._copy_warned = False
        self._kstats: _kernel.ZcrxStats | None = None  # the kernel's copy counters (7.2)
        # the NIC queue's device: watched for removal (see _watch_link)
        self._link: LinkWatch | None = None
        self._link_target: tuple[int, str, int] | None = None  # (ifindex, name, queue)
        self.device_gone = False  # the device was removed (see _device_removed)
        self._rx_buf_len = 0  # what the registration asks for (0: the page size)

    def open(self, loop: EngineLoop) -> None:
        if self.share_with is not None:
            return self._open_imported(loop, self.share_with)
        self.prepare()
        self.start(loop)

    # open() in two steps, for aiozcrx.workers: prepare() is the part that needs
    # CAP_NET_ADMIN and no event loop (ring, area, registration); a worker process
    # runs it before it drops its privileges, and start() once its loop runs.
    # Both steps run in the same process and thread: the ring (SINGLE_ISSUER) is
    # that thread's, the area that process's memory.
    _prepared: tuple[int, str, int] | None = None  # (ifindex, interface, queue) once prepared on a NIC queue

    def prepare(self) -> None:
        """Ring, area and registration (NIC queue or NODEV), with no loop: raises the
        typed error, and leaves nothing behind, when the kernel refuses."""
        if self.ring is not None:
            raise RuntimeError("this zcrx engine is already prepared")
        cfg = self.config
        nic: tuple[str, int] | None = None  # (interface, queue); None: NODEV
        if not self.nodev:
            if cfg.interface is None or cfg.queue is None:
                raise ZcrxUnavailable(self.name, errno.EINVAL, "no interface= and queue= given",
                                      "pass interface='eth0', queue=N (a queue set up with `aiozcrx nic setup`)")
            nic = (cfg.interface, cfg.queue)
        self._open_ring()
        try:
            if_idx, rxq = self._register_area(nic)
        except BaseException:
            self._abandon_open()  # whatever it was: nothing of this engine stays
            raise
        if nic is not None:
            _our_queues[(if_idx, rxq)] = _HELD
            self._prepared = (if_idx, nic[0], nic[1])

    def start(self, loop: EngineLoop) -> None:
        """The loop's part of open(), after prepare()."""
        if self.ring is None or self.loop is not None:
            raise RuntimeError("start() needs a prepared engine that was not started yet")
        self._start_loop(loop)
        if self._prepared is not None:
            self._watch_link(loop, self._prepared)

    def release_prepared(self) -> None:
        """A prepared engine that will never start: its ring and area go now (the
        kernel unbinds the queue in the ring's exit work)."""
        if self.loop is not None:
            raise RuntimeError("release_prepared() is for an engine that was not started; use close()")
        if self.ring is None:
            return
        self.closed = True
        if self._kstats is not None:
            self._kstats.close()
        self._abandon_open()
        if self._prepared is not None:
            _our_queues[(self._prepared[0], self._prepared[2])] = time.monotonic()

    def _register_area(self, nic: tuple[str, int] | None) -> tuple[int, int]:
        """Maps the area and registers the instance (NIC queue ``nic``, or NODEV);
        returns (ifindex, queue). Raises the typed error; the caller releases
        what was made on any exception (``_abandon_open``)."""
        cfg = self.config
        assert self.ring is not None
        # large buffers (rx_buf_len) need the area physically contiguous in runs of
        # their size: transparent huge pages where the kernel has them (advised
        # below, before the pages are faulted in), else (User-Mode Linux) a window
        # of memory the page allocator handed out in such runs
        unit = 0 if cfg.rx_buf_len in (None, _kernel.PAGE_SIZE) or cfg.hugepages or self.nodev else \
            AUTO_RX_BUF_LEN if cfg.rx_buf_len == "auto" else int(cfg.rx_buf_len)
        thp = os.path.exists("/sys/kernel/mm/transparent_hugepage/enabled")
        try:
            if unit and not thp:
                mapping, self.stats["area_layout"] = _kernel.map_area_contiguous(cfg.area_bytes, unit)
            else:
                mapping = _kernel.map_area(cfg.area_bytes, hugepages=cfg.hugepages)
        except OSError as e:
            raise area_error(self.name, cfg, e, ZcrxUnavailable) from None
        try:
            # buffers of the page size until the kernel says what it granted
            # (rx_buf_len: register_zcrx sets the area's buffer size)
            self.area = _kernel.new_area(mapping, _kernel.PAGE_SIZE)
        except BaseException:
            _kernel.unmap(mapping)  # not the Area's yet
            raise
        if unit and thp:
            err_thp = self.area.advise_hugepages()
            self.stats["area_thp"] = "MADV_HUGEPAGE" if not err_thp else errno.errorcode.get(err_thp, str(err_thp))
        if_idx = 0 if nic is None else socket.if_nametoindex(nic[0])
        rxq = 0 if nic is None else nic[1]
        notif_mask = (_kernel.ZCRX_NOTIF_NO_BUFFERS | _kernel.ZCRX_NOTIF_COPY) if cfg.notifications else 0
        err = self._register_sized(mapping, if_idx, rxq, notif_mask)
        if err is not None and err.errno == errno.EEXIST and nic is not None \
                and self._wait_released(nic[0], if_idx, rxq):
            err = self._register_sized(mapping, if_idx, rxq, notif_mask)
        if err is not None:
            if self._rx_buf_len:
                raise rx_buf_len_error(self.name, cfg, err, self._rx_buf_len, nodev=self.nodev,
                                       contiguous=_kernel.area_contiguity(mapping))
            raise zcrx_error(self.name, cfg, err, nodev=self.nodev)
        assert self.info is not None  # set by a registration that succeeded
        self.zcrx_id = self.info.zcrx_id
        self._kstats = self.info.stats
        return if_idx, rxq

    def _open_imported(self, loop: EngineLoop, source: ZcrxEngine) -> None:
        """Receives through another ring's zcrx instance (ZCRX_CTRL_EXPORT, then
        ZCRX_REG_IMPORT into a ring of our own). Area and refill ring stay the
        source's: buffers released from here go back through them."""
        if source.closed or source.area is None:
            raise ValueError("share_with= must be an open zcrx Receiver")
        self._open_ring()
        assert self.ring is not None
        fd = -1
        try:
            step = "export the instance to share (ZCRX_CTRL_EXPORT)"
            fd = source.export()
            step = "import the shared instance (ZCRX_REG_IMPORT)"
            self.zcrx_id = _kernel.zcrx_import(self.ring, fd)
        except OSError as e:
            self._abandon_open()
            fix = ("run as root or grant CAP_NET_ADMIN (importing needs it as registering does)"
                   if e.errno == errno.EPERM else "needs Linux 6.19+")
            raise ZcrxUnavailable(self.name, e.errno or errno.EIO, f"cannot {step}: {e.strerror}",
                                  fix) from None
        except BaseException:
            self._abandon_open()
            raise
        finally:
            if fd >= 0:
                os.close(fd)
        self.shared_from = source
        # a user of the area of its own: its wake-ups, its connections' state and
        # its ring (refills are flushed through a live user's) are its alone, and
        # the area closes when every user is done with it
        self.area_user = source.area.add_user(self.ring.fd, self.zcrx_id)
        self.area = source.area
        self.info = source.info
        self._kstats = source._kstats.twin() if source._kstats is not None else None
        self.stats["imported"] = True
        self._start_loop(loop)
        if source._link_target is not None:
            self._watch_link(loop, source._link_target)  # the same queue: the same device

    # -- the receive buffer size (rx_buf_len, 7.0+) --
    # Not given: 0, the page size, which every kernel and driver takes (asking for
    # the page size by number would make a driver without the queue config refuse
    # it). A number: that, refused with ZcrxBufferSizeRefused. "auto": the
    # largest of AUTO_RX_BUF_LEN .. 2 pages that the area divides and the queue
    # takes, else the page size, the refusals recorded (rx_buf_len_fallback).
    # Each refused try leaves nothing behind (the kernel undoes it).
    def _register_sized(self, mapping: _kernel.AreaMapping, if_idx: int, rxq: int,
                        notif_mask: int) -> OSError | None:
        want = self.config.rx_buf_len
        self.stats["rx_buf_len_requested"] = _kernel.PAGE_SIZE if want is None else want
        if want != "auto":
            self._rx_buf_len = 0 if want is None or want == _kernel.PAGE_SIZE else int(want)
            return self._register(mapping, if_idx, rxq, notif_mask)
        refusals: list[str] = []
        if self.nodev:
            refusals.append("zcrx-copy (ZCRX_REG_NODEV) takes only the page size")
        else:
            size = AUTO_RX_BUF_LEN
            while size > _kernel.PAGE_SIZE:
                if mapping.length % size == 0:
                    self._rx_buf_len = size
                    err = self._register(mapping, if_idx, rxq, notif_mask)
                    if err is None:
                        return None
                    if err.errno == errno.EEXIST:
                        return err  # the queue is busy, whatever the size: the caller may wait
                    refused = rx_buf_len_error(self.name, self.config, err, size, nodev=False,
                                               contiguous=_kernel.area_contiguity(mapping))
                    refusals.append(f"{size >> 10} KiB: {refused.reason}")
                    # too large for the area or the driver's range: a smaller one may do;
                    # anything else (no queue config, a kernel before 7.0): the page size says
                    if err.errno not in (errno.ERANGE, errno.EINVAL) or \
                            getattr(refused, "refused_by", "") == "kernel":
                        break
                size //= 2
        self._rx_buf_len = 0
        err = self._register(mapping, if_idx, rxq, notif_mask)
        if err is None and refusals:
            self.stats["rx_buf_len_fallback"] = f"auto took the page size ({_kernel.PAGE_SIZE}): " + \
                "; ".join(refusals)
        return err

    def _register(self, mapping: _kernel.AreaMapping, if_idx: int, rxq: int, notif_mask: int) -> OSError | None:
        # the notification descriptor also asks for the kernel's statistics (7.2)
        err = self._try_register(mapping, if_idx, rxq, notif_mask, stats=True)
        if err is not None and err.errno == errno.EINVAL:
            # kernels before 7.2 reject the notification descriptor: go without
            err = self._try_register(mapping, if_idx, rxq, 0, stats=False)
            if notif_mask:
                self.stats["notifications"] = "unsupported"
        elif err is None and notif_mask:
            self.stats["notifications"] = "on"
        return err

    # -- a queue whose last user just closed --
    # The kernel unbinds a NIC queue in the closed ring's exit work
    # (io_ring_exit_work, on a kernel worker), a moment after the ring's fd is
    # closed: registering the queue again right after a Receiver on it closed
    # meets EEXIST. On EEXIST, if the queue's binding is io_uring's (netdev
    # QUEUE_GET) and no ring of this process holds it, wait for the attribute to
    # go, then register again: up to RELEASE_WAIT_OURS after a ring of this
    # process closed it, RELEASE_WAIT_OTHER otherwise (another process that just
    # exited; one still running keeps it, and the wait ends in EEXIST). A queue
    # held by a live Receiver of this process fails at once.
    # The bound after our own close is generous because it is not a timing
    # assumption: it only ends a wait that the attribute ends first (a slow
    # machine's kernel worker can take seconds; 5 s was seen to run out in the guest
    # under load).
    RELEASE_WAIT_OURS = 30.0
    RELEASE_WAIT_OTHER = 1.0
    RELEASE_POLL = 0.005

    def _wait_released(self, ifname: str, if_idx: int, rxq: int) -> bool:
        """True: register again (the queue was released, or is now)."""
        closed_at = _our_queues.get((if_idx, rxq), -1.0)
        if closed_at is _HELD:
            return False  # a ring of ours holds it open
        t0 = time.monotonic()
        recent = closed_at >= 0 and t0 - closed_at < 60
        bound = _queue_bound(ifname, rxq)
        if bound is None:
            return False  # the kernel cannot tell
        if bound is False:
            # not io_uring's binding (XDP, devmem), or ours was released between the
            # refused registration and this look: worth one more try only if ours
            return recent
        deadline = t0 + (self.RELEASE_WAIT_OURS if recent else self.RELEASE_WAIT_OTHER)
        while time.monotonic() < deadline:
            self._release_pause(self.RELEASE_POLL)
            if _queue_bound(ifname, rxq) is False:
                self.stats["release_waits"] = self.stats.get("release_waits", 0) + 1
                return True
        return False

    @staticmethod
    def _release_pause(seconds: float) -> None:
        time.sleep(seconds)  # between two looks at the queue (a seam for the tests)

    def _try_register(self, mapping: _kernel.AreaMapping, if_idx: int, rxq: int, notif_mask: int, *,
                      stats: bool) -> OSError | None:
        """Registers; returns the kernel's refusal instead of raising it, with its
        traceback dropped: those frames hold the Area, and a caller keeping the
        exception must not keep the area mapped."""
        cfg = self.config
        assert self.ring is not None and self.area is not None
        try:
            self.info = _kernel.register_zcrx(
                self.ring, self.area, mapping, if_idx=if_idx, rxq=rxq, rq_entries=cfg.refill_entries,
                nodev=self.nodev, kernel_region=cfg.kernel_region, rx_buf_len=self._rx_buf_len,
                notif_ud=user_data(UD_NOTIF, 0, 0), notif_mask=notif_mask, stats=stats)
        except OSError as e:
            e.__traceback__ = None
            return e
        return None

    def _prep_recv(self, fd: int, ud: int, limit: int) -> None:
        assert self.ring is not None
        self.ring.prep_recv_zc(fd, self.zcrx_id, ud, limit)

    def _recv_limit(self, conn: Conn) -> int:
        # over_share="pause": a request takes at most what is left of the
        # connection's share (RECV_ZC's len). A stop at the share is a cancel that
        # lands only after the kernel has run the request's pending receive, and
        # that receive takes all there is: on loopback the sender's whole send
        # buffer follows each window update in the same softirq. Measured in the
        # guest (zcrx-copy, 256 KiB share, 2 MiB area): 276 buffers taken for a
        # share of 64, the whole area gone once two connections had stopped.
        if self.config.over_share != "pause" or self.area is None:
            return 0
        unit = self.area.stats()["buffer_size"]
        left = self.share_buffers(unit) - self.area.held(conn.slot, conn.gen, self.area_user)
        # RECV_ZC's len is 32 bits: a share past 2 GiB is limited there (re-armed after)
        return min(max(left, 1) * unit, 1 << 31)

    def _end_of_round(self) -> None:
        # NODEV: the kernel has no other way to get buffers back than a flush; one
        # per wake-up keeps it supplied at a cost amortized over the round
        if self.nodev and self.area is not None:
            self.area.publish(True)
        if self._kick_pending:
            self._kick_pending = False
            self._kick_stalled(require_no_progress=False)

    # -- stalls after exhaustion -------------------------------------------
    # When the area runs dry, a RECV_ZC multishot can stay armed and never
    # resume, even once buffers are back: it waits for a socket wake-up, and a
    # sender blocked on a full window sends none (KERNEL-NOTES). So:
    #  - on an ALLOC_FAIL notification (7.2; posted only by a NIC queue's page
    #    pool), once the round's refills are flushed, every armed request whose
    #    socket holds data is cancelled; the cancellation's completion re-arms it.
    #    The notification is re-armed before that: no gap.
    #  - NODEV (never notified of exhaustion), kernels without notifications
    #    (7.1), and on a NIC queue while connections wait for buffers: a watchdog
    #    ticks and cancels armed requests that hold data but made no progress for a
    #    tick; for NODEV and 7.1 it runs as long as connections are attached.
    #    (Earlier sessions read 7.2's COPY events, one per re-arm in NODEV, as
    #    exhaustion: they were copies.)
    # A request that ended with ENOMEM waits in the starved queue until buffers
    # come back to the kernel (RingEngine._starve), not polled. But the kernel
    # can refuse while, as far as we can see, it has buffers: on 7.2 a NODEV
    # RECV_ZC ends with ENOMEM about once per area's worth of copies with the
    # whole area flushed back to it, and a re-arm then gets data. Nothing comes
    # back then that would re-arm it, so (_starve, _retry_refused):
    #  - a connection refused while the kernel has buffers (Area.free_in_kernel)
    #    is re-armed at once, once per episode (stats()["starve_retries"]): a
    #    second refusal before it received anything queues it;
    #  - a connection that waited at the head of the queue for a whole tick while
    #    the kernel has buffers is re-armed by the tick: one a tick at most
    #    (stats()["starve_tick_rearms"]).
    # Neither can become a busy loop.
    WATCHDOG_TICK = 0.05
    QUIET_TICKS = 20

    def _kick_stalled(self, *, require_no_progress: bool) -> int:
        kicked = 0
        marks: dict[int, int] = {}
        assert self.dispatcher is not None
        for slot, conn in list(self.conns.items()):
            if not (conn.armed and not conn.cancelling and conn.wanted):
                continue
            done = self.dispatcher.slot_stats(slot)[0]
            marks[slot] = done
            if require_no_progress and self._watch_marks.get(slot) != done:
                continue
            if _ioctl_inq(conn.fd) > 0:
                kicked += 1
                self.stats["stall_kicks"] = self.stats.get("stall_kicks", 0) + 1
                self._cancel(conn)
        self._watch_marks = marks
        return kicked

    def attach(self, fd: int, events: ReadEvents) -> Conn:
        if self.device_gone:
            raise device_removed(self.name, *self._device_words())
        conn = super().attach(fd, events)
        if not self.nodev:
            # On a NIC queue, what waits in a socket's receive queue sits in our
            # area (the page pool's buffers): a connection that stopped reading
            # (paused, or over its share) would still fill it. Bounding its
            # receive buffer to its share keeps buffers for the others.
            self._bound_rcvbuf(fd, self.config.held_limit)
        if self.nodev or self.stats.get("notifications") != "on":
            self._exhaustion_seen()  # no way to hear of exhaustion (see _watch): keep watching
        return conn

    @staticmethod
    def _bound_rcvbuf(fd: int, limit: int) -> None:
        s = socket.socket(fileno=os.dup(fd))
        try:
            # the kernel doubles the value for its bookkeeping
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, max(limit // 2, 4096))
        except OSError:
            pass
        finally:
            s.close()

    def _exhaustion_seen(self) -> None:
        if self.loop is None or self.closed:
            return
        if self._watchdog is None:
            assert self.ring is not None
            self._watchdog = Ticker(self.loop, self.ring.timers[1], self.WATCHDOG_TICK, self._watch)
        if not self._watchdog.running:
            self._watch_marks = {}
            self._quiet_ticks = 0
            self._watchdog.start()

    def _watch(self) -> None:
        if self.closed:
            return
        stuck = self._kick_stalled(require_no_progress=True)
        self._retry_refused()
        self._quiet_ticks = 0 if stuck or self.starved else self._quiet_ticks + 1
        # Exhaustion is notified (ALLOC_FAIL) only from a NIC queue's page pool;
        # NODEV and kernels without notifications need the watchdog throughout.
        always = (self.nodev or self.stats.get("notifications") != "on") and self.conns
        if not (self._quiet_ticks < self.QUIET_TICKS or always) and self._watchdog is not None:
            self._watchdog.stop()

    def _retry_refused(self) -> None:
        """The tick's part in the starved queue (see "stalls after exhaustion")."""
        head = next(iter(self.starved.items()), None)
        waited, self._waiting_head = self._waiting_head, head
        if head is None or head != waited or self.area is None or not self.area.free_in_kernel:
            return
        conn = head[0]
        del self.starved[conn]
        self._waiting_head = None
        if self._rearm_starved([conn]):
            self.stats["starve_tick_rearms"] = self.stats.get("starve_tick_rearms", 0) + 1
        self._starved_sync()

    def _starve(self, conn: Conn, *, at_enter: bool = True) -> None:
        assert self.area is not None
        if at_enter and self.area.free_in_kernel and self._new_starve_episode(conn):
            self.stats["starve_retries"] = self.stats.get("starve_retries", 0) + 1
            self._rearm_starved([conn])
            return
        super()._starve(conn, at_enter=at_enter)
        self._exhaustion_seen()  # on a NIC queue: the tick above (elsewhere it runs anyway)

    # 7.2 posts a notification's event *type* in its CQE's res (ZCRX_EVENT_*,
    # aiozcrx/_c/uapi.h), not a mask: ALLOC_FAIL (the area ran dry), COPY (the
    # kernel copied instead of placing data in the area: on a NIC queue, a flow
    # that is not steered to it, or header split off).
    EVENT_ALLOC_FAIL, EVENT_COPY = _kernel.ZCRX_EVENT_ALLOC_FAIL, _kernel.ZCRX_EVENT_COPY

    def _notification(self, res: int) -> None:
        """A zcrx notification CQE (7.2)."""
        assert self.ring is not None and self.area is not None  # a pump round is running
        if res == self.EVENT_ALLOC_FAIL:
            bit = _kernel.ZCRX_NOTIF_NO_BUFFERS
            self.stats["notifications_no_buffers"] += 1
            self._kick_pending = True
            self._exhaustion_seen()
            if not self.nodev:
                # The NIC's page pool found the refill ring empty. Views released
                # outside a dispatch round stay unpublished until the next round,
                # and no data arrives to start one (the NIC drops it): the next
                # release must wake the loop, which publishes (seen on the
                # simulated NIC: a stall with every buffer returned, none published).
                self.area.set_wake(self.ring.eventfd, True, self.area_user)
                self.area.publish(True)
        elif res == self.EVENT_COPY:
            bit = _kernel.ZCRX_NOTIF_COPY
            self.stats["notifications_copy"] += 1
            if self.nodev:
                return  # all of NODEV is copies: said once, not re-armed (a syscall each)
            if not self.nodev and not self._copy_warned:
                self._copy_warned = True
                cfg = self.config
                warnings.warn(
                    f"aiozcrx: the kernel copied received data instead of placing it on "
                    f"{cfg.interface} queue {cfg.queue} (a flow not steered to that queue, or "
                    f"header/data split off): no zero copy for it. Fix: `aiozcrx nic setup "
                    f"--interface {cfg.interface} --queue {cfg.queue}` and check with "
                    f"`aiozcrx doctor --interface {cfg.interface}`", RuntimeWarning, stacklevel=2)
        else:
            self.stats["notifications_unknown"] = self.stats.get("notifications_unknown", 0) + 1
            return
        # A notification fires once until re-armed. The control op has taken the
        # type as an index or as a bit while the ABI settled: the index, then the bit.
        for arg in (res, bit):
            try:
                _kernel.zcrx_ctrl(self.ring, self.zcrx_id, _kernel.ZCRX_CTRL_ARM_NOTIFICATION, arg)
            except OSError:
                continue
            self.stats["notification_rearms"] = self.stats.get("notification_rearms", 0) + 1
            break
        else:
            self.stats["notification_rearm_errors"] = self.stats.get("notification_rearm_errors", 0) + 1

    def _stop_timers(self) -> None:
        if self._watchdog is not None:
            self._watchdog.close()
            self._watchdog = None
        self._unwatch_link()

    def _teardown(self) -> None:
        held = self.ring is not None and self.shared_from is None and self._link_target
        super()._teardown()  # its last stats() snapshot read the kernel's counters
        if self._kstats is not None:
            self._kstats.close()  # the region may be unmapped from now on
        if held:
            assert self._link_target is not None
            # the kernel unbinds the queue in the ring's exit work, shortly
            ifindex, _name, queue = self._link_target
            _our_queues[(ifindex, queue)] = time.monotonic()

    # -- the NIC's device going away --
    # The kernel unbinds a queue whose device is removed without telling io_uring:
    # armed requests stay armed and the sockets open, and the connections just
    # stop. So the engine watches the device (rtnetlink link notifications, see
    # linkwatch.py) and ends every connection with connection_lost(ZcrxDeviceRemoved)
    # naming the interface and the fix; wrap() then raises it, stats() says
    # "device_removed". The ring and the area are released by close() as usual.
    def _watch_link(self, loop: EngineLoop, target: tuple[int, str, int]) -> None:
        self._link_target = target
        try:
            self._link = LinkWatch(target[0])
        except OSError as e:
            self.stats["device_watch"] = f"unavailable: {e.strerror}"
            return
        loop.add_reader(self._link.fileno(), self._on_link)
        if not interface_exists(target[0]):  # removed before we subscribed
            loop.call_soon(self._device_removed)

    def _unwatch_link(self) -> None:
        if self._link is not None:
            assert self.loop is not None
            self.loop.remove_reader(self._link.fileno())
            self._link.close()
            self._link = None

    def _on_link(self) -> None:
        try:
            gone = self._link is not None and self._link.gone()
        except OSError as e:  # the watch itself broke: stop watching, say so
            self.stats["device_watch"] = f"failed: {e.strerror}"
            self._unwatch_link()
            return
        if gone:
            self._device_removed()

    def _device_words(self) -> tuple[str, int, int]:
        assert self._link_target is not None  # watched since open()
        ifindex, name, queue = self._link_target
        return name, queue, ifindex

    def _device_removed(self) -> None:
        if self.closed or self.device_gone:
            return
        self.device_gone = True
        assert self._link_target is not None
        self.stats["device_removed"] = self._link_target[1]
        self._unwatch_link()
        for conn in list(self.conns.values()):
            if conn.detached:
                continue
            conn.wanted = False
            # a new exception per connection: each may be raised (and get a
            # traceback) on its own, e.g. by a stream's read()
            conn.events._read_error(device_removed(self.name, *self._device_words()))

    def export(self) -> int:
        assert self.ring is not None
        return _kernel.zcrx_export(self.ring, self.zcrx_id)

    def describe(self) -> dict[str, object]:
        i = self.info
        if i is None:
            return {}
        d: dict[str, object] = {"zcrx_id": self.zcrx_id, "rq_entries": i.rq_entries, "rx_buf_len": i.rx_buf_len,
             "nodev": i.nodev}
        if self._kstats is not None and self.ring is not None:
            # the kernel's own count of what it copied instead of placing (7.2):
            # all of NODEV; on a NIC queue, flows not steered to it
            d["kernel_copy_count"], d["kernel_copy_bytes"] = self._kstats.read()
        return d

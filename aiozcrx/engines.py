"""Engines: the ways a Receiver can get bytes from the kernel, behind one seam.

Best first:
  "zcrx"      RECV_ZC multishot on a NIC hardware queue: true zero copy.
  "zcrx-copy" RECV_ZC on a ZCRX_REG_NODEV instance (7.1+): the kernel copies into
              our area; the same user-space path as "zcrx".
  "uring"     multishot RECV into a provided buffer ring.
  "socket"    non-blocking recv() into pooled buffers, driven by loop.add_reader.

An engine owns the kernel objects (ring, area, registration) for one Receiver and
knows how to arm and cancel receiving for a transport. Transports call only
``arm``, ``cancel``, ``attach`` and ``detach``; they never see the ring.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import socket
import struct
import termios
from typing import TYPE_CHECKING, Callable

from . import _ring
from ._ring import UD_CANCEL, UD_NOTIF, UD_RECV, user_data, ud_kind, ud_slot
from .errors import EngineUnavailable, UringUnavailable, ZcrxUnavailable

# Dispatcher.pump() states (aiozcrx/_c/dispatch.c)
PUMP_IDLE, PUMP_PENDING, PUMP_BUSY = 0, 1, 2

if TYPE_CHECKING:
    from .transport import ZcrxTransport

ENGINES = ("zcrx", "zcrx-copy", "uring", "socket")
KNOWN_ZCRX_DRIVERS = ("bnxt_en", "mlx5_core", "gve", "fbnic")


class Config:
    """Validated Receiver settings (see Receiver for their meaning)."""

    def __init__(self, *, engine, interface, queue, area_size, rq_entries, copy, buf_size,
                 hugepages, kernel_region, cq_entries, notifications, share_with=None):
        self.engine = engine
        self.interface = interface
        self.queue = queue
        self.area_size = area_size
        self.rq_entries = rq_entries
        self.copy = copy
        self.buf_size = buf_size
        self.hugepages = hugepages
        self.kernel_region = kernel_region
        self.cq_entries = cq_entries
        self.notifications = notifications
        self.share_with = share_with  # a ZcrxEngine whose instance this one imports


def interface_driver(name: str) -> str:
    try:
        return os.path.basename(os.readlink(f"/sys/class/net/{name}/device/driver"))
    except OSError:
        return "virtual" if name != "lo" else "loopback"


def _ioctl_inq(fd: int) -> int:
    try:
        return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]
    except OSError:
        return 0


class Engine:
    name = "?"

    def __init__(self, config: Config):
        self.config = config
        self.loop = None
        self.transports: dict[int, "ZcrxTransport"] = {}
        self.stats = {"rearms": 0, "starved": 0, "notifications_no_buffers": 0,
                      "notifications_copy": 0, "wakeups": 0}

    # -- lifecycle (Receiver) --
    def open(self, loop) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    # -- per transport --
    def attach(self, transport: "ZcrxTransport") -> int:
        raise NotImplementedError

    def detach(self, transport: "ZcrxTransport") -> None:
        raise NotImplementedError

    def arm(self, transport: "ZcrxTransport") -> None:
        raise NotImplementedError

    def cancel(self, transport: "ZcrxTransport") -> None:
        raise NotImplementedError

    def set_sink(self, transport: "ZcrxTransport", sink: Callable | None) -> None:
        """Where this transport's data goes: a callable(view), or None to drop."""
        raise NotImplementedError

    def area_stats(self) -> dict:
        raise NotImplementedError

    def slot_stats(self, transport) -> tuple[int, int]:
        """(completions, bytes) received by one transport."""
        raise NotImplementedError

    def describe(self) -> dict:
        return {}


class _RingEngine(Engine):
    """Shared mechanics of the io_uring engines: ring, eventfd reader, C dispatcher."""

    cqe32 = False

    def __init__(self, config: Config):
        super().__init__(config)
        self.ring: _ring.Ring | None = None
        self.area = None
        self.slots: list = []
        self.free_slots: list[int] = []
        self.dispatcher = None
        self.starved: set[int] = set()
        self._scheduled = False
        self._reader_added = False
        self._tw_timer = None
        self._reset_timer = None

    def _open_ring(self) -> None:
        try:
            self.ring = _ring.Ring(cq_entries=self.config.cq_entries, cqe32=self.cqe32)
        except OSError as e:
            raise _uring_error(self.name, e) from None

    def _start(self, loop) -> None:
        self.loop = loop
        self.dispatcher = self.ring.dispatcher(self.area, self.slots, copy=self.config.copy)
        loop.add_reader(self.ring.eventfd, self._on_wake)
        self._reader_added = True

    def close(self) -> None:
        if self.ring is None:
            return
        if self._reader_added:
            self.loop.remove_reader(self.ring.eventfd)
            self._reader_added = False
        if self._tw_timer is not None:
            self._tw_timer.cancel()
            self._tw_timer = None
        if self._reset_timer is not None:
            self._reset_timer.cancel()
            self._reset_timer = None
        # Completions still queued carry buffers: drain them (they go straight back,
        # no slot takes them) so outstanding counts stay exact, then close.
        for i in range(len(self.slots)):
            self.slots[i] = None
        try:
            self.ring.enter(0)
            self.dispatcher.run()
        except OSError:
            pass
        if getattr(self, "shared_from", None) is None:
            self.area.close()  # an imported instance's area belongs to its source
        self.ring.close()
        self.ring = None

    # -- slots --
    def attach(self, transport) -> int:
        slot = self.free_slots.pop() if self.free_slots else len(self.slots)
        if slot == len(self.slots):
            self.slots.append(None)
        self.transports[slot] = transport
        self.dispatcher.reset_slot(slot)
        return slot

    def slot_stats(self, transport) -> tuple[int, int]:
        if self.dispatcher is None or transport._slot < 0:
            return (0, 0)
        return self.dispatcher.slot_stats(transport._slot)

    def detach(self, transport) -> None:
        slot = transport._slot
        self.slots[slot] = None
        self.starved.discard(slot)
        if not transport._armed and not transport._cancelling:
            self._free_slot(slot)

    def _free_slot(self, slot: int) -> None:
        if self.transports.pop(slot, None) is not None:
            self.free_slots.append(slot)

    def set_sink(self, transport, sink) -> None:
        self.slots[transport._slot] = sink

    # -- requests --
    def _prep_recv(self, fd: int, ud: int) -> None:
        raise NotImplementedError

    def _buffers_available(self) -> bool:
        return self.area.outstanding < self.area.nbufs

    def arm(self, transport) -> None:
        if self.ring is None:
            return
        if not self._buffers_available():
            self._starve(transport._slot)
            return
        self._prep_recv(transport._fileno, user_data(UD_RECV, transport._slot))
        transport._armed = True
        self._kick()
        if self._reset_timer is None:
            self._reset_timer = self.loop.call_later(self.RESET_TICK, self._reset_watch)

    # -- connections reset with data still queued --
    # A multishot RECV that drains the last queued bytes of a socket the peer has
    # already reset goes back to wait for a wake-up that never comes: the kernel's
    # "socket now empty" hint (tcp_inq_hint) counts a FIN but not a reset, so the
    # request neither reads the pending error nor ends, and the connection would
    # never see connection_lost. (The reset's own wake-up was spent while data was
    # still queued.) Measured: 1 run in 4 of a 16 MiB stream reset mid-way, once
    # bursts end requests with ENOBUFS. So: every RESET_TICK, the transports that
    # got data in the previous tick and none since are polled (one poll(2)); one
    # whose socket reports an error or hang-up while its request is still armed is
    # cancelled, and the re-armed request reads the error. Idle connections cost
    # nothing here: a reset that finds nothing queued wakes the request itself.
    RESET_TICK = 0.2

    def _reset_watch(self) -> None:
        self._reset_timer = None
        if self.ring is None:
            return
        quiet = self.dispatcher.take_quiet()
        if quiet:
            poller = select.poll()
            watched = {}
            for slot in quiet:
                t = self.transports.get(slot)
                if t is not None and t._armed and not t._cancelling and not t._detached:
                    poller.register(t._fileno, select.POLLERR | select.POLLHUP)
                    watched[t._fileno] = t
            if watched:
                for fd, events in poller.poll(0):
                    if events & (select.POLLERR | select.POLLHUP) and fd in watched:
                        self.stats["reset_kicks"] = self.stats.get("reset_kicks", 0) + 1
                        self.cancel(watched[fd])
        if self.transports:
            self._reset_timer = self.loop.call_later(self.RESET_TICK, self._reset_watch)

    def cancel(self, transport) -> None:
        if self.ring is None or not transport._armed or transport._cancelling:
            self.starved.discard(transport._slot)
            return
        transport._cancelling = True
        self.ring.prep_cancel(user_data(UD_RECV, transport._slot), user_data(UD_CANCEL, transport._slot))
        self._kick()

    def _starve(self, slot: int) -> None:
        self.starved.add(slot)
        self.stats["starved"] += 1
        self.area.set_wake(self.ring.eventfd, True)
        self.area.publish(True)

    def _kick(self) -> None:
        """Submit soon, once, however many requests were queued meanwhile."""
        if not self._scheduled:
            self._scheduled = True
            self.loop.call_soon(self._process)

    # -- the loop side --
    def _on_wake(self) -> None:
        self._pump(self.ring.eventfd)

    def _process(self) -> None:
        self._scheduled = False
        if self.ring is not None:
            self._pump(-1)

    CONTROL_ROUNDS = 64

    def _pump(self, eventfd: int) -> None:
        """One wake-up: the C dispatcher submits, runs task work, dispatches and
        refills (``Dispatcher.pump``); Python decides only what it hands back
        (ends of requests, errors, notifications) and what to re-arm."""
        pump = self.dispatcher.pump
        _n, control, state = pump(eventfd)
        rounds = 0
        while control is not None:
            self._handle(control)
            if self.starved and self._buffers_available():
                self._revive()
            if self.ring is None:
                return
            rounds += 1
            if rounds == self.CONTROL_ROUNDS:
                state = PUMP_BUSY
                break
            _n, control, state = pump(-1)
        if self.starved and self._buffers_available():
            self._revive()
        if state == PUMP_BUSY:
            self._kick()  # still busy: continue after the loop's other callbacks
        elif state == PUMP_PENDING and self._tw_timer is None and not self._scheduled:
            # The kernel flags queued task work that an enter did not find (the
            # flag can lag): look again soon. A timer, never a busy loop.
            self._tw_timer = self.loop.call_later(self.TW_RECHECK, self._tw_recheck)
        self._end_of_round()

    TW_RECHECK = 0.01

    def _tw_recheck(self) -> None:
        self._tw_timer = None
        self._process()

    def _end_of_round(self) -> None:
        pass

    def _revive(self) -> None:
        """Buffers came back: re-arm transports that stopped for lack of them."""
        self.area.publish(True)
        starved, self.starved = self.starved, set()
        for slot in starved:
            t = self.transports.get(slot)
            if t is not None and t._wants_data() and not t._armed:
                self.stats["rearms"] += 1
                self.arm(t)

    def _handle(self, control) -> None:
        for ud, res, flags, exc in control:
            kind = ud_kind(ud)
            if kind == UD_RECV:
                t = self.transports.get(ud_slot(ud))
                if t is None:
                    continue
                if exc is not None:
                    t._callback_failed(exc)
                if flags & _ring.CQE_F_MORE:
                    continue
                # the multishot request is over
                t._armed = False
                was_cancelling, t._cancelling = t._cancelling, False
                if t._detached:
                    self._free_slot(t._slot)
                    continue
                if res == 0:
                    t._eof()
                elif res > 0 or res == -errno.ECANCELED or (res == -errno.ENOSPC and not was_cancelling):
                    # ended after data, cancelled (pause), or CQ overflow: go on if wanted
                    if t._wants_data():
                        self.stats["rearms"] += 1
                        self.arm(t)
                elif res in (-errno.ENOMEM, -errno.ENOBUFS):
                    # area / buffer ring exhausted: re-arm once buffers come back
                    if t._wants_data():
                        self._starve(t._slot)
                        if self._buffers_available():
                            self._revive()
                else:
                    t._recv_error(OSError(-res, os.strerror(-res)))
            elif kind == UD_NOTIF:
                self._notification(res)

    def _notification(self, res: int) -> None:
        pass

    def area_stats(self) -> dict:
        s = self.area.stats()
        s.update(self.stats)
        s.update(self.dispatcher.stats())  # wakeups are counted in C
        return s


class ZcrxEngine(_RingEngine):
    """RECV_ZC into a registered area; "zcrx" on a NIC queue, "zcrx-copy" with NODEV."""

    cqe32 = True

    def __init__(self, config: Config, *, nodev: bool):
        super().__init__(config)
        self.nodev = nodev
        self.name = "zcrx-copy" if nodev else "zcrx"
        self.info: _ring.ZcrxInfo | None = None
        self.zcrx_id = 0
        self._watchdog = None
        self._watch_marks: dict[int, int] = {}
        self._quiet_ticks = 0
        self._kick_pending = False

    def open(self, loop) -> None:
        if self.config.share_with is not None:
            return self._open_imported(loop, self.config.share_with)
        cfg = self.config
        if not self.nodev and (cfg.interface is None or cfg.queue is None):
            raise ZcrxUnavailable(self.name, errno.EINVAL, "no interface= and queue= given",
                                  "pass interface='eth0', queue=N (a queue set up with `aiozcrx nic setup`)")
        self._open_ring()
        try:
            mapping = _ring.map_area(cfg.area_size, hugepages=cfg.hugepages)
        except OSError as e:
            self.ring.close()
            self.ring = None
            raise ZcrxUnavailable(self.name, e.errno, f"cannot map a {cfg.area_size}-byte area: {e.strerror}") from None
        self.area = _ring.new_area(mapping, _ring.PAGE_SIZE)
        if_idx = 0 if self.nodev else socket.if_nametoindex(cfg.interface)
        rxq = 0 if self.nodev else cfg.queue
        notif_mask = (_ring.ZCRX_NOTIF_NO_BUFFERS | _ring.ZCRX_NOTIF_COPY) if cfg.notifications else 0
        err = self._try_register(mapping, if_idx, rxq, notif_mask)
        if err is not None and notif_mask and err.errno == errno.EINVAL:
            # kernels before 7.2 reject the notification descriptor: go without
            err = self._try_register(mapping, if_idx, rxq, 0)
            self.stats["notifications"] = "unsupported"
        elif err is None and notif_mask:
            self.stats["notifications"] = "on"
        if err is not None:
            self.area.close()
            self.area = None  # last reference: the area is unmapped here
            self.ring.close()
            self.ring = None
            raise self._explain(err)
        self.zcrx_id = self.info.zcrx_id
        self._start(loop)

    def _open_imported(self, loop, source: "ZcrxEngine") -> None:
        """Receives through another ring's zcrx instance (ZCRX_CTRL_EXPORT, then
        ZCRX_REG_IMPORT into a ring of our own). Area and refill ring stay the
        source's: buffers released from here go back through them."""
        self._open_ring()
        fd = -1
        try:
            step = "export the instance to share (ZCRX_CTRL_EXPORT)"
            fd = source.export()
            step = "import the shared instance (ZCRX_REG_IMPORT)"
            self.zcrx_id = _ring.zcrx_import(self.ring, fd)
        except OSError as e:
            self.ring.close()
            self.ring = None
            raise ZcrxUnavailable(self.name, e.errno, f"cannot {step}: {e.strerror}",
                                  "needs Linux 6.19+") from None
        finally:
            if fd >= 0:
                os.close(fd)
        self.shared_from = source
        self.area = source.area
        self.info = source.info
        self.stats["imported"] = True
        self._start(loop)

    def _try_register(self, mapping, if_idx: int, rxq: int, notif_mask: int) -> OSError | None:
        """Registers; returns the kernel's refusal instead of raising it, with its
        traceback dropped: those frames hold the Area, and a caller keeping the
        exception must not keep the area mapped."""
        cfg = self.config
        try:
            self.info = _ring.register_zcrx(
                self.ring, self.area, mapping, if_idx=if_idx, rxq=rxq, rq_entries=cfg.rq_entries,
                nodev=self.nodev, kernel_region=cfg.kernel_region,
                notif_ud=user_data(UD_NOTIF, 0), notif_mask=notif_mask)
        except OSError as e:
            e.__traceback__ = None
            return e
        return None

    def _explain(self, e: OSError) -> ZcrxUnavailable:
        cfg = self.config
        err = e.errno
        if self.nodev:
            where = "ZCRX_REG_NODEV"
            causes = {
                errno.EINVAL: ("this kernel has no ZCRX_REG_NODEV (needs Linux 7.1+)", "use engine='uring' or a 7.1+ kernel"),
                errno.EOPNOTSUPP: ("this kernel has no io_uring zcrx (CONFIG_IO_URING_ZCRX)", "use engine='uring'"),
            }
        else:
            drv = interface_driver(cfg.interface)
            where = f"{cfg.interface} queue {cfg.queue}"
            causes = {
                errno.EOPNOTSUPP: (f"{cfg.interface} ({drv}) has no queue API" if drv not in KNOWN_ZCRX_DRIVERS
                                   else f"{cfg.interface} ({drv}) refused: header/data split off or driver too old",
                                   f"use a NIC whose driver supports zcrx ({', '.join(KNOWN_ZCRX_DRIVERS)}); run `aiozcrx doctor --interface {cfg.interface}`"),
                errno.EINVAL: (f"{where}: bad queue or header/data split not enabled",
                               f"`aiozcrx nic setup --interface {cfg.interface} --queue {cfg.queue}`"),
                errno.EEXIST: (f"{where} is already bound to a memory provider",
                               "close the other zcrx user of this queue or pick another queue"),
                errno.ERANGE: (f"{where}: queue out of range", "pick a queue below the channel count (`ethtool -l`)"),
            }
        causes[errno.EPERM] = ("registering zcrx needs CAP_NET_ADMIN", "run as root or grant CAP_NET_ADMIN (setcap cap_net_admin+ep)")
        causes[errno.ENOMEM] = (f"cannot pin a {cfg.area_size}-byte area: RLIMIT_MEMLOCK is too low (or out of memory)",
                                "raise the limit (`ulimit -l`, LimitMEMLOCK= in systemd) or pass a smaller area_size")
        cause, fix = causes.get(err, (f"{where}: {e.strerror}", ""))
        if err == errno.ENOMEM:
            import resource
            soft, _hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
            lim = "unlimited" if soft == resource.RLIM_INFINITY else f"{soft} bytes"
            cause = f"cannot pin a {cfg.area_size}-byte area: RLIMIT_MEMLOCK is {lim}"
        return ZcrxUnavailable(self.name, err, cause, fix)

    def _prep_recv(self, fd: int, ud: int) -> None:
        self.ring.prep_recv_zc(fd, self.zcrx_id, ud)

    def _buffers_available(self) -> bool:
        # the kernel gets buffers back only through the refill ring (and, NODEV,
        # a flush): count those still held by user space
        return self.area.outstanding < self.area.nbufs

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
    # sender blocked on a full window sends none (KERNEL-NOTES). Measured here:
    # hundreds of NO_BUFFERS per GB in copy mode with nothing held by the user.
    # So:
    #  - on a NO_BUFFERS notification (7.2), once the round's refills are flushed,
    #    every armed request whose socket holds data is cancelled; the
    #    cancellation's completion re-arms it. The notification is re-armed before
    #    that, so an exhaustion after the kick notifies again: no gap.
    #  - without notifications (7.1) or after ENOMEM/starvation, a watchdog ticks
    #    and cancels armed requests that hold data but made no progress for a
    #    tick. Without notifications it runs as long as transports are attached.
    WATCHDOG_TICK = 0.05
    QUIET_TICKS = 20

    def _kick_stalled(self, *, require_no_progress: bool) -> int:
        kicked = 0
        marks = {}
        for slot, t in list(self.transports.items()):
            if not (t._armed and not t._cancelling and t._wants_data()):
                continue
            done = self.dispatcher.slot_stats(slot)[0]
            marks[slot] = done
            if require_no_progress and self._watch_marks.get(slot) != done:
                continue
            if _ioctl_inq(t._fileno) > 0:
                kicked += 1
                self.stats["stall_kicks"] = self.stats.get("stall_kicks", 0) + 1
                self.cancel(t)
        self._watch_marks = marks
        return kicked

    def attach(self, transport) -> int:
        slot = super().attach(transport)
        if self.stats.get("notifications") != "on":
            self._exhaustion_seen()  # no way to hear of exhaustion: keep watching
        return slot

    def _exhaustion_seen(self) -> None:
        if self._watchdog is None and self.loop is not None:
            self._watch_marks = {}
            self._quiet_ticks = 0
            self._watchdog = self.loop.call_later(self.WATCHDOG_TICK, self._watch)

    def _watch(self) -> None:
        self._watchdog = None
        if self.ring is None:
            return
        stuck = self._kick_stalled(require_no_progress=True)
        self._quiet_ticks = 0 if stuck or self.starved else self._quiet_ticks + 1
        always = self.stats.get("notifications") != "on" and self.transports
        if self._quiet_ticks < self.QUIET_TICKS or always:
            self._watchdog = self.loop.call_later(self.WATCHDOG_TICK, self._watch)

    def _starve(self, slot: int) -> None:
        super()._starve(slot)
        self._exhaustion_seen()

    def _notification(self, res: int) -> None:
        """A zcrx notification CQE (7.2): ``res`` carries the event bits."""
        if res & _ring.ZCRX_NOTIF_NO_BUFFERS:
            self._kick_pending = True
            self._exhaustion_seen()
            self.stats["notifications_no_buffers"] += 1
        if res & _ring.ZCRX_NOTIF_COPY:
            self.stats["notifications_copy"] += 1
        # Notifications fire once until re-armed. Kernels have taken the type as a
        # bit or as an index while the ABI settled: try the bit, then the index.
        for bit in (_ring.ZCRX_NOTIF_NO_BUFFERS, _ring.ZCRX_NOTIF_COPY):
            if not res & bit:
                continue
            for arg in (bit, bit.bit_length() - 1):
                try:
                    _ring.zcrx_ctrl(self.ring, self.zcrx_id, _ring.ZCRX_CTRL_ARM_NOTIFICATION, arg)
                except OSError:
                    continue
                self.stats["notification_rearms"] = self.stats.get("notification_rearms", 0) + 1
                break
            else:
                self.stats["notification_rearm_errors"] = self.stats.get("notification_rearm_errors", 0) + 1

    def _revive(self) -> None:
        super()._revive()
        self._exhaustion_seen()  # armed requests may have stalled meanwhile

    def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        super().close()

    def export(self) -> int:
        return _ring.zcrx_export(self.ring, self.zcrx_id)

    def describe(self) -> dict:
        i = self.info
        return {"zcrx_id": self.zcrx_id, "rq_entries": i.rq_entries, "rx_buf_len": i.rx_buf_len,
                "nodev": i.nodev}


class UringEngine(_RingEngine):
    """Multishot RECV with buffers picked by the kernel from a provided buffer ring."""

    name = "uring"
    BGID = 7
    # Buffers posted to the kernel at a time start at about this many bytes: small
    # enough to stay in a core's L2 cache, so the kernel's copy lands in warm memory.
    # The C side doubles the window whenever the kernel runs out within a round.
    WARM_BYTES = 512 * 1024
    MIN_POSTED = 8

    @classmethod
    def post_window(cls, buf_size: int, nbufs: int) -> int:
        return min(nbufs, max(cls.MIN_POSTED, cls.WARM_BYTES // buf_size))

    def open(self, loop) -> None:
        cfg = self.config
        self._open_ring()
        try:
            if not self.ring.supports_op(_ring.OP_RECV):
                raise OSError(errno.EOPNOTSUPP, "IORING_OP_RECV not supported")
            mapping = _ring.map_area(cfg.area_size, hugepages=cfg.hugepages)
            self.area = _ring.new_area(mapping, cfg.buf_size)
            _ring.register_pbuf_ring(self.ring, self.area, bgid=self.BGID,
                                     window=self.post_window(cfg.buf_size, self.area.nbufs))
        except OSError as e:
            if self.area is not None:
                self.area.close()
                self.area = None
            self.ring.close()
            self.ring = None
            e.__traceback__ = None  # its frames hold the Area (see ZcrxEngine.open)
            raise _uring_error(self.name, e) from None
        self._start(loop)

    def _prep_recv(self, fd: int, ud: int) -> None:
        self.ring.prep_recv_pbuf(fd, self.BGID, ud)


class SocketEngine(Engine):
    """Plain non-blocking recv() into pooled buffers; works wherever sockets do."""

    name = "socket"
    READS_PER_WAKEUP = 16  # fairness between connections on one loop

    def __init__(self, config: Config):
        super().__init__(config)
        self.area = None
        self.eventfd = -1
        self.sinks: dict[int, Callable | None] = {}
        self.per_slot: dict[int, list[int]] = {}
        self.starved: set[int] = set()
        self._next = 0
        self.completions = 0
        self.bytes = 0

    def open(self, loop) -> None:
        self.loop = loop
        mapping = _ring.map_area(self.config.area_size, hugepages=self.config.hugepages)
        self.area = _ring.new_area(mapping, self.config.buf_size)
        self.area.setup_pool()
        self.eventfd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        loop.add_reader(self.eventfd, self._on_wake)

    def close(self) -> None:
        if self.area is None:
            return
        self.loop.remove_reader(self.eventfd)
        os.close(self.eventfd)
        self.area.close()
        self.eventfd = -1

    def attach(self, transport) -> int:
        slot = self._next
        self._next += 1
        self.transports[slot] = transport
        self.per_slot[slot] = [0, 0]
        return slot

    def slot_stats(self, transport) -> tuple[int, int]:
        c = self.per_slot.get(transport._slot, (0, 0))
        return (c[0], c[1])

    def detach(self, transport) -> None:
        self.cancel(transport)
        self.transports.pop(transport._slot, None)
        self.sinks.pop(transport._slot, None)

    def set_sink(self, transport, sink) -> None:
        self.sinks[transport._slot] = sink

    def arm(self, transport) -> None:
        if transport._armed or self.eventfd < 0:
            return
        transport._armed = True
        self.loop.add_reader(transport._fileno, self._read_ready, transport)

    def cancel(self, transport) -> None:
        self.starved.discard(transport._slot)
        if transport._armed:
            transport._armed = False
            self.loop.remove_reader(transport._fileno)

    def _read_ready(self, transport) -> None:
        area = self.area
        fd = transport._fileno
        for _ in range(self.READS_PER_WAKEUP):
            try:
                view = area.recv(fd)
            except OSError as e:
                self.cancel(transport)
                transport._recv_error(e)
                return
            if view is None:
                return
            if view is False:
                # every pooled buffer is held by user code: wait for one to return
                self.cancel(transport)
                self.starved.add(transport._slot)
                self.stats["starved"] += 1
                area.set_wake(self.eventfd, True)
                return
            if not view:  # b"": EOF
                self.cancel(transport)
                transport._eof()
                return
            self.completions += 1
            self.bytes += len(view)
            counts = self.per_slot[transport._slot]
            counts[0] += 1
            counts[1] += len(view)
            sink = self.sinks.get(transport._slot)
            if sink is None:
                del view
                continue
            if self.config.copy:
                data = bytes(view)
                view.release()
                view = data
            try:
                sink(view)
            except BaseException as exc:  # noqa: BLE001 - protocol errors become connection_lost
                del view
                transport._callback_failed(exc)
                return
            del view
            if not transport._armed:  # paused or closed by the callback
                return

    def _on_wake(self) -> None:
        try:
            os.eventfd_read(self.eventfd)
        except BlockingIOError:
            pass
        self.stats["wakeups"] += 1
        starved, self.starved = self.starved, set()
        for slot in starved:
            t = self.transports.get(slot)
            if t is not None and t._wants_data():
                self.stats["rearms"] += 1
                self.arm(t)

    def area_stats(self) -> dict:
        s = self.area.stats()
        s.update({"completions": self.completions, "bytes": self.bytes, "dropped_completions": 0})
        s.update(self.stats)
        return s


def _uring_error(engine: str, e: OSError) -> UringUnavailable:
    err = e.errno
    causes = {
        errno.ENOSYS: ("this kernel has no io_uring", "use engine='socket'"),
        errno.EPERM: ("io_uring is disabled (sysctl kernel.io_uring_disabled) or blocked by seccomp",
                      "set kernel.io_uring_disabled=0, or allow io_uring_* syscalls in the seccomp profile"),
        errno.EINVAL: ("this kernel lacks IORING_SETUP_DEFER_TASKRUN / provided buffer rings (needs 6.1+)",
                       "use engine='socket' or a newer kernel"),
        errno.ENOMEM: ("cannot lock memory for the ring or buffers (RLIMIT_MEMLOCK)", "raise `ulimit -l`"),
    }
    cause, fix = causes.get(err, (f"{e.strerror}", ""))
    return UringUnavailable(engine, err or errno.EIO, cause, fix)


def make_engine(name: str, config: Config) -> Engine:
    if name == "zcrx":
        return ZcrxEngine(config, nodev=False)
    if name == "zcrx-copy":
        return ZcrxEngine(config, nodev=True)
    if name == "uring":
        return UringEngine(config)
    if name == "socket":
        return SocketEngine(config)
    raise ValueError(f"unknown engine {name!r}; choose one of {', '.join(ENGINES)} or 'auto'")


def open_engine(config: Config, loop) -> tuple[Engine, list[tuple[str, bool, str]]]:
    """Opens the engine asked for; for "auto", the best that works here.

    Returns the engine and, per engine tried, (name, worked, reason).
    """
    if config.engine != "auto":
        eng = make_engine(config.engine, config)
        eng.open(loop)
        return eng, [(eng.name, True, "asked for by name")]
    tried: list[tuple[str, bool, str]] = []
    for name in ENGINES:
        if name == "zcrx" and config.interface is None:
            tried.append((name, False, "no interface= given"))
            continue
        eng = make_engine(name, config)
        try:
            eng.open(loop)
        except EngineUnavailable as e:
            tried.append((name, False, e.reason))
            continue
        tried.append((name, True, "works here"))
        return eng, tried
    raise AssertionError("the socket engine cannot fail to open")

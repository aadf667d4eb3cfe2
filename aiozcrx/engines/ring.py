"""Shared mechanics of the io_uring engines: the ring, the eventfd reader, the C
dispatcher, per-connection records, and the watches that keep requests moving.

One pump round, from the loop's reader on the ring's eventfd, which is the C
dispatcher's ``on_wake`` itself (no Python frame of ours when only data came),
or from a kick or a timer (``_pump``: ``Dispatcher.kick``, the same without
reading the eventfd):
  1. ``Dispatcher.on_wake`` (C): io_uring_enter (the eventfd's read rides in it
     as an SQE; submit + run the deferred task work), drain the CQ -- each data
     completion for a live connection of the right generation becomes
     ``sink(view)`` -- publish refills; again while the kernel flags more work.
  2. Only when something needs deciding does it call the slow path
     (``_after_pump``): whatever is not plain data (ends of requests, errors,
     exceptions raised by a sink, notifications) comes back as a control list;
     ``_handle`` applies ``decide()`` to each and tells the transport through
     ``ReadEvents``.
  3. Connections that stopped for want of buffers (``Dispatcher.revive_wanted``)
     are re-armed as buffers come back to the kernel, the longest waiting first
     (``_revive``); those over their share once they released views.
A teardown asked for from inside any of this (``Receiver.close()`` in
``data_received``) halts the dispatcher and runs once the pump has returned.
"""

from __future__ import annotations

import os
import select
from typing import TYPE_CHECKING, Callable

from .. import _kernel
from .._kernel import (PUMP_BUSY, PUMP_PENDING, UD_CANCEL, UD_NOMEM, UD_NOTIF, UD_OVER_SHARE, UD_RECV,
                     UD_SOCK_IDLE, Sink, ud_gen, ud_kind, ud_slot, user_data)
from .advice import out_of_memory_error, uring_error
from .base import Action, Cancellable, Conn, Engine, EngineLoop, ReadEvents, Slots, decide, own_io
from .wake import WAKE_ENV, choose_wake, kernel_wake

if TYPE_CHECKING:
    from ..config import Config


def _poll_now(fd: int) -> int:
    """The socket's poll(2) events right now (0 if none)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLERR | select.POLLHUP)
    ready = poller.poll(0)
    return ready[0][1] if ready else 0


class Ticker:
    """Calls ``callback()`` every ``period`` seconds while started, from the loop's
    reader on a periodic timerfd, never from a loop timer: a pending loop timer
    costs every wake-up of the loop (see ``_kernel.PeriodicTimer``), and the watches
    below tick for as long as connections exist."""

    def __init__(self, loop: EngineLoop, timer: _kernel.PeriodicTimer, period: float,
                 callback: Callable[[], object]) -> None:
        self._timer = timer  # the ring's: it closes the fd
        self._loop = loop
        self._period = period
        self._callback = callback
        self.ticks = 0
        loop.add_reader(timer.fd, self._on_ready)

    @property
    def running(self) -> bool:
        return self._timer.armed

    def start(self) -> None:
        """Starts ticking (a running ticker keeps its phase)."""
        if not self._timer.armed and self._timer.fd >= 0:
            self._timer.arm(self._period)

    def stop(self) -> None:
        self._timer.disarm()  # timerfd_settime also drops an expiration not yet read

    def _on_ready(self) -> None:
        if self._timer.expirations() and self._timer.armed:
            self.ticks += 1
            self._callback()

    def close(self) -> None:
        if self._timer.fd >= 0:
            self._loop.remove_reader(self._timer.fd)
            self._timer.disarm()


class RingEngine(Engine):
    cqe32 = False
    TIMERS = 1  # periodic watches (Tickers): the reset watch

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.ring: _kernel.Ring | None = None
        self.area: _kernel.AreaLike | None = None
        # which user of the area this engine is: 0 made it; an engine importing
        # another's zcrx instance is a user of its own (Area.add_user)
        self.area_user = 0
        self.dispatcher: _kernel.DispatcherLike | None = None
        self.slots: list[Sink | None] = []  # slot -> sink, read by the C dispatcher
        self.slot_table = Slots()
        self._closed_conns: dict[int, Conn] = {}  # forgotten by close() inside a pump round
        self._scheduled = False
        self._reader_added = False
        self._close_pending = False
        self._tw_timer: Cancellable | None = None
        self._reset_ticker: Ticker | None = None
        self._reset_watch_slots: dict[int, int] = {}
        self.wake, self.wake_reason = "eventfd", ""
        self.wake_forced_by_kernel = False
        self._sock_wake: Callable[[int], None] | None = None  # wake "socket": the dispatcher's socket_wake
        self._parked: set[Conn] = set()
        self._last_mark = 0  # the newest starved connection's mark (marks never go back)

    def _open_ring(self) -> None:
        try:
            self.ring = _kernel.Ring(cq_entries=self.config.cq_entries, cqe32=self.cqe32,
                                   timers=self.TIMERS)
        except OSError as e:
            raise uring_error(self.name, e) from None

    def _abandon_open(self) -> None:
        """open() failed part-way, whatever the exception: the area (this
        engine's own, or its user of another's) and the ring go; the area is
        unmapped now (it has no view yet)."""
        if self.area is not None:
            self.area.close(self.area_user)
            self.area = None
        if self.ring is not None:
            self.ring.close()
            self.ring = None

    def _start_loop(self, loop: EngineLoop) -> None:
        self.loop = loop
        assert self.ring is not None and self.area is not None  # opened by the subclass's open()
        self.dispatcher = self.ring.dispatcher(self.area, self.slots, copy=self.config.copy,
                                               user=self.area_user)
        self.dispatcher.set_slow_path(self._after_pump)
        self.dispatcher.set_share_copy(self.config.over_share == "copy")
        self.dispatcher.set_max_view(self.config.max_view)
        if not self.config.copy:
            # this engine's connections' limit, and its own wake-up (its eventfd
            # leaves the area with its close: Area.close(user))
            unit = self.area.stats()["buffer_size"]
            self.area.set_share(self.share_buffers(unit), self.ring.eventfd, self.area_user)
        self._reset_ticker = Ticker(loop, self.ring.timers[0], self.RESET_TICK, self._reset_watch)
        self.wake, self.wake_reason = choose_wake(self.config.wake)
        # "auto" took the socket path because of what the kernel does (not asked
        # for): Receiver.fallback_reason says so
        self.wake_forced_by_kernel = self.wake == "socket" and self.config.wake == "auto" \
            and os.environ.get(WAKE_ENV, "auto").strip() in ("", "auto")
        if self.wake == "socket":
            self._sock_wake = self.dispatcher.socket_wake
        # the eventfd is read on either path: on "socket" it is the backstop for
        # completions that do not start at a socket (cancels, notifications)
        loop.add_reader(self.ring.eventfd, self.dispatcher.on_wake)
        self._reader_added = True

    # ------------------------------------------------------------- teardown
    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        pumping = self._in_pump()
        if pumping:
            # the round's records may still carry a callback's exception for them
            self._closed_conns = dict(self.conns)
        for conn in list(self.conns.values()):
            self._forget(conn)
        self.starved.clear()
        if self.dispatcher is not None:
            self.dispatcher.halt()  # the pump (if running) stops after this callback
        if pumping:
            # finished once the C pump returned: by the slow path it then calls
            # (on_wake), or by _pump
            self._close_pending = True
            return
        self._teardown()

    def _in_pump(self) -> bool:
        """Inside a pump round: a callback the C pump made, or the slow path."""
        return self.dispatcher is not None and self.dispatcher.pumping

    def _teardown(self) -> None:
        self._close_pending = False
        self._closed_conns = {}
        if self.ring is None:
            return
        assert self.loop is not None and self.area is not None and self.dispatcher is not None
        if self._reader_added:
            self.loop.remove_reader(self.ring.eventfd)
            self._reader_added = False
        if self._tw_timer is not None:
            self._tw_timer.cancel()
            self._tw_timer = None
        if self._reset_ticker is not None:
            self._reset_ticker.close()
            self._reset_ticker = None
        self._stop_timers()
        # Completions still queued carry buffers: the halted dispatcher gives them
        # straight back, so outstanding counts stay exact.
        try:
            self.ring.enter(0)
            self.dispatcher.run()
        except OSError:
            pass
        self._final_stats = self.area_stats()
        self._final_stats.update(self.describe())
        self.ring.close()
        # The area is closed after the ring (the kernel's registration is gone):
        # its memory is unmapped now if no view is out, else with the last view,
        # whoever still holds this engine. Only the small Area object stays, for
        # the buffer counters in stats().
        self.area.close(self.area_user)  # this engine's wake-ups go; the last user closes the area
        self.dispatcher.close()  # drops the protocols' sinks
        self.dispatcher = None
        self.ring = None
        self.slots.clear()

    def _stop_timers(self) -> None:
        pass

    # ---------------------------------------------------------- connections
    def attach(self, fd: int, events: ReadEvents) -> Conn:
        if self.closed:
            raise RuntimeError("engine is closed")
        assert self.dispatcher is not None, "attach() before open()"
        slot, gen = self.slot_table.take(self.dispatcher.bind)  # the slot's next generation
        if slot == len(self.slots):
            self.slots.append(None)
        conn = Conn(self, slot, gen, fd, events)
        self.conns[slot] = conn
        self.slots[slot] = None
        return conn

    def _set_sink(self, conn: Conn, sink: Sink | None) -> None:
        if not self.closed:
            self.slots[conn.slot] = sink

    def _start(self, conn: Conn) -> None:
        conn.wanted = True
        if not conn.armed:
            self._arm(conn)
        # armed and cancelling: the cancel's completion re-arms (decide: wanted)

    def _stop(self, conn: Conn) -> None:
        conn.wanted = False
        self.starved.pop(conn, None)
        if conn.armed and not conn.cancelling:
            self._cancel(conn)

    def _detach(self, conn: Conn) -> None:
        self._stop(conn)
        self._forget(conn)

    def _forget(self, conn: Conn) -> None:
        """The record leaves the engine; its slot is free at once (late
        completions of its request carry the old generation)."""
        # before the transport closes the socket: a loop keeps a closed fd's reader
        self._unwatch_socket(conn)
        self._unpark(conn)
        if self._retire(conn) and not self.closed:
            self.slots[conn.slot] = None
            self.slot_table.free(conn.slot)
        self._reset_watch_slots.pop(conn.slot, None)

    def _conn_stats(self, conn: Conn) -> tuple[int, int]:
        if self.dispatcher is None or conn.detached:
            return (0, 0)
        return self.dispatcher.slot_stats(conn.slot)

    # -------------------------------------------------------------- requests
    def _prep_recv(self, fd: int, ud: int, limit: int) -> None:
        raise NotImplementedError

    def _recv_limit(self, conn: Conn) -> int:
        """The most bytes the next request of ``conn`` may take (0: no limit)."""
        return 0

    def _arm(self, conn: Conn) -> None:
        if self.closed or conn.throttled:
            return  # a throttled connection is re-armed when it releases views
        assert self.area is not None
        if not self.area.free_in_kernel:
            # it would end at once for want of buffers: wait for one to come back
            self._starve(conn, at_enter=False)
            return
        assert self.loop is not None
        limit = self._recv_limit(conn)
        self._prep_recv(conn.fd, user_data(UD_RECV, conn.slot, conn.gen), limit)
        conn.armed = True
        conn.arm_limit = limit
        if limit:
            conn.arm_from = self._conn_stats(conn)[1]
        if self._sock_wake is not None:
            self._unpark(conn)  # a new request: a socket parked for the old one is watched again
            self._watch_socket(conn)
        self._kick()
        if self._reset_ticker is not None:
            self._reset_ticker.start()

    def _cancel(self, conn: Conn) -> None:
        if self.closed:
            return
        conn.cancelling = True
        assert self.ring is not None
        self.ring.prep_cancel(user_data(UD_RECV, conn.slot, conn.gen),
                              user_data(UD_CANCEL, conn.slot, conn.gen))
        self._kick()

    # -- connections starved of buffers --
    # A request that ends with ENOBUFS (uring: the provided buffer ring was empty)
    # or ENOMEM (zcrx: the area had no free buffer) would end the same way at once
    # if re-armed before a buffer came back: with many connections and slow
    # consumers that was a busy loop through the kernel (issue 25: 85,000 re-arms
    # a second). So a starved connection joins a queue (self.starved, oldest
    # first) with a mark: the buffers handed to the kernel up to the enter that
    # ended its request (Dispatcher.starve_mark). It is re-armed only once a
    # buffer was handed to the kernel past its mark, and then one connection per
    # fair share (max_held) of the buffers the kernel can take, less what the
    # re-arms not yet submitted count for (on a NIC queue: one per buffer handed
    # back; Dispatcher.revive_budget): the longest waiting first, and one that
    # starves again queues behind those waiting, so none waits for ever while the
    # others get every buffer that comes back. The next returned buffer wakes the
    # loop (Area.set_wake); the C dispatcher calls the slow path only when the
    # budget allows a re-arm (needs_slow_path).
    def _starve(self, conn: Conn, *, at_enter: bool = True) -> None:
        assert self.ring is not None and self.area is not None and self.dispatcher is not None
        # marks never go back: the queue's head has the oldest
        self._last_mark = max(self.dispatcher.starve_mark(at_enter), self._last_mark)
        self._starved(conn, self._last_mark)
        self._starved_sync()

    def _starved_sync(self) -> None:
        """Tells the C side about the queue: whether on_wake needs the slow path
        for it, and from which mark."""
        assert self.ring is not None and self.area is not None and self.dispatcher is not None
        if self.starved:
            self.dispatcher.revive_after = next(iter(self.starved.values()))
            self.area.set_wake(self.ring.eventfd, True, self.area_user)  # the next returned buffer wakes the loop
        self.dispatcher.revive_wanted = bool(self.starved)

    def _kick(self) -> None:
        """Submit soon, once, however many requests were queued meanwhile."""
        if not self._scheduled:
            self._scheduled = True
            assert self.loop is not None
            self.loop.call_soon(self._process)
            self._recheck_sync()

    def _recheck_sync(self) -> None:
        # a pump is coming (a kick, the recheck timer): on_wake then leaves a
        # PENDING round to it instead of calling the slow path to set a timer
        if self.dispatcher is not None:
            self.dispatcher.recheck_pending = self._scheduled or self._tw_timer is not None

    # -- Wake-ups (engines/wake.py says which path runs and why) --
    # Path "eventfd": the ring's eventfd is the loop's only reader (on_wake).
    # Path "socket": an armed connection's socket is also a loop reader whose
    # callback is the dispatcher's socket_wake(slot) (C: no Python frame of ours
    # per wake-up). Level-triggered, as every asyncio loop's add_reader is, on
    # purpose: the readiness can reach the loop a moment before io_uring has
    # queued the task work of the same socket wake-up, and the socket then stays
    # readable until the request has taken its data, so the next epoll_wait wakes
    # us again instead of the data waiting for the late eventfd. The reader is
    # there only while a request is armed (a socket nobody consumes would keep
    # the loop spinning): added in _arm, removed once the request ends (_handle)
    # and in _forget. A socket that stays readable while its armed request takes
    # nothing (an error the multishot request does not read, a zcrx request
    # waiting for buffers) would still spin: the dispatcher counts socket
    # wake-ups that delivered its slot nothing and, after a few in a row, sends a
    # UD_SOCK_IDLE record. _socket_idle then cancels a request whose socket has an
    # error (as the reset watch does; the re-armed request reads it), or parks the
    # reader until the next re-arm or the next reset tick (RESET_TICK): at most a
    # few empty wake-ups per tick, the eventfd meanwhile.
    def _watch_socket(self, conn: Conn) -> None:
        if self._sock_wake is not None and not conn.sock_watched and not conn.sock_parked \
                and not conn.detached and self.loop is not None:
            own_io(self.loop).add_reader(conn.fd, self._sock_wake, conn.slot)
            conn.sock_watched = True

    def wake_fds(self) -> list[int]:
        """The fds the loop waits on for this ring's completions: the eventfd,
        and on path "socket" every watched socket (tests read their state)."""
        fds = [self.ring.eventfd] if self.ring is not None else []
        return fds + [c.fd for c in self.conns.values() if c.sock_watched]

    def _unwatch_socket(self, conn: Conn) -> None:
        if conn.sock_watched:
            conn.sock_watched = False
            if self.loop is not None:
                own_io(self.loop).remove_reader(conn.fd)

    def _socket_idle(self, conn: Conn) -> None:
        if not conn.sock_watched:
            return
        events = _poll_now(conn.fd)
        if events & (select.POLLERR | select.POLLHUP) and conn.armed and not conn.cancelling:
            self.stats["reset_kicks"] = self.stats.get("reset_kicks", 0) + 1
            self._cancel(conn)
            return
        self._unwatch_socket(conn)
        conn.sock_parked = True
        self._parked.add(conn)
        self.stats["socket_parks"] = self.stats.get("socket_parks", 0) + 1
        if self._reset_ticker is not None:
            self._reset_ticker.start()

    def _unpark(self, conn: Conn) -> None:
        conn.sock_parked = False
        self._parked.discard(conn)

    def _unpark_sockets(self) -> None:
        for conn in list(self._parked):
            self._unpark(conn)
            if conn.armed:
                self._watch_socket(conn)

    # -- connections reset with data still queued --
    # A multishot RECV that drains the last queued bytes of a socket the peer has
    # already reset goes back to wait for a wake-up that never comes: the kernel's
    # "socket now empty" hint (tcp_inq_hint) counts a FIN but not a reset, so the
    # request neither reads the pending error nor ends, and the connection would
    # never see connection_lost. (The reset's own wake-up was spent while data was
    # still queued.) So: every RESET_TICK, connections that got data recently and
    # none since (the C dispatcher keeps per-slot activity bits) are polled, for
    # RESET_WATCH_TICKS ticks after their last data, in one poll(2); one whose
    # socket reports an error or hang-up while its request is still armed is
    # cancelled, and the re-armed request reads the error. Idle connections cost
    # nothing here: a reset that finds nothing queued wakes the request itself.
    # The tick is a Ticker (a timerfd), not a loop timer: it runs for as long as
    # connections exist, and a pending loop timer taxes every wake-up.
    RESET_TICK = 0.2
    RESET_WATCH_TICKS = 5

    def _reset_watch(self) -> None:
        if self.closed:
            return
        assert self.loop is not None and self.dispatcher is not None
        if self._parked:
            self._unpark_sockets()
        watch = self._reset_watch_slots
        for slot in self.dispatcher.take_quiet():
            watch[slot] = self.RESET_WATCH_TICKS
        if watch:
            poller = select.poll()
            polled: dict[int, Conn] = {}
            for slot in list(watch):
                watch[slot] -= 1
                if watch[slot] <= 0:
                    del watch[slot]
                conn = self.conns.get(slot)
                if conn is not None and conn.armed and not conn.cancelling:
                    poller.register(conn.fd, select.POLLERR | select.POLLHUP)
                    polled[conn.fd] = conn
            if polled:
                for fd, events in poller.poll(0):
                    conn = polled.get(fd)
                    if conn is not None and events & (select.POLLERR | select.POLLHUP):
                        self.stats["reset_kicks"] = self.stats.get("reset_kicks", 0) + 1
                        self._cancel(conn)
                        watch.pop(conn.slot, None)
        if not self.conns and self._reset_ticker is not None:
            self._reset_ticker.stop()

    # ---------------------------------------------------------- the loop side
    # The loop's reader is Dispatcher.on_wake (C); see the module docstring.

    def _process(self) -> None:
        self._scheduled = False
        if not self.closed:
            self._recheck_sync()
            self._pump()

    CONTROL_ROUNDS = 64
    TW_RECHECK = 0.01

    def _pump(self) -> None:
        """A round started from Python (a kick, a timer): ``Dispatcher.kick``
        submits what was queued, runs task work, dispatches and refills, and
        comes to the slow path as on_wake does."""
        assert self.dispatcher is not None
        self.dispatcher.kick()  # does nothing inside a round: the outer one goes on

    def _after_pump(self, _n: int, control: list[_kernel.Control] | None, state: int) -> None:
        """The slow path: the C dispatcher (on_wake, kick) calls it, after its
        pump has returned, when that pump left something to decide (see
        wake_impl in aiozcrx/_c/dispatch.c)."""
        try:
            self._pump_rounds(_n, control, state)
        finally:
            if self._close_pending:
                self._teardown()

    def _pump_rounds(self, delivered: int, control: list[_kernel.Control] | None, state: int) -> None:
        assert self.loop is not None and self.dispatcher is not None
        pump = self.dispatcher.pump
        rounds = 0
        while control is not None:
            self._handle(control)
            if self.closed:
                return
            if self.starved:
                self._revive()
            rounds += 1
            # the pump's budget holds across these rounds too: each pump() call
            # that returns a control list would otherwise start a fresh one
            if rounds == self.CONTROL_ROUNDS or delivered >= _kernel.PUMP_BUDGET:
                state = PUMP_BUSY
                break
            n, control, state = pump(-1)
            delivered += n
        if self.closed:
            return
        if self.starved:
            self._revive()
        if self.throttled:
            self._unthrottle()
        if state == PUMP_BUSY:
            self._kick()  # still busy: continue after the loop's other callbacks
        elif state == PUMP_PENDING and self._tw_timer is None and not self._scheduled:
            # The kernel flags queued task work that an enter did not find (the
            # flag can lag): look again soon. A timer, never a busy loop.
            self._tw_timer = self.loop.call_later(self.TW_RECHECK, self._tw_recheck)
            self._recheck_sync()
        self._end_of_round()
        # on_wake calls the slow path for these only while there are any
        self.dispatcher.revive_wanted = bool(self.starved)
        self.dispatcher.unthrottle_wanted = bool(self.throttled)

    # -- fair share --
    # A connection whose views hold its share of the area (Config.held_limit)
    # must not take the rest from the others. over_share="copy" (the default):
    # it goes on receiving, and the C dispatcher hands it bytes copies (buffer
    # back at once) until released views bring it under half its share: nothing
    # stops, as with asyncio. over_share="pause": it stops receiving: its request
    # is cancelled and not re-armed, so its bytes wait in its socket (TCP closes
    # its window) until released views bring it back at half its share.
    def _throttle(self, conn: Conn, held: int) -> None:
        if conn.throttled or conn.detached:
            return
        assert self.area is not None and self.dispatcher is not None
        # over_share="copy": the dispatcher now hands it copies until it is back
        # under (C), and says it once
        if self._share_reached(conn, held, self.area.stats()["buffer_size"]):
            self.dispatcher.unthrottle_wanted = True  # on_wake comes to _after_pump when it is back under
            if conn.armed and not conn.cancelling:
                self._cancel(conn)

    def _unthrottle(self) -> None:
        assert self.area is not None
        self._back_under_share(self.area.take_back(self.area_user))

    def _tw_recheck(self) -> None:
        self._tw_timer = None
        self._process()  # _recheck_sync() there

    def _end_of_round(self) -> None:
        pass

    def _revive(self) -> None:
        """Re-arms starved connections, the longest waiting first, as many as
        buffers came back for them (see _starve)."""
        assert self.area is not None and self.dispatcher is not None
        self.area.publish(True)  # buffers released since the last round go to the kernel first
        budget = self.dispatcher.revive_budget()
        if not budget:
            return
        given = self.dispatcher.starve_mark(False)
        leaving: list[Conn] = []
        rearm: list[Conn] = []
        for conn, mark in self.starved.items():
            if len(rearm) == budget or mark >= given:
                break  # marks only grow: none further on has seen a buffer come back
            leaving.append(conn)
            if self._wants_rearm(conn):
                rearm.append(conn)
        for conn in leaving:
            del self.starved[conn]
        self.dispatcher.revive_took(self._rearm_starved(rearm))
        self._starved_sync()

    @staticmethod
    def _wants_rearm(conn: Conn) -> bool:
        # one stopped over its share meanwhile comes back with _unthrottle
        return conn.wanted and not conn.armed and not conn.detached and not conn.throttled

    def _rearm_starved(self, conns: list[Conn]) -> int:
        """Re-arms those of ``conns`` (taken out of the starved queue) that still
        want data; returns how many."""
        n = 0
        for conn in conns:
            if self._wants_rearm(conn):
                n += 1
                self.stats["rearms"] += 1
                self.stats["starved_rearms"] += 1
                self._arm(conn)
        return n

    def _handle(self, control: list[_kernel.Control]) -> None:
        interrupt: BaseException | None = None
        for ud, res, flags, exc in control:
            if self.closed:
                # closed by a callback of this round: only a callback's exception
                # is still reported (as asyncio reports it whatever else happened)
                conn = self._closed_conns.get(ud_slot(ud))
                if exc is not None and not isinstance(exc, (SystemExit, KeyboardInterrupt)) \
                        and conn is not None and conn.gen == ud_gen(ud):
                    conn.events._callback_failed(exc)
                elif isinstance(exc, (SystemExit, KeyboardInterrupt)):
                    interrupt = interrupt or exc
                continue
            if isinstance(exc, (SystemExit, KeyboardInterrupt)):
                # as asyncio does, these leave the loop; the round's other records
                # are applied first so that no request is left half-accounted
                interrupt = interrupt or exc
                continue
            kind = ud_kind(ud)
            if kind == UD_RECV:
                conn = self.conns.get(ud_slot(ud))
                if conn is None or conn.gen != ud_gen(ud):
                    self.stats["stale_completions"] += 1
                    continue
                if exc is not None:
                    # a sink raised; the dispatcher has already stopped delivering
                    # to this connection (an end of the request, if any, follows
                    # in its own record)
                    conn.events._callback_failed(exc)
                    continue
                more = bool(flags & _kernel.CQE_F_MORE)
                action = decide(res, more, conn.wanted)
                if not more:
                    conn.armed = False
                    conn.cancelling = False
                    self._unwatch_socket(conn)
                    if action is Action.EOF and self._limit_reached(conn):
                        # a request that took its limit ends as at EOF (res 0)
                        action = Action.REARM if conn.wanted else Action.IDLE
                self._apply(conn, action, res)
            elif kind == UD_OVER_SHARE:
                conn = self.conns.get(ud_slot(ud))
                if conn is not None and conn.gen == ud_gen(ud):
                    self._throttle(conn, held=res)
            elif kind == UD_NOTIF:
                self._notification(res)
            elif kind == UD_SOCK_IDLE:
                conn = self.conns.get(ud_slot(ud))
                if conn is not None and conn.gen == ud_gen(ud):
                    self._socket_idle(conn)
            elif kind == UD_NOMEM:
                conn = self.conns.get(ud_slot(ud))
                if conn is not None and conn.gen == ud_gen(ud):
                    self._out_of_memory(conn)
        if interrupt is not None:
            raise interrupt

    def _limit_reached(self, conn: Conn) -> bool:
        """Whether the request that just ended had a limit and took all of it."""
        limit, conn.arm_limit = conn.arm_limit, 0
        return bool(limit) and self._conn_stats(conn)[1] - conn.arm_from >= limit

    def _apply(self, conn: Conn, action: Action, res: int) -> None:
        if action is Action.KEEP or action is Action.IDLE:
            return
        if action is Action.REARM:
            self.stats["rearms"] += 1
            self._arm(conn)
        elif action is Action.STARVE:
            self._starve(conn)  # re-armed by _revive, after this round's records
        elif action is Action.EOF:
            conn.wanted = False
            conn.events._read_eof()
        else:
            conn.wanted = False
            # OSError() picks the subclass (ConnectionResetError...) from the errno
            conn.events._read_error(OSError(-res, os.strerror(-res)))

    def _notification(self, res: int) -> None:
        pass

    def _out_of_memory(self, conn: Conn) -> None:
        """A delivery to ``conn`` could not be made for want of memory: its buffer
        went back to the kernel, so the stream has a gap, and the connection ends
        with ENOMEM (the dispatcher delivers nothing more to it)."""
        self.stats["nomem_connections"] = self.stats.get("nomem_connections", 0) + 1
        conn.wanted = False
        conn.events._read_error(out_of_memory_error())

    def area_stats(self) -> dict[str, object]:
        assert self.area is not None
        if self._final_stats is not None:
            # after close: the last counters, with the buffers' as they are now
            return {**self._final_stats, **self.area.stats()}
        assert self.ring is not None and self.dispatcher is not None
        s: dict[str, object] = dict(self.area.stats())
        s.update(self.stats)
        s.update(self.dispatcher.stats())  # wakeups are counted in C
        s["cq_entries"] = self.ring.cq_entries
        s.update(self.describe_wake())
        return s

    def describe_wake(self) -> dict[str, object]:
        """stats()'s wake-up keys: the path, why, and what the kernel does."""
        return {"wake": self.wake, "wake_reason": self.wake_reason,
                "kernel_eventfd": kernel_wake().summary}

"""The seam between transports and engines, and the one owner of read state.

An engine owns, per connection, one ``Conn`` record: whether reading is wanted,
whether a receive request is in flight (``armed``), whether a cancel for it is
in flight, whether it waits for buffers, whether it is detached. Nothing else
writes these fields. A transport talks to its connection only through the
record's methods (``set_sink``, ``start``, ``stop``, ``detach``), and hears back
through the small ``ReadEvents`` interface it implements. The engine never
calls into the protocol except through the sink the transport gave it.

Every request the ring engines submit carries the record's slot *and
generation* in its user_data: a completion can only reach the connection it was
issued for. When a slot is reused, late completions of the old request find
another generation and their buffers go straight back to the kernel.

What happens when a receive request ends is decided by ``decide()``, a pure
function (tested table by table in tests/test_decide.py).
"""

from __future__ import annotations

import enum
import errno
from typing import TYPE_CHECKING, Any, Callable, Container, Iterable, Protocol, TypedDict, cast

if TYPE_CHECKING:
    from _typeshed import FileDescriptorLike

    from .._kernel import Sink
    from ..config import Config


class Cancellable(Protocol):
    """What ``call_soon``/``call_later`` return, as engines use it."""

    def cancel(self) -> None: ...


class EngineLoop(Protocol):
    """The loop calls engines, a Receiver and its ZcrxTransports make while
    connections run: every asyncio loop has them, and so has
    ``aiozcrx.anyio._trio.TrioLoop`` (what they run on under trio, for ``aiozcrx.anyio``)."""

    def call_soon(self, callback: Callable[..., object], *args: object) -> Cancellable: ...

    def call_later(self, delay: float, callback: Callable[..., object], *args: object) -> Cancellable: ...

    def add_reader(self, fd: FileDescriptorLike, callback: Callable[..., object], *args: object) -> None: ...

    def remove_reader(self, fd: FileDescriptorLike) -> object: ...

    def add_writer(self, fd: FileDescriptorLike, callback: Callable[..., object], *args: object) -> None: ...

    def remove_writer(self, fd: FileDescriptorLike) -> object: ...

    # asyncio's context dict (typeshed: dict[str, Any]): "message", "exception", ...
    def call_exception_handler(self, context: dict[str, Any]) -> None: ...


def own_io(loop: EngineLoop) -> EngineLoop:
    """``loop``'s add_reader/remove_reader/add_writer/remove_writer for aiozcrx's own
    use on the sockets of its transports. The drop-in loop refuses those fds to
    everyone else, as asyncio's loops and uvloop refuse their transports' fds: this
    goes past its check (the base loop's methods); any other loop is itself."""
    own = getattr(loop, "_aiozcrx_own_io", None)
    return cast(EngineLoop, own()) if own is not None else loop


class _Counters(TypedDict):
    """The counters every engine keeps from the start."""

    rearms: int
    starved: int          # episodes: a connection stopped for want of buffers
    starved_rearms: int   # re-arms of such connections once buffers were back
    notifications_no_buffers: int
    notifications_copy: int
    wakeups: int
    stale_completions: int


class EngineStats(_Counters, total=False):
    """``Engine.stats``: the counters above, and those set once they happen
    (they go into ``Receiver.stats()``, documented there)."""

    reset_kicks: int
    socket_parks: int    # wake path "socket": readers parked for waking the loop for nothing
    share_copies: int    # socket engine, over_share="copy": deliveries copied over the share
    share_copied_bytes: int
    share_reached: int   # over_share="copy": times a connection's views reached its share
    nomem_connections: int  # connections ended with ENOMEM (a delivery failed for want of memory)
    share_stops: int
    stall_kicks: int
    starve_retries: int       # zcrx: refused with buffers free, re-armed at once (once an episode)
    starve_tick_rearms: int   # zcrx: re-armed by the watchdog's tick, the same case again
    release_waits: int
    notifications_unknown: int
    notification_rearms: int
    notification_rearm_errors: int
    notifications: str   # zcrx: "on" or "unsupported"
    imported: bool       # zcrx: an instance shared with share_with=
    device_watch: str    # zcrx: why the NIC's device is not watched
    device_removed: str  # zcrx: the name of the interface that went away
    nic_defaults: tuple[str, ...]  # zcrx on a NIC queue: the sizes that took the NIC defaults
    rx_buf_len_requested: int | str  # zcrx: the buffer size asked for ("auto", or bytes)
    rx_buf_len_fallback: str  # zcrx, rx_buf_len="auto": why it took the page size
    area_thp: str  # zcrx with large buffers: MADV_HUGEPAGE over the area, or its errno
    area_layout: str  # zcrx with large buffers, no THP: how the contiguous window was found


class ReadEvents(Protocol):
    """What an engine tells a transport about its read side (ZcrxTransport
    implements it). Each is called at most once per connection, never after
    ``Conn.detach()``."""

    def _read_eof(self) -> None:
        """The peer closed its side (the request ended with 0 bytes)."""

    def _read_error(self, exc: OSError) -> None:
        """Receiving failed (e.g. ConnectionResetError)."""

    def _callback_failed(self, exc: BaseException) -> None:
        """The sink (the protocol's data_received / get_buffer) raised. The engine
        has already stopped delivering to this connection."""

    def _over_share(self, held_bytes: int, limit_bytes: int) -> None:
        """The connection's views hold its share of the area: it stops receiving
        (its bytes wait in its socket) until it releases some."""


class Action(enum.Enum):
    """What to do when a receive request completes (see ``decide``)."""

    KEEP = "keep"          # still armed (a data completion with F_MORE)
    REARM = "rearm"        # it ended but reading is wanted: arm again
    IDLE = "idle"          # it ended and reading is not wanted (paused, stopping)
    STARVE = "starve"      # out of buffers: arm again once some come back
    EOF = "eof"            # the peer closed its side
    ERROR = "error"        # a socket error: report it, reading is over


# Ends of a request that say nothing about the connection itself: a cancel we
# asked for (pause, a stall or reset kick), or the CQ was full when the kernel
# wanted to post (zcrx requests end with -ENOSPC then; the bytes stay queued in
# the socket). Re-arming is right if reading is wanted, whatever we were doing.
_BENIGN_ENDS = frozenset({-errno.ECANCELED, -errno.ENOSPC, -errno.EINTR, -errno.EAGAIN})
_OUT_OF_BUFFERS = frozenset({-errno.ENOBUFS, -errno.ENOMEM})


def decide(res: int, more: bool, wanted: bool) -> Action:
    """The decision taken for one receive completion.

    ``res`` the CQE result (bytes, 0 for EOF, or -errno), ``more`` whether the
    multishot request stays armed (IORING_CQE_F_MORE), ``wanted`` whether the
    transport wants data now (started and not stopped).
    """
    if more:
        return Action.KEEP
    if res == 0:
        return Action.EOF
    if res > 0 or res in _BENIGN_ENDS:
        return Action.REARM if wanted else Action.IDLE
    if res in _OUT_OF_BUFFERS:
        return Action.STARVE if wanted else Action.IDLE
    return Action.ERROR


class Slots:
    """Slot numbers: a slot is free again as soon as its connection detaches.

    Generations are not kept here: the C side's record of which generation owns
    each slot (the area user's, ``aiozcrx/_c/area.c`` ``area_bind_slot``) is the
    only one, and binding a slot there (``Dispatcher.bind`` / ``Area.bind_slot``)
    hands out the slot's next generation. A ``Conn`` carries its own generation as
    its identity, as the user_data of its requests does."""

    def __init__(self) -> None:
        self._count = 0
        self._free: list[int] = []

    def take(self, bind: Callable[[int], int]) -> tuple[int, int]:
        """(slot, generation): a free slot, bound by ``bind(slot)``, which returns
        the generation the C side handed out for it; the slot stays free if
        binding fails."""
        if self._free:
            slot = self._free.pop()
        else:
            slot = self._count
            self._count += 1
        try:
            return slot, bind(slot)
        except BaseException:
            self._free.append(slot)
            raise

    def free(self, slot: int) -> None:
        self._free.append(slot)

    def __len__(self) -> int:
        return self._count


class Conn:
    """The engine's record of one connection's read side. Transports call its
    methods; only the engine changes its fields."""

    __slots__ = ("engine", "slot", "gen", "fd", "events", "wanted", "armed", "cancelling",
                 "throttled", "detached", "final_counts", "sock_watched", "sock_parked", "share_said",
                 "starved_at", "arm_limit", "arm_from", "__weakref__")

    def __init__(self, engine: "Engine", slot: int, gen: int, fd: int, events: ReadEvents):
        self.engine = engine
        self.slot = slot
        self.gen = gen
        self.fd = fd
        self.events = events
        self.wanted = False       # the transport asked for data and has not stopped
        self.armed = False        # a receive request (ring) / a reader (socket) is in flight
        self.cancelling = False   # a cancel for the armed request is in flight
        self.throttled = False    # its views hold its share of the area: not re-armed until released
        self.detached = False     # final: nothing reaches this connection any more
        self.final_counts = (0, 0)  # stats() once detached
        # wake path "socket" (engines/ring.py, "Wake-ups"): the socket is a loop
        # reader while the request is armed, unless parked for waking us for nothing
        self.sock_watched = False
        self.sock_parked = False
        self.share_said = False   # over_share="copy": the socket engine said it once
        # its completions when it last stopped for want of buffers (-1: never):
        # stopping again with nothing received since is the same episode
        self.starved_at = -1
        # the armed request's byte limit (RECV_ZC's len; 0: none) and the bytes
        # received when it was armed: a request ends at its limit as at EOF (res 0)
        self.arm_limit = 0
        self.arm_from = 0

    # -- the transport's interface --
    def set_sink(self, sink: Sink | None) -> None:
        """Where deliveries go: a callable(view), or None to drop them."""
        if not self.detached:
            self.engine._set_sink(self, sink)

    def start(self) -> None:
        """Reading wanted: arm a request unless one is in flight."""
        if not self.detached:
            self.engine._start(self)

    def stop(self) -> None:
        """Reading not wanted: cancel the request in flight (what it already
        received still goes to the sink)."""
        if not self.detached:
            self.engine._stop(self)

    def detach(self) -> None:
        """Final: stop, drop the sink, free the slot. Idempotent."""
        if not self.detached:
            self.engine._detach(self)

    def stats(self) -> tuple[int, int]:
        """(completions, bytes) received by this connection (the final ones once
        detached)."""
        return self.final_counts if self.detached else self.engine._conn_stats(self)

    def __repr__(self) -> str:
        flags = [n for n in ("wanted", "armed", "cancelling", "throttled", "detached") if getattr(self, n)]
        return f"<Conn slot={self.slot} gen={self.gen} fd={self.fd} {' '.join(flags) or 'idle'}>"


class Engine:
    """The interface every engine implements (one per Receiver)."""

    name = "?"

    def __init__(self, config: "Config"):
        # area_size / rq_entries not given take this engine's defaults (Config.for_engine)
        self.config = config.for_engine(self.name)
        self.loop: EngineLoop | None = None
        self.conns: dict[int, Conn] = {}
        # waiting for free buffers to be re-armed, the longest waiting first; the
        # value: the engine's mark for when it stopped (see RingEngine._starve)
        self.starved: dict[Conn, int] = {}
        self.throttled: set[Conn] = set()  # over their share (see Config.held_limit)
        self.closed = False
        self.stats: EngineStats = {"rearms": 0, "starved": 0, "starved_rearms": 0,
                                   "notifications_no_buffers": 0, "notifications_copy": 0,
                                   "wakeups": 0, "stale_completions": 0}
        self._final_stats: dict[str, object] | None = None

    # -- lifecycle (Receiver) --
    def open(self, loop: EngineLoop) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Releases the kernel objects. Safe from inside any callback the engine
        made: the teardown then waits until the engine's own frame returns."""
        raise NotImplementedError

    # -- per connection --
    def attach(self, fd: int, events: ReadEvents) -> Conn:
        raise NotImplementedError

    def _set_sink(self, conn: Conn, sink: Sink | None) -> None:
        raise NotImplementedError

    def _start(self, conn: Conn) -> None:
        raise NotImplementedError

    def _stop(self, conn: Conn) -> None:
        raise NotImplementedError

    def _detach(self, conn: Conn) -> None:
        raise NotImplementedError

    def _arm(self, conn: Conn) -> None:
        """Starts receiving for the connection (it wants data and is not armed)."""
        raise NotImplementedError

    def _conn_stats(self, conn: Conn) -> tuple[int, int]:
        raise NotImplementedError

    def _retire(self, conn: Conn) -> bool:
        """Marks the record detached (its counters kept) and drops it from the
        engine's sets; True if it still held its slot (the caller frees it)."""
        if not conn.detached:
            conn.final_counts = self._conn_stats(conn)
        conn.detached = True
        conn.wanted = False
        self.starved.pop(conn, None)
        self.throttled.discard(conn)
        if self.conns.get(conn.slot) is conn:
            del self.conns[conn.slot]
            return True
        return False

    def _starved(self, conn: Conn, mark: int) -> None:
        """The connection stopped for want of buffers: it joins the end of the
        queue of those waiting."""
        self._new_starve_episode(conn)
        self.starved.pop(conn, None)
        self.starved[conn] = mark

    def _new_starve_episode(self, conn: Conn) -> bool:
        """Counts the stop (``stats["starved"]`` counts episodes: stopping again
        with nothing received since, a re-arm that found no buffer either, is the
        same one); True if it starts a new one."""
        done = self._conn_stats(conn)[0]
        if conn.starved_at == done:
            return False
        conn.starved_at = done
        self.stats["starved"] += 1
        return True

    # -- fair share: a connection whose views hold its share of the area must
    # not take the rest from the others (Config.over_share, held_limit) --
    def _share_reached(self, conn: Conn, held: int, unit: int) -> bool:
        """The connection's views hold ``held`` buffers of ``unit`` bytes, its
        share: counted and said to its transport. over_share="copy": it goes on
        receiving, as copies (False). "pause": it is stopped (``throttled``) until
        released views bring it back under (``_back_under_share``); True, and the
        caller stops its receiving."""
        limit = self.share_buffers(unit) * unit
        if self.config.over_share == "copy":
            self.stats["share_reached"] = self.stats.get("share_reached", 0) + 1
            conn.events._over_share(held * unit, limit)
            return False
        conn.throttled = True
        self.throttled.add(conn)
        self.stats["share_stops"] = self.stats.get("share_stops", 0) + 1
        conn.events._over_share(held * unit, limit)
        return True

    def _back_under_share(self, slots: Iterable[int], waiting: Container[Conn] = ()) -> None:
        """The connections of ``slots`` released views and are back under their
        share (the area's take_back()): those stopped are re-armed if they want
        data, except those in ``waiting`` (starved: the caller re-arms them)."""
        for slot in slots:
            conn = self.conns.get(slot)
            if conn is None or not conn.throttled:
                continue
            conn.throttled = False
            self.throttled.discard(conn)
            if conn.wanted and not conn.armed and conn not in waiting:
                self.stats["rearms"] += 1
                self._arm(conn)

    # -- info --
    def area_stats(self) -> dict[str, object]:
        raise NotImplementedError

    def describe(self) -> dict[str, object]:
        return {}

    def share_buffers(self, unit: int) -> int:
        """Buffers of ``unit`` bytes one connection may hold (at least 2: the view
        being delivered and the one the dispatcher keeps for reuse)."""
        return max(2, self.config.held_limit // unit)

    def snapshot_stats(self) -> dict[str, object]:
        """Receiver.stats(): live counters while open, the last ones after close."""
        if self._final_stats is not None:
            return self.area_stats()
        s = self.area_stats()
        s.update(self.describe())
        return s

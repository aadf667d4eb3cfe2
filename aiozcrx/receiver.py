"""Receiver: owns the ring, the area and the registration for one event loop."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import warnings
from typing import Any, Callable, TypeVar, cast

from . import engines as _engines
from .config import (DEFAULT_AREA_SIZE, DEFAULT_BUF_SIZE, DEFAULT_CQ_ENTRIES,  # noqa: F401 - re-exported
                     DEFAULT_MAX_VIEW, DEFAULT_RQ_ENTRIES, MAX_RQ_ENTRIES, NIC_AREA_SIZE, NIC_RQ_ENTRIES, Config,
                     socket_family)
from .engines.base import EngineLoop as _EngineLoop
from .errors import EngineUnavailable, process_forked
from .transport import TransportLink, ZcrxTransport

logger = logging.getLogger("aiozcrx")

_P = TypeVar("_P", bound=asyncio.BaseProtocol)


def open_engine(config: Config, loop: _EngineLoop, *,
                share_with: "_engines.ZcrxEngine | None" = None
                ) -> tuple["_engines.Engine", list[tuple[str, bool, str]]]:
    """``engines.open_engine``, except that with ``engine="auto"`` an interface or
    queue this machine does not have (``Config.nic_problem``) passes over zcrx with
    that as its reason, as a missing ``interface=`` does: the engines never see it."""
    problem = config.nic_problem() if config.engine == "auto" else None
    if problem is None:
        return _engines.open_engine(config, loop, share_with=share_with)
    engine, tried = _engines.open_engine(config.replace(interface=None, queue=None), loop,
                                         share_with=share_with)
    return engine, [("zcrx", False, problem) if name == "zcrx" else (name, ok, why)
                    for name, ok, why in tried]


def _same(name: str, mine: Any, theirs: Any, other: Config) -> Any:
    """``name`` for a Receiver sharing another's zcrx instance: the other's, which a
    value given here must equal."""
    if mine is not None and theirs is not None and mine != theirs:
        raise ValueError(
            f"share_with= shares a zcrx instance on {other.interface} queue {other.queue}, but "
            f"{name}={mine!r} was given here (the other's {name} is {theirs!r}): a shared instance "
            f"receives on the other Receiver's queue; leave out {name}= or give {theirs!r}")
    return theirs if theirs is not None else mine


def _shared_config(config: Config, source: "_engines.ZcrxEngine") -> Config:
    """``config`` for a Receiver importing ``source``'s instance: the same engine;
    for "zcrx" the same interface and queue; always the same area and refill ring
    (they are ``source``'s), so the fair share is a quarter of that area."""
    theirs = source.config
    if config.engine != source.name:
        raise ValueError(
            f"share_with= is an engine {source.name!r} Receiver, but engine={config.engine!r} was "
            f"asked for here: the instance it shares is {source.name!r}; pass engine={source.name!r}")
    if source.name == "zcrx":
        config = config.replace(interface=_same("interface", config.interface, theirs.interface, theirs),
                                queue=_same("queue", config.queue, theirs.queue, theirs))
    for name in ("area_size", "rq_entries", "rx_buf_len"):
        mine, other = getattr(config, name), getattr(theirs, name)
        if mine is not None and mine != other:
            raise ValueError(
                f"share_with= shares an instance whose {name} is {other}, but {name}={mine!r} was "
                f"given here: area and refill ring are the other Receiver's; leave out {name}=")
    area = theirs.area_size
    assert area is not None  # an engine's settings have every size given (Config.for_engine)
    config = config.replace(area_size=area, rq_entries=theirs.rq_entries, rx_buf_len=theirs.rx_buf_len)
    if config.max_held is not None and config.max_held > area:
        raise ValueError(f"max_held must be between 1 and area_size ({area}) bytes (the area "
                         f"of the Receiver shared), got {config.max_held!r}")
    return config


class Receiver:
    """Receive side of aiozcrx for one event loop: ring, area, registration.

    ``engine``: "auto" (best that works: zcrx, zcrx-copy, uring, socket) or one by
    name; asking by name raises ``EngineUnavailable`` (``ZcrxUnavailable`` for the
    zcrx engines) naming the errno and cause when it cannot run.
    ``interface``/``queue``: the NIC queue for engine "zcrx".
    ``area_size``: bytes of receive memory shared by every connection; a protocol
    that keeps views can hold at most this much before receiving stops. Default
    32 MiB; 64 MiB when the engine opened is "zcrx" on a NIC queue (a NIC drops
    what arrives while the refill ring is empty, and the larger area and ring keep
    it supplied; ``stats()["nic_defaults"]`` says which defaults it took).
    ``rq_entries``: refill ring size (zcrx), a power of two <= 32768. Default
    4096; 16384 for engine "zcrx" on a NIC queue. Given values always win.
    ``copy``: deliver ``bytes`` instead of views (buffers recycle at once).
    ``views``: ``"always"`` (every protocol gets views, unless ``copy``) or
    ``"opt-in"``: only protocols with ``aiozcrx_views = True`` (e.g. subclasses
    of ``aiozcrx.ViewProtocol``) get views, the others ``bytes`` (one copy each,
    in user space; what ``aiozcrx.new_event_loop`` uses for other people's
    protocols).
    ``buf_size``: buffer size for the "uring" and "socket" engines.
    ``hugepages``: back the area with huge pages (MAP_HUGETLB).
    ``kernel_region``: let the kernel allocate the refill ring (zcrx).
    ``max_held``: bytes of views one connection may hold (default: a quarter of
    the area), so that no protocol can take the area from the others by keeping
    what it is given. ``over_share``: what a connection over it gets:
    ``"copy"`` (the default) goes on receiving, its further data as ``bytes``
    copies whose buffers go back at once, until its views are back under half
    its share (``stats()["share_copies"]``); ``"pause"`` stops receiving until
    it releases views (its bytes wait in its socket). Logged once per protocol
    class.
    ``max_view``: the most bytes one ``data_received`` view gathers from
    completions of one connection that arrived together and lie back to back in
    the area (merged views; default 256 KiB; ``0`` or up to the page size,
    4096: one view per completion, as before merged views). A single completion
    is delivered whole whatever its size.
    ``wake``: how the ring engines learn of new completions: ``"auto"`` (the
    default: asks the kernel once), ``"eventfd"`` (the ring's eventfd) or
    ``"socket"`` (each armed connection's socket). ``stats()["wake"]`` and
    ``stats()["wake_reason"]`` say which one runs and why; ``AIOZCRX_WAKE`` in
    the environment forces one where this is ``"auto"`` (docs/concepts.md,
    "Wake-ups").
    ``rx_buf_len``: the size of each zcrx receive buffer (one completion, one
    view at most), Linux 7.0+: a power of two in bytes, or ``"auto"`` (the
    largest the NIC queue and the area take, from 64 KiB down, else the page
    size, with the reason in ``fallback_reason`` and ``stats()``). Default: the
    page size, which every kernel and driver takes. Larger buffers need a driver
    that takes them (bnxt; the guest's simulated NIC) and an area whose memory is
    physically contiguous in runs of that size (``hugepages=True`` on a real
    host); refusals raise ``ZcrxBufferSizeRefused`` naming which. ``stats()``
    has ``rx_buf_len`` (granted) and ``rx_buf_len_requested``.
    ``share_with``: another open zcrx Receiver whose instance this one imports into
    a ring of its own (export/import, 6.19+); the area stays the other's. Its
    engine must be the other's; with engine "zcrx" the interface and queue are the
    other's too (``interface=``/``queue=`` may be left out; different ones are a
    ValueError naming both), as are area_size and rq_entries.

    Use ``async with Receiver(...) as rx`` (or ``open()``/``close()``) in the loop
    thread, then ``await rx.wrap(sock, protocol_factory)`` per connected socket.
    """

    def __init__(self, engine: str = "auto", interface: str | None = None, queue: int | None = None,
                 area_size: int | None = None, rq_entries: int | None = None,
                 copy: bool = False, *, buf_size: int = DEFAULT_BUF_SIZE, hugepages: bool = False,
                 kernel_region: bool = False, cq_entries: int = DEFAULT_CQ_ENTRIES,
                 notifications: bool = True, views: str = "always", max_held: int | None = None,
                 share_with: "Receiver | None" = None, wake: str = "auto",
                 over_share: str = "copy", max_view: int = DEFAULT_MAX_VIEW,
                 rx_buf_len: int | str | None = None):
        # every argument is checked here, before any kernel object exists
        if share_with is not None:
            if not isinstance(share_with, Receiver):
                raise TypeError(f"share_with must be an aiozcrx.Receiver, got {type(share_with).__name__}")
            if engine not in ("zcrx", "zcrx-copy"):
                raise ValueError("share_with= needs engine='zcrx' or 'zcrx-copy' (it imports a zcrx instance)")
            if engine == "zcrx":
                # the queue is the other's: take what its settings name (checked
                # again against the engine it opened, in open())
                other = share_with._config
                interface = _same("interface", interface, other.interface, other)
                queue = _same("queue", queue, other.queue, other)
        self._config: Config = Config(
            engine=engine, interface=interface, queue=queue, area_size=area_size,
            rq_entries=rq_entries, copy=copy, buf_size=buf_size, hugepages=hugepages,
            kernel_region=kernel_region, cq_entries=cq_entries, notifications=notifications,
            views=views, max_held=max_held, wake=wake, over_share=over_share,
            max_view=max_view, rx_buf_len=rx_buf_len,
        ).validate(shared=share_with is not None)
        self._share_with = share_with
        self._engine: _engines.Engine | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread_id: int | None = None
        self._pid: int | None = None  # the process that opened it (see _check_process)
        self._transports: set[ZcrxTransport] = set()
        self.engines_tried: list[tuple[str, bool, str]] = []
        self._closed = False
        self._copied = [0]  # bytes copied in user space for protocols (bytes, BufferedProtocol)
        self._share_warned: set[str] = set()
        # a zcrx engine prepared before the loop ran (aiozcrx.workers: registered while
        # the process still held CAP_NET_ADMIN), started by open() instead of a new one
        self._prepared: tuple[_engines.ZcrxEngine, list[tuple[str, bool, str]]] | None = None
        # engine="auto": engines already tried elsewhere, with their outcome (a worker
        # tried the zcrx engines while it was privileged): not tried again
        self._skip_engines: tuple[tuple[str, bool, str], ...] = ()

    @classmethod
    def _adopting(cls, engine: "_engines.ZcrxEngine", tried: list[tuple[str, bool, str]],
                  **options: Any) -> "Receiver":
        """A Receiver whose ``open()`` starts ``engine``, a ZcrxEngine already
        prepared (``ZcrxEngine.prepare()``: ring, area, registration) in this process
        and thread. ``tried`` becomes ``engines_tried``. (aiozcrx.workers.PreparedQueue)"""
        cfg = engine.config
        rx = cls(engine=engine.name, interface=cfg.interface, queue=cfg.queue,
                 area_size=cfg.area_size, rq_entries=cfg.rq_entries, **options)
        rx._prepared = (engine, tried)
        return rx

    # ------------------------------------------------------------ lifecycle
    def open(self) -> "Receiver":
        """Sets up the engine for the running loop. Called by ``async with``."""
        return self._open_on(asyncio.get_running_loop())

    def _open_on(self, loop: _EngineLoop) -> "Receiver":
        """``open()`` on ``loop``: the running asyncio loop, or an object offering
        the few loop calls engines and transports make (``_EngineLoop``:
        ``aiozcrx.anyio._trio.TrioLoop`` under trio, for ``aiozcrx.anyio``)."""
        if self._engine is not None:
            self._check_process()
            raise RuntimeError("Receiver is already open")
        if self._closed:
            raise RuntimeError("Receiver is closed; make a new one")
        if self._prepared is not None:
            engine, tried = self._prepared
            self._prepared = None
            engine.start(loop)
            self._engine, self.engines_tried = engine, tried
            self._config = engine.config
            self._loop = cast(asyncio.AbstractEventLoop, loop)
            self._thread_id = threading.get_ident()
            self._pid = os.getpid()
            return self
        source = None
        config = self._config
        if self._share_with is not None:
            src = self._share_with
            if not isinstance(src._engine, _engines.ZcrxEngine) or src._closed or src._loop is not loop:
                raise ValueError("share_with= must be an open zcrx Receiver on this event loop")
            source = src._engine
            config = _shared_config(config, source)
        if self._skip_engines and config.engine == "auto" and source is None:
            self._engine, self.engines_tried = self._open_rest(config, loop)
        else:
            self._engine, self.engines_tried = open_engine(config, loop, share_with=source)
        # the settings as the engine runs them: area_size and rq_entries not given
        # took its defaults (Config.for_engine); the fair share is a quarter of that area
        self._config = self._engine.config
        # ``loop`` (and ZcrxTransport's) are typed as asyncio loops for their users;
        # under trio this is a TrioLoop, which has only the _EngineLoop calls: the
        # paths that need more (a transport's sendfile) are asyncio's own.
        self._loop = cast(asyncio.AbstractEventLoop, loop)
        self._thread_id = threading.get_ident()
        self._pid = os.getpid()
        return self

    def _open_rest(self, config: Config, loop: _EngineLoop
                   ) -> tuple["_engines.Engine", list[tuple[str, bool, str]]]:
        """engine="auto" past the engines in ``_skip_engines``: the first of the
        others that opens, each asked for by name."""
        tried = list(self._skip_engines)
        skipped = {name for name, _ok, _why in tried}
        rest = [name for name in _engines.ENGINES if name not in skipped]
        for name in rest:
            try:
                engine, _ = _engines.open_engine(config.replace(engine=name), loop)
            except EngineUnavailable as e:
                tried.append((name, False, e.reason))
                if name == rest[-1]:
                    raise
                continue
            tried.append((name, True, "works here"))
            return engine, tried
        raise RuntimeError("no engine left to try")

    async def __aenter__(self) -> "Receiver":
        return self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def close(self) -> None:
        """Aborts connections still attached and releases the ring.

        Views already delivered stay valid: the area is unmapped only when the last
        of them is released.
        """
        if self._closed:
            return
        self._check_thread()
        self._closed = True
        for t in list(self._transports):
            t.abort()
        if self._engine is not None:
            # From inside one of its own callbacks the engine finishes the
            # teardown once its pump has returned (engines/ring.py).
            self._engine.close()

    async def aclose(self) -> None:
        self.close()
        await asyncio.sleep(0)  # let connection_lost callbacks run

    def _check_process(self) -> None:
        """A forked child must not touch the parent's ring, area or sockets: every
        method raises ProcessForked there (docs/security.md)."""
        if self._pid is not None and os.getpid() != self._pid:
            raise process_forked("Receiver")

    def _check_thread(self) -> None:
        self._check_process()
        if self._thread_id is not None and threading.get_ident() != self._thread_id:
            raise RuntimeError("aiozcrx.Receiver is bound to its event loop's thread; call it from "
                               "that thread (use loop.call_soon_threadsafe from others)")

    # ----------------------------------------------------------- connections
    async def wrap(self, sock: socket.socket, protocol_factory: Callable[[], _P]
                   ) -> tuple[ZcrxTransport, _P]:
        """Attaches a connected stream socket; returns ``(transport, protocol)``.

        The transport owns the socket from now on (it closes it).
        """
        return self._wrap_now(sock, protocol_factory)

    def _wrap_now(self, sock: socket.socket, protocol_factory: Callable[[], _P]
                  ) -> tuple[ZcrxTransport, _P]:
        """``wrap`` without a coroutine: for the accept path of servers, which has
        no task to run it in (a task left pending would be destroyed with the loop)."""
        self._check_thread()
        if self._engine is None or self._closed:
            raise RuntimeError("Receiver is not open (use `async with Receiver(...)`)")
        if sock.type != socket.SOCK_STREAM:
            raise ValueError(f"wrap() needs a connected SOCK_STREAM socket, got {sock!r}")
        family = socket_family(sock)
        if self._engine.name.startswith("zcrx") and family not in (socket.AF_INET, socket.AF_INET6):
            raise ValueError(f"engine {self._engine.name!r} receives TCP only (IORING_OP_RECV_ZC), "
                             f"not {socket.AddressFamily(family).name} sockets; use engine='uring' for those")
        loop = self._loop
        assert loop is not None  # open, so bound to its loop
        sock.setblocking(False)
        protocol = protocol_factory()
        link = TransportLink(self._engine, loop, self._copied, self._copies_for, self._warn_over_share,
                             self._forget, lambda: self.fallback_reason, self.stats, self)
        transport = ZcrxTransport(link, sock, protocol)
        self._transports.add(transport)
        try:
            transport._connection_made()  # in the context the base loop would use
        except (SystemExit, KeyboardInterrupt):
            transport._conn.detach()
            self._transports.discard(transport)
            raise
        except BaseException as exc:
            # as asyncio (connection_made runs as a loop callback there): the
            # loop's exception handler hears of it and the connection goes on
            # (the same context as a failed loop callback: message and exception)
            loop.call_exception_handler({
                "message": f"Exception in callback {type(protocol).__name__}.connection_made({transport!r})",
                "exception": exc})
        # reading begins after what connection_made scheduled, as asyncio's
        # transports add their reader with call_soon after it (on uvloop the
        # waiting bytes would otherwise come before those callbacks)
        loop.call_soon(transport._start)
        return transport, protocol

    def _warn_over_share(self, protocol_name: str, held: int, limit: int) -> None:
        """Once per Receiver and protocol class: a connection's views hold its
        share of the area: it now gets copies (over_share="copy"), or it stopped
        receiving (over_share="pause")."""
        if protocol_name in self._share_warned:
            return
        self._share_warned.add(protocol_name)
        if self._config.over_share == "copy":
            logger.warning(
                "aiozcrx: a %s connection holds %d bytes of views, its share (max_held=%d) of the "
                "%d-byte area; what it receives from now on comes as bytes (one copy each, its "
                "buffer back at once) until it releases views (drop them or call view.release()). "
                "If it must keep more views, raise max_held= or area_size=; over_share='pause' stops "
                "such a connection instead.", protocol_name, held, limit, self._config.area_size)
            return
        logger.warning(
            "aiozcrx: a %s connection holds %d bytes of views, its share (max_held=%d) of the "
            "%d-byte area; it stops receiving until it releases views (drop them or call "
            "view.release()). If it must keep more, raise max_held= (AIOZCRX_MAX_HELD for the "
            "drop-in loop) or area_size=; a protocol that keeps what it receives can take bytes "
            "instead (Receiver(views='opt-in')).", protocol_name, held, limit, self._config.area_size)

    def _copies_for(self, protocol: object) -> bool:
        """Whether ``protocol`` gets ``bytes`` rather than views (beyond copy=True,
        which the dispatcher does in C for everyone)."""
        if self._config.copy or self._config.views == "always":
            return False
        return getattr(protocol, "aiozcrx_views", False) is not True

    def _forget(self, transport: ZcrxTransport) -> None:
        self._transports.discard(transport)

    # ------------------------------------------------------------------ info
    @property
    def engine(self) -> str | None:
        """Name of the engine in use ("zcrx", "zcrx-copy", "uring" or "socket")."""
        return self._engine.name if self._engine else None

    @property
    def fallback_reason(self) -> str:
        """Why better engines were not used, e.g. "zcrx: no interface= given; zcrx-copy:
        EINVAL: this kernel has no ZCRX_REG_NODEV (needs Linux 7.1+)". Empty when the
        first choice worked. Where the kernel signals the ring's eventfd late and
        the engine wakes on its sockets instead, that is said too ("wake: socket:
        this kernel signals the ring's eventfd late ..."; see ``wake``)."""
        parts = [f"{name}: {why}" for name, ok, why in self.engines_tried if not ok]
        rx_buf = getattr(self._engine, "stats", {}).get("rx_buf_len_fallback")
        if rx_buf:
            parts.append(f"rx_buf_len: {rx_buf}")
        wake = getattr(self._engine, "wake", None)
        if wake == "socket" and getattr(self._engine, "wake_forced_by_kernel", False):
            parts.append(f"wake: socket: {getattr(self._engine, 'wake_reason', '')}")
        return "; ".join(parts)

    @property
    def wake(self) -> str | None:
        """How the engine learns of new completions: ``"eventfd"`` (the ring's
        eventfd), ``"socket"`` (each armed connection's socket; where the kernel
        signals the eventfd late), ``"epoll"`` (engine ``socket``), None before
        ``open()``. ``stats()["wake_reason"]`` says why."""
        if self._engine is None:
            return None
        return cast(str, getattr(self._engine, "wake", "epoll"))

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop the Receiver was opened on (None before ``open()``)."""
        return self._loop

    def stats(self) -> dict[str, Any]:
        """Counters for the whole Receiver, as a dict.

        Always: ``engine``, ``connections``, ``bytes``, ``completions``,
        ``dropped_completions`` (data for a connection already gone, stopped by
        close()/an exception, or of an older generation of its slot: returned at
        once), ``stale_completions`` (ends of requests of a connection already
        gone, ignored), ``closed`` (after ``close()``, the counters are the last
        ones), ``buffers_total`` / ``buffers_outstanding`` (held by views) /
        ``buffers_free`` / ``buffers_returned``, ``buffers_given`` (ring engines:
        buffers handed to the kernel: put in its buffer ring, or taken back from
        the refill ring), ``views_outstanding`` (views not
        yet released: the same as ``buffers_outstanding`` except with incremental
        buffers, where a buffer can hold several, and merged zcrx views, where a
        view holds several buffers: ``max_view``), ``buffer_size``, ``area_size``,
        ``refill_publishes`` / ``refill_flushes`` / ``refill_queued`` /
        ``refill_errors``, ``rearms`` (receive requests armed again: after a
        cancel, the end of a multishot request, a stop over the fair share, or
        starvation), ``starved`` (episodes: times a connection stopped receiving
        for want of buffers; stopping again before it received anything is the
        same episode), ``starved_rearms`` (the re-arms of those connections: one
        only once a buffer came back for it, the longest waiting first; see
        "What holding a view costs" in docs/concepts.md), ``wakeups`` (eventfd
        wake-ups of the loop),
        ``notifications_no_buffers`` / ``notifications_copy`` (zcrx, 7.2+).

        Ring engines add ``cq_entries`` (the completion queue's size, as asked
        for), ``unknown_completions`` (completions of a kind the engine never
        issues: a bug, or an SQE that is not ours; delivered to nobody, their
        buffers go back; it should stay 0), ``enters`` (``io_uring_enter`` calls), ``idle_wakeups``
        (wake-ups that found nothing), ``eventfd_paused`` (whether the eventfd is
        switched off while completions are processed: x86 only),
        ``eventfd_read`` (``"sqe"``: a wake-up resets the eventfd with a read in
        its ``io_uring_enter``; ``"read(2)"`` where the kernel lacks
        IORING_OP_READ), ``eventfd_reads`` (``read(2)`` calls on it),
        ``eventfd_sqe_reads`` / ``eventfd_sqe_empty`` / ``eventfd_sqe_withdrawn`` /
        ``eventfd_sqe_errors`` (how those reads ended), ``slow_path_calls``
        (wake-ups and kicks that needed the engine's Python),
        ``reused_views`` (see "The fast path" in docs/concepts.md), ``wake``
        (``"eventfd"`` or ``"socket"``: see ``Receiver.wake``), ``wake_reason``,
        ``kernel_eventfd`` (what the start-up probe found: the eventfd
        "signalled inline" or "DEFERRED" for socket completions),
        ``socket_wakeups`` / ``socket_idle_wakeups`` (socket wake-ups, and those
        that found their connection nothing), ``socket_idle_reports`` (a socket
        that kept waking us for nothing: its request is cancelled if the socket
        has an error, else the socket is parked for a tick, ``socket_parks``),
        ``found_by_eventfd`` / ``found_by_socket`` / ``found_by_kick`` (completions
        the first pump of each kind of wake-up delivered) and, once it
        happened, ``reset_kicks`` (requests re-armed to read a reset's error),
        ``merged_completions`` (completions delivered in the same view as the one
        before: merged views), ``max_view``, ``share_copies`` / ``share_copied_bytes`` (deliveries made as
        ``bytes`` copies to connections over their share, ``over_share="copy"``;
        all engines) and ``share_reached`` (times a connection's views reached
        its share with ``over_share="copy"``), ``nomem_failures`` (deliveries that could not be made for want of
        memory: their buffers went straight back) and, once it happened,
        ``nomem_connections`` (connections that ended with ENOMEM for it),
        ``nomem_stalls`` (times the completions' records waited for memory to be
        handed over: nothing is lost, they come at the next pump). Engine ``uring`` adds ``post_window`` (buffers kept in
        the kernel's ring), ``buffers_posted`` (there now),
        ``post_window_grows`` / ``post_window_shrinks``, and
        ``incremental_buffers`` (True where the kernel fills buffers piece by
        piece: Linux 6.12+; see "The fast path" in docs/concepts.md). zcrx engines add
        ``zcrx_id``, ``rq_entries``, ``rx_buf_len``, ``nodev``, ``notifications``
        (``"on"`` or ``"unsupported"``) and, once they happened, ``stall_kicks``,
        ``notification_rearms``, ``starve_retries`` / ``starve_tick_rearms``
        (connections the kernel refused buffers while, by the area's counts, it
        had some: re-armed at once, once an episode, or by the stall watchdog's
        tick); an instance shared with ``share_with`` has
        ``imported``. On 7.2+ they add the kernel's own statistics of the
        instance: ``kernel_copy_count`` / ``kernel_copy_bytes``, how often and how
        much the kernel copied into the area instead of placing data there (every
        byte of ``zcrx-copy``; on a NIC queue, flows not steered to it: 0 is true
        zero copy). Engine ``zcrx`` (a NIC queue) adds ``nic_defaults``: which of
        ``area_size`` / ``rq_entries`` took the NIC queue's larger default (64 MiB,
        16384 entries, against 32 MiB / 4096 elsewhere) because it was not given,
        e.g. ``("area_size", "rq_entries")``, ``()`` when both were (an imported
        instance: the other Receiver's); ``area_size`` and ``rq_entries`` are the
        values in effect. It adds ``device_removed`` (the interface's name)
        once its NIC went away: the connections then ended with
        ``ZcrxDeviceRemoved``; and ``release_waits`` when opening waited for the
        kernel to unbind the queue from a ring that had just closed (instead of
        failing with EEXIST)."""
        self._check_process()
        s: dict[str, Any] = {"engine": self.engine, "connections": len(self._transports)}
        if self._engine is not None:
            s.update(self._engine.snapshot_stats())
            delivered = s.get("bytes", 0) - s.get("dropped_bytes", 0)
            copied = delivered if self._config.copy else \
                min(self._copied[0] + s.get("share_copied_bytes", 0), delivered)
            s["bytes_copied"] = copied
            s["bytes_as_views"] = delivered - copied
        return s

    def __del__(self, _warn: Callable[..., None] = warnings.warn) -> None:
        # like asyncio's transports: an unclosed Receiver keeps its ring (and its
        # registration) until the process ends; say so
        # (not in a forked child: the Receiver is the parent's to close)
        if getattr(self, "_engine", None) is not None and not self._closed \
                and getattr(self, "_pid", None) == os.getpid():
            _warn(f"unclosed {self!r}", ResourceWarning, source=self)

    def __repr__(self) -> str:
        return f"<aiozcrx.Receiver engine={self.engine!r} connections={len(self._transports)}>"

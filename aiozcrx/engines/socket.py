"""Engine "socket": non-blocking recv() into pooled buffers; works wherever
sockets do.

Readiness comes from an epoll instance of the engine's own, watched by the loop
through its one fd (``loop.add_reader``), not from one ``add_reader`` per socket:
uvloop (libuv) treats EPOLLERR on a polled fd as the poll handle failing and
stops calling the reader, so a reset that arrives while data is still queued
was never reported there (measured: the reader fires once, then never again).
Our own epoll reports the error like any other event, on both loops.
"""

from __future__ import annotations

import os
import select
from typing import TYPE_CHECKING

from .. import _kernel
from .advice import area_error, fd_error, out_of_memory_error
from .._kernel import Sink
from .base import Conn, Engine, EngineLoop, ReadEvents, Slots

if TYPE_CHECKING:
    from ..config import Config

_WATCH = select.EPOLLIN | select.EPOLLRDHUP  # EPOLLERR/EPOLLHUP are always reported


class SocketEngine(Engine):
    name = "socket"
    READS_PER_WAKEUP = 16  # per connection and wake-up: fairness between connections

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.area: _kernel.AreaLike | None = None
        self.eventfd = -1
        self.epoll: select.epoll | None = None
        self.sinks: dict[int, Sink | None] = {}
        self.counts: dict[int, list[int]] = {}
        self.armed_fds: dict[int, Conn] = {}
        self.slot_table = Slots()
        self.completions = 0
        self.bytes = 0
        self.dropped = 0
        self.dropped_bytes = 0

    def open(self, loop: EngineLoop) -> None:
        self.loop = loop
        try:
            mapping = _kernel.map_area(self.config.area_bytes, hugepages=self.config.hugepages)
        except OSError as e:
            raise area_error(self.name, self.config, e) from None
        self.area = _kernel.new_area(mapping, self.config.buf_size)
        self.area.setup_pool()
        try:
            self.eventfd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            self.epoll = select.epoll()
        except OSError as e:
            if self.eventfd >= 0:
                os.close(self.eventfd)
                self.eventfd = -1
            self.area.close()
            self.area = None
            raise fd_error(self.name, e) from None
        if not self.config.copy:
            self.area.set_share(self.share_buffers(self.config.buf_size), self.eventfd)
        loop.add_reader(self.eventfd, self._on_buffers_back)
        loop.add_reader(self.epoll.fileno(), self._on_ready)

    def close(self) -> None:
        # Nothing is unmapped here (the area lives until its last view), so this
        # is safe from inside a callback: _read_ready checks `closed` after each.
        if self.closed:
            return
        self.closed = True
        for conn in list(self.conns.values()):
            self._forget(conn)
        assert self.loop is not None and self.epoll is not None and self.area is not None
        self.loop.remove_reader(self.eventfd)
        self.loop.remove_reader(self.epoll.fileno())
        self._final_stats = self.area_stats()
        self.epoll.close()
        os.close(self.eventfd)
        self.eventfd = -1
        self.area.close()  # unmapped now, or with the last view still out

    # ---------------------------------------------------------- connections
    def attach(self, fd: int, events: ReadEvents) -> Conn:
        if self.closed:
            raise RuntimeError("engine is closed")
        assert self.area is not None, "attach() before open()"
        slot, gen = self.slot_table.take(self.area.bind_slot)  # the slot's next generation
        conn = Conn(self, slot, gen, fd, events)
        self.conns[slot] = conn
        self.counts[slot] = [0, 0]
        return conn

    def _set_sink(self, conn: Conn, sink: Sink | None) -> None:
        self.sinks[conn.slot] = sink

    def _start(self, conn: Conn) -> None:
        conn.wanted = True
        if not conn.armed and conn not in self.starved:
            self._arm(conn)

    def _arm(self, conn: Conn) -> None:
        if self.closed or conn.throttled:
            return
        assert self.epoll is not None
        self.epoll.register(conn.fd, _WATCH)
        self.armed_fds[conn.fd] = conn
        conn.armed = True

    def _disarm(self, conn: Conn) -> None:
        if conn.armed:
            conn.armed = False
            if self.armed_fds.get(conn.fd) is conn:
                del self.armed_fds[conn.fd]
            if not self.closed:
                assert self.epoll is not None
                try:
                    self.epoll.unregister(conn.fd)
                except OSError:
                    pass  # the socket is already closed: epoll dropped it itself

    def _stop(self, conn: Conn) -> None:
        conn.wanted = False
        self.starved.pop(conn, None)
        self._disarm(conn)

    def _detach(self, conn: Conn) -> None:
        self._stop(conn)
        self._forget(conn)

    def _forget(self, conn: Conn) -> None:
        self._disarm(conn)
        if self._retire(conn):
            self.slot_table.free(conn.slot)
        self.sinks.pop(conn.slot, None)
        self.counts.pop(conn.slot, None)

    def _conn_stats(self, conn: Conn) -> tuple[int, int]:
        c = self.counts.get(conn.slot, (0, 0))
        return (c[0], c[1])

    # ---------------------------------------------------------- the loop side
    def _on_ready(self) -> None:
        if self.closed:
            return
        assert self.epoll is not None
        self.stats["wakeups"] += 1
        for fd, _events in self.epoll.poll(0):
            conn = self.armed_fds.get(fd)
            if conn is not None:
                self._read_ready(conn)
                if self.closed:
                    return

    def _read_ready(self, conn: Conn) -> None:
        area = self.area
        assert area is not None
        fd = conn.fd
        counts = self.counts[conn.slot]
        for _ in range(self.READS_PER_WAKEUP):
            view: _kernel.Delivery | bool | None
            try:
                view = area.recv(fd, conn.slot, conn.gen)
            except OSError as e:
                self._stop(conn)
                conn.events._read_error(e)
                return
            except MemoryError:
                # the bytes recv() took are gone with the view that could not be
                # made: the connection ends, as a ring engine's does (UD_NOMEM)
                self._stop(conn)
                self.stats["nomem_connections"] = self.stats.get("nomem_connections", 0) + 1
                conn.events._read_error(out_of_memory_error())
                return
            if view is None:
                return
            if view is False:
                # every pooled buffer is held by user code: wait for one to return
                self._disarm(conn)
                self._starved(conn, 0)
                area.set_wake(self.eventfd, True)
                return
            if not view:  # b"": EOF
                self._stop(conn)
                conn.events._read_eof()
                return
            self.completions += 1
            self.bytes += len(view)
            counts[0] += 1
            counts[1] += len(view)
            sink = self.sinks.get(conn.slot)
            if sink is None:
                self.dropped_bytes += len(view)
                self.dropped += 1
                del view
                continue
            # over_share="copy": past its share (this view counted), a copy
            over = self.config.over_share == "copy" and \
                area.held(conn.slot, conn.gen) > self.share_buffers(self.config.buf_size)
            if self.config.copy or over:
                # (over its share with over_share="copy": a copy, the buffer back now)
                data = bytes(view)
                view.release()
                view = data
                if over:
                    self.stats["share_copies"] = self.stats.get("share_copies", 0) + 1
                    self.stats["share_copied_bytes"] = self.stats.get("share_copied_bytes", 0) + len(data)
            try:
                sink(view)
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:  # noqa: BLE001 - reaches the transport, not the loop
                del view
                self._stop(conn)
                self.sinks.pop(conn.slot, None)
                conn.events._callback_failed(exc)
                return
            del view
            if not conn.armed or self.closed:  # paused, closed or Receiver closed by the callback
                return
            if area.over_share(conn.slot, conn.gen):
                self._throttle(conn)
                if conn.throttled:
                    return

    # -- fair share (Engine._share_reached) --
    def _throttle(self, conn: Conn) -> None:
        assert self.area is not None
        if self.config.over_share == "copy":
            # it goes on, with copies (_read_ready) until it is back under: said once
            if conn.share_said:
                return
            conn.share_said = True
        if self._share_reached(conn, self.area.held(conn.slot, conn.gen), self.config.buf_size):
            self._disarm(conn)

    def _on_buffers_back(self) -> None:
        try:
            os.eventfd_read(self.eventfd)
        except BlockingIOError:
            pass
        if self.closed:
            return
        assert self.area is not None
        self._back_under_share(self.area.take_back(), waiting=self.starved)
        starved, self.starved = self.starved, {}
        for conn in starved:
            if conn.wanted and not conn.armed and not conn.detached:
                self.stats["rearms"] += 1
                self.stats["starved_rearms"] += 1
                self._arm(conn)

    def area_stats(self) -> dict[str, object]:
        assert self.area is not None
        if self._final_stats is not None:
            return {**self._final_stats, **self.area.stats()}
        s: dict[str, object] = dict(self.area.stats())
        s.update({"completions": self.completions, "bytes": self.bytes,
                  "dropped_completions": self.dropped, "dropped_bytes": self.dropped_bytes})
        s.update(self.stats)
        return s

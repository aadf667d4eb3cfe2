"""aiozcrx.anyio's trio backend: the loop calls an engine and a
``ZcrxTransport`` make, served by trio tasks; streams, connecting, listening.

An engine and a transport need very little from "their loop": ``add_reader`` /
``remove_reader`` (the engine's wake-up fd: the ring's eventfd, or the socket
engine's epoll fd and buffer-return eventfd), ``add_writer`` / ``remove_writer``
(a transport write that did not fit in the socket), ``call_soon``,
``call_later`` (the engines' watches), ``time()`` and
``call_exception_handler``. ``TrioLoop`` offers exactly these in a trio run, so
engines, ``Receiver`` and ``ZcrxTransport`` run unchanged:

- each watched fd gets a system task looping on ``trio.lowlevel.wait_readable``
  (``wait_writable``) and calling the callback; ``remove_reader`` cancels that
  task's scope, which withdraws its wait from trio's epoll at once (trio's
  abort runs synchronously), so the engine may close the fd right after;
- ``call_soon`` / ``call_later`` callbacks run in one system task, a batch at a
  time with a checkpoint between batches: as on asyncio, a callback scheduled
  by a callback runs after trio has polled for I/O and run other tasks once
  (an engine that stays busy re-schedules itself and must not starve them);
- an exception from a callback is logged (logger ``aiozcrx``), as asyncio's
  default exception handler logs it; trio has no loop-level handler.

One ``TrioLoop`` serves a whole trio run (a ``RunVar``); its tasks end with the
run. Calls after that raise ``RuntimeError``, as asyncio's do once the loop is
closed.

Streams: ``TrioStreamProtocol`` is the anyio layer's protocol with trio's
waits; ``TrioZcrxStream.send`` writes straight to the socket (no transport write
buffer), waiting with ``trio.lowlevel.wait_writable``. Before the transport
closes a socket, its protocol calls ``trio.lowlevel.notify_closing`` on it, so
a ``send()`` waiting there wakes up instead of waiting on a closed fd.

This module imports trio; ``aiozcrx.anyio`` imports it only under trio. It is
one side of the seam ``aiozcrx/anyio/__init__.py`` describes (``_asyncio.py`` is
the other).
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import errno
import heapq
import itertools
import logging
import math
import socket
from asyncio import trsock
from typing import TYPE_CHECKING, Any, Awaitable, Callable

import anyio
import anyio.abc
import trio

from ..server import (_ACCEPT_RETRY_DELAY, _RESOURCE_ERRNOS, _bind_sockets, _check_unsupported,
                      RECEIVER_KEYWORDS, _ClosesReceiverWhenIdle, _OwnedReceiver, _set_nodelay)
from ._streams import StreamProtocolBase, ZcrxListener, ZcrxStream

if TYPE_CHECKING:
    from _typeshed import FileDescriptorLike

logger = logging.getLogger("aiozcrx")

_LOOP: trio.lowlevel.RunVar[TrioLoop | None] = trio.lowlevel.RunVar("aiozcrx_trio_loop", default=None)


def _fileno(fd: FileDescriptorLike) -> int:
    return fd if isinstance(fd, int) else fd.fileno()


class _Handle:
    """What ``call_soon``/``call_later`` return: ``cancel()`` as on asyncio."""

    __slots__ = ("callback", "args", "cancelled")

    def __init__(self, callback: Callable[..., object], args: tuple[object, ...]):
        self.callback: Callable[..., object] | None = callback  # None once cancelled
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True
        self.callback = None  # drop what the callback holds (an engine...) now
        self.args = ()

    def __repr__(self) -> str:
        cb = getattr(self.callback, "__qualname__", repr(self.callback))
        return f"<aiozcrx trio handle {cb}{' cancelled' if self.cancelled else ''}>"


class _Watch:
    """One fd watched for reading or writing: its callback and the scope of the
    task that waits for it."""

    __slots__ = ("callback", "args", "scope", "gone")

    def __init__(self, callback: Callable[..., object], args: tuple[object, ...]):
        self.callback: Callable[..., object] | None = callback  # None once gone
        self.args = args
        self.scope = trio.CancelScope()
        self.gone = False


class TrioLoop:
    """The part of an asyncio event loop that engines and transports use, on
    the running trio run. Get it with ``current_loop()``."""

    def __init__(self) -> None:
        self._ready: collections.deque[_Handle] = collections.deque()
        self._timers: list[tuple[float, int, _Handle]] = []  # heap of (when, seq, handle)
        self._seq = itertools.count()
        self._readers: dict[int, _Watch] = {}
        self._writers: dict[int, _Watch] = {}
        self._wakeup: trio.Event | None = None   # set while the runner sleeps
        self._closed = False
        trio.lowlevel.spawn_system_task(self._run_callbacks, name="aiozcrx callbacks")

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the trio run this aiozcrx object was made in is over")

    # ------------------------------------------------------------ callbacks
    def time(self) -> float:
        return trio.current_time()

    def call_soon(self, callback: Callable[..., object], *args: object,
                  context: contextvars.Context | None = None) -> _Handle:
        self._check_open()
        handle = _Handle(callback, args)
        self._ready.append(handle)
        self._poke()
        return handle

    def call_later(self, delay: float, callback: Callable[..., object], *args: object,
                   context: contextvars.Context | None = None) -> _Handle:
        return self.call_at(trio.current_time() + delay, callback, *args)

    def call_at(self, when: float, callback: Callable[..., object], *args: object,
                context: contextvars.Context | None = None) -> _Handle:
        self._check_open()
        handle = _Handle(callback, args)
        heapq.heappush(self._timers, (when, next(self._seq), handle))
        self._poke()
        return handle

    def _poke(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()

    async def _run_callbacks(self) -> None:
        timers = self._timers
        try:
            while True:
                now = trio.current_time()
                while timers and timers[0][0] <= now:
                    handle = heapq.heappop(timers)[2]
                    if not handle.cancelled:
                        self._ready.append(handle)
                if self._ready:
                    batch, self._ready = self._ready, collections.deque()
                    for handle in batch:
                        if not handle.cancelled:
                            self._call(handle)
                    # one batch per round, as asyncio runs one per loop iteration
                    await trio.lowlevel.checkpoint()
                    continue
                while timers and timers[0][2].cancelled:
                    heapq.heappop(timers)
                self._wakeup = trio.Event()
                with trio.move_on_at(timers[0][0] if timers else math.inf):
                    await self._wakeup.wait()
                self._wakeup = None
        finally:
            self._closed = True
            self._ready.clear()
            timers.clear()

    def _call(self, handle: _Handle) -> None:
        if handle.callback is None:  # cancelled (the caller skips those)
            return
        try:
            handle.callback(*handle.args)
        except (SystemExit, KeyboardInterrupt):
            raise  # as asyncio: these end the run (trio reports them from a system task)
        except BaseException as exc:  # noqa: BLE001 - logged, as asyncio's handler does
            self.call_exception_handler({"message": f"Exception in callback {handle!r}",
                                         "exception": exc})

    def call_exception_handler(self, context: dict[str, Any]) -> None:
        """Logs what asyncio's default exception handler would (trio has no
        loop-level handler to hand it to)."""
        message = context.get("message") or "Unhandled exception in an aiozcrx callback"
        exc = context.get("exception")
        details = "".join(f"\n{key}: {value!r}" for key, value in context.items()
                          if key not in ("message", "exception"))
        logger.error("%s%s", message, details,
                     exc_info=(type(exc), exc, exc.__traceback__) if exc is not None else None)

    # ----------------------------------------------------------------- fds
    def add_reader(self, fd: FileDescriptorLike, callback: Callable[..., object], *args: object) -> None:
        self._watch(self._readers, trio.lowlevel.wait_readable, _fileno(fd), callback, args)

    def remove_reader(self, fd: FileDescriptorLike) -> bool:
        return self._unwatch(self._readers, _fileno(fd))

    def add_writer(self, fd: FileDescriptorLike, callback: Callable[..., object], *args: object) -> None:
        self._watch(self._writers, trio.lowlevel.wait_writable, _fileno(fd), callback, args)

    def remove_writer(self, fd: FileDescriptorLike) -> bool:
        return self._unwatch(self._writers, _fileno(fd))

    def _watch(self, table: dict[int, _Watch], wait: Callable[[int], Awaitable[None]], fd: int,
               callback: Callable[..., object], args: tuple[object, ...]) -> None:
        self._check_open()
        w = table.get(fd)
        if w is not None:  # as asyncio: a new callback replaces the old one
            w.callback, w.args = callback, args
            return
        w = table[fd] = _Watch(callback, args)
        trio.lowlevel.spawn_system_task(self._watcher, fd, w, wait, name=f"aiozcrx fd {fd}")

    def _unwatch(self, table: dict[int, _Watch], fd: int) -> bool:
        w = table.pop(fd, None)
        if w is None:
            return False
        w.gone = True
        # Withdraws the task's wait from trio's epoll now (the caller may close the
        # fd next); from inside its own callback, the task ends when that returns.
        w.scope.cancel()
        w.callback, w.args = None, ()
        return True

    async def _watcher(self, fd: int, w: _Watch, wait: Callable[[int], Awaitable[None]]) -> None:
        with w.scope:
            while not w.gone:
                try:
                    await wait(fd)
                except trio.ClosedResourceError:
                    return  # someone called notify_closing: the fd is going away
                except OSError as exc:
                    # trio could not (re)register the fd: it was closed behind the watch
                    self.call_exception_handler({"message": f"aiozcrx: cannot watch fd {fd}",
                                                 "exception": exc})
                    return
                if w.gone or w.callback is None:  # (None only once gone)
                    return
                try:
                    w.callback(*w.args)
                except (SystemExit, KeyboardInterrupt):
                    raise
                except BaseException as exc:  # noqa: BLE001 - logged, as on asyncio
                    self.call_exception_handler({"message": f"Exception in the reader/writer of fd {fd}",
                                                 "exception": exc})


def current_loop() -> TrioLoop:
    """The ``TrioLoop`` of the running trio run (made on first use)."""
    loop = _LOOP.get()
    if loop is None or loop._closed:
        loop = TrioLoop()
        _LOOP.set(loop)
    return loop


def in_trio() -> bool:
    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        return False
    return True


# ----------------------------------------------------------------- streams
class TrioStreamProtocol(StreamProtocolBase):
    """The anyio layer's protocol with trio's waits (events, not futures)."""

    def __init__(self, read_high: int):
        super().__init__(read_high)
        self.lost = trio.Event()
        self._waiter: trio.Event | None = None

    def is_lost(self) -> bool:
        return self.lost.is_set()

    async def wait_lost(self) -> None:
        await self.lost.wait()

    def _set_lost(self, exc: BaseException | None) -> None:
        # the transport closes the socket as soon as connection_lost returns:
        # a send() waiting on it must be woken first (trio's rule for closing)
        transport: asyncio.BaseTransport | None = self.transport  # (asyncio's typed get_extra_info)
        sock: trsock.TransportSocket | None = (transport.get_extra_info("socket")
                                               if transport is not None else None)
        if sock is not None and sock.fileno() >= 0:
            trio.lowlevel.notify_closing(sock.fileno())
        self.lost.set()

    def _wake(self) -> None:
        w, self._waiter = self._waiter, None
        if w is not None:
            w.set()

    async def wait_data(self) -> None:
        self._waiter = trio.Event()
        try:
            await self._waiter.wait()
        finally:
            self._waiter = None

    # Sends go straight to the socket (TrioZcrxStream.send), so the transport's
    # write buffer stays empty and never pauses writing: nothing to wait for.
    async def drain(self) -> None:
        return

    def _release_drains(self) -> None:
        return


class TrioZcrxStream(ZcrxStream):
    """``ZcrxStream`` under trio: sends go straight to the socket."""

    _eof_sent = False

    def _check_not_after_eof(self) -> None:
        if self._eof_sent:
            raise anyio.ClosedResourceError("send_eof() was called: this side is closed for sending")

    async def send(self, item: bytes) -> None:
        self._start_send()
        p = self._protocol
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            with memoryview(item) as whole, whole.cast("B") as data:
                sock = self._transport._sock  # the transport's socket; its write buffer stays empty
                sent = 0
                waited = False
                while sent < len(data):
                    try:
                        n = sock.send(data[sent:])
                    except (BlockingIOError, InterruptedError):
                        waited = True
                        await trio.lowlevel.wait_writable(sock)
                        continue
                    sent += n
                    self._transport._bytes_written += n  # transport.stats()["bytes_written"]
            if not waited:
                await trio.lowlevel.cancel_shielded_checkpoint()
        except trio.ClosedResourceError as exc:  # the connection closed while we waited
            if self._closed:
                raise anyio.ClosedResourceError from exc
            raise anyio.BrokenResourceError from (p.exc or exc)
        except OSError as exc:
            if self._closed:
                raise anyio.ClosedResourceError from exc
            # as a transport's own write error does: the connection ends with it.
            # (The socket reports a reset once: if send() took it, the read side
            # would see a plain end of stream.)
            self._transport._force_close(exc)
            raise anyio.BrokenResourceError from exc
        finally:
            self._sending = False

    async def send_eof(self) -> None:
        if self._closed:
            raise anyio.ClosedResourceError
        self._eof_sent = True
        self._transport.write_eof()


# Keywords that configure the Receiver of a connection or listener under trio
# (the other keywords of create_connection/create_server are asyncio's).
RECEIVER_KW = frozenset({*RECEIVER_KEYWORDS, "receiver_options"})


def owned_receiver(kw: dict[str, Any], what: str) -> _OwnedReceiver:
    """A Receiver from ``kw`` (validated now, opened later), closed by its owner."""
    kw = dict(kw)
    _check_unsupported(kw.pop("ssl", None), {}, ())  # as on asyncio: ValueError for ssl=
    if "receiver" in kw:
        raise TypeError(f"{what}(receiver=...) is asyncio only: under trio each connection "
                        "gets a Receiver of its own (a listener's connections share one); "
                        "pass Receiver options (engine=, area_size=, ...) instead")
    unknown = set(kw) - RECEIVER_KW
    if unknown:
        raise TypeError(f"{what}() under trio takes only Receiver options "
                        f"({', '.join(sorted(RECEIVER_KW))}), not {', '.join(sorted(unknown))}")
    options = kw.pop("receiver_options", None) or {}
    return _OwnedReceiver(**kw, **options)


async def connect_tcp(host: anyio.abc.IPAddressType, port: int,
                      local_host: anyio.abc.IPAddressType | None, read_high: int,
                      kw: dict[str, Any]) -> TrioZcrxStream:
    """``aiozcrx.anyio.connect_tcp`` under trio: the connection owns its Receiver,
    closed right after connection_lost (as ``aiozcrx.create_connection`` does)."""
    rx = owned_receiver(kw, "connect_tcp")
    loop = current_loop()
    sock = await connect(str(host), port, None if local_host is None else str(local_host))
    _set_nodelay(sock)
    proto = TrioStreamProtocol(read_high)
    try:
        rx._open_on(loop)
        transport, _ = await rx.wrap(sock, lambda: proto)
    except BaseException:
        sock.close()
        if rx.loop is not None:
            rx.close()
        raise

    def forget() -> None:
        # the one connection is gone: close the Receiver after connection_lost returns
        loop.call_soon(rx.close)

    rx._on_forget = forget
    return TrioZcrxStream(transport, proto)


async def create_tcp_listener(host: anyio.abc.IPAddressType | None, port: int, backlog: int,
                              reuse_port: bool, read_high: int, kw: dict[str, Any]) -> ZcrxListener:
    """``aiozcrx.anyio.create_tcp_listener`` under trio."""
    rx = owned_receiver(kw, "create_tcp_listener")
    server = await create_server(lambda: TrioStreamProtocol(read_high),
                                 None if host is None else str(host), port, backlog=backlog,
                                 reuse_port=reuse_port, receiver=rx)
    return ZcrxListener(server, server.accept)  # the TrioServer accepts when asked


# -------------------------------------------------------------- connecting
async def connect(host: str, port: int, local_host: str | None = None) -> socket.socket:
    """A connected non-blocking TCP socket: the addresses of ``host`` in turn,
    as ``aiozcrx.create_connection`` tries them."""
    infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    if not infos:
        raise OSError(f"getaddrinfo({host!r}) returned no address")
    local_infos = None
    if local_host is not None:
        local_infos = await trio.socket.getaddrinfo(local_host, 0, type=socket.SOCK_STREAM)
    errors: list[OSError] = []
    for family, type_, proto, _canon, address in infos:
        sock = socket.socket(family, type_, proto)
        try:
            sock.setblocking(False)
            if local_infos is not None:
                local = [la for lf, _, _, _, la in local_infos if lf == family]
                if not local:
                    raise OSError(f"no local address of {local_host!r} in family "
                                  f"{socket.AddressFamily(family).name}")
                sock.bind(local[0])
            try:
                sock.connect(address)
            except (BlockingIOError, InterruptedError):
                await trio.lowlevel.wait_writable(sock)
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    raise OSError(err, f"Connect call failed {address}: {errno.errorcode.get(err, err)}")
            return sock
        except OSError as exc:
            sock.close()
            errors.append(exc)
        except BaseException:
            sock.close()  # cancelled: trio withdrew the wait, the fd can go
            raise
    if len(errors) == 1 or len({str(e) for e in errors}) == 1:
        raise errors[0]
    raise OSError(f"Multiple exceptions: {', '.join(str(e) for e in errors)}")


# --------------------------------------------------------------- listening
class TrioServer(_ClosesReceiverWhenIdle):
    """Listening sockets and the Receiver their connections share, under trio:
    what ``ZcrxServer`` is on asyncio, with ``accept()`` instead of callbacks.

    The Receiver is closed once the server is closed *and* its last connection is
    gone (``wait_closed()``), as ``ZcrxServer`` does."""

    def __init__(self, loop: TrioLoop, sockets: list[socket.socket], receiver: _OwnedReceiver,
                 protocol_factory: Callable[[], TrioStreamProtocol]):
        self._loop = loop
        self._sockets = sockets
        self._receiver = receiver
        self._factory = protocol_factory
        self._closed = False
        self._accepting = trio.Lock()   # concurrent accept() calls take turns
        self._done = trio.Event()
        receiver._on_forget = self._maybe_finish

    @property
    def receiver(self) -> _OwnedReceiver:
        """The Receiver shared by this server's connections."""
        return self._receiver

    @property
    def sockets(self) -> tuple[trsock.TransportSocket, ...]:
        return tuple(trsock.TransportSocket(s) for s in self._sockets)

    def is_serving(self) -> bool:
        return not self._closed

    async def accept(self) -> TrioZcrxStream:
        """The next connection, attached to the Receiver, as a stream."""
        async with self._accepting:
            while True:
                if self._closed:
                    raise anyio.ClosedResourceError
                for sock in self._sockets:
                    try:
                        conn, _addr = sock.accept()
                    except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                        continue
                    except OSError as exc:
                        if exc.errno not in _RESOURCE_ERRNOS:
                            self._loop.call_exception_handler({
                                "message": "socket.accept() failed", "exception": exc})
                            continue
                        # out of fds or memory: as ZcrxServer, say so and retry later
                        self._loop.call_exception_handler({
                            "message": "socket.accept() out of system resource", "exception": exc})
                        await trio.sleep(_ACCEPT_RETRY_DELAY)
                        break
                    _set_nodelay(conn)
                    try:
                        transport, protocol = await self._receiver.wrap(conn, self._factory)
                    except BaseException:
                        conn.close()
                        raise
                    return TrioZcrxStream(transport, protocol)
                else:
                    await self._wait_readable()

    async def _wait_readable(self) -> None:
        """Until one of the listening sockets is readable (or closed)."""
        socks = self._sockets
        if len(socks) == 1:
            try:
                await trio.lowlevel.wait_readable(socks[0])
            except trio.ClosedResourceError:
                pass  # close() said so; accept() raises anyio's ClosedResourceError
            return

        async def one(sock: socket.socket, scope: trio.CancelScope) -> None:
            try:
                await trio.lowlevel.wait_readable(sock)
            except trio.ClosedResourceError:
                pass
            scope.cancel()

        async with trio.open_nursery() as nursery:
            for sock in socks:
                nursery.start_soon(one, sock, nursery.cancel_scope)

    def close(self) -> None:
        """Stops listening. Connections already accepted stay open; the Receiver
        closes when the last of them is gone."""
        if self._closed:
            return
        self._closed = True
        for sock in self._sockets:
            trio.lowlevel.notify_closing(sock)  # wakes an accept() waiting on it
            sock.close()
        self._maybe_finish()

    # closing the Receiver when idle: _ClosesReceiverWhenIdle (aiozcrx/server.py)
    def _done_yet(self) -> bool:
        return self._done.is_set()

    def _set_done(self) -> None:
        self._done.set()

    async def wait_closed(self) -> None:
        await self._done.wait()


async def create_server(protocol_factory: Callable[[], TrioStreamProtocol], host: str | None,
                        port: int, *, backlog: int, reuse_port: bool,
                        receiver: _OwnedReceiver) -> TrioServer:
    """Binds and listens (as ``aiozcrx.create_server`` does: every address of
    ``host``, IPv6 sockets v6-only) and opens ``receiver`` on this run."""
    flags = socket.AI_PASSIVE
    infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=flags)
    sockets = _bind_sockets(infos, backlog, True, reuse_port)
    loop = current_loop()
    try:
        receiver._open_on(loop)
    except BaseException:
        for s in sockets:
            s.close()
        raise
    return TrioServer(loop, sockets, receiver, protocol_factory)

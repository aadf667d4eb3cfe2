"""What both backends of aiozcrx.anyio share: the stream protocol's queue and
flow control (its waits are the backends'), ``ZcrxStream`` and ``ZcrxListener``.
Below both backends (``_asyncio.py``, ``_trio.py``); imports neither.
"""

from __future__ import annotations

import asyncio
import collections
from asyncio import trsock
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Protocol, cast

import anyio
import anyio.abc
import anyio.lowlevel

from ..server import _check_unsupported
from ..transport import ZcrxTransport

if TYPE_CHECKING:
    from ..receiver import Receiver

DEFAULT_READ_HIGH = 256 * 1024     # bytes held before reading is paused


class StreamProtocolBase(asyncio.Protocol):
    """Queues the views it is given (no copy) with read flow control; tracks write
    flow control and the connection's end. The waits are the subclasses':
    asyncio's futures (``_asyncio.StreamProtocol``) or trio's events
    (``_trio.TrioStreamProtocol``)."""

    def __init__(self, read_high: int = DEFAULT_READ_HIGH):
        self.transport: ZcrxTransport | None = None
        self.chunks: collections.deque[memoryview] = collections.deque()
        self.buffered = 0
        self.read_high = read_high
        self.read_paused = False
        self.eof = False
        self.exc: BaseException | None = None
        self._write_paused = False
        # called from connection_made with the transport (a listener queues its stream)
        self.on_made: Callable[[ZcrxTransport], None] | None = None

    # asyncio callbacks ------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Receiver.wrap gives its protocols ZcrxTransports (this layer passes no ssl=)
        self.transport = cast(ZcrxTransport, transport)
        if self.on_made is not None:
            self.on_made(self.transport)

    def data_received(self, view: bytes | memoryview) -> None:  # views; bytes with copy=True
        if not isinstance(view, memoryview):
            view = memoryview(view)
        if not view.nbytes:
            return
        self.chunks.append(view)
        self.buffered += view.nbytes
        self._wake()
        if self.buffered >= self.read_high and not self.read_paused:
            self.read_paused = True
            assert self.transport is not None  # data comes after connection_made
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return True  # keep the write side open; aclose() closes

    def connection_lost(self, exc: BaseException | None) -> None:
        self.exc = exc
        self.eof = True
        self._set_lost(exc)
        self._wake()
        self._release_drains()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._release_drains()

    # helpers ----------------------------------------------------------
    def consumed(self, n: int) -> None:
        self.buffered -= n
        if self.read_paused and self.buffered < self.read_high // 2 and self.transport is not None:
            self.read_paused = False
            self.transport.resume_reading()

    def drop(self) -> None:
        while self.chunks:
            self.chunks.popleft().release()
        self.buffered = 0

    # the waits: asyncio's in _asyncio.StreamProtocol, trio's in _trio.TrioStreamProtocol
    def is_lost(self) -> bool:
        """Whether connection_lost has run."""
        raise NotImplementedError

    async def wait_lost(self) -> None:
        """Until connection_lost has run (a cancelled wait leaves it pending)."""
        raise NotImplementedError

    def _set_lost(self, exc: BaseException | None) -> None:
        raise NotImplementedError

    def _wake(self) -> None:
        """Wakes wait_data()."""
        raise NotImplementedError

    async def wait_data(self) -> None:
        """Until data, EOF or the end of the connection (or a _wake())."""
        raise NotImplementedError

    async def drain(self) -> None:
        """Until the transport's write buffer is below its high-water mark again,
        or the connection is lost."""
        raise NotImplementedError

    def _release_drains(self) -> None:
        """Wakes drain()."""
        raise NotImplementedError


class ZcrxStream(anyio.abc.SocketStream):
    """An anyio ``SocketStream`` whose receive side is a ZcrxTransport."""

    def __init__(self, transport: ZcrxTransport, protocol: StreamProtocolBase):
        self._transport = transport
        self._protocol = protocol
        self._closed = False
        self._receiving = False
        self._sending = False
        base: asyncio.BaseTransport = transport  # (asyncio's typed get_extra_info)
        self._sock: trsock.TransportSocket = base.get_extra_info("socket")

    @property
    def transport(self) -> ZcrxTransport:
        """The underlying ``ZcrxTransport`` (``transport.stats()``...)."""
        return self._transport

    @property
    def _raw_socket(self) -> trsock.TransportSocket:  # type: ignore[override]
        # anyio declares a socket.socket; the transport hands out only asyncio's
        # TransportSocket, which has what anyio's SocketAttribute extras call
        # (family, getsockname, getpeername, fileno)
        return self._sock

    # ---------------------------------------------------------------- receive
    async def _next_chunk(self) -> memoryview:
        if self._closed:
            raise anyio.ClosedResourceError
        if self._receiving:
            raise anyio.BusyResourceError("receiving from")
        self._receiving = True
        try:
            p = self._protocol
            while not p.chunks:
                if self._closed:
                    raise anyio.ClosedResourceError
                if p.eof:
                    if p.exc is not None:
                        raise anyio.BrokenResourceError from p.exc
                    if p.is_lost() and self._closed:
                        raise anyio.ClosedResourceError
                    raise anyio.EndOfStream
                await p.wait_data()
            return p.chunks[0]
        finally:
            self._receiving = False

    def _take(self, max_bytes: int) -> memoryview:
        """Detaches up to max_bytes from the head chunk, as a view."""
        p = self._protocol
        head = p.chunks[0]
        if head.nbytes <= max_bytes:
            p.chunks.popleft()
            out = head
        else:
            out = head[:max_bytes]
            p.chunks[0] = head[max_bytes:]
            head.release()
        p.consumed(out.nbytes)
        return out

    async def receive(self, max_bytes: int = 65536) -> bytes:
        """Up to ``max_bytes`` as ``bytes`` (a copy; the buffer is released at once).
        Raises ``anyio.EndOfStream`` at the peer's EOF."""
        if max_bytes < 1:
            raise ValueError("max_bytes must be at least 1")
        await self._next_chunk()
        view = self._take(max_bytes)
        try:
            return bytes(view)
        finally:
            view.release()

    async def receive_view(self, max_bytes: int = 1 << 30) -> memoryview:
        """Zero copy: up to ``max_bytes`` as a read-only memoryview over the
        receive area. You must release it (``view.release()`` / ``with view:``)
        when done: the buffer goes back to the kernel only then. Raises
        ``anyio.EndOfStream`` at the peer's EOF."""
        if max_bytes < 1:
            raise ValueError("max_bytes must be at least 1")
        await self._next_chunk()
        return self._take(max_bytes)

    # ------------------------------------------------------------------- send
    def _start_send(self) -> None:
        """What every backend's ``send()`` checks before it writes (closed, busy,
        after ``send_eof``, broken); then it is sending."""
        if self._closed:
            raise anyio.ClosedResourceError
        if self._sending:
            raise anyio.BusyResourceError("sending to")
        self._check_not_after_eof()
        p = self._protocol
        if p.is_lost() or self._transport.is_closing():
            raise anyio.BrokenResourceError from p.exc
        self._sending = True

    def _check_not_after_eof(self) -> None:
        """Here the transport's ``write()`` refuses after ``write_eof()`` (send() says so)."""

    async def send(self, item: bytes) -> None:
        self._start_send()
        p = self._protocol
        try:
            try:
                self._transport.write(item)
            except RuntimeError as exc:  # after send_eof
                raise anyio.ClosedResourceError from exc
            await p.drain()
            if p.exc is not None:
                raise anyio.BrokenResourceError from p.exc
        finally:
            self._sending = False

    async def send_eof(self) -> None:
        if self._closed:
            raise anyio.ClosedResourceError
        self._transport.write_eof()

    # ------------------------------------------------------------------ close
    async def aclose(self) -> None:
        """Closes the connection (flushing writes) and waits until it is gone.
        Views from ``receive_view`` stay valid until released."""
        if self._closed:
            await self._protocol.wait_lost()
            return
        self._closed = True
        p = self._protocol
        p.drop()
        p._wake()
        self._transport.close()
        try:
            await p.wait_lost()
        except BaseException:  # cancelled (or interrupted): end it now
            self._transport.abort()
            raise

    def __del__(self) -> None:
        t = getattr(self, "_transport", None)
        if t is not None and not getattr(self, "_closed", True) and not t.is_closing():
            try:
                t.abort()
            except Exception:
                pass


class ListenerServer(Protocol):
    """What a ``ZcrxListener`` needs of its backend's server: ``aiozcrx.ZcrxServer``
    on asyncio, ``_trio.TrioServer`` under trio."""

    @property
    def receiver(self) -> Receiver: ...
    @property
    def sockets(self) -> tuple[trsock.TransportSocket, ...]: ...
    def close(self) -> None: ...
    async def wait_closed(self) -> None: ...


class ZcrxListener(anyio.abc.SocketListener):
    """An anyio ``SocketListener`` over a ``ZcrxServer``: ``accept()`` /
    ``serve(handler)`` give ``ZcrxStream`` objects. With several listening sockets
    (host None: IPv4 and IPv6), socket extras describe the first."""

    def __init__(self, server: ListenerServer, next_stream: Callable[[], Awaitable[ZcrxStream]],
                 queue: asyncio.Queue[ZcrxStream] | None = None):
        # next_stream: the next accepted stream (asyncio: from queue, where the
        # server's accepts put them; trio: the TrioServer accepts when asked)
        self._server = server
        self._next_stream = next_stream
        self._queue = queue
        self._sock: trsock.TransportSocket = server.sockets[0]
        self._closed = False

    @property
    def server(self) -> ListenerServer:
        """The ``ZcrxServer`` (under trio, an object with the same ``receiver``,
        ``sockets``, ``close()`` and ``wait_closed()``)."""
        return self._server

    @property
    def _raw_socket(self) -> trsock.TransportSocket:  # type: ignore[override]
        # asyncio's TransportSocket, as ZcrxStream._raw_socket (see there)
        return self._sock

    async def accept(self) -> ZcrxStream:
        if self._closed:
            raise anyio.ClosedResourceError
        return await self._next_stream()

    async def aclose(self) -> None:
        """Stops listening; aborts connections accepted but not handed out.
        Streams already accepted stay open (close them yourself); the shared
        Receiver closes when the last of them is closed."""
        if self._closed:
            return
        self._closed = True
        self._server.close()
        while self._queue is not None and not self._queue.empty():
            stream = self._queue.get_nowait()
            stream._closed = True
            stream._protocol.drop()
            stream._transport.abort()
        await anyio.lowlevel.checkpoint()

    async def wait_closed(self) -> None:
        """Waits until every accepted stream is closed and the Receiver with them."""
        await self._server.wait_closed()


def refuse_ssl(kw: dict[str, Any]) -> None:
    # anyio layers TLS over any byte stream (anyio.streams.tls.TLSStream/TLSListener),
    # so this layer offers none of its own, on every backend: an ssl= passed on to
    # aiozcrx.create_server would give a TLS transport under a protocol written for
    # plain bytes (its eof_received return value, its views) on asyncio only
    if "ssl" in kw:
        _check_unsupported(kw.pop("ssl") or True, {}, ())

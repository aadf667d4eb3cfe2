"""ZcrxTransport: an asyncio.Transport whose read side is an aiozcrx engine.

Deliveries: ``protocol.data_received(view)`` with a read-only ``memoryview`` over
the receive area (``bytes`` when the Receiver was made with ``copy=True``). The
buffer behind a view returns to the kernel when the view and every slice of it
are released. This is the one deviation from asyncio's contract (which passes
``bytes``): a memoryview is what makes zero copy possible; ``bytes(view)`` gives a
private copy when one is needed.

Everything else follows asyncio's selector transport: ``eof_received`` returning
true keeps the transport half open, ``connection_lost(None)`` on a clean close,
write flow control with high/low water marks, ``pause_reading`` stops deliveries
without losing a byte.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import dataclasses
import functools
import io
import os
import socket
import ssl
import sys
import traceback
from asyncio import constants, sslproto, trsock
from typing import IO, TYPE_CHECKING, Any, Callable, Iterable, Optional, Union, cast

from ._fastpath import CopySink
from .engines.base import own_io
from .errors import process_forked

if TYPE_CHECKING:
    from ._kernel import Delivery, Sink
    from .engines.base import Engine

_DEFAULT_HIGH = 64 * 1024
# asyncio's socket transport has a writelines() of its own from 3.12 on, with its
# own messages; before, writelines() is write() and says so
_WRITELINES_OWN_ERRORS = sys.version_info >= (3, 12)
# asyncio's transports carry a context of the connection's own from 3.15 on, and run
# connection_made, the reads, resume_writing and connection_lost in it (uvloop always
# has); pause_writing stays write()'s caller's on asyncio
_ASYNCIO_CONNECTION_CONTEXT = sys.version_info >= (3, 15)



def uvloop_rules(loop: object) -> bool:
    """Whether a transport on ``loop`` follows uvloop's rules where uvloop's
    transports and asyncio's differ: any loop that is not asyncio's own
    (``asyncio.BaseEventLoop``: the stock loop and the drop-in loop on it)."""
    return not isinstance(loop, asyncio.BaseEventLoop)


def set_nodelay(sock: socket.socket, uvloop: bool) -> None:
    """TCP_NODELAY, as the base loop's transports set it: uvloop on every TCP
    socket; asyncio where the socket object says ``proto == IPPROTO_TCP`` (so not on
    a ``socket.socket()``, whose proto is 0)."""
    try:
        if uvloop:
            tcp = (sock.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL) == socket.IPPROTO_TCP
                   and sock.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE) == socket.SOCK_STREAM)
        else:
            tcp = (sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_STREAM
                   and sock.proto == socket.IPPROTO_TCP)
        if tcp:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass


# Set, in each transport's context, to that transport's mark: its callbacks know
# they run there already (a Context cannot be entered twice).
_IN_CONTEXT: contextvars.ContextVar[object] = contextvars.ContextVar("aiozcrx_transport_context")


class _CallbackName:
    """Which protocol method a delivery exception came from (for the message
    asyncio would log: "protocol.get_buffer() call failed." and so on)."""

    DATA = "data_received"


def _tag(exc: BaseException, callback: str) -> None:
    """Which protocol method raised (for the message asyncio would log)."""
    try:
        setattr(exc, "_aiozcrx_callback", callback)
    except AttributeError:
        pass  # an exception type with __slots__: reported as data_received


def _buffered_sink(protocol: asyncio.BufferedProtocol, copied: list[int]) -> Sink:
    """Feeds a BufferedProtocol: copies each view into the protocol's own buffer."""

    def sink(view: Delivery) -> None:
        pos = 0
        n = len(view)
        copied[0] += n
        while pos < n:
            try:
                buf = memoryview(protocol.get_buffer(n - pos)).cast("B")
                k = min(len(buf), n - pos)
                if not k:
                    raise RuntimeError("get_buffer() returned an empty buffer")
            except BaseException as exc:
                _tag(exc, "get_buffer")
                raise
            buf[:k] = view[pos:pos + k]
            try:
                protocol.buffer_updated(k)
            except BaseException as exc:
                _tag(exc, "buffer_updated")
                raise
            pos += k

    return sink


def _buffered_by_duck(protocol: object) -> bool:
    """uvloop's rule for a buffered protocol: any protocol with ``get_buffer`` and
    ``buffer_updated`` that is not an ``asyncio.Protocol`` (asyncio's: an instance of
    ``asyncio.BufferedProtocol``)."""
    return (not isinstance(protocol, asyncio.Protocol) and hasattr(protocol, "get_buffer")
            and hasattr(protocol, "buffer_updated"))


def _tls_sink(protocol: sslproto.SSLProtocol, copied: list[int]) -> Sink:
    """Feeds asyncio's SSL protocol: the ciphertext is copied once, from the view
    straight into the SSL object's input buffer (its ``MemoryBIO``); the view is
    free again at once. On 3.11+ the SSL protocol is a BufferedProtocol, and the
    generic path would copy twice (into its ``get_buffer()``, then into the BIO):
    this writes the BIO itself and runs the protocol's ``buffer_updated(0)`` (an
    empty copy, then its state machine: handshake, read, shutdown)."""
    incoming = getattr(protocol, "_incoming", None)
    if not isinstance(incoming, ssl.MemoryBIO) or not isinstance(protocol, asyncio.BufferedProtocol):
        # 3.10: a plain Protocol whose data_received writes the BIO (any buffer)
        data_received: Callable[[Delivery], object] = getattr(protocol, "data_received")

        def sink_310(view: Delivery) -> None:
            copied[0] += len(view)
            data_received(view)

        return sink_310
    write = incoming.write
    updated = protocol.buffer_updated

    def sink(view: Delivery) -> None:
        copied[0] += len(view)
        write(view)
        try:
            updated(0)
        except BaseException as exc:
            _tag(exc, "buffer_updated")
            raise

    return sink


def _check_sendfile_params(file: IO[bytes], offset: object, count: object) -> None:
    """``loop.sendfile``'s checks of its arguments, with its errors and messages."""
    if "b" not in getattr(file, "mode", "b"):
        raise ValueError("file should be opened in binary mode")
    if count is not None:
        if not isinstance(count, int):
            raise TypeError(f"count must be a positive integer (got {count!r})")
        if count <= 0:
            raise ValueError(f"count must be a positive integer (got {count!r})")
    if not isinstance(offset, int):
        raise TypeError(f"offset must be a non-negative integer (got {offset!r})")
    if offset < 0:
        raise ValueError(f"offset must be a non-negative integer (got {offset!r})")


class ViewProtocol(asyncio.Protocol):
    """Base class of protocols that take memoryviews: ``data_received(view)``.

    Only needed where views are opt-in (``Receiver(views="opt-in")``, and the
    drop-in loop ``aiozcrx.new_event_loop``); any protocol class can opt in with
    the class attribute ``aiozcrx_views = True`` instead. A protocol that keeps
    views holds area memory until it releases them (see docs/concepts.md)."""

    aiozcrx_views = True


# asyncio's loop.sendfile() fallback accepts only transports derived from its
# write-flow-control mixin; ZcrxTransport overrides every method of it.
if TYPE_CHECKING:
    _FlowControlBase = asyncio.transports._FlowControlMixin
else:
    _FlowControlBase = getattr(asyncio.transports, "_FlowControlMixin", asyncio.Transport)


@dataclasses.dataclass(frozen=True)
class TransportLink:
    """What a ``ZcrxTransport`` uses of the ``Receiver`` that made it, and all of
    it: the Receiver hands each new transport one (``Receiver._wrap_now``), so
    the transport never reaches into the Receiver's own state, and this module
    needs nothing from aiozcrx.receiver."""

    engine: Engine                     # the connection's read side is this engine's
    loop: asyncio.AbstractEventLoop    # (under trio, aiozcrx.anyio's TrioLoop)
    copied: list[int]                  # one cell: bytes copied in user space for protocols
    copies_for: Callable[[object], bool]  # whether a protocol gets bytes rather than views
    # a connection's views hold its share: (protocol class name, held, limit bytes)
    warn_over_share: Callable[[str, int, int], None]
    forget: Callable[[ZcrxTransport], None]  # the transport is gone (connection_lost ran)
    fallback_reason: Callable[[], str]  # get_extra_info("aiozcrx_fallback_reason")
    stats: Callable[[], dict[str, Any]]  # get_extra_info("aiozcrx_receiver_stats")
    owner: object                      # the Receiver itself: never used here (debuggers, tests)


class ZcrxTransport(_FlowControlBase):
    """The transport aiozcrx gives a protocol. Made by ``Receiver.wrap``.

    Its read side belongs to the engine: the transport holds the engine's record
    of this connection (``engines.Conn``) and calls only its ``set_sink``,
    ``start``, ``stop`` and ``detach``; the engine reports back through
    ``_read_eof``, ``_read_error`` and ``_callback_failed`` (``ReadEvents``).
    What the transport keeps is asyncio's side of the contract: paused or not,
    the backlog of deliveries that arrived while a pause took effect, and the
    end of stream held behind that backlog.
    """

    def __init__(self, link: TransportLink, sock: socket.socket, protocol: asyncio.BaseProtocol):
        asyncio.Transport.__init__(self)  # the mixin's __init__ would reset our write limits
        engine, loop = link.engine, link.loop
        self._link = link
        self._pid = os.getpid()  # a forked child gets ProcessForked (see _check_process)
        self._engine_name: str = engine.name
        self._loop: asyncio.AbstractEventLoop = loop
        self._uvloop_rules = uvloop_rules(loop)
        self._connection_context_rules = self._uvloop_rules or _ASYNCIO_CONNECTION_CONTEXT
        # The protocol's reading callbacks (data_received, eof_received, get_buffer/
        # buffer_updated) run in a context of this connection's, a copy of the one it
        # was made in, as the base loops run them (asyncio: its reader's; uvloop: the
        # transport's); on the uvloop base all its callbacks do.
        self._context = contextvars.copy_context()
        self._context_mark = object()
        self._context.run(_IN_CONTEXT.set, self._context_mark)
        set_nodelay(sock, self._uvloop_rules)
        self._sock = sock
        self._fileno = sock.fileno()
        # the loop's readers and writers on this socket: ours alone while it is open
        # (the drop-in loop refuses its fd to others, as the base loops do theirs)
        self._io = own_io(loop)
        fds = getattr(loop, "_aiozcrx_fds", None)
        if fds is not None:
            fds[self._fileno] = self
        self._protocol: Any = protocol  # None once connection_lost has run (as asyncio)
        # read side: the engine's record exists before connection_made runs, so
        # whatever the protocol does there (pause, close) applies to this
        # connection and no other
        self._conn = engine.attach(self._fileno, self)
        self._started = False        # connection_made has returned and reading began
        self._paused = False
        self._backlog: collections.deque[Delivery] = collections.deque()
        self._draining = False
        # ("eof",) or ("error", exc) held behind the backlog
        self._pending_end: Optional[tuple[Any, ...]] = None
        self._read_done = False      # EOF or error seen
        # write side
        self._write_buffer = bytearray()
        self._eof_written = False
        self._closing = False
        self._conn_lost = 0
        self._protocol_paused = False
        self._high_water = _DEFAULT_HIGH
        self._low_water = _DEFAULT_HIGH // 4
        self._bytes_written = 0
        self._drain_waiters: list[asyncio.Future[None]] = []  # sendfile() waiting for the buffer
        self._sendfile_active = False  # _sendfile_native is sending: write() is refused
        self._extra: dict[str, Any] = {"socket": trsock.TransportSocket(sock)}
        for key, fn in (("sockname", sock.getsockname), ("peername", sock.getpeername)):
            try:
                self._extra[key] = fn()
            except OSError:
                self._extra[key] = None

    def _check_process(self) -> None:
        """In a forked child the connection is the parent's: its socket, ring and
        views are not the child's to use (docs/security.md)."""
        if os.getpid() != self._pid:
            raise process_forked("transport's Receiver")

    # ------------------------------------------------------------ start / sink
    def _sink(self) -> Sink:
        """What the engine calls with each delivery: the protocol's reading
        callbacks, run in this transport's context (``_context``)."""
        p = self._protocol
        sink: Sink
        if isinstance(p, sslproto.SSLProtocol):
            sink = _tls_sink(p, self._link.copied)
        elif isinstance(p, asyncio.BufferedProtocol) or (self._uvloop_rules and _buffered_by_duck(p)):
            sink = _buffered_sink(cast(asyncio.BufferedProtocol, p), self._link.copied)
        elif not hasattr(p, "data_received"):
            def missing(view: Delivery) -> None:
                p.data_received(view)  # AttributeError at the first delivery, as asyncio's
            sink = missing
        elif self._link.copies_for(p):
            # ``data_received(bytes(view))``; the C dispatcher copies straight out of
            # the buffer and makes no view at all, and enters the context itself
            # (aiozcrx/_c/copysink.c)
            copier: Sink = CopySink(p.data_received, self._link.copied, self._context)
            return copier
        else:
            sink = p.data_received
        # Deliveries do not nest (the dispatcher's pump does not, a backlog drains
        # from its own loop callback): the context is never entered already here.
        run: Callable[..., object] = self._context.run
        return functools.partial(run, sink)

    def _in_context(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` in this transport's context (entered unless already)."""
        if _IN_CONTEXT.get(None) is self._context_mark:
            return fn(*args)
        return self._context.run(fn, *args)

    def _connection_made(self) -> None:
        """``protocol.connection_made(self)``: uvloop and asyncio 3.15+ run it in the
        transport's context (what it sets there, data_received sees), asyncio before
        3.15 in a copy of the caller's (a call_soon: what it sets stays there)."""
        if self._connection_context_rules:
            self._in_context(self._protocol.connection_made, self)
        else:
            contextvars.copy_context().run(self._protocol.connection_made, self)

    def _uv_context(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``pause_writing``: uvloop runs it in the transport's context (like its
        reads), asyncio in ``write()``'s caller's."""
        if self._uvloop_rules:
            return self._in_context(fn, *args)
        return fn(*args)

    def _connection_context(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``resume_writing``, ``connection_lost``: uvloop and asyncio 3.15+ run them
        in the transport's context, asyncio before 3.15 in the caller's (the writer
        callback's; ``close()``'s for ``connection_lost``: a call_soon)."""
        if self._connection_context_rules:
            return self._in_context(fn, *args)
        return fn(*args)

    def _start(self) -> None:
        """After connection_made: begin reading unless the protocol paused or
        closed in it."""
        self._started = True
        if self._closing:
            return
        if self._paused:
            self._conn.set_sink(self._backlog.append)
            return
        self._reading_on()

    # --------------------------------------------------------------- reading
    def is_reading(self) -> bool:
        # as asyncio's selector transport: True after an EOF kept open, too
        return not (self._paused or self._closing)

    def pause_reading(self) -> None:
        """No ``data_received`` calls until ``resume_reading``; nothing is lost:
        completions already under way are kept and delivered first on resume."""
        self._check_process()
        if self._closing or self._paused:
            return
        self._paused = True
        if self._started:
            self._conn.set_sink(self._backlog.append)
            self._conn.stop()

    def resume_reading(self) -> None:
        self._check_process()
        if self._closing or not self._paused:
            return
        self._paused = False
        if not self._started:
            return  # paused and resumed inside connection_made: _start reads
        if self._backlog or self._pending_end:
            if not self._draining:
                self._draining = True
                self._loop.call_soon(self._drain_backlog)
        else:
            self._reading_on()

    def _reading_on(self) -> None:
        self._conn.set_sink(self._sink())
        if not self._read_done:
            self._conn.start()

    def _drain_backlog(self) -> None:
        self._draining = False
        if self._paused or self._closing:
            return
        sink, sunk_for = self._sink(), self._protocol
        while self._backlog:
            if self._protocol is not sunk_for:  # set_protocol() from a callback
                sink, sunk_for = self._sink(), self._protocol
            view = self._backlog.popleft()
            try:
                sink(view)
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                del view
                self._callback_failed(exc)
                return
            del view
            if self._paused or self._closing:
                return
        if self._pending_end is not None:
            end, self._pending_end = self._pending_end, None
            if end[0] == "eof":
                self._deliver_eof()
            else:
                self._force_close(end[1])
            return
        self._reading_on()

    # ReadEvents: called by the engine ----------------------------------------
    def _read_eof(self) -> None:
        self._read_done = True
        if self._closing:
            return
        if self._paused or self._backlog:
            self._pending_end = ("eof",)
            return
        self._deliver_eof()

    def _deliver_eof(self) -> None:
        if self._closing:
            return
        try:
            keep_open = self._in_context(self._protocol.eof_received)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal error: protocol.eof_received() call failed.")
            return
        if not keep_open:
            self.close()

    def _read_error(self, exc: OSError) -> None:
        self._read_done = True
        if self._closing:
            return
        if self._paused or self._backlog:
            self._pending_end = ("error", exc)
            return
        self._force_close(exc)

    def _over_share(self, held_bytes: int, limit_bytes: int) -> None:
        self._link.warn_over_share(type(self._protocol).__name__, held_bytes, limit_bytes)

    def _callback_failed(self, exc: BaseException) -> None:
        # The traceback's frames hold the view data_received was called with (and
        # exceptions often sit in reference cycles): clear their locals so the
        # buffer goes back now, not at the next garbage collection.
        traceback.clear_frames(exc.__traceback__)
        name = getattr(exc, "_aiozcrx_callback", _CallbackName.DATA)
        self._fatal_error(exc, f"Fatal error: protocol.{name}() call failed.")

    # ------------------------------------------------------------ write side
    def write(self, data: Union[bytes, bytearray, memoryview]) -> None:
        self._check_process()
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data argument must be a bytes-like object, not {type(data).__name__!r}")
        if self._eof_written:
            raise RuntimeError("Cannot call write() after write_eof()")
        if self._sendfile_active:
            raise RuntimeError("unable to write; sendfile is in progress")
        if not data:
            return
        if self._conn_lost:
            self._conn_lost += 1
            return
        if not self._write_buffer:
            try:
                n = self._sock.send(data)
            except (BlockingIOError, InterruptedError):
                n = 0
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._fatal_error(exc, "Fatal write error on socket transport")
                return
            self._bytes_written += n
            if n == len(data) and not isinstance(data, memoryview):
                return  # all sent (the common case): no view to make
            data = memoryview(data).cast("B")[n:]
            if not data:
                return
            self._io.add_writer(self._fileno, self._write_ready)
        self._write_buffer.extend(data)
        self._maybe_pause_protocol()

    def writelines(self, list_of_data: Iterable[Union[bytes, bytearray, memoryview]]) -> None:
        if _WRITELINES_OWN_ERRORS:
            if self._eof_written:
                raise RuntimeError("Cannot call writelines() after write_eof()")
            if self._sendfile_active:
                raise RuntimeError("unable to writelines; sendfile is in progress")
        for data in list_of_data:
            self.write(data)

    def _write_ready(self) -> None:
        if self._conn_lost:
            return
        try:
            n = self._sock.send(self._write_buffer)
        except (BlockingIOError, InterruptedError):
            return
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._io.remove_writer(self._fileno)
            self._write_buffer.clear()
            self._fatal_error(exc, "Fatal write error on socket transport")
            return
        if n:
            del self._write_buffer[:n]
            self._bytes_written += n
        self._maybe_resume_protocol()
        if not self._write_buffer:
            self._io.remove_writer(self._fileno)
            for fut in self._drain_waiters:
                if not fut.done():
                    fut.set_result(None)
            self._drain_waiters.clear()
            if self._closing:
                self._call_connection_lost_soon(None)
            elif self._eof_written:
                self._shutdown_write()

    def can_write_eof(self) -> bool:
        return True

    # ------------------------------------------------------------- sendfile
    # The stock loop's loop.sendfile() sends through write() with flow control
    # (its "fallback" path) for transports that say so; the drop-in loop
    # (aiozcrx.new_event_loop, either base) calls _sendfile_native: os.sendfile
    # straight from the file to the socket, as the stock loop's native path for its
    # own transports (and with the same rules: see _sendfile_native).
    _sendfile_compatible = constants._SendfileMode.FALLBACK
    # the stock loop's loop.start_tls() layers its SSL protocol on transports that
    # say so; on uvloop (which refuses other transports) use aiozcrx.start_tls
    _start_tls_compatible = True

    async def _sendfile_native(self, file: IO[bytes], offset: int = 0, count: int | None = None) -> int:
        """os.sendfile from ``file`` to the socket, as the stock loop's native path
        (``loop.sendfile`` on its socket transports): the arguments checked as it
        checks them; a file os.sendfile cannot take (no ``fileno()``, or a first
        call that fails) is ``asyncio.SendfileNotAvailableError``, for the loop to
        fall back on write(); reading is paused until it returns (nothing is
        delivered meanwhile, and the peer's end is seen after it) and write() is
        refused meanwhile (it would land in the middle of the file); what was
        written before goes first."""
        self._check_process()
        if self._closing:
            raise RuntimeError("Transport is closing")
        if self._sendfile_active:
            raise RuntimeError("sendfile is already in progress on this transport")
        _check_sendfile_params(file, offset, count)
        try:
            fileno = file.fileno()
            fsize = os.fstat(fileno).st_size
        except (AttributeError, io.UnsupportedOperation, OSError):
            raise asyncio.SendfileNotAvailableError("not a regular file") from None
        blocksize = count if count else fsize
        if not blocksize:
            return 0  # an empty file
        resume_reading = self.is_reading()
        self.pause_reading()
        self._sendfile_active = True
        total = 0
        try:
            while self._write_buffer:
                await self._wait_writable()
            while count is None or total < count:
                if self._conn_lost:  # closed by the application meanwhile
                    raise ConnectionResetError("the connection was closed during sendfile()")
                if count:
                    blocksize = count - total
                try:
                    n = os.sendfile(self._fileno, fileno, offset + total, blocksize)
                except (BlockingIOError, InterruptedError):
                    await self._wait_writable()
                    continue
                except OSError as exc:
                    if total == 0:  # as asyncio: the loop may fall back on write()
                        raise asyncio.SendfileNotAvailableError("os.sendfile call failed") from exc
                    raise
                if n == 0:
                    break  # end of file
                total += n
                self._bytes_written += n
        finally:
            self._sendfile_active = False
            if total:
                file.seek(offset + total)
            if resume_reading:
                self.resume_reading()
        return total

    async def _wait_writable(self) -> None:
        if self._closing or self._conn_lost:
            raise ConnectionResetError("the connection was closed during sendfile()")
        fut = self._loop.create_future()
        self._drain_waiters.append(fut)  # failed if the connection is lost meanwhile
        if not self._write_buffer:  # else _write_ready wakes it once the buffer is empty
            def writable() -> None:
                if not fut.done():
                    fut.set_result(None)

            self._io.add_writer(self._fileno, writable)
        try:
            await fut
        finally:
            if fut in self._drain_waiters:
                self._drain_waiters.remove(fut)
            if not self._write_buffer and not self._conn_lost:
                self._io.remove_writer(self._fileno)

    def write_eof(self) -> None:
        self._check_process()
        if self._closing or self._eof_written:
            return
        self._eof_written = True
        if not self._write_buffer:
            self._shutdown_write()

    def _shutdown_write(self) -> None:
        # as asyncio's selector transport: an error (ENOTCONN after a reset)
        # reaches the caller of write_eof(), or the loop's handler when the
        # shutdown was deferred behind the write buffer
        self._sock.shutdown(socket.SHUT_WR)

    def get_write_buffer_size(self) -> int:
        return len(self._write_buffer)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (self._low_water, self._high_water)

    def set_write_buffer_limits(self, high: Optional[int] = None, low: Optional[int] = None) -> None:
        self._check_process()
        if high is None:
            high = _DEFAULT_HIGH if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._high_water, self._low_water = high, low
        self._maybe_pause_protocol()

    def _maybe_pause_protocol(self) -> None:
        if len(self._write_buffer) <= self._high_water or self._protocol_paused:
            return
        self._protocol_paused = True
        try:
            self._uv_context(self._protocol.pause_writing)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._loop.call_exception_handler({
                "message": "protocol.pause_writing() failed", "exception": exc,
                "transport": self, "protocol": self._protocol})

    def _maybe_resume_protocol(self) -> None:
        if self._protocol_paused and len(self._write_buffer) <= self._low_water:
            self._protocol_paused = False
            try:
                self._connection_context(self._protocol.resume_writing)
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._loop.call_exception_handler({
                    "message": "protocol.resume_writing() failed", "exception": exc,
                    "transport": self, "protocol": self._protocol})

    # ----------------------------------------------------------------- close
    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        """Stops reading (unread data is dropped, as in asyncio), flushes the write
        buffer, then calls ``connection_lost(None)``. Views already delivered stay
        readable: their memory lives until the last of them is released."""
        self._check_process()
        if self._closing:
            return
        self._closing = True
        self._stop_reading()
        if not self._write_buffer:
            self._call_connection_lost_soon(None)

    def abort(self) -> None:
        self._check_process()
        self._force_close(None)

    def _fatal_error(self, exc: BaseException, message: str) -> None:
        if not isinstance(exc, OSError):
            self._loop.call_exception_handler({
                "message": message, "exception": exc, "transport": self, "protocol": self._protocol})
        self._force_close(exc)

    def _force_close(self, exc: Optional[BaseException]) -> None:
        if self._conn_lost:
            return
        if self._write_buffer:
            self._write_buffer.clear()
            self._io.remove_writer(self._fileno)
        self._closing = True
        self._stop_reading()
        self._call_connection_lost_soon(exc)

    def _stop_reading(self) -> None:
        self._conn.set_sink(None)
        self._conn.stop()
        self._backlog.clear()  # unread data goes back to the kernel, as asyncio drops it
        self._pending_end = None

    def _call_connection_lost_soon(self, exc: Optional[BaseException]) -> None:
        if self._conn_lost:
            return
        self._conn_lost += 1
        self._loop.call_soon(self._call_connection_lost, exc)

    def _call_connection_lost(self, exc: Optional[BaseException]) -> None:
        for fut in self._drain_waiters:
            if not fut.done():
                fut.set_exception(ConnectionResetError("the connection was lost during sendfile()"))
        self._drain_waiters.clear()
        try:
            self._connection_context(self._protocol.connection_lost, exc)
        finally:
            self._conn.detach()
            self._link.forget(self)
            fds = getattr(self._loop, "_aiozcrx_fds", None)
            if fds is not None and fds.get(self._fileno) is self:
                del fds[self._fileno]
            self._sock.close()
            self._protocol = None

    # ------------------------------------------------------------------ info
    def get_protocol(self) -> asyncio.BaseProtocol:
        return cast(asyncio.BaseProtocol, self._protocol)  # None once connection_lost ran, as asyncio

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        """Deliveries from now on go to ``protocol`` (as asyncio: its
        ``connection_made`` is not called). Nothing is lost or repeated: a switch
        inside ``data_received`` takes effect from the next delivery, and what a
        pause kept back goes to the new protocol on resume."""
        self._check_process()
        self._protocol = protocol
        if self._started and not self._closing and not self._paused and not self._backlog:
            self._conn.set_sink(self._sink())

    def stats(self) -> dict[str, int]:
        """Per-connection counters: bytes and completions received, bytes written."""
        self._check_process()
        completions, nbytes = self._conn.stats()
        return {"bytes_received": nbytes, "completions": completions,
                "bytes_written": self._bytes_written, "backlog": len(self._backlog)}

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "aiozcrx_engine":
            return self._engine_name
        if name == "aiozcrx_fallback_reason":
            return self._link.fallback_reason()
        if name == "aiozcrx_stats":
            return self.stats()
        if name == "aiozcrx_receiver_stats":
            return self._link.stats()
        return self._extra.get(name, default)

    def __repr__(self) -> str:
        state = "closing" if self._closing else ("paused" if self._paused else "open")
        return f"<ZcrxTransport fd={self._fileno} engine={self._engine_name} {state}>"

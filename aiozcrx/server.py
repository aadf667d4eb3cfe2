"""Servers and client connections whose transports are ZcrxTransports.

``create_server`` and ``create_connection`` mirror ``loop.create_server`` and
``loop.create_connection``; the difference is the receive path: every accepted
(or connected) socket is attached to an aiozcrx ``Receiver``, so
``protocol.data_received`` gets read-only memoryviews over registered memory
(``bytes`` with ``copy=True``).

- A server owns one Receiver, shared by all its connections. It is closed once
  the server is closed *and* its last connection is gone; ``wait_closed()``
  returns after that.
- ``create_connection`` makes a Receiver owned by the connection, closed right
  after ``connection_lost``; or pass ``receiver=`` to attach to one of yours
  (which you then close).

TLS: ``ssl=`` (an ``ssl.SSLContext``) layers asyncio's own SSL protocol on the
ZcrxTransport (see ``aiozcrx.tls``): the protocol gets ``bytes`` of plaintext
from asyncio's SSL transport; the ciphertext is copied once out of the receive
area, so TLS payload is not zero copy.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import socket
import ssl as _ssl
import sys
from typing import Any, Callable, Iterable, Optional, Sequence, Union

from . import tls as _tls
from .config import DEFAULT_BUF_SIZE, socket_family
from .engines.base import EngineLoop
from .receiver import Receiver
from .transport import ZcrxTransport

ProtocolFactory = Callable[[], asyncio.BaseProtocol]
SSLArg = Union[_ssl.SSLContext, bool, None]

__all__ = ["ZcrxServer", "create_connection", "create_server"]

_ACCEPT_RETRY_DELAY = 1.0
_RESOURCE_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


class _OwnedReceiver(Receiver):
    """A Receiver that tells its owner when a connection has gone (after the
    transport's ``connection_lost``)."""

    def __init__(self, *args: Any, on_forget: Callable[[], None] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._on_forget = on_forget

    def _forget(self, transport: ZcrxTransport) -> None:
        super()._forget(transport)
        if self._on_forget is not None:
            self._on_forget()


#: the Receiver options create_server and create_connection take by name (with
#: Config's defaults); any other goes in their receiver_options= dict
RECEIVER_KEYWORDS = ("engine", "interface", "queue", "area_size", "rq_entries", "copy", "buf_size")


class _ClosesReceiverWhenIdle:
    """A server whose connections share one Receiver (ZcrxServer, and TrioServer
    under trio) closes it once the server is closed *and* its last connection is
    gone: ``close()`` and each connection's end (the Receiver's ``_on_forget``)
    call ``_maybe_finish``. The server brings its loop, its Receiver, whether it
    is closed, and how "done" is kept and waited for (``_done_yet``, ``_set_done``:
    an asyncio future, a trio event)."""

    _loop: EngineLoop
    _receiver: _OwnedReceiver
    _closed: bool

    def _busy(self) -> bool:
        """Connections (or connections being made) still use the Receiver."""
        return bool(self._receiver._transports)

    def _done_yet(self) -> bool:
        raise NotImplementedError

    def _set_done(self) -> None:
        raise NotImplementedError

    def _maybe_finish(self) -> None:
        if self._closed and not self._busy() and not self._done_yet():
            # the transport calling us is still finishing its connection_lost: close
            # the Receiver on the next loop iteration
            self._loop.call_soon(self._finish)

    def _finish(self) -> None:
        if self._done_yet() or self._busy():
            return  # done already, or a connection arrived meanwhile: it will call us again
        try:
            self._receiver.close()
        finally:
            self._set_done()


def _set_nodelay(sock: socket.socket) -> None:
    if socket_family(sock) in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_STREAM \
            and sock.proto == socket.IPPROTO_TCP:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


async def settle(transport: asyncio.BaseTransport) -> None:
    """The end of a connection's setup, as the loop's own ``create_connection`` and
    ``connect_accepted_socket`` have it: they return after one more pass of the loop
    at least, so that a ``cancel()`` right after the call still cancels them; the
    new connection is then closed (and its socket with it)."""
    try:
        await asyncio.sleep(0)
    except BaseException:
        transport.close()
        raise


def _check_unsupported(ssl: object, kwargs: dict[str, Any], allowed: Iterable[str]) -> None:
    """For the layers that offer no TLS of their own (the anyio layer under trio):
    ``ssl=`` is a ValueError naming what to use instead; unknown keywords a TypeError."""
    if ssl:
        raise ValueError("TLS (ssl=) is not offered here: wrap the stream in anyio's TLSStream "
                         "(anyio.streams.tls), or on asyncio use aiozcrx.create_server/"
                         "create_connection(ssl=...)")
    _check_unknown(kwargs, allowed)


def _check_unknown(kwargs: dict[str, Any], allowed: Iterable[str]) -> None:
    unknown = set(kwargs) - set(allowed)
    if unknown:
        raise TypeError(f"unexpected keyword argument(s): {', '.join(sorted(unknown))}")


class ZcrxServer(_ClosesReceiverWhenIdle, asyncio.AbstractServer):
    """What ``create_server`` returns; behaves like ``asyncio.Server``.

    ``close()`` stops listening (connections stay open, as with asyncio);
    ``close_clients()``/``abort_clients()`` end them; ``wait_closed()`` waits
    until the server is closed and every connection is gone, then the shared
    Receiver is closed.
    """

    _loop: asyncio.AbstractEventLoop

    def __init__(self, loop: asyncio.AbstractEventLoop, sockets: list[socket.socket],
                 protocol_factory: ProtocolFactory, receiver: _OwnedReceiver, backlog: int,
                 ssl: Optional[_ssl.SSLContext] = None, ssl_handshake_timeout: Optional[float] = None,
                 ssl_shutdown_timeout: Optional[float] = None):
        self._loop = loop
        self._sockets: list[socket.socket] | None = sockets
        self._protocol_factory = protocol_factory
        self._receiver = receiver
        self._backlog = backlog
        self._ssl = ssl
        self._ssl_handshake_timeout = ssl_handshake_timeout
        self._ssl_shutdown_timeout = ssl_shutdown_timeout
        self._serving = False
        self._closed = False
        self._pending: set[asyncio.Future[None]] = set()   # TLS handshakes under way
        self._retry_handles: list[asyncio.TimerHandle] = []
        self._serving_forever: asyncio.Future[None] | None = None
        self._done: asyncio.Future[None] = loop.create_future()  # receiver closed
        receiver._on_forget = self._maybe_finish

    # ---------------------------------------------------------------- info
    @property
    def receiver(self) -> Receiver:
        """The Receiver shared by this server's connections."""
        return self._receiver

    @property
    def sockets(self) -> tuple[asyncio.trsock.TransportSocket, ...]:
        if self._sockets is None:
            return ()
        return tuple(asyncio.trsock.TransportSocket(s) for s in self._sockets)

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def is_serving(self) -> bool:
        return self._serving

    def __repr__(self) -> str:
        return (f"<aiozcrx.ZcrxServer sockets={self.sockets!r} engine={self._receiver.engine!r} "
                f"connections={len(self._receiver._transports)}>")

    # ------------------------------------------------------------- serving
    async def start_serving(self) -> None:
        if self._closed:
            raise RuntimeError(f"server {self!r} is closed")
        self._start()
        await asyncio.sleep(0)

    def _start(self) -> None:
        if self._serving or self._closed:
            return
        self._serving = True
        for sock in self._sockets or ():
            self._loop.add_reader(sock.fileno(), self._accept_ready, sock)

    def _accept_ready(self, sock: socket.socket) -> None:
        for _ in range(self._backlog):
            if not self._serving:
                return
            try:
                conn, _addr = sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                if exc.errno in _RESOURCE_ERRNOS:
                    self._loop.call_exception_handler({
                        "message": "socket.accept() out of system resource", "exception": exc,
                        "socket": asyncio.trsock.TransportSocket(sock)})
                    self._loop.remove_reader(sock.fileno())
                    self._retry_handles.append(self._loop.call_later(
                        _ACCEPT_RETRY_DELAY, self._resume_accept, sock))
                else:
                    self._loop.call_exception_handler({
                        "message": "socket.accept() failed", "exception": exc,
                        "socket": asyncio.trsock.TransportSocket(sock)})
                return
            self._attach(conn)  # TCP_NODELAY: the transport sets it, as the base loop would

    def _resume_accept(self, sock: socket.socket) -> None:
        if self._serving and self._sockets is not None and sock in self._sockets:
            self._loop.add_reader(sock.fileno(), self._accept_ready, sock)

    # An accepted connection is attached here and now, with no task: uvloop's way.
    # A task per connection (asyncio's) is left pending for as long as a TLS
    # handshake waits, and a loop closed meanwhile destroys it ("Task was destroyed
    # but it is pending!"); a handshake under way is a future and a callback.
    def _attach(self, conn: socket.socket) -> None:
        if self._ssl is not None:
            self._attach_tls(conn, self._ssl)
            return
        self._attach_or_report(conn, self._protocol_factory)

    def _attach_or_report(self, conn: socket.socket, factory: ProtocolFactory
                          ) -> Optional[ZcrxTransport]:
        """The transport, or None when the factory (or making the transport)
        failed: the loop's exception handler hears of it, the socket is closed."""
        try:
            transport, _ = self._receiver._wrap_now(conn, factory)
            return transport
        except (SystemExit, KeyboardInterrupt):
            conn.close()
            raise
        except BaseException as exc:
            conn.close()
            self._setup_failed(exc)
            return None

    def _attach_tls(self, conn: socket.socket, ctx: _ssl.SSLContext) -> None:
        """Attaches with asyncio's SSL protocol, which connects the application's
        protocol once the handshake is done. A failed handshake (a client that does
        not trust us, a port scanner) closes that connection and, as with asyncio,
        is reported only in debug mode."""
        handshake: asyncio.Future[None] = self._loop.create_future()

        def ssl_protocol() -> asyncio.BaseProtocol:
            return _tls.make_protocol(self._loop, self._protocol_factory(), ctx, handshake,
                                      server_side=True, server_hostname=None,
                                      ssl_handshake_timeout=self._ssl_handshake_timeout,
                                      ssl_shutdown_timeout=self._ssl_shutdown_timeout)

        transport = self._attach_or_report(conn, ssl_protocol)
        if transport is None:
            return
        self._pending.add(handshake)
        handshake.add_done_callback(functools.partial(self._handshake_done, transport))

    def _handshake_done(self, transport: ZcrxTransport, handshake: asyncio.Future[None]) -> None:
        self._pending.discard(handshake)
        exc = asyncio.CancelledError() if handshake.cancelled() else handshake.exception()
        if exc is not None:
            transport.close()
            if self._loop.get_debug():
                self._loop.call_exception_handler({
                    "message": "Error on transport creation for incoming connection "
                               "(TLS handshake)", "exception": exc})
        self._maybe_finish()

    def _setup_failed(self, exc: BaseException) -> None:
        self._loop.call_exception_handler({
            "message": "aiozcrx server: could not set up an accepted connection "
                       "(protocol_factory() or connection_made() failed)",
            "exception": exc})

    async def serve_forever(self) -> None:
        if self._serving_forever is not None:
            raise RuntimeError(f"server {self!r} is already being awaited on serve_forever()")
        if self._closed:
            raise RuntimeError(f"server {self!r} is closed")
        self._start()
        self._serving_forever = self._loop.create_future()
        try:
            await self._serving_forever
        except asyncio.CancelledError:
            try:
                self.close()
                await self.wait_closed()
            finally:
                raise
        finally:
            self._serving_forever = None

    # ------------------------------------------------------------- closing
    def close(self) -> None:
        """Stops listening and closes the listening sockets. Connections already
        accepted stay open; the Receiver closes when the last of them is gone."""
        if self._closed:
            return
        self._closed = True
        self._serving = False
        for h in self._retry_handles:
            h.cancel()
        self._retry_handles.clear()
        sockets, self._sockets = self._sockets, None
        for sock in sockets or ():
            self._loop.remove_reader(sock.fileno())
            sock.close()
        if self._serving_forever is not None and not self._serving_forever.done():
            self._serving_forever.cancel()
        self._maybe_finish()

    def close_clients(self) -> None:
        """Closes every connection (flushing what they have to write)."""
        for t in list(self._receiver._transports):
            t.close()

    def abort_clients(self) -> None:
        """Aborts every connection at once."""
        for t in list(self._receiver._transports):
            t.abort()

    # closing the Receiver when idle (_ClosesReceiverWhenIdle): TLS handshakes
    # under way count as connections
    def _busy(self) -> bool:
        return bool(self._pending) or super()._busy()

    def _done_yet(self) -> bool:
        return self._done.done()

    def _set_done(self) -> None:
        self._done.set_result(None)

    async def wait_closed(self) -> None:
        """Waits until the server is closed and all its connections are gone (the
        Python 3.12+ meaning), then the Receiver is closed too."""
        await asyncio.shield(self._done)

    async def __aenter__(self) -> "ZcrxServer":
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
        await self.wait_closed()


def _bind_error(err: OSError, address: Any) -> OSError:
    """asyncio's error for a bind() that failed: the errno, and its message (worded
    from ``str(err)`` since 3.13, from ``err.strerror`` before)."""
    detail = str(err) if sys.version_info >= (3, 13) else (err.strerror or "")
    return OSError(err.errno, f"error while attempting to bind on address {address!r}: "
                              f"{detail.lower()}")


def _bind_sockets(infos: Iterable[Any], backlog: int, reuse_address: Optional[bool],
                  reuse_port: Optional[bool]) -> list[socket.socket]:
    sockets: list[socket.socket] = []
    seen = set()
    try:
        for family, type_, proto, _canon, sa in infos:
            key = (family, type_, proto, sa)
            if key in seen:
                continue
            seen.add(key)
            try:
                sock = socket.socket(family, type_, proto)
            except OSError:
                continue  # e.g. no IPv6 here
            sockets.append(sock)
            if reuse_address:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(sa)
            except OSError as err:
                raise _bind_error(err, sa) from None
        if not sockets:
            raise OSError("no address to bind to")
        for sock in sockets:
            sock.listen(backlog)
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _take_stream_socket(sock: socket.socket, host: Any, port: Any) -> None:
    """Checks a caller-given socket as asyncio does, and makes it non-blocking."""
    if host is not None or port is not None:
        raise ValueError("host/port and sock can not be specified at the same time")
    if sock.type != socket.SOCK_STREAM:
        raise ValueError(f"A Stream Socket was expected, got {sock!r}")
    sock.setblocking(False)


def _is_connected(sock: socket.socket) -> bool:
    try:
        sock.getpeername()
    except OSError:
        return False
    return True


async def create_server(protocol_factory: ProtocolFactory, host: Union[str, Sequence[str], None] = None,
                        port: Optional[int] = None, *, engine: str = "auto",
                        interface: str | None = None, queue: int | None = None,
                        area_size: int | None = None, rq_entries: int | None = None,
                        copy: bool = False, buf_size: int = DEFAULT_BUF_SIZE,
                        receiver_options: dict[str, Any] | None = None,
                        family: int = socket.AF_UNSPEC, flags: int = socket.AI_PASSIVE,
                        sock: socket.socket | None = None, backlog: int = 100,
                        ssl: Optional[_ssl.SSLContext] = None,
                        reuse_address: bool | None = None, reuse_port: bool | None = None,
                        keep_alive: bool | None = None,
                        ssl_handshake_timeout: Optional[float] = None,
                        ssl_shutdown_timeout: Optional[float] = None,
                        start_serving: bool = True) -> ZcrxServer:
    """Like ``loop.create_server`` (TCP), with ZcrxTransports.

    ``host``: a name, an address, a list of them, or None for all interfaces;
    ``port``: 0 picks a free port. Or pass a listening/bound ``sock=``.
    ``engine``/``interface``/``queue``/``area_size``/``rq_entries``/``copy``/``buf_size``
    configure the server's Receiver (see ``aiozcrx.Receiver``); ``receiver_options``
    passes any other Receiver keyword (``hugepages=``...).
    ``ssl``: an ``ssl.SSLContext`` with the server's certificate: every connection
    does the TLS handshake (``ssl_handshake_timeout``, ``ssl_shutdown_timeout``: as
    asyncio's) before the protocol's ``connection_made``; the protocol then gets
    plaintext ``bytes`` from asyncio's SSL transport (no zero copy for TLS payload).
    """
    if host is None and port is None and sock is None:
        raise ValueError("Neither host/port nor sock were specified")  # as asyncio and uvloop
    ctx = _tls.server_context(ssl)
    _tls.check_timeouts(ctx is not None, ssl_handshake_timeout, ssl_shutdown_timeout)
    loop = asyncio.get_running_loop()
    # validate the Receiver's arguments before binding anything
    rx = _OwnedReceiver(engine, interface, queue, area_size, rq_entries, copy,
                        buf_size=buf_size, **(receiver_options or {}))
    if sock is not None:
        _take_stream_socket(sock, host, port)
        if _is_connected(sock):
            raise ValueError(f"sock= must be a bound or listening socket, not a connected one: {sock!r} "
                             "(attach connected sockets with Receiver.wrap or create_connection(sock=...))")
        try:
            sock.listen(backlog)
        except OSError:
            pass
        sockets = [sock]
    else:
        if reuse_address is None:
            reuse_address = True
        hosts: list[Optional[str]] = [host] if host is None or isinstance(host, str) else list(host)
        if not hosts:
            hosts = [None]
        infos: list[Any] = []
        for h in hosts:
            infos.extend(await loop.getaddrinfo(h, port, family=family, type=socket.SOCK_STREAM,
                                                proto=0, flags=flags))
        sockets = _bind_sockets(infos, backlog, reuse_address, reuse_port)
    try:
        if keep_alive:
            for s in sockets:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        rx.open()
    except BaseException:
        for s in sockets:
            s.close()
        raise
    server = ZcrxServer(loop, sockets, protocol_factory, rx, backlog, ctx,
                        ssl_handshake_timeout, ssl_shutdown_timeout)
    if start_serving:
        await server.start_serving()
    return server


async def create_connection(protocol_factory: ProtocolFactory, host: Optional[str] = None,
                            port: Optional[int] = None, *, engine: str = "auto",
                            interface: str | None = None, queue: int | None = None,
                            area_size: int | None = None,
                            rq_entries: int | None = None, copy: bool = False,
                            buf_size: int = DEFAULT_BUF_SIZE, receiver: Receiver | None = None,
                            receiver_options: dict[str, Any] | None = None,
                            family: int = 0, proto: int = 0, flags: int = 0,
                            sock: socket.socket | None = None,
                            local_addr: Optional[tuple[str, int]] = None,
                            ssl: SSLArg = None, server_hostname: Optional[str] = None,
                            ssl_handshake_timeout: Optional[float] = None,
                            ssl_shutdown_timeout: Optional[float] = None,
                            **kwargs: Any) -> tuple[asyncio.Transport, Any]:
    """Like ``loop.create_connection`` (TCP); returns ``(transport, protocol)``:
    the ZcrxTransport, or with ``ssl=`` asyncio's SSL transport over it.

    Without ``receiver=`` a Receiver is made for this connection (from ``engine``
    ... ``buf_size`` and ``receiver_options``) and closed right after the
    protocol's ``connection_lost``. With ``receiver=`` (an open Receiver on this
    loop) the connection is attached to it and you close it.

    ``ssl``: an ``ssl.SSLContext`` or True (the default context); the certificate
    is checked against ``server_hostname`` (default: ``host``). The handshake is
    done when this returns (``ssl_handshake_timeout``); the protocol gets
    plaintext ``bytes``. ``happy_eyeballs_delay``/``interleave`` are accepted and
    ignored (addresses are tried one after the other); ``all_errors=True`` raises an
    ``ExceptionGroup`` of every address's error, as asyncio's (3.11+).
    """
    _check_unknown(kwargs, ("happy_eyeballs_delay", "interleave", "all_errors"))
    ctx, tls, server_hostname = _tls.client_context(ssl, host, server_hostname,
                                                    ssl_handshake_timeout, ssl_shutdown_timeout)
    loop = asyncio.get_running_loop()
    owned = receiver is None
    if receiver is None:
        rx: Receiver = _OwnedReceiver(engine, interface, queue, area_size, rq_entries, copy,
                                      buf_size=buf_size, **(receiver_options or {}))
    else:
        rx = receiver
        if rx.loop is not loop:
            raise RuntimeError("receiver= must be open on the running event loop")

    if sock is not None:
        _take_stream_socket(sock, host, port)
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) or not _is_connected(sock):
            raise ValueError(f"sock= must be a connected socket, got {sock!r}")
    else:
        if host is None or port is None:
            raise ValueError("host and port are needed when sock is not given")
        sock = await _connect(loop, host, port, family, proto, flags, local_addr,
                              bool(kwargs.get("all_errors")))

    async def attach(conn: socket.socket) -> tuple[asyncio.Transport, Any]:
        if tls:  # owns conn: closes it (or its transport) on failure
            return await _tls.wrap(rx, conn, protocol_factory, ctx, server_side=False,
                                   server_hostname=server_hostname,
                                   ssl_handshake_timeout=ssl_handshake_timeout,
                                   ssl_shutdown_timeout=ssl_shutdown_timeout)
        try:
            transport, protocol = await rx.wrap(conn, protocol_factory)
        except BaseException:
            conn.close()
            raise
        await settle(transport)
        return transport, protocol

    if not owned:
        return await attach(sock)

    assert isinstance(rx, _OwnedReceiver)
    owned_rx = rx

    def forget() -> None:
        # the one connection is gone: close the Receiver after connection_lost returns
        loop.call_soon(owned_rx.close)

    try:
        rx.open()
    except BaseException:
        sock.close()
        raise
    rx._on_forget = forget
    try:
        return await attach(sock)
    except BaseException:
        rx.close()
        raise


async def _connect(loop: asyncio.AbstractEventLoop, host: str, port: int, family: int, proto: int,
                   flags: int, local_addr: Optional[tuple[str, int]],
                   all_errors: bool = False) -> socket.socket:
    """Connects to the first address of ``host`` that answers, as
    ``loop.create_connection`` does: the same errors (a local address in use is
    its ``OSError`` with ``errno`` EADDRINUSE), ``all_errors=True`` an
    ``ExceptionGroup`` of them all (3.11+)."""
    infos = await loop.getaddrinfo(host, port, family=family, type=socket.SOCK_STREAM,
                                   proto=proto, flags=flags)
    if not infos:
        raise OSError("getaddrinfo() returned empty list")
    local_infos = None
    if local_addr is not None:
        local_infos = await loop.getaddrinfo(*local_addr, family=family, type=socket.SOCK_STREAM,
                                             proto=proto, flags=flags)
        if not local_infos:
            raise OSError("getaddrinfo() returned empty list")
    exceptions: list[OSError] = []
    for info in infos:
        try:
            return await _connect_one(loop, info, local_infos)
        except OSError as exc:
            exceptions.append(exc)
    if all_errors and sys.version_info >= (3, 11):
        raise ExceptionGroup("create_connection failed", exceptions)  # noqa: F821 - 3.11+
    if len({str(e) for e in exceptions}) == 1:
        raise exceptions[0]
    raise OSError(f"Multiple exceptions: {', '.join(str(e) for e in exceptions)}")


async def _connect_one(loop: asyncio.AbstractEventLoop, info: Any,
                       local_infos: Optional[list[Any]]) -> socket.socket:
    """One address of ``_connect``: the socket, bound to the first local address of
    its family that is free, connected; or the error asyncio would give."""
    fam, type_, pro, _canon, address = info
    sock = socket.socket(fam, type_, pro)
    try:
        sock.setblocking(False)
        if local_infos is not None:
            bind_errors: list[OSError] = []
            for lfam, _, _, _, laddr in local_infos:
                if lfam != fam:
                    continue
                try:
                    sock.bind(laddr)
                    break
                except OSError as exc:
                    bind_errors.append(_bind_error(exc, laddr))
            else:
                if bind_errors:
                    raise bind_errors[-1]
                raise OSError(f"no matching local address with family={fam!r} found")
        await loop.sock_connect(sock, address)
        return sock
    except BaseException:
        sock.close()
        raise

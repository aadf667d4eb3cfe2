"""TLS over aiozcrx transports: asyncio's own SSL protocol on a ZcrxTransport.

The layering is asyncio's: an ``asyncio.sslproto.SSLProtocol`` is the protocol of
the ZcrxTransport (it gets the ciphertext), and the application's protocol sits on
the SSL protocol's transport (``get_extra_info("ssl_object")``, ``"peercert"``,
``"cipher"``, ``"compression"``, ``"sslcontext"`` come from there, and every other
key from the ZcrxTransport below).

What it costs: the ciphertext of each completion is copied once, from the view into
the SSL object's input buffer (``ssl.MemoryBIO``), and the buffer goes back to the
kernel at once; OpenSSL then decrypts into new Python objects. The application never
sees the receive area: TLS payload is not zero copy (kernel TLS, which would let the
NIC path deliver plaintext views, is future work).

uvloop's ``loop.start_tls`` accepts only uvloop's own transports, so upgrading a
ZcrxTransport goes through :func:`start_tls` here (the drop-in loop's
``loop.start_tls`` calls it; the stock loop's accepts ZcrxTransports directly).
"""

from __future__ import annotations

import asyncio
import socket
import ssl as _ssl
import sys
from asyncio import sslproto
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Optional, Union

if TYPE_CHECKING:
    from .receiver import Receiver

__all__ = ["start_tls"]

SSLArg = Union[_ssl.SSLContext, bool, None]
ProtocolFactory = Callable[[], asyncio.BaseProtocol]

# 3.11+ rewrote the SSL protocol: it has a shutdown timeout (3.10's has none)
HAS_SHUTDOWN_TIMEOUT = sys.version_info >= (3, 11)


def check_timeouts(tls: bool, ssl_handshake_timeout: Optional[float],
                   ssl_shutdown_timeout: Optional[float]) -> None:
    """The timeouts' rules, as the loop's own methods have them (and their messages)."""
    for name, value in (("ssl_handshake_timeout", ssl_handshake_timeout),
                        ("ssl_shutdown_timeout", ssl_shutdown_timeout)):
        if value is None:
            continue
        if not tls:
            raise ValueError(f"{name} is only meaningful with ssl")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ValueError(f"{name} should be a positive number, got {value}")


def check_context(sslcontext: object) -> None:
    """``loop.start_tls``'s first check, with its message (asyncio's and uvloop's)."""
    if not isinstance(sslcontext, _ssl.SSLContext):
        raise TypeError(f"sslcontext is expected to be an instance of ssl.SSLContext, "
                        f"got {sslcontext!r}")


def server_context(ssl: SSLArg) -> Optional[_ssl.SSLContext]:
    """``ssl=`` of a server: an SSLContext (with its certificate loaded) or None."""
    if ssl is None:
        return None
    if not isinstance(ssl, _ssl.SSLContext):
        raise TypeError(f"ssl argument must be an SSLContext or None, got {type(ssl).__name__} "
                        "(servers need a context with a certificate: ssl.create_default_context("
                        "ssl.Purpose.CLIENT_AUTH) and load_cert_chain())")
    return ssl


def client_context(ssl: SSLArg, host: Optional[str], server_hostname: Optional[str],
                   ssl_handshake_timeout: Optional[float], ssl_shutdown_timeout: Optional[float],
                   ) -> tuple[Optional[_ssl.SSLContext], bool, Optional[str]]:
    """``ssl=``/``server_hostname=`` of a client connection, checked as
    ``loop.create_connection`` checks them. Returns (context or None for the
    default one, whether TLS is on, the name to verify)."""
    tls = bool(ssl)
    if ssl is not None and not isinstance(ssl, (bool, _ssl.SSLContext)):
        raise TypeError(f"ssl argument must be an SSLContext, True/False or None, "
                        f"got {type(ssl).__name__}")
    if server_hostname is not None and not tls:
        raise ValueError("server_hostname is only meaningful with ssl")
    if tls and server_hostname is None:
        if not host:
            raise ValueError("You must set server_hostname when using ssl without a host "
                             "(the name the server's certificate is checked against; "
                             "'' switches the check off)")
        server_hostname = host
    check_timeouts(tls, ssl_handshake_timeout, ssl_shutdown_timeout)
    ctx = ssl if isinstance(ssl, _ssl.SSLContext) else None
    return ctx, tls, server_hostname


def make_protocol(loop: asyncio.AbstractEventLoop, app_protocol: asyncio.BaseProtocol,
                  sslcontext: Optional[_ssl.SSLContext], waiter: "asyncio.Future[None]", *,
                  server_side: bool, server_hostname: Optional[str],
                  ssl_handshake_timeout: Optional[float], ssl_shutdown_timeout: Optional[float],
                  call_connection_made: bool = True) -> sslproto.SSLProtocol:
    """asyncio's SSL protocol with the arguments this Python's version takes.

    On 3.10 ``ssl_shutdown_timeout`` (checked, positive) has no effect: that
    version's SSL protocol has no shutdown timeout."""
    if sslcontext is None:  # ssl=True on a client: the default context, as asyncio's
        if server_side:
            raise ValueError("a TLS server needs an SSLContext with its certificate")
        sslcontext = _ssl.create_default_context()
        if not server_hostname:
            sslcontext.check_hostname = False  # server_hostname='' switches the check off
    kw: dict[str, Any] = {"server_side": server_side, "server_hostname": server_hostname,
                          "call_connection_made": call_connection_made,
                          "ssl_handshake_timeout": ssl_handshake_timeout}
    if HAS_SHUTDOWN_TIMEOUT:
        kw["ssl_shutdown_timeout"] = ssl_shutdown_timeout
    return sslproto.SSLProtocol(loop, app_protocol, sslcontext, waiter, **kw)


def app_transport(proto: sslproto.SSLProtocol) -> asyncio.Transport:
    """The transport the application's protocol sees (asyncio's own; the SSL
    protocol makes it in its constructor and drops it on connection_lost)."""
    t = getattr(proto, "_app_transport", None)
    if t is None:
        raise ConnectionResetError("the connection was lost right after its TLS handshake")
    assert isinstance(t, asyncio.Transport)
    return t


async def wrap(receiver: "Receiver", sock: socket.socket, protocol_factory: ProtocolFactory,
               sslcontext: Optional[_ssl.SSLContext], *, server_side: bool,
               server_hostname: Optional[str] = None,
               ssl_handshake_timeout: Optional[float] = None,
               ssl_shutdown_timeout: Optional[float] = None,
               ) -> tuple[asyncio.Transport, asyncio.BaseProtocol]:
    """Attaches ``sock`` to ``receiver`` with TLS: the SSL protocol is the
    ZcrxTransport's protocol, the handshake runs, then the application's protocol
    is connected to the SSL transport. Returns (SSL transport, app protocol).

    Owns ``sock`` whatever happens: if the factory or the attach fails it is
    closed here; after that the transport owns it, and a failed or cancelled
    handshake closes the transport."""
    loop = asyncio.get_running_loop()
    try:
        app_protocol = protocol_factory()
        waiter: asyncio.Future[None] = loop.create_future()
        proto = make_protocol(loop, app_protocol, sslcontext, waiter, server_side=server_side,
                              server_hostname=server_hostname,
                              ssl_handshake_timeout=ssl_handshake_timeout,
                              ssl_shutdown_timeout=ssl_shutdown_timeout)
        transport, _ = await receiver.wrap(sock, lambda: proto)
    except BaseException:
        sock.close()
        raise
    try:
        await waiter
    except BaseException:
        transport.close()
        raise
    return app_transport(proto), app_protocol


async def delegate_start_tls(start_tls: Callable[..., Awaitable[Optional[asyncio.Transport]]],
                             transport: asyncio.BaseTransport, protocol: asyncio.BaseProtocol,
                             sslcontext: _ssl.SSLContext, *, server_side: bool,
                             server_hostname: Optional[str], ssl_handshake_timeout: Optional[float],
                             ssl_shutdown_timeout: Optional[float]) -> asyncio.Transport:
    """A transport that is not a ZcrxTransport, upgraded by a loop's own
    ``start_tls`` (which checks it); ``ssl_shutdown_timeout`` passed only when
    given (3.10's has none)."""
    upgraded = await start_tls(transport, protocol, sslcontext, server_side=server_side,
                               server_hostname=server_hostname,
                               ssl_handshake_timeout=ssl_handshake_timeout,
                               **({"ssl_shutdown_timeout": ssl_shutdown_timeout}
                                  if ssl_shutdown_timeout is not None else {}))
    assert upgraded is not None  # None only for a closed transport on old Pythons
    return upgraded


async def start_tls(transport: asyncio.BaseTransport, protocol: asyncio.BaseProtocol,
                    sslcontext: _ssl.SSLContext, *, server_side: bool = False,
                    server_hostname: Optional[str] = None,
                    ssl_handshake_timeout: Optional[float] = None,
                    ssl_shutdown_timeout: Optional[float] = None) -> asyncio.Transport:
    """Upgrades an open connection to TLS, like ``loop.start_tls``, on any loop.

    ``transport`` is a ZcrxTransport, or any transport asyncio's ``start_tls`` takes
    (``_start_tls_compatible``: asyncio's SSL transport, for TLS over TLS); any other
    is handed to the running loop's own ``start_tls``. ``protocol`` is the application's protocol, which
    from now on talks through the returned transport (asyncio's SSL transport over
    this one). ``server_side=True`` for the accepting end. Whatever the peer sent
    before the handshake began must have been read already (as with asyncio); on a
    failed or cancelled handshake the connection is closed and the error raised.
    On Python 3.10 ``ssl_shutdown_timeout`` has no effect.
    """
    from .transport import ZcrxTransport

    loop = asyncio.get_running_loop()
    check_context(sslcontext)
    if not isinstance(transport, ZcrxTransport) and not getattr(transport, "_start_tls_compatible",
                                                                False):
        return await delegate_start_tls(loop.start_tls, transport, protocol, sslcontext,
                                        server_side=server_side, server_hostname=server_hostname,
                                        ssl_handshake_timeout=ssl_handshake_timeout,
                                        ssl_shutdown_timeout=ssl_shutdown_timeout)
    assert isinstance(transport, asyncio.Transport)
    check_timeouts(True, ssl_handshake_timeout, ssl_shutdown_timeout)
    if transport.is_closing():
        raise RuntimeError(f"cannot start TLS on a closing transport {transport!r}")
    waiter: asyncio.Future[None] = loop.create_future()
    proto = make_protocol(loop, protocol, sslcontext, waiter, server_side=server_side,
                          server_hostname=server_hostname,
                          ssl_handshake_timeout=ssl_handshake_timeout,
                          ssl_shutdown_timeout=ssl_shutdown_timeout, call_connection_made=False)
    # Nothing may reach the SSL protocol before its connection_made: pause, swap
    # protocols, then connect and resume on the next iterations (in that order).
    transport.pause_reading()
    transport.set_protocol(proto)
    made = loop.call_soon(proto.connection_made, transport)
    resumed = loop.call_soon(transport.resume_reading)
    try:
        await waiter
    except BaseException:
        transport.close()
        made.cancel()
        resumed.cancel()
        raise
    return app_transport(proto)

"""asyncio streams over aiozcrx: drop-ins for ``asyncio.start_server`` and
``asyncio.open_connection``.

The protocol is asyncio's own ``StreamReaderProtocol``, unmodified: it copies
each delivered view into the ``StreamReader``'s buffer, so the receive buffers
go back to the kernel at once (one copy, in user space, instead of the kernel's
copy into a socket buffer read). For zero copy end to end, use a Protocol with
``aiozcrx.server.create_server`` instead.

TLS: ``ssl=`` (and ``server_hostname=``, ``ssl_handshake_timeout=``,
``ssl_shutdown_timeout=``) as asyncio's; :func:`start_tls` upgrades a stream
connection in place on every Python and on uvloop (asyncio's
``StreamWriter.start_tls`` is 3.11+ and goes through the loop's ``start_tls``,
which plain uvloop refuses for aiozcrx transports).
"""

from __future__ import annotations

import asyncio
import ssl as _ssl
from typing import Any, Awaitable, Callable, Optional, Union

from .server import ZcrxServer, create_connection, create_server
from .tls import start_tls as _start_tls_transport

__all__ = ["open_connection", "start_server", "start_tls"]

_DEFAULT_LIMIT = 2 ** 16

ClientConnected = Callable[[asyncio.StreamReader, asyncio.StreamWriter],
                           Union[Awaitable[None], None]]


async def start_server(client_connected_cb: ClientConnected, host: Any = None, port: Any = None,
                       *, limit: int = _DEFAULT_LIMIT, **kw: Any) -> ZcrxServer:
    """Like ``asyncio.start_server``: ``client_connected_cb(reader, writer)`` (a
    function or a coroutine function) is called for each connection. Keywords go
    to ``aiozcrx.server.create_server`` (``engine=``, ``backlog=``, ``ssl=``...)."""
    loop = asyncio.get_running_loop()

    def factory() -> asyncio.StreamReaderProtocol:
        reader = asyncio.StreamReader(limit=limit, loop=loop)
        return asyncio.StreamReaderProtocol(reader, client_connected_cb, loop=loop)

    return await create_server(factory, host, port, **kw)


async def open_connection(host: Optional[str] = None, port: Optional[int] = None, *,
                          limit: int = _DEFAULT_LIMIT,
                          **kw: Any) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Like ``asyncio.open_connection``; returns ``(StreamReader, StreamWriter)``.
    Keywords go to ``aiozcrx.server.create_connection`` (``engine=``,
    ``receiver=``, ``ssl=``...). The connection's own Receiver closes with it."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=limit, loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    transport, _ = await create_connection(lambda: protocol, host, port, **kw)
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)
    return reader, writer


async def start_tls(writer: asyncio.StreamWriter, sslcontext: _ssl.SSLContext, *,
                    server_side: Optional[bool] = None, server_hostname: Optional[str] = None,
                    ssl_handshake_timeout: Optional[float] = None,
                    ssl_shutdown_timeout: Optional[float] = None) -> None:
    """Upgrades a stream connection to TLS in place, like ``StreamWriter.start_tls``
    (3.11+) but on Python 3.10 too and on plain uvloop. ``writer`` and its reader
    go on working, now over TLS. ``server_side`` defaults to whether the stream
    came from a server (``start_server``'s callback) or a client.
    Whatever the peer sent before its handshake has to have been read first."""
    protocol = writer._protocol  # type: ignore[attr-defined]  # asyncio keeps it here (all versions)
    if not isinstance(protocol, asyncio.StreamReaderProtocol):
        raise TypeError(f"start_tls() needs a StreamWriter of asyncio's streams, got {writer!r}")
    if server_side is None:
        server_side = getattr(protocol, "_client_connected_cb", None) is not None
    await writer.drain()
    transport = await _start_tls_transport(
        writer.transport, protocol, sslcontext, server_side=server_side,
        server_hostname=server_hostname, ssl_handshake_timeout=ssl_handshake_timeout,
        ssl_shutdown_timeout=ssl_shutdown_timeout)
    # point the writer and the protocol at the SSL transport (what asyncio's own
    # StreamWriter.start_tls does through its private helpers)
    writer._transport = transport  # type: ignore[attr-defined]
    replace = getattr(protocol, "_replace_transport", None)  # 3.12+
    if replace is not None:
        replace(transport)
    else:
        protocol._transport = transport  # type: ignore[attr-defined]
        protocol._over_ssl = True  # type: ignore[attr-defined]

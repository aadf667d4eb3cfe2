"""asyncio streams over aiozcrx: drop-ins for ``asyncio.start_server`` and
``asyncio.open_connection``.

The protocol is asyncio's own ``StreamReaderProtocol``, unmodified: it copies
each delivered view into the ``StreamReader``'s buffer, so the receive buffers
go back to the kernel at once (one copy, in user space, instead of the kernel's
copy into a socket buffer read). For zero copy end to end, use a Protocol with
``aiozcrx.server.create_server`` instead.
"""

from __future__ import annotations

import asyncio

from .server import ZcrxServer, create_connection, create_server

__all__ = ["open_connection", "start_server"]

_DEFAULT_LIMIT = 2 ** 16


async def start_server(client_connected_cb, host=None, port=None, *, limit: int = _DEFAULT_LIMIT,
                       **kw) -> ZcrxServer:
    """Like ``asyncio.start_server``: ``client_connected_cb(reader, writer)`` (a
    function or a coroutine function) is called for each connection. Keywords go
    to ``aiozcrx.server.create_server`` (``engine=``, ``backlog=``...)."""
    loop = asyncio.get_running_loop()

    def factory():
        reader = asyncio.StreamReader(limit=limit, loop=loop)
        return asyncio.StreamReaderProtocol(reader, client_connected_cb, loop=loop)

    return await create_server(factory, host, port, **kw)


async def open_connection(host=None, port=None, *, limit: int = _DEFAULT_LIMIT,
                          **kw) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Like ``asyncio.open_connection``; returns ``(StreamReader, StreamWriter)``.
    Keywords go to ``aiozcrx.server.create_connection`` (``engine=``,
    ``receiver=``...). The connection's own Receiver closes with it."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=limit, loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    transport, _ = await create_connection(lambda: protocol, host, port, **kw)
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)
    return reader, writer

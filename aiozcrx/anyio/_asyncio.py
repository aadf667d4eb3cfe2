"""aiozcrx.anyio on anyio's asyncio backend (the stock loop or uvloop): the
stream protocol's waits are futures, and connecting and listening are
``aiozcrx.create_connection`` / ``aiozcrx.create_server``.

One side of the seam ``aiozcrx/anyio/__init__.py`` describes; ``_trio.py`` is
the other. Imports no trio.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import anyio.abc

from ..server import create_connection, create_server
from ..transport import ZcrxTransport
from ._streams import DEFAULT_READ_HIGH, StreamProtocolBase, ZcrxListener, ZcrxStream


class StreamProtocol(StreamProtocolBase):
    """``_StreamProtocolBase`` with asyncio's waits (futures)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, read_high: int = DEFAULT_READ_HIGH):
        super().__init__(read_high)
        self._loop = loop
        self.lost: asyncio.Future[BaseException | None] = loop.create_future()
        self._waiter: asyncio.Future[None] | None = None
        self._drain_waiters: list[asyncio.Future[None]] = []

    def is_lost(self) -> bool:
        return self.lost.done()

    async def wait_lost(self) -> None:
        await asyncio.shield(self.lost)

    def _set_lost(self, exc: BaseException | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)

    def _wake(self) -> None:
        w, self._waiter = self._waiter, None
        if w is not None and not w.done():
            w.set_result(None)

    async def wait_data(self) -> None:
        self._waiter = self._loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    async def drain(self) -> None:
        while self._write_paused and not self.is_lost():
            w: asyncio.Future[None] = self._loop.create_future()
            self._drain_waiters.append(w)
            await w

    def _release_drains(self) -> None:
        for w in self._drain_waiters:
            if not w.done():
                w.set_result(None)
        self._drain_waiters.clear()


async def connect_tcp(host: anyio.abc.IPAddressType, port: int,
                      local_host: anyio.abc.IPAddressType | None, read_high: int,
                      kw: dict[str, Any]) -> ZcrxStream:
    """``aiozcrx.anyio.connect_tcp`` on asyncio."""
    loop = asyncio.get_running_loop()
    if local_host is not None:
        kw["local_addr"] = (local_host, 0)
    proto = StreamProtocol(loop, read_high)
    transport, _ = await create_connection(lambda: proto, str(host), port, **kw)
    # no ssl= here: create_connection returns the ZcrxTransport itself
    return ZcrxStream(cast(ZcrxTransport, transport), proto)


async def create_tcp_listener(host: anyio.abc.IPAddressType | None, port: int, backlog: int,
                              reuse_port: bool, read_high: int, kw: dict[str, Any]) -> ZcrxListener:
    """``aiozcrx.anyio.create_tcp_listener`` on asyncio: accepted streams wait in
    a queue until ``accept()`` takes them."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[ZcrxStream] = asyncio.Queue()

    def factory() -> StreamProtocol:
        p = StreamProtocol(loop, read_high)
        p.on_made = lambda transport: queue.put_nowait(ZcrxStream(transport, p))
        return p

    server = await create_server(factory, None if host is None else str(host), port,
                                 backlog=backlog, reuse_port=reuse_port, **kw)
    return ZcrxListener(server, queue.get, queue)

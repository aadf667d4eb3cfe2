"""anyio byte streams over aiozcrx, on anyio's asyncio backend (stock loop or
uvloop) and on its trio backend.

    stream = await aiozcrx.anyio.connect_tcp("127.0.0.1", 8000)
    data = await stream.receive()            # bytes, like any anyio ByteStream

    listener = await aiozcrx.anyio.create_tcp_listener(local_port=8000)
    await listener.serve(handler)            # handler(stream)

``ZcrxStream`` is an ``anyio.abc.SocketStream`` (so ``SocketAttribute`` extras
work). Zero copy: ``await stream.receive_view(max_bytes)`` returns a read-only
memoryview straight over the receive area; the buffer behind it goes back to the
kernel only when the view is released (``view.release()`` or ``with view:``), so
release views promptly: views held unreleased stop receiving once the Receiver's
area is used up. ``receive()`` copies and releases for you.

Under trio the same engines, Receiver and transports run over a small adapter
(``aiozcrx.anyio._trio.TrioLoop``): the engine's wake-up fd (the ring's eventfd, or
the socket engine's epoll fd) is waited on with ``trio.lowlevel.wait_readable``
in a system task, and loop callbacks run in another. ``send()`` writes straight
to the socket, waiting with ``trio.lowlevel.wait_writable`` when it is full.
What differs from asyncio: ``receiver=`` (a Receiver of yours shared by
connections) is asyncio only, and ``ZcrxListener.accept()`` raises
``anyio.ClosedResourceError`` once the listener is closed. Exceptions from
callbacks are logged (logger ``aiozcrx``), as asyncio's default handler does.

Backends (the seam): this module picks the backend of the running event loop
and calls its ``connect_tcp(host, port, local_host, read_high, kw)`` and
``create_tcp_listener(host, port, backlog, reuse_port, read_high, kw)``, both
returning the shared ``ZcrxStream`` / ``ZcrxListener`` (``_streams.py``, below
both backends). A backend brings the stream protocol's waits (a subclass of
``_streams.StreamProtocolBase``) and its way to connect and listen:
``_asyncio.py`` (futures; ``aiozcrx.create_connection`` / ``create_server``)
and ``_trio.py`` (trio events; its ``TrioLoop`` and ``TrioServer``), imported
only under trio. Neither backend imports the other or this module.
"""

from __future__ import annotations

import asyncio
import sys
from types import ModuleType
from typing import Any

import anyio.abc

from . import _asyncio
from ._streams import DEFAULT_READ_HIGH, ZcrxListener, ZcrxStream, refuse_ssl

__all__ = ["ZcrxListener", "ZcrxStream", "connect_tcp", "create_tcp_listener"]


def _backend() -> ModuleType:
    """The backend of the running event loop: ``_asyncio``, or ``_trio``."""
    try:
        asyncio.get_running_loop()
        return _asyncio
    except RuntimeError:
        pass
    if "trio" in sys.modules:
        from . import _trio
        if _trio.in_trio():
            return _trio
    raise RuntimeError("aiozcrx.anyio needs a running event loop: call it from "
                       "anyio.run(..., backend='asyncio') or backend='trio'")


async def connect_tcp(remote_host: anyio.abc.IPAddressType, remote_port: int, *,
                      local_host: anyio.abc.IPAddressType | None = None,
                      read_high: int = DEFAULT_READ_HIGH, **kw: Any) -> ZcrxStream:
    """Like ``anyio.connect_tcp`` (no TLS). Keywords go to
    ``aiozcrx.server.create_connection`` (``engine=``, ``receiver=``...; under
    trio the Receiver's options only: ``engine=``, ``area_size=``,
    ``receiver_options=``...); ``read_high``: bytes buffered before reading pauses."""
    refuse_ssl(kw)
    stream: ZcrxStream = await _backend().connect_tcp(remote_host, remote_port, local_host,
                                                      read_high, kw)
    return stream


async def create_tcp_listener(local_host: anyio.abc.IPAddressType | None = None,
                              local_port: int = 0, *, backlog: int = 65536,
                              reuse_port: bool = False, read_high: int = DEFAULT_READ_HIGH,
                              **kw: Any) -> ZcrxListener:
    """Like ``anyio.create_tcp_listener``. Keywords go to
    ``aiozcrx.server.create_server`` (``engine=``, ``copy=``...; under trio the
    Receiver's options only)."""
    refuse_ssl(kw)
    listener: ZcrxListener = await _backend().create_tcp_listener(
        local_host, local_port, min(backlog, 65536), reuse_port, read_high, kw)
    return listener

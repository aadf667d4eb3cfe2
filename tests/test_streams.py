"""aiozcrx.streams: start_server / open_connection with asyncio's own
StreamReaderProtocol. Each async test runs on asyncio and uvloop."""

from __future__ import annotations

import asyncio
import hashlib
import os

import pytest

from aiozcrx.streams import open_connection, start_server
from peers import payload

pytestmark = [pytest.mark.engines, pytest.mark.asyncio]
MiB = 1 << 20


def open_fds() -> set:
    """Sockets and rings this process holds (pipes made by multiprocessing or the
    loop's thread pool are not ours to count)."""
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:") or "io_uring" in target:
            out.add((fd, target))
    return out


@pytest.mark.parametrize("engine", ["uring", "socket"])
async def test_start_server_concurrent_clients(engine):
    fds = open_fds()
    handled = []

    async def handle(reader, writer):
        # protocol: 4-byte length, payload; reply: sha256 of it, then a line back
        n = int.from_bytes(await reader.readexactly(4), "big")
        h = hashlib.sha256()
        left = n
        while left:
            chunk = await reader.read(min(left, 100_000))
            assert chunk
            h.update(chunk)
            left -= len(chunk)
        line = await reader.readline()
        writer.write(h.digest() + line.upper())
        await writer.drain()
        assert await reader.read() == b""
        writer.close()
        await writer.wait_closed()
        handled.append(n)

    server = await start_server(handle, "127.0.0.1", 0, engine=engine, limit=1 << 16)
    port = server.sockets[0].getsockname()[1]

    async def client(i):
        data = payload(i, 300_000 * (i + 1) + i)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(len(data).to_bytes(4, "big"))
        writer.write(data)
        writer.write(b"client %d\n" % i)
        await writer.drain()
        writer.write_eof()
        reply = await reader.read()
        writer.close()
        await writer.wait_closed()
        assert reply == hashlib.sha256(data).digest() + b"CLIENT %d\n" % i

    await asyncio.wait_for(asyncio.gather(*(client(i) for i in range(8))), 60)
    async with server:
        pass
    assert sorted(handled) == sorted(300_000 * (i + 1) + i for i in range(8))
    assert server.receiver.stats()["buffers_outstanding"] == 0
    assert server.receiver._closed
    assert open_fds() == fds


@pytest.mark.parametrize("engine", ["uring", "socket"])
async def test_open_connection_against_plain_server(engine):
    fds = open_fds()
    data = payload(3, 5 * MiB + 7)

    async def handler(reader, writer):
        greeting = await reader.readline()
        writer.write(greeting)
        writer.write(data)
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    plain = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = plain.sockets[0].getsockname()[1]
    reader, writer = await open_connection("127.0.0.1", port, engine=engine)
    transport = writer.transport
    assert transport.get_extra_info("aiozcrx_engine") == engine
    writer.write(b"hello there\n")
    await writer.drain()
    assert await reader.readline() == b"hello there\n"
    got = await asyncio.wait_for(reader.read(), 30)
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    assert reader.at_eof()
    writer.close()
    await writer.wait_closed()
    await asyncio.sleep(0)
    rx = transport._link.owner
    assert rx._closed and rx.stats()["buffers_outstanding"] == 0
    plain.close()
    await plain.wait_closed()
    assert open_fds() == fds


async def test_streams_both_ends_and_small_limit():
    """aiozcrx on both ends; a small limit makes the reader pause the transport."""
    fds = open_fds()
    data = payload(9, 3 * MiB)

    async def handle(reader, writer):
        await asyncio.sleep(0.05)  # let the buffer fill past the limit
        got = await reader.readexactly(len(data))
        writer.write(hashlib.sha256(got).digest())
        await writer.drain()
        writer.close()

    async with await start_server(handle, "127.0.0.1", 0, limit=4096) as server:
        port = server.sockets[0].getsockname()[1]
        reader, writer = await open_connection("127.0.0.1", port, limit=4096)
        writer.write(data)
        await writer.drain()
        assert await asyncio.wait_for(reader.readexactly(32), 30) == hashlib.sha256(data).digest()
        assert await reader.read() == b""
        writer.close()
        await writer.wait_closed()
    assert server.receiver.stats()["buffers_outstanding"] == 0
    await asyncio.sleep(0)
    assert open_fds() == fds

"""loop.sendfile() on a ZcrxTransport: the stock loop sends through write() with
flow control (its fallback path), the drop-in loop with os.sendfile on either
base loop. A real file, real sockets; the peer checks every byte."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import sys
import threading

import pytest

import aiozcrx

pytestmark = [pytest.mark.engines]
MiB = 1 << 20


class Quiet(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        self.lost = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc):
        self.lost.set_result(exc)


def drain_peer(sock: socket.socket, out: list) -> None:
    h, n = hashlib.sha256(), 0
    while True:
        b = sock.recv(1 << 20)
        if not b:
            break
        h.update(b)
        n += len(b)
    out.append((n, h.hexdigest()))


async def send_file(path: str, engine: str, offset: int, count: int | None) -> tuple[int, tuple]:
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    out: list = []
    peer = threading.Thread(target=drain_peer, args=(b, out))
    peer.start()
    async with aiozcrx.Receiver(engine=engine) as rx:
        transport, proto = await rx.wrap(a, Quiet)
        transport.write(b"head")  # written before: goes first
        with open(path, "rb") as f:
            sent = await loop.sendfile(transport, f, offset, count)
            assert f.tell() == offset + sent
        transport.close()
        # close() flushes what is still buffered, then connection_lost: wait for it
        # (leaving `async with` closes the Receiver, which aborts what is still open)
        assert await asyncio.wait_for(proto.lost, 60) is None
    await asyncio.to_thread(peer.join)
    b.close()
    return sent, out[0]


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    data = os.urandom(5 * MiB + 123)
    path = tmp_path_factory.mktemp("sendfile") / "data.bin"
    path.write_bytes(data)
    return str(path), data


@pytest.mark.asyncio
@pytest.mark.parametrize("engine", ["uring", "socket"])
@pytest.mark.parametrize("offset, count", [(0, None), (1000, 3 * MiB)])
async def test_sendfile_on_the_running_loop(engine, offset, count, data_file):
    """Stock loop: the fallback; uvloop: loop.sendfile is not implemented there
    (NotImplementedError, which aiohttp and others handle by writing themselves)."""
    path, data = data_file
    want = data[offset:offset + count] if count else data[offset:]
    if type(asyncio.get_running_loop()).__module__.startswith("uvloop"):
        with pytest.raises(NotImplementedError):
            await send_file(path, engine, offset, count)
        return
    sent, (n, digest) = await send_file(path, engine, offset, count)
    assert sent == len(want)
    assert (n, digest) == (4 + len(want), hashlib.sha256(b"head" + want).hexdigest())


@pytest.mark.parametrize("base", ["uvloop", "asyncio"])
@pytest.mark.parametrize("offset, count", [(0, None), (1000, 3 * MiB)])
def test_sendfile_on_the_dropin_loop_is_native(base, offset, count, data_file, monkeypatch):
    path, data = data_file
    want = data[offset:offset + count] if count else data[offset:]
    monkeypatch.setenv("AIOZCRX_LOOP", base)
    calls = []
    real = os.sendfile
    monkeypatch.setattr(os, "sendfile", lambda *a: calls.append(a) or real(*a))
    loop = aiozcrx.new_event_loop()
    try:
        sent, (n, digest) = loop.run_until_complete(send_file(path, "uring", offset, count))
    finally:
        loop.close()
    assert calls, "os.sendfile was not used"
    assert sent == len(want)
    assert (n, digest) == (4 + len(want), hashlib.sha256(b"head" + want).hexdigest())

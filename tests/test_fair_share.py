"""No protocol can stall the others by keeping what it is given: each connection's
views may hold at most its share of the area (max_held, a quarter by default).
Over it (over_share="copy", the default) that connection goes on receiving, as
asyncio's would, its further data as bytes copies whose buffers go back at once;
with over_share="pause" it stops receiving (its bytes wait in its socket) until it
releases views. The library says so once, naming the protocol class and the
setting. Driven through the real kernel: uploads into chunk-keeping protocols
beside small request/response connections on the same Receiver."""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest

import aiozcrx
from peers import Listener, join, start_sender, stream_sha256, wait_until
from test_transport import MiB, Sink

pytestmark = [pytest.mark.asyncio]
HOST_ENGINES = [pytest.param("uring", marks=pytest.mark.engines),
                pytest.param("socket", marks=pytest.mark.engines),
                pytest.param("zcrx-copy", marks=pytest.mark.guest)]


@pytest.fixture(autouse=True)
def _zcrx_copy_or_skip(request):
    if request.node.callspec.params.get("engine") == "zcrx-copy":
        request.getfixturevalue("need_zcrx_copy")  # skipped on the host, with the reason


class Keeper(Sink):
    """Keeps every view it is given (the list.append-then-join-at-EOF pattern)."""

    def __init__(self):
        super().__init__(keep=True)


class Pong(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, view):
        self.transport.write(b"pong:" + bytes(view))


def ping(port: int, n: int) -> list[bytes]:
    out = []
    for i in range(n):
        with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
            msg = b"%d" % i
            s.sendall(msg)
            want = b"pong:" + msg
            got = b""
            while len(got) < len(want):
                chunk = s.recv(64)
                if not chunk:
                    break
                got += chunk
            out.append(got)
    return out


async def pings_through(rx, n: int) -> list[bytes]:
    """n small request/response connections served by ``rx`` (Pong), one after
    another from a client thread; their answers."""
    pongs = socket.create_server(("127.0.0.1", 0))
    pongs.setblocking(False)
    loop = asyncio.get_running_loop()

    async def serve():
        for _ in range(n):
            conn, _ = await loop.sock_accept(pongs)
            await rx.wrap(conn, Pong)

    server = asyncio.ensure_future(serve())
    try:
        return await asyncio.wait_for(asyncio.to_thread(ping, pongs.getsockname()[1], n), 60)
    finally:
        await server
        pongs.close()


@pytest.mark.parametrize("engine", HOST_ENGINES)
async def test_a_chunk_keeper_cannot_stall_other_connections(engine, caplog):
    area, total = 4 * MiB, 64 * MiB
    lst = Listener()
    proc = start_sender(lst.port, 71, total)
    caplog.set_level(logging.WARNING, logger="aiozcrx")
    async with aiozcrx.Receiver(engine=engine, area_size=area, over_share="pause") as rx:
        share = area // 4
        _, keeper = await rx.wrap(await lst.accept(), Keeper)
        # the keeper stops at its share, with the area far from full
        await wait_until(lambda: rx.stats().get("share_stops", 0) >= 1, "the keeper reached its share")
        held = sum(len(v) for v in keeper.kept)
        assert 0 < held and keeper.bytes < total
        assert rx.stats()["buffers_outstanding"] * rx.stats()["buffer_size"] < area
        # meanwhile small requests on other connections of the same Receiver complete
        got = await pings_through(rx, 20)
        assert got == [b"pong:%d" % i for i in range(20)]
        assert keeper.bytes < total and not keeper.lost.done()  # still stopped, nothing lost
        # said once, naming the protocol and the setting
        warnings = [r.getMessage() for r in caplog.records if r.name == "aiozcrx"]
        assert len(warnings) == 1, warnings
        assert "Keeper" in warnings[0] and "max_held" in warnings[0]
        # releasing its views lets it go on; then it keeps nothing and gets it all
        for v in keeper.kept:
            v.release()
        keeper.kept.clear()
        keeper.keep = False
        assert await asyncio.wait_for(keeper.lost, 120) is None
        assert keeper.bytes == total
        assert keeper.sha.hexdigest() == stream_sha256(71, total)
        assert rx.stats()["buffers_outstanding"] == 0
    lst.close()
    assert await join(proc) == 0


@pytest.mark.parametrize("engine", HOST_ENGINES)
async def test_a_keeper_of_four_areas_gets_every_byte(engine, caplog):
    """Issue 21: a protocol that keeps every chunk and joins them at EOF (upload
    handlers, parsers waiting for a whole message) used to stop receiving for ever
    at its share. With the default over_share="copy" it gets every byte of 4x the
    area: views up to its share, copies after, its views never more than its share,
    and small requests on other connections of the same Receiver go on meanwhile."""
    area = 4 * MiB
    total = 4 * area
    lst = Listener()
    proc = start_sender(lst.port, 73, total)
    caplog.set_level(logging.WARNING, logger="aiozcrx")
    async with aiozcrx.Receiver(engine=engine, area_size=area) as rx:
        share = area // 4
        _, keeper = await rx.wrap(await lst.accept(), Keeper)
        got = await pings_through(rx, 10)
        assert got == [b"pong:%d" % i for i in range(10)]
        assert await asyncio.wait_for(keeper.lost, 240) is None
        st = rx.stats()
        held_views = sum(len(v) for v in keeper.kept if isinstance(v, memoryview))
        joined = b"".join(keeper.kept)
    lst.close()
    assert await join(proc) == 0
    assert keeper.bytes == len(joined) == total
    assert keeper.sha.hexdigest() == stream_sha256(73, total)
    assert keeper.types <= {memoryview, bytes} and bytes in keeper.types
    # its views never went past its share (a buffer's worth of slack: the view
    # that reached it); everything after came as copies, counted
    assert held_views <= share + st["buffer_size"]
    assert st["share_copies"] > 0 and st["share_copied_bytes"] >= total - share - st["buffer_size"]
    assert st["bytes_copied"] >= st["share_copied_bytes"]
    assert st.get("share_stops", 0) == 0
    warnings = [r.getMessage() for r in caplog.records if r.name == "aiozcrx"]
    assert len(warnings) == 1 and "Keeper" in warnings[0] and "comes as bytes" in warnings[0]
    keeper.release_kept()


@pytest.mark.parametrize("engine", HOST_ENGINES)
async def test_max_held_is_a_setting(engine):
    """max_held=area lets one connection hold the whole area (and the default is a
    quarter of it); the check happens after data_received, on what is still held."""
    lst = Listener()
    proc = start_sender(lst.port, 72, 8 * MiB)
    async with aiozcrx.Receiver(engine=engine, area_size=2 * MiB, max_held=2 * MiB) as rx:
        _, keeper = await rx.wrap(await lst.accept(), Keeper)
        # well past the default quarter (how close to all of it depends on how many
        # buffers the kernel keeps for itself: zcrx-copy keeps a few)
        await wait_until(lambda: sum(len(v) for v in keeper.kept) > 2 * MiB // 2,
                         "the keeper holds more than half the area")
        keeper.release_kept()  # (past the whole area: copies, over_share="copy")
        keeper.keep = False
        assert await asyncio.wait_for(keeper.lost, 120) is None
    assert keeper.sha.hexdigest() == stream_sha256(72, 8 * MiB)
    lst.close()
    await join(proc)
    with pytest.raises(ValueError, match="max_held"):
        aiozcrx.Receiver(area_size=2 * MiB, max_held=4 * MiB)

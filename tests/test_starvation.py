"""More connections than buffers, and consumers that keep their views a while: the
area runs dry again and again. A connection whose request ended for want of buffers
(ENOBUFS / ENOMEM) must wait until buffers come back, not be re-armed at once into
the same empty ring (a busy loop through the kernel: issue 25), and the starved
connections must take turns (no connection waits for ever while the others get
every returned buffer).

What is asserted: every byte of every connection arrives (sha256), and the counts
stats() keeps: the re-arms are bounded by the buffers that came back, never by how
long it took."""

from __future__ import annotations

import asyncio
import hashlib
import struct

import pytest

import aiozcrx
from peers import Listener, join, payload, start_many
from test_transport import MiB, Sink

pytestmark = [pytest.mark.engines, pytest.mark.asyncio]

ENGINES = ["uring", pytest.param("zcrx-copy", marks=pytest.mark.guest)]


class SlowSink(Sink):
    """Keeps each view until a later loop callback releases what it kept: a
    consumer that holds the area's buffers for a while."""

    def __init__(self) -> None:
        super().__init__(keep=True)
        self._release_due = False

    def data_received(self, view):
        super().data_received(view)
        if not self._release_due:
            self._release_due = True
            asyncio.get_running_loop().call_soon(self._later)

    def _later(self) -> None:
        # one more turn of the loop before the views go back
        asyncio.get_running_loop().call_soon(self._release)

    def _release(self) -> None:
        self._release_due = False
        self.release_kept(keep=True)

    def connection_lost(self, exc):
        self.release_kept()
        super().connection_lost(exc)


async def receive_many(rx: aiozcrx.Receiver, n: int, sizes: list[int], seeds: list[int]) -> list[SlowSink]:
    lst = Listener()
    proc = start_many(lst.port, sizes, seeds)
    protos = []
    try:
        for _ in range(n):
            _, p = await rx.wrap(await lst.accept(), SlowSink)
            protos.append(p)
        results = await asyncio.wait_for(asyncio.gather(*(p.lost for p in protos)), 240)
    finally:
        lst.close()
    assert all(r is None for r in results)
    assert await join(proc) == 0
    return protos


def check_bytes(protos: list[SlowSink], sizes: list[int], seeds: list[int]) -> None:
    """Each stream's first 4 bytes name the payload it carries."""
    want = {hashlib.sha256(struct.pack("<I", i) + payload(seed, size)).hexdigest(): i
            for i, (size, seed) in enumerate(zip(sizes, seeds))}
    seen = set()
    for p in protos:
        idx = want.get(p.sha.hexdigest())
        assert idx is not None, "a connection's bytes match no payload"
        assert p.bytes == 4 + sizes[idx]
        seen.add(idx)
    assert seen == set(range(len(sizes)))


class TurnLog:
    """Wraps the engine's _revive: counts re-arms that went to a connection while
    another one had been waiting longer (its turn came first)."""

    def __init__(self, rx: aiozcrx.Receiver) -> None:
        engine = rx._engine
        self.rearmed = 0
        self.out_of_turn = 0
        revive = engine._revive

        def logged_revive():
            waiting = list(engine.starved)  # the longest waiting first
            revive()
            left = [c for c in waiting if c not in engine.starved]
            self.rearmed += sum(c.armed for c in left)
            # those that left the queue are the oldest ones, in order
            self.out_of_turn += left != waiting[:len(left)]

        engine._revive = logged_revive


@pytest.mark.parametrize("engine", ENGINES)
async def test_starved_connections_wait_for_buffers(engine, request):
    """48 connections on an area of 16 buffers of 16 KiB (zcrx-copy: 64 pages of
    4 KiB), each consumer keeping its views for two turns of the loop: reception
    stops for want of buffers many times, and every byte still arrives. Each re-arm
    of a starved connection waits for a buffer that came back (no spin): the
    re-arms are bounded by the buffers returned, plus one per connection; and the
    starved connections take turns."""
    if engine == "zcrx-copy":
        request.getfixturevalue("need_zcrx_copy")
    n = 48
    sizes = [MiB + 4093 * i for i in range(n)]
    seeds = [2500 + i for i in range(n)]
    kw = {"buf_size": 16 * 1024} if engine == "uring" else {}
    async with aiozcrx.Receiver(engine=engine, area_size=256 * 1024, **kw) as rx:
        log = TurnLog(rx)
        protos = await receive_many(rx, n, sizes, seeds)
        st = rx.stats()
    check_bytes(protos, sizes, seeds)
    assert st["buffers_outstanding"] == 0
    assert st["starved"] >= 1  # the case this is about did happen
    # no spin: a re-arm (of a starved connection or any other) waits for buffers
    # that came back
    assert st["rearms"] <= st["buffers_returned"] + n
    assert 0 < st["starved_rearms"] <= st["rearms"]
    # episodes, not attempts: a connection re-armed into an empty ring again is
    # still the same episode (a new one needs data, so a re-arm, in between)
    assert st["starved"] <= st["rearms"] + n
    # turns: each round of re-arms took the connections that had waited longest
    assert log.rearmed > 0
    assert log.out_of_turn == 0

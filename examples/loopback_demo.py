"""Loopback demo: a sender process streams data, aiozcrx receives it.

Prints the engine chosen, why better ones were not, bytes, GB/s and whether the
sha256 matched. Usage: python examples/loopback_demo.py [--mib 1024] [--engine auto]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import multiprocessing
import socket
import time

import aiozcrx

BLOCK = 1 << 20


def sender(port: int, total: int) -> None:
    block = bytes(range(256)) * (BLOCK // 256)
    with socket.create_connection(("127.0.0.1", port)) as s:
        sent = 0
        while sent < total:
            n = min(BLOCK, total - sent)
            s.sendall(block[:n])
            sent += n


class Sink(asyncio.Protocol):
    def __init__(self, done: asyncio.Future[Exception | None]):
        self.done = done
        self.sha = hashlib.sha256()
        self.bytes = 0

    def data_received(self, view: bytes | memoryview) -> None:  # aiozcrx gives a memoryview
        self.sha.update(view)   # reads the registered area directly; no copy
        self.bytes += len(view)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(exc)


async def main(mib: int, engine: str) -> None:
    total = mib * BLOCK
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    proc = multiprocessing.get_context("spawn").Process(target=sender, args=(port, total))
    proc.start()
    loop = asyncio.get_running_loop()
    listener.setblocking(False)
    conn, _ = await loop.sock_accept(listener)
    listener.close()
    async with aiozcrx.Receiver(engine=engine) as rx:
        print(f"engine: {rx.engine}")
        print(f"fallback reason: {rx.fallback_reason or '(none: first choice)'}")
        done: asyncio.Future[Exception | None] = loop.create_future()
        t0 = time.perf_counter()
        transport, proto = await rx.wrap(conn, lambda: Sink(done))
        await done
        dt = time.perf_counter() - t0
        stats = rx.stats()
    proc.join()
    block = bytes(range(256)) * (BLOCK // 256)
    expect = hashlib.sha256()
    for _ in range(total // BLOCK):
        expect.update(block)
    ok = proto.sha.hexdigest() == expect.hexdigest() and proto.bytes == total
    print(f"bytes: {proto.bytes} in {dt:.3f} s = {proto.bytes / dt / 1e9:.2f} GB/s")
    print(f"completions: {stats['completions']}, buffers outstanding after close: {stats['buffers_outstanding']}")
    print(f"sha256 verified: {ok}")
    if not ok:
        raise SystemExit(1)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--engine", default="auto")
    args = ap.parse_args()
    asyncio.run(main(args.mib, args.engine))

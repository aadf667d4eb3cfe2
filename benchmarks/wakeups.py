"""Wake-ups of the loop per message, and how many of them find nothing (idle).

A ping-pong over loopback makes one arrival per message: each costs the loop
one wake-up at best. With the ring's eventfd switched off while the C pump works
(x86), a wake-up that finds nothing should be rare; how rare depends on how the
scheduler interleaves the peer and the loop, which is why this is measured here
and not asserted in a test (tests/test_fast_path.py only checks the bytes).

Reported per loop (stock asyncio, uvloop), engine uring: messages, loop wake-ups
per message, idle wake-ups as a share of all, io_uring_enter calls per wake-up.
For reference, the plain transports of both loops take exactly one wake-up per
message here (one readable event per arrival).

Usage: .venv/bin/python benchmarks/wakeups.py [--pings 2000] [--size 100]
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import threading

import uvloop

import aiozcrx


class Acker(asyncio.Protocol):
    def __init__(self, size: int):
        self.size, self.got = size, 0
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, view):
        self.got += len(view)
        while self.got >= self.size:
            self.got -= self.size
            self.transport.write(b"k")

    def connection_lost(self, exc):
        self.lost.set_result(exc)


def ping_pong(sock: socket.socket, pings: int, size: int) -> None:
    msg = b"p" * size
    for _ in range(pings):
        sock.sendall(msg)
        if sock.recv(1) != b"k":
            raise RuntimeError("peer closed")
    sock.close()


async def one_run(pings: int, size: int) -> dict:
    lst = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(lst.getsockname())
    server_sock, _ = lst.accept()
    lst.close()
    async with aiozcrx.Receiver(engine="uring") as rx:
        _, proto = await rx.wrap(server_sock, lambda: Acker(size))
        peer = threading.Thread(target=ping_pong, args=(client, pings, size))
        peer.start()
        await proto.lost
        await asyncio.to_thread(peer.join)
        return rx.stats()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pings", type=int, default=2000)
    ap.add_argument("--size", type=int, default=100)
    ap.add_argument("--quick", action="store_true", help="smoke run: 200 pings")
    args = ap.parse_args()
    if args.quick:
        args.pings = 200
    print("| loop | messages | wake-ups / message | idle wake-ups | enters / wake-up | eventfd off in pump |")
    print("|---|---|---|---|---|---|")
    for name, factory in (("asyncio", asyncio.new_event_loop), ("uvloop", uvloop.new_event_loop)):
        loop = factory()
        try:
            st = loop.run_until_complete(one_run(args.pings, args.size))
        finally:
            loop.close()
        w = max(st["wakeups"], 1)
        print(f"| {name} | {args.pings} | {st['wakeups'] / args.pings:.2f} | "
              f"{100 * st['idle_wakeups'] / w:.1f} % | {st['enters'] / w:.2f} | {st['eventfd_paused']} |")


if __name__ == "__main__":
    main()

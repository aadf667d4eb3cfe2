"""Bulk sink server: many senders, every byte hashed where it landed, no copy.

The server-side counterpart of `aiozcrx recv` (which takes one connection, like
liburing's examples/zcrx): each connection's bytes are hashed straight from the
registered area and the digest is written back when the sender half-closes.

Usage: python examples/bulk_sink.py [--port 9998] [--engine auto] [--interface IF --queue N]
       python examples/bulk_sink.py --selftest   # 4 concurrent senders, verify, exit
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import sys

import aiozcrx


class Sink(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.sha = hashlib.sha256()
        self.bytes = 0

    def data_received(self, view: bytes | memoryview) -> None:  # aiozcrx gives a memoryview
        self.sha.update(view)  # reads the area in place; the buffer returns after
        self.bytes += len(view)

    def eof_received(self) -> bool:
        self.transport.write(f"{self.bytes} {self.sha.hexdigest()}\n".encode())
        return False  # close after the reply is flushed


async def send_one(host: str, port: int, size: int) -> bool:
    data = os.urandom(size)
    reader, writer = await asyncio.open_connection(host, port)  # a plain asyncio client
    writer.write(data)
    await writer.drain()
    writer.write_eof()
    reply = (await reader.read()).decode().split()
    writer.close()
    await writer.wait_closed()
    return reply == [str(size), hashlib.sha256(data).hexdigest()]


async def main(args: argparse.Namespace) -> int:
    server = await aiozcrx.create_server(Sink, args.host, 0 if args.selftest else args.port,
                                         engine=args.engine, interface=args.interface,
                                         queue=args.queue)
    rx = server.receiver
    print(f"engine: {rx.engine} ({rx.fallback_reason or 'first choice'})")
    async with server:
        if not args.selftest:
            await server.serve_forever()
            return 0
        host, port = server.sockets[0].getsockname()[:2]
        results = await asyncio.gather(*(send_one(host, port, (i + 1) << 20) for i in range(4)))
        print(f"4 senders verified: {all(results)}")
        ok = all(results)
    await server.wait_closed()
    print(f"buffers outstanding after close: {rx.stats()['buffers_outstanding']}")
    return 0 if ok and rx.stats()["buffers_outstanding"] == 0 else 1


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9998)
    p.add_argument("--engine", default="auto")
    p.add_argument("--interface")
    p.add_argument("--queue", type=int)
    p.add_argument("--selftest", action="store_true")
    try:
        sys.exit(asyncio.run(main(p.parse_args())))
    except KeyboardInterrupt:
        pass

"""Echo server on aiozcrx: every byte received (as a zero-copy view) is written back.

Usage: python examples/echo_server.py [--host 127.0.0.1] [--port 8007] [--engine auto]
       python examples/echo_server.py --selftest   # serve, echo 8 MiB from a client, verify, exit
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import sys

from aiozcrx.server import ZcrxServer, create_server
from aiozcrx.streams import open_connection


class Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, view: bytes | memoryview) -> None:  # aiozcrx gives a memoryview
        # write() copies what the socket does not take at once, so the view can go
        self.transport.write(view)

    def eof_received(self) -> bool:
        return False  # close once the write buffer is flushed


async def selftest(server: ZcrxServer, size: int) -> bool:
    host, port = server.sockets[0].getsockname()[:2]
    data = os.urandom(size)
    reader, writer = await open_connection(host, port)

    async def send() -> None:
        writer.write(data)
        await writer.drain()
        writer.write_eof()

    sender = asyncio.create_task(send())
    got = await reader.read()
    await sender
    writer.close()
    await writer.wait_closed()
    ok = hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    print(f"echoed {len(got)} of {size} bytes; sha256 verified: {ok}")
    return ok


async def main(args: argparse.Namespace) -> int:
    server = await create_server(Echo, args.host, 0 if args.selftest else args.port,
                                 engine=args.engine)
    rx = server.receiver
    print(f"engine: {rx.engine} ({rx.fallback_reason or 'first choice'})")
    print("listening on", ", ".join(str(s.getsockname()) for s in server.sockets))
    async with server:
        if args.selftest:
            ok = await selftest(server, args.mib << 20)
            return 0 if ok else 1
        try:
            await server.serve_forever()
        except asyncio.CancelledError:
            pass
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8007)
    p.add_argument("--engine", default="auto")
    p.add_argument("--mib", type=int, default=8, help="selftest payload size")
    p.add_argument("--selftest", action="store_true")
    try:
        sys.exit(asyncio.run(main(p.parse_args())))
    except KeyboardInterrupt:
        pass

"""anyio streams over aiozcrx: a sink server that hashes what it receives with
zero-copy views (``receive_view``) and answers with the sha256 at EOF.

Usage: python examples/anyio_stream.py serve [--host 127.0.0.1] [--port 8008]
       python examples/anyio_stream.py send --file PATH [--host ...] [--port ...]
       python examples/anyio_stream.py --selftest   # serve, send 16 MiB, verify, exit
Add --backend trio to run it on anyio's trio backend (pip install 'aiozcrx[trio]').
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from collections.abc import Iterable

import anyio
import anyio.abc

from aiozcrx.anyio import ZcrxStream, connect_tcp, create_tcp_listener


async def handle(stream: anyio.abc.SocketStream) -> None:
    assert isinstance(stream, ZcrxStream)  # what a ZcrxListener hands its handler
    async with stream:
        h = hashlib.sha256()
        n = 0
        while True:
            try:
                view = await stream.receive_view()
            except anyio.EndOfStream:
                break
            with view:               # releasing the view returns the buffer
                h.update(view)
                n += len(view)
        await stream.send(f"{n} {h.hexdigest()}\n".encode())


async def send(host: str, port: int, chunks: Iterable[bytes]) -> tuple[int, str, bytes]:
    h = hashlib.sha256()
    n = 0
    async with await connect_tcp(host, port) as stream:
        for chunk in chunks:
            h.update(chunk)
            n += len(chunk)
            await stream.send(chunk)
        await stream.send_eof()
        reply = b""
        while True:
            try:
                reply += await stream.receive()
            except anyio.EndOfStream:
                break
    return n, h.hexdigest(), reply


async def main(args: argparse.Namespace) -> int:
    if args.selftest or args.cmd == "serve":
        listener = await create_tcp_listener(args.host, 0 if args.selftest else args.port,
                                             engine=args.engine)
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        rx = listener.server.receiver
        print(f"engine: {rx.engine}; listening on {args.host}:{port}")
        async with anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, handle)
            if not args.selftest:
                return 0  # serve until interrupted
            block = os.urandom(1 << 20)
            n, digest, reply = await send(args.host, port, (block for _ in range(args.mib)))
            tg.cancel_scope.cancel()
        await listener.aclose()
        await listener.wait_closed()
        ok = reply.decode().split() == [str(n), digest]
        print(f"sent {n} bytes; server says {reply.decode().strip()}; sha256 verified: {ok}")
        return 0 if ok else 1
    with open(args.file, "rb") as f:
        n, digest, reply = await send(args.host, args.port, iter(lambda: f.read(1 << 20), b""))
    print(f"sent {n} bytes sha256 {digest}; server says {reply.decode().strip()}")
    return 0 if reply.decode().split() == [str(n), digest] else 1


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("cmd", nargs="?", choices=["serve", "send"], default="serve")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8008)
    p.add_argument("--file")
    p.add_argument("--engine", default="auto")
    p.add_argument("--mib", type=int, default=16, help="selftest payload size")
    p.add_argument("--selftest", action="store_true")
    p.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio",
                   help="anyio backend")
    a = p.parse_args()
    if a.cmd == "send" and not a.selftest and not a.file:
        p.error("send needs --file")
    try:
        sys.exit(anyio.run(main, a, backend=a.backend))
    except KeyboardInterrupt:
        pass

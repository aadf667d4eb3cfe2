"""`aiozcrx` / `python -m aiozcrx`: demo, recv, send, doctor, nic.

``doctor``, ``nic`` and ``send`` need only the standard library; ``demo`` and
``recv`` need the compiled core and import it inside the command, saying so (exit
status 2) where it cannot be loaded (see :mod:`aiozcrx.tools`).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import socket
import sys
import time

BLOCK = 1 << 20


def _pattern_block() -> bytes:
    return bytes(range(256)) * (BLOCK // 256)


async def _recv(args) -> int:
    from aiozcrx import Receiver  # noqa: PLC0415 - the compiled core, lazily

    loop = asyncio.get_running_loop()
    lst = socket.create_server((args.host, args.port), reuse_port=False)
    lst.setblocking(False)
    print(f"listening on {args.host}:{lst.getsockname()[1]}", flush=True)
    conn, peer = await loop.sock_accept(lst)
    lst.close()
    block = _pattern_block()
    done = loop.create_future()

    class Sink(asyncio.Protocol):
        bytes = 0
        bad = None

        def data_received(self, view):
            if args.verify and self.bad is None:
                # the sender repeats a 256-byte ramp: byte i of the stream is i % 256
                start = self.bytes % 256
                want = (block[start:] + block[:start])[: len(view)] if len(view) <= BLOCK else None
                if want is not None and view != want:
                    self.bad = self.bytes
            self.bytes += len(view)

        def eof_received(self):
            return False

        def connection_lost(self, exc):
            done.set_result(exc)

    async with Receiver(engine=args.engine, interface=args.interface, queue=args.queue) as rx:
        print(f"engine: {rx.engine}; fallback: {rx.fallback_reason or '(none)'}", flush=True)
        t0 = time.perf_counter()
        _, proto = await rx.wrap(conn, Sink)
        last = (t0, 0)
        while not done.done():
            await asyncio.wait([done], timeout=1.0)
            now = time.perf_counter()
            rate = (proto.bytes - last[1]) / (now - last[0]) / 1e9
            last = (now, proto.bytes)
            print(f"\r{proto.bytes / 1e9:8.2f} GB  {rate:6.2f} GB/s", end="", file=sys.stderr, flush=True)
        dt = time.perf_counter() - t0
        stats = rx.stats()
    print(file=sys.stderr)
    print(f"received {proto.bytes} bytes in {dt:.3f} s = {proto.bytes / dt / 1e9:.2f} GB/s "
          f"({stats['completions']} completions) from {peer[0]}")
    if args.verify:
        print("verify: " + ("OK" if proto.bad is None else f"MISMATCH at byte {proto.bad}"))
        return 0 if proto.bad is None else 1
    return 0


def _send(args) -> int:
    block = _pattern_block()
    total = args.mib * BLOCK
    t0 = time.perf_counter()
    with socket.create_connection((args.host, args.port)) as s:
        sent = 0
        while sent < total:
            n = min(BLOCK, total - sent)
            s.sendall(block[:n])
            sent += n
    dt = time.perf_counter() - t0
    print(f"sent {total} bytes in {dt:.3f} s = {total / dt / 1e9:.2f} GB/s")
    return 0


def _core_missing(cmd: str) -> str | None:
    """None if the compiled core loads, else the message for ``aiozcrx cmd``."""
    try:
        from aiozcrx import Receiver  # noqa: F401, PLC0415 - the compiled core, lazily
    except ImportError as exc:
        return (f"aiozcrx {cmd}: the compiled core could not be loaded ({exc}); "
                f"`aiozcrx doctor` and `aiozcrx nic` work without it")
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "doctor":
        from . import doctor
        return doctor.main(argv[1:])
    if argv and argv[0] == "nic":
        from . import nic
        return nic.main(argv[1:])
    ap = argparse.ArgumentParser(prog="aiozcrx", description="io_uring zero-copy receive for asyncio")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("doctor", help="check what zero copy needs here (see `aiozcrx doctor -h`)")
    sub.add_parser("nic", help="set up / tear down a NIC queue for zcrx (see `aiozcrx nic -h`)")
    d = sub.add_parser("demo", help="loopback demo: sender process + aiozcrx receiver")
    d.add_argument("--mib", type=int, default=1024)
    d.add_argument("--engine", default="auto")
    r = sub.add_parser("recv", help="bulk sink (like liburing's examples/zcrx)")
    r.add_argument("--host", default="0.0.0.0")
    r.add_argument("--port", type=int, default=9999)
    r.add_argument("--interface")
    r.add_argument("--queue", type=int)
    r.add_argument("--engine", default="auto")
    r.add_argument("--verify", action="store_true", help="check the sender's byte pattern")
    s = sub.add_parser("send", help="matching sender")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=9999)
    s.add_argument("--mib", type=int, default=1024)
    args = ap.parse_args(argv)
    if args.cmd in ("demo", "recv"):
        why = _core_missing(args.cmd)
        if why:
            print(why, file=sys.stderr)
            return 2
    if args.cmd == "demo":
        import runpy
        import os
        demo = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "loopback_demo.py")
        if not os.path.exists(demo):
            print("the demo lives in examples/loopback_demo.py of the source tree", file=sys.stderr)
            return 2
        sys.argv = [demo, "--mib", str(args.mib), "--engine", args.engine]
        runpy.run_path(demo, run_name="__main__")
        return 0
    if args.cmd == "recv":
        return asyncio.run(_recv(args))
    if args.cmd == "send":
        return _send(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())

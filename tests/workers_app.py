"""The application tests/test_workers.py serves with `aiozcrx serve`: each
connection sends an 8-byte length and that many bytes; the worker answers one
JSON line saying what it received (length, sha256), where (worker, its queue, the
queue the connection's packets came in on), as whom (uid, CapEff) and what its own
attempt to register a zcrx queue met."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import struct
import sys
from typing import Any

import aiozcrx
import aiozcrx.workers


def _cap_eff() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return -1


def _register_attempt() -> str:
    """What the app's own attempt to register a zcrx queue raises (it must be refused)."""
    ctx = aiozcrx.workers.current()
    loop = asyncio.new_event_loop()

    async def attempt() -> str:
        rx = aiozcrx.Receiver(engine="zcrx", interface=ctx.interface or "lo",
                              queue=ctx.queue if ctx.queue is not None else 0, area_size=1 << 20)
        try:
            rx.open()
        except Exception as e:  # noqa: BLE001 - reported to the test
            return f"{type(e).__name__}: errno={getattr(e, 'errno', None)}: {e}"
        rx.close()
        return "registered"
    try:
        return loop.run_until_complete(attempt())
    finally:
        loop.close()


REGISTER = _register_attempt()
IDENTITY = {"uid": os.getuid(), "gid": os.getgid(), "cap_eff": _cap_eff(), "register": REGISTER}


class Upload(asyncio.Protocol):
    aiozcrx_views = True

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.head = b""
        self.want = -1
        self.got = 0
        self.sha = hashlib.sha256()
        ctx = aiozcrx.workers.current()
        sock = transport.get_extra_info("socket")
        self.info: dict[str, Any] = {"worker": ctx.index, "pid": os.getpid(), "queue": ctx.queue,
                                     "conn_queue": ctx.queue_of(sock) if sock is not None else None,
                                     "engine": transport.get_extra_info("aiozcrx_engine"), **IDENTITY}

    def data_received(self, data: Any) -> None:
        view = memoryview(data)
        if self.want < 0:
            need = 8 - len(self.head)
            self.head += bytes(view[:need])
            view = view[need:]
            if len(self.head) < 8:
                return
            self.want = struct.unpack("!Q", self.head)[0]
        self.sha.update(view)
        self.got += len(view)
        if self.got >= self.want:
            self.info.update(n=self.got, sha256=self.sha.hexdigest())
            self.transport.write(json.dumps(self.info).encode() + b"\n")
            self.transport.close()


    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None or self.got < self.want or self.want < 0:
            # in the launcher's output, for the test that fails on it
            print(f"workers_app: worker {self.info['worker']} (queue {self.info['queue']}, connection's "
                  f"queue {self.info['conn_queue']}): connection lost after {self.got} of {self.want} "
                  f"bytes: {exc!r}", file=sys.stderr, flush=True)


def factory() -> type[Upload]:
    return Upload


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """ASGI: the body's length and sha256, and the worker's identity."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    sha = hashlib.sha256()
    n = 0
    more = True
    while more:
        message = await receive()
        body = message.get("body", b"")
        sha.update(body)
        n += len(body)
        more = message.get("more_body", False)
    ctx = aiozcrx.workers.current()
    out = json.dumps({"n": n, "sha256": sha.hexdigest(), "worker": ctx.index, "pid": os.getpid(),
                      **IDENTITY}).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(out)).encode())]})
    await send({"type": "http.response.body", "body": out})

"""HTTP/1.1 server on aiozcrx: the h11 state machine as an asyncio.Protocol.

Routes: ``GET /`` (a short text), ``POST /sha256`` (the sha256 hex of the request
body, hashed as it streams in), anything else 404 (405 for a known path with the
wrong method). Keep-alive and pipelining as h11 allows; ``Expect: 100-continue``
is answered.

Usage: python examples/http_server.py [--host 127.0.0.1] [--port 8080] [--engine auto]
       python examples/http_server.py --selftest   # serve, drive it with curl, verify, exit

Needs h11 (``pip install h11``); the selftest needs ``curl``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from http import HTTPStatus

import h11

from aiozcrx.server import ZcrxServer, create_server

SERVER_NAME = b"aiozcrx-h11-example"


class App:
    """Shared by every connection of one server: the routes and a few counters."""

    def __init__(self, engine: str | None = None):
        self.engine = engine
        self.connections = 0
        self.requests = 0

    def respond_get_root(self) -> tuple[int, bytes]:
        return 200, f"hello from aiozcrx (engine {self.engine})\n".encode()


class HttpProtocol(asyncio.Protocol):
    """One HTTP/1.1 connection: bytes in -> h11 events -> a response out."""

    def __init__(self, app: App):
        self.app = app
        self.conn = h11.Connection(h11.SERVER)
        self.transport: asyncio.Transport | None = None
        self._request: h11.Request | None = None
        self._hasher: hashlib._Hash | None = None
        self._body_len = 0

    # ------------------------------------------------------------ asyncio side
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.app.connections += 1

    def data_received(self, view: bytes | memoryview) -> None:  # aiozcrx gives a memoryview
        # h11 keeps what it has not parsed yet, so it needs bytes it owns: copy the
        # view, then release it at once so its buffer goes back to the kernel. (Just
        # dropping it is not enough when an exception is raised below: the traceback
        # keeps this frame, and the view in it, alive until the garbage collector runs.)
        data = bytes(view)
        if isinstance(view, memoryview):
            view.release()
        self.conn.receive_data(data)
        self._process()

    def eof_received(self) -> bool:
        self.conn.receive_data(b"")
        self._process()
        return False  # close once what we wrote is flushed

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    # --------------------------------------------------------------- h11 side
    def _send(self, event: h11.Event) -> None:
        data = self.conn.send(event)
        if data and self.transport is not None:
            self.transport.write(data)

    def _process(self) -> None:
        while self.transport is not None:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError as exc:
                self._bad_request(exc)
                return
            if event is h11.NEED_DATA:
                return
            if event is h11.PAUSED:
                if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
                    self.conn.start_next_cycle()   # keep-alive: the next request
                    continue
                return
            if isinstance(event, h11.Request):
                self._start_request(event)
            elif isinstance(event, h11.Data):
                if self._hasher is not None:
                    self._hasher.update(event.data)
                self._body_len += len(event.data)
            elif isinstance(event, h11.EndOfMessage):
                self._finish_request()
            elif isinstance(event, h11.ConnectionClosed):
                self.transport.close()
                return

    def _start_request(self, req: h11.Request) -> None:
        self.app.requests += 1
        self._request = req
        self._body_len = 0
        self._hasher = hashlib.sha256() if req.target == b"/sha256" else None
        if self.conn.they_are_waiting_for_100_continue:
            self._send(h11.InformationalResponse(status_code=100, headers=[]))

    def _finish_request(self) -> None:
        req, self._request = self._request, None
        assert req is not None  # h11 sends EndOfMessage only after a Request
        method, target = req.method, req.target.split(b"?", 1)[0]
        if target == b"/":
            if method in (b"GET", b"HEAD"):
                status, body = self.app.respond_get_root()
            else:
                status, body = 405, b"method not allowed\n"
        elif target == b"/sha256":
            if method == b"POST" and self._hasher is not None:
                status, body = 200, (self._hasher.hexdigest() + "\n").encode()
            else:
                status, body = 405, b"method not allowed\n"
        else:
            status, body = 404, b"not found\n"
        extra: list[tuple[bytes, bytes]] = []
        if status == 405:
            extra.append((b"allow", b"GET, HEAD" if target == b"/" else b"POST"))
        self._respond(status, body, extra, head=method == b"HEAD")
        self._hasher = None

    def _respond(self, status: int, body: bytes, extra_headers: Sequence[tuple[bytes, bytes]] = (), *, head: bool = False,
                 close: bool = False) -> None:
        headers = [(b"server", SERVER_NAME), (b"content-type", b"text/plain; charset=utf-8"),
                   (b"content-length", str(len(body)).encode()), *extra_headers]
        if close:
            headers.append((b"connection", b"close"))
        self._send(h11.Response(status_code=status, headers=headers,
                                reason=HTTPStatus(status).phrase.encode()))
        if body and not head:
            self._send(h11.Data(data=body))
        self._send(h11.EndOfMessage())
        if self.conn.our_state is h11.MUST_CLOSE and self.transport is not None:
            self.transport.close()

    def _bad_request(self, exc: h11.RemoteProtocolError) -> None:
        if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            try:
                self._respond(exc.error_status_hint, f"{exc}\n".encode(), close=True)
            except h11.LocalProtocolError:
                pass
        if self.transport is not None:
            self.transport.close()


async def start(host: str | None, port: int, engine: str = "auto", app: App | None = None
                ) -> tuple[ZcrxServer, App]:
    """Starts the server; returns ``(server, app)``."""
    app = app or App()
    server = await create_server(lambda: HttpProtocol(app), host, port, engine=engine)
    app.engine = server.receiver.engine
    return server, app


# ------------------------------------------------------------------- selftest
async def curl(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        "curl", "--silent", "--show-error", "--max-time", "30", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    rc = await proc.wait()  # communicate() waited for the exit: this returns at once
    return rc, out.decode(), err.decode()


async def selftest(server: ZcrxServer, app: App, size: int) -> bool:
    host, port = server.sockets[0].getsockname()[:2]
    base = f"http://{host}:{port}"
    ok = True

    rc, out, err = await curl(f"{base}/")
    good = rc == 0 and out.startswith("hello from aiozcrx")
    print(f"GET /: {out.strip() or err.strip()!r} ok: {good}")
    ok &= good

    data = os.urandom(size)
    with tempfile.NamedTemporaryFile(prefix="aiozcrx-http-") as f:
        f.write(data)
        f.flush()
        rc, out, err = await curl("--data-binary", f"@{f.name}", f"{base}/sha256")
    good = rc == 0 and out.strip() == hashlib.sha256(data).hexdigest()
    print(f"POST /sha256 ({size} bytes): sha256 verified: {good}")
    ok &= good

    before = app.connections
    rc, out, err = await curl("--write-out", "%{http_code}\n", f"{base}/", f"{base}/missing")
    lines = out.splitlines()
    good = rc == 0 and lines[-1] == "404" and "200" in lines and app.connections == before + 1
    print(f"keep-alive GET / + GET /missing on {app.connections - before} connection(s): "
          f"ok: {good}")
    ok &= good
    return ok


async def main(args: argparse.Namespace) -> int:
    server, app = await start(args.host, 0 if args.selftest else args.port, args.engine)
    rx = server.receiver
    print(f"engine: {rx.engine} ({rx.fallback_reason or 'first choice'})")
    print("listening on", ", ".join(f"http://{s.getsockname()[0]}:{s.getsockname()[1]}/"
                                     for s in server.sockets))
    async with server:
        if args.selftest:
            if shutil.which("curl") is None:
                print("selftest needs curl", file=sys.stderr)
                return 2
            ok = await selftest(server, app, args.mib << 20)
        else:
            try:
                await server.serve_forever()
            except asyncio.CancelledError:
                pass
            return 0
    # `async with` waited until every connection was gone and the Receiver closed
    outstanding = rx.stats().get("buffers_outstanding")
    print(f"buffers outstanding after close: {outstanding}")
    return 0 if ok and outstanding == 0 else 1


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--engine", default="auto")
    p.add_argument("--mib", type=int, default=4, help="selftest upload size")
    p.add_argument("--selftest", action="store_true")
    try:
        sys.exit(asyncio.run(main(p.parse_args())))
    except KeyboardInterrupt:
        pass

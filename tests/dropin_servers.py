"""Servers people run, started exactly as docs/dropin.md says, on a listening socket
the test hands over (its fd number in DROPIN_FD). Used by tests/test_dropin.py (one subprocess each).

    python tests/dropin_servers.py uvicorn-h11|uvicorn-httptools|hypercorn|aiohttp|websockets

The ASGI app and the aiohttp app answer:
  POST /upload  -> the sha256 of the body, streamed (hex)
  GET  /stats   -> JSON: what the loop's aiozcrx Receivers received (bytes, engines)
  GET  /        -> Hello, world! (the small request of benchmarks/httpbench.py)
  websocket /ws -> echo
With DROPIN_TLS_CERT and DROPIN_TLS_KEY set, uvicorn and aiohttp serve HTTPS (their
own TLS options: --ssl-certfile/--ssl-keyfile, ssl_context=).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import sys

import aiozcrx

FD = int(os.environ.get("DROPIN_FD", "3"))
# HTTPS: the certificate and key (PEM files) when set (tests/test_tls.py)
TLS_CERT = os.environ.get("DROPIN_TLS_CERT")
TLS_KEY = os.environ.get("DROPIN_TLS_KEY")
HELLO = b"Hello, world!"


def ssl_context():
    if not TLS_CERT:
        return None
    import ssl
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(TLS_CERT, TLS_KEY)
    return ctx


def aiozcrx_stats() -> dict:
    loop = asyncio.get_running_loop()
    rxs = loop.aiozcrx_receivers() if hasattr(loop, "aiozcrx_receivers") else []
    stats = [rx.stats() for rx in rxs]
    return {"loop": type(loop).__name__, "engines": sorted({s["engine"] for s in stats}),
            "bytes": sum(s.get("bytes", 0) for s in stats),
            "bytes_copied": sum(s.get("bytes_copied", 0) for s in stats)}


async def asgi_app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        while True:
            msg = await receive()
            if msg["type"] == "websocket.disconnect":
                return
            if msg.get("bytes") is not None:
                await send({"type": "websocket.send", "bytes": msg["bytes"]})
            else:
                await send({"type": "websocket.send", "text": msg["text"]})
    if scope["path"] == "/upload":
        h = hashlib.sha256()
        more = True
        while more:
            msg = await receive()
            h.update(msg.get("body", b""))
            more = msg.get("more_body", False)
        body = h.hexdigest().encode()
    elif scope["path"] == "/stats":
        body = json.dumps(aiozcrx_stats()).encode()
    else:
        body = HELLO
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def listening_socket() -> socket.socket:
    return socket.socket(fileno=FD)


def aiohttp_app():
    """The aiohttp application (also benchmarks/httpservers.py's)."""
    from aiohttp import web

    async def hello(request):
        return web.Response(body=HELLO, content_type="text/plain")

    async def upload(request):
        h = hashlib.sha256()
        async for chunk in request.content.iter_chunked(1 << 16):
            h.update(chunk)
        return web.Response(text=h.hexdigest())

    async def stats(request):
        return web.json_response(aiozcrx_stats())

    async def ws(request):
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        async for msg in sock:
            await (sock.send_bytes(msg.data) if msg.type == web.WSMsgType.BINARY else sock.send_str(msg.data))
        return sock

    app = web.Application(client_max_size=1 << 30)
    app.add_routes([web.get("/", hello), web.post("/upload", upload), web.get("/stats", stats),
                    web.get("/ws", ws)])
    return app


def run_aiohttp() -> None:
    from aiohttp import web

    # the line docs/dropin.md gives for aiohttp:
    web.run_app(aiohttp_app(), sock=listening_socket(), loop=aiozcrx.new_event_loop(), print=None,
                ssl_context=ssl_context())


def run_hypercorn() -> None:
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    config = Config()
    config.bind = [f"fd://{FD}"]
    config.accesslog = None
    # the line docs/dropin.md gives for hypercorn:
    aiozcrx.run(serve(asgi_app, config))


def run_websockets() -> None:
    from websockets.asyncio.server import serve

    async def echo(ws):
        async for msg in ws:
            await ws.send(msg)

    async def main():
        async with serve(echo, sock=listening_socket(), max_size=None) as server:
            await server.serve_forever()

    # the line docs/dropin.md gives for websockets:
    aiozcrx.run(main())


def run_uvicorn(http: str) -> None:
    # the command line docs/dropin.md gives, as uvicorn.main would run it
    sys.argv = ["uvicorn", "dropin_servers:asgi_app", "--loop", "aiozcrx:new_event_loop",
                "--http", http, "--ws", "websockets", "--fd", str(FD), "--log-level", "warning"]
    if TLS_CERT:
        sys.argv += ["--ssl-certfile", TLS_CERT, "--ssl-keyfile", TLS_KEY]
    import uvicorn.main
    uvicorn.main.main()


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    kind = sys.argv[1]
    if kind.startswith("uvicorn-"):
        run_uvicorn(kind.split("-", 1)[1])
    elif kind == "aiohttp":
        run_aiohttp()
    elif kind == "hypercorn":
        run_hypercorn()
    elif kind == "websockets":
        run_websockets()
    else:
        raise SystemExit(f"unknown server {kind!r}")

"""The servers of benchmarks/httpbench.py: aiohttp and uvicorn, each on one of four loops.

    python benchmarks/httpservers.py aiohttp|uvicorn aiozcrx|uvloop|asyncio --fd N

``aiozcrx`` is the drop-in loop, started with the line docs/dropin.md gives
(``AIOZCRX_LOOP=asyncio`` in the environment makes its base the stock loop);
``uvloop`` and ``asyncio`` are the plain loops, started the way their users do.
The listening socket is inherited (fd N). The process pins itself to the
receiver's CPU (CPU 0 with 2+ CPUs; records.pin).

Routes, the same on both servers:
  GET  /        -> ``Hello, world!`` (the small-request case)
  POST /upload  -> the sha256 of the body, streamed (hex)
  GET  /stats   -> JSON: what the loop's aiozcrx Receivers received (bytes, engines)
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
HELLO = b"Hello, world!"


def aiozcrx_stats() -> dict:
    loop = asyncio.get_running_loop()
    rxs = loop.aiozcrx_receivers() if hasattr(loop, "aiozcrx_receivers") else []
    stats = [rx.stats() for rx in rxs]
    return {"loop": type(loop).__module__ + "." + type(loop).__name__,
            "engines": sorted({s["engine"] for s in stats}),
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
    path = scope["path"]
    if path == "/upload":
        h = hashlib.sha256()
        more = True
        while more:
            msg = await receive()
            h.update(msg.get("body", b""))
            more = msg.get("more_body", False)
        body = h.hexdigest().encode()
    elif path == "/stats":
        body = json.dumps(aiozcrx_stats()).encode()
    else:
        body = HELLO
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def run_uvicorn(loop: str, fd: int) -> None:
    # `uvicorn app --loop aiozcrx:new_event_loop --http httptools`, as uvicorn.main runs
    # it, on the inherited socket. Not `--fd`: uvicorn declares that socket AF_UNIX,
    # so the loop would not set TCP_NODELAY on its connections, and uvicorn's two
    # writes per response (head, body) would wait for wrk's delayed ACK (40 ms).
    import uvicorn
    loop_arg = {"aiozcrx": "aiozcrx:new_event_loop", "uvloop": "uvloop", "asyncio": "asyncio"}[loop]
    config = uvicorn.Config("httpservers:asgi_app", loop=loop_arg, http="httptools", log_level="warning",
                            access_log=False)
    uvicorn.Server(config).run(sockets=[socket.socket(fileno=fd)])


def run_aiohttp(loop: str, fd: int) -> None:
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

    app = web.Application(client_max_size=1 << 40)
    app.add_routes([web.get("/", hello), web.post("/upload", upload), web.get("/stats", stats)])
    if loop == "aiozcrx":
        import aiozcrx
        ev = aiozcrx.new_event_loop()  # the line docs/dropin.md gives for aiohttp
    elif loop == "uvloop":
        import uvloop
        ev = uvloop.new_event_loop()
    else:
        ev = asyncio.new_event_loop()
    web.run_app(app, sock=socket.socket(fileno=fd), loop=ev, print=None, access_log=None)


def main() -> None:
    sys.path.insert(0, HERE)
    from records import pin
    kind, loop = sys.argv[1], sys.argv[2]
    fd = int(sys.argv[sys.argv.index("--fd") + 1])
    pin("receiver")
    if kind == "uvicorn":
        run_uvicorn(loop, fd)
    elif kind == "aiohttp":
        run_aiohttp(loop, fd)
    else:
        raise SystemExit(f"unknown server {kind!r}")


if __name__ == "__main__":
    main()

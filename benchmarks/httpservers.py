"""The servers of benchmarks/httpbench.py: aiohttp and uvicorn, each on one of four loops.

    python benchmarks/httpservers.py aiohttp|uvicorn aiozcrx|uvloop|asyncio --fd N

``aiozcrx`` is the drop-in loop, started with the line docs/dropin.md gives
(``AIOZCRX_LOOP=asyncio`` in the environment makes its base the stock loop);
``uvloop`` and ``asyncio`` are the plain loops, started the way their users do.
The listening socket is inherited (fd N). The process pins itself to the
receiver's CPU (CPU 0 with 2+ CPUs; common.pin).

Routes, the same on both servers:
  GET  /        -> ``Hello, world!`` (the small-request case)
  POST /upload  -> the sha256 of the body, streamed (hex)
  GET  /stats   -> JSON: what the loop's aiozcrx Receivers received (bytes, engines)
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
# the apps are the ones tests/test_dropin.py runs behind each server (one copy):
# ASGI and aiohttp, answering GET / (hello), POST /upload (sha256), GET /stats
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))
from dropin_servers import aiohttp_app, asgi_app  # noqa: E402,F401  (uvicorn imports asgi_app by name)


def run_uvicorn(loop: str, fd: int) -> None:
    # `uvicorn app --loop aiozcrx:new_event_loop --http httptools`, as uvicorn.main runs
    # it, on the inherited socket. Not `--fd`: uvicorn declares that socket AF_UNIX,
    # so the loop would not set TCP_NODELAY on its connections, and uvicorn's two
    # writes per response (head, body) would wait for wrk's delayed ACK (40 ms).
    import uvicorn
    loop_arg = {"aiozcrx": "aiozcrx:new_event_loop", "uvloop": "uvloop", "asyncio": "asyncio"}[loop]
    config = uvicorn.Config("dropin_servers:asgi_app", loop=loop_arg, http="httptools", log_level="warning",
                            access_log=False)
    uvicorn.Server(config).run(sockets=[socket.socket(fileno=fd)])


def run_aiohttp(loop: str, fd: int) -> None:
    from aiohttp import web

    app = aiohttp_app()  # the app tests/test_dropin.py serves
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
    from common import pin
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

"""Engines: the ways a Receiver gets bytes from the kernel, behind one seam.

Best first:
  "zcrx"      RECV_ZC multishot on a NIC hardware queue: true zero copy (zcrx.py).
  "zcrx-copy" RECV_ZC on a ZCRX_REG_NODEV instance (7.1+): the kernel copies into
              our area; the same user-space path as "zcrx" (zcrx.py).
  "uring"     multishot RECV into a provided buffer ring (uring.py).
  "socket"    non-blocking recv() into pooled buffers (socket.py).

base.py holds the interface (``Engine``, the per-connection record ``Conn``, the
``ReadEvents`` a transport implements, the pure ``decide()``); ring.py the
io_uring mechanics both ring engines share; advice.py the errno tables.
``open_engine`` is the one place "auto" is resolved.
"""

from __future__ import annotations

from ..config import ENGINES, Config
from ..errors import EngineUnavailable
from .base import Action, Conn, Engine, EngineLoop, ReadEvents, decide
from .socket import SocketEngine
from .uring import UringEngine
from .zcrx import ZcrxEngine

__all__ = ["ENGINES", "Action", "Conn", "Engine", "ReadEvents", "SocketEngine", "UringEngine",
           "ZcrxEngine", "decide", "make_engine", "open_engine"]


def make_engine(name: str, config: Config, *, share_with: ZcrxEngine | None = None) -> Engine:
    if name in ("zcrx", "zcrx-copy"):
        return ZcrxEngine(config, nodev=name == "zcrx-copy", share_with=share_with)
    if name == "uring":
        return UringEngine(config)
    if name == "socket":
        return SocketEngine(config)
    raise ValueError(f"unknown engine {name!r}; choose one of {', '.join(ENGINES)} or 'auto'")


def open_engine(config: Config, loop: EngineLoop, *, share_with: ZcrxEngine | None = None
                ) -> tuple[Engine, list[tuple[str, bool, str]]]:
    """Opens the engine ``config`` asks for; for "auto", the best that works here.

    Returns the engine and, per engine tried, (name, worked, reason). Every
    engine that fails to open has released what it made before it raised.
    """
    if config.engine != "auto":
        eng = make_engine(config.engine, config, share_with=share_with)
        eng.open(loop)
        return eng, [(eng.name, True, "asked for by name")]
    tried: list[tuple[str, bool, str]] = []
    for name in ENGINES:
        if name == "zcrx" and (config.interface is None or config.queue is None):
            tried.append((name, False, "no interface= given" if config.interface is None
                          else "no queue= given"))
            continue
        eng = make_engine(name, config)
        try:
            eng.open(loop)
        except EngineUnavailable as e:
            tried.append((name, False, e.reason))
            if name == ENGINES[-1]:
                raise  # not even plain sockets: what they lack (memory) is the cause
            continue
        tried.append((name, True, "works here"))
        return eng, tried
    raise AssertionError("unreachable: the last engine either opens or raises")

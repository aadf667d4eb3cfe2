"""aiozcrx: io_uring zero-copy receive (zcrx) for asyncio, uvloop and anyio.

    async with aiozcrx.Receiver(engine="auto") as rx:
        transport, protocol = await rx.wrap(sock, MyProtocol)

``MyProtocol.data_received`` gets a read-only memoryview over registered memory;
the buffer goes back to the kernel when the view is released.

The names below are loaded on first use (PEP 562), so that ``import aiozcrx.tools``
(``aiozcrx doctor``, ``aiozcrx nic``) does not load the compiled core
(``aiozcrx._abi``, ``aiozcrx._fastpath``) and works where it cannot be built or loaded.
A name whose module cannot be imported raises ImportError saying why.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "ENGINES",
    "AiozcrxError",
    "EngineUnavailable",
    "ProcessForked",
    "Receiver",
    "UringUnavailable",
    "ViewProtocol",
    "ZcrxTransport",
    "ZcrxServer",
    "ZcrxBufferSizeRefused",
    "ZcrxDeviceRemoved",
    "ZcrxUnavailable",
    "create_connection",
    "create_server",
    "new_event_loop",
    "open_connection",
    "run",
    "start_server",
    "start_tls",
]

# name -> the submodule that defines it
_LAZY = {
    "ENGINES": "config",
    "AiozcrxError": "errors",
    "EngineUnavailable": "errors",
    "ProcessForked": "errors",
    "UringUnavailable": "errors",
    "ZcrxUnavailable": "errors",
    "ZcrxDeviceRemoved": "errors",
    "ZcrxBufferSizeRefused": "errors",
    "Receiver": "receiver",
    "ZcrxServer": "server",
    "create_connection": "server",
    "create_server": "server",
    "open_connection": "streams",
    "start_server": "streams",
    "start_tls": "tls",
    "ZcrxTransport": "transport",
    "ViewProtocol": "transport",
    "new_event_loop": "loop",
    "run": "loop",
}

if TYPE_CHECKING:  # the real imports, for type checkers and IDEs
    from .config import ENGINES
    from .errors import (AiozcrxError, EngineUnavailable, ProcessForked, UringUnavailable,
                         ZcrxBufferSizeRefused, ZcrxDeviceRemoved, ZcrxUnavailable)
    from .receiver import Receiver
    from .server import ZcrxServer, create_connection, create_server
    from .streams import open_connection, start_server
    from .loop import new_event_loop, run
    from .tls import start_tls
    from .transport import ViewProtocol, ZcrxTransport


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        mod = importlib.import_module(f"{__name__}.{module}")
    except ImportError as exc:
        raise ImportError(f"cannot load aiozcrx.{name} (from aiozcrx.{module}): {exc}",
                          name=exc.name or f"{__name__}.{module}", path=exc.path) from exc
    value = getattr(mod, name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

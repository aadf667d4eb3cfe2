"""aiozcrx: io_uring zero-copy receive (zcrx) for asyncio, uvloop and anyio.

    async with aiozcrx.Receiver(engine="auto") as rx:
        transport, protocol = await rx.wrap(sock, MyProtocol)

``MyProtocol.data_received`` gets a read-only memoryview over registered memory;
the buffer goes back to the kernel when the view is released.
"""

from .engines import ENGINES
from .errors import AiozcrxError, EngineUnavailable, UringUnavailable, ZcrxUnavailable
from .receiver import Receiver
from .server import ZcrxServer, create_connection, create_server
from .streams import open_connection, start_server
from .transport import ZcrxTransport

__version__ = "0.1.0"

__all__ = [
    "ENGINES",
    "AiozcrxError",
    "EngineUnavailable",
    "Receiver",
    "UringUnavailable",
    "ZcrxTransport",
    "ZcrxServer",
    "ZcrxUnavailable",
    "create_connection",
    "create_server",
    "open_connection",
    "start_server",
]

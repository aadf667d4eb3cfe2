"""What this machine's kernel can do, found by asking it (used by `aiozcrx doctor`).

Importing this module loads no compiled code: the core (``aiozcrx._kernel`` over
``aiozcrx._abi`` and ``aiozcrx._fastpath``) and the engines over it are imported inside
the functions that use them. :func:`load_core` says up front whether they load.
"""

from __future__ import annotations

import asyncio
import platform
from typing import Any

from .sysinfo import read_int


def load_core() -> None:
    """Import the compiled core and the engine code the probes use.

    Raises ImportError (with the reason) where it cannot be loaded: not built, built
    for another Python, or a shared object that does not link.
    """
    from .. import _kernel, config, engines, receiver  # noqa: F401, PLC0415 - the compiled core


def kernel_report() -> dict[str, Any]:
    """Kernel release and io_uring/zcrx capabilities, each probed for real."""
    from .. import _kernel  # noqa: PLC0415 - the compiled core, lazily
    from ..errors import errno_name  # noqa: PLC0415

    rep: dict[str, Any] = {
        "release": platform.release(),
        "io_uring_disabled": read_int("/proc/sys/kernel/io_uring_disabled"),
        "io_uring": False,
        "zcrx_query": _kernel.query_zcrx(),
        "zcrx_nodev": False,
        "reason": "",
    }
    try:
        ring = _kernel.Ring(cq_entries=64, cqe32=True)
    except OSError as e:
        rep["reason"] = f"io_uring_setup: {errno_name(e.errno or 0)}: {e.strerror}"
        return rep
    rep["io_uring"] = True
    rep["recv_zc_opcode"] = ring.supports_op(_kernel.OP_RECV_ZC)
    ring.close()
    from ..engines.wake import choose_wake, kernel_wake  # noqa: PLC0415
    k = kernel_wake()
    rep["eventfd_inline"] = k.inline
    rep["eventfd_wake"] = k.summary
    rep["wake"], rep["wake_reason"] = choose_wake("auto")
    engine, tried = choose_engine()
    rep["zcrx_nodev"] = any(name == "zcrx-copy" and ok for name, ok, _ in tried)
    rep["reason"] = "; ".join(f"{n}: {why}" for n, ok, why in tried if not ok)
    return rep


def choose_engine(interface: str | None = None, queue: int | None = None,
                  area_size: int = 4 * 1024 * 1024) -> tuple[str, list[tuple[str, bool, str]]]:
    """The engine ``engine="auto"`` would pick here, and per engine tried, why.

    Each engine is really opened (ring, area, registration) and closed again.
    """
    from ..config import Config  # noqa: PLC0415 - the compiled core, lazily
    from ..receiver import open_engine  # noqa: PLC0415

    # the same Config, validation and "auto" loop as a Receiver; a small area and
    # rings, no notifications: this only asks what would open
    cfg = Config(engine="auto", interface=interface, queue=queue, area_size=area_size,
                 rq_entries=1024, cq_entries=1024, notifications=False).validate()
    loop = asyncio.new_event_loop()
    try:
        eng, tried = open_engine(cfg, loop)
        eng.close()
        return eng.name, tried
    finally:
        loop.close()


if __name__ == "__main__":  # python -m aiozcrx.tools.probe
    import json
    print(json.dumps(kernel_report(), indent=2, default=str))

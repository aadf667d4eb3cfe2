"""A worker's receive side, prepared before its event loop exists.

``prepare_queue()`` does the part of opening a zcrx Receiver that needs
CAP_NET_ADMIN: the ring, the area (this process's own memory, pinned by the
kernel), the refill region and the registration on the NIC queue. It needs no
event loop, so a worker runs it first, drops its privileges
(``privileges.drop_privileges``), imports the application, starts its loop, and
then ``PreparedQueue.receiver()`` gives the Receiver that adopts the prepared
instance when it opens. Same process, same thread: the ring's single issuer is
the thread that made it, and ring fds cannot be passed to another process
(io_uring refuses SCM_RIGHTS for them), which is why the worker prepares its
own queue rather than the launcher (docs/workers.md).

This is the API a pre-fork server's worker class uses (gunicorn's ``init_process``
before the privileges go, e.g.); ``aiozcrx.workers.Launcher`` is one user of it.
"""

from __future__ import annotations

from typing import Any

from ..config import Config
from ..errors import EngineUnavailable
from ..receiver import Receiver

# what a worker may ask for (Receiver's engines)
WORKER_ENGINES = ("auto", "zcrx", "zcrx-copy", "uring", "socket")


class PreparedQueue:
    """The result of :func:`prepare_queue`: a zcrx instance registered on
    ``interface`` queue ``queue`` (``engine`` "zcrx"), or on none (NODEV,
    "zcrx-copy"), or, where neither could be prepared and ``engine="auto"``, the
    reasons why (``fallback_reason``): the Receiver then opens the best engine
    that works without privileges."""

    def __init__(self, interface: str | None, queue: int | None, asked: str, settings: dict[str, Any],
                 engine: Any, tried: list[tuple[str, bool, str]]) -> None:
        self.interface = interface
        self.queue = queue
        self.asked = asked
        self._settings = settings
        self._engine = engine  # a prepared ZcrxEngine, or None
        self.tried = tried
        self._used = False

    @property
    def engine(self) -> str | None:
        """"zcrx" or "zcrx-copy" when an instance was prepared, else None."""
        return self._engine.name if self._engine is not None else None

    @property
    def fallback_reason(self) -> str:
        return "; ".join(f"{name}: {why}" for name, ok, why in self.tried if not ok)

    @property
    def pinned_bytes(self) -> int:
        """Bytes of this process's memory the kernel pinned for the instance (the
        area; the refill region is the kernel's)."""
        if self._engine is None:
            return 0
        return int(self._engine.config.area_bytes)

    def receiver(self, **options: Any) -> Receiver:
        """The Receiver to open on the worker's loop (``async with`` or ``open()``):
        it starts the prepared instance, or, where none was prepared, opens the
        engine asked for (for "auto": the best that works now, its
        ``fallback_reason`` saying why the zcrx engines were passed over).
        ``options``: the other Receiver settings (views=, max_held=, ...). Once."""
        if self._used:
            raise RuntimeError("PreparedQueue.receiver() makes one Receiver; it was called already")
        self._used = True
        if self._engine is not None:
            return Receiver._adopting(self._engine, list(self.tried), **options)
        settings = dict(self._settings, **options)
        if self.asked == "auto":
            # the zcrx engines were tried while privileged: not again
            rx = Receiver(engine="auto", **settings)
            rx._skip_engines = tuple(self.tried)
            return rx
        return Receiver(engine=self.asked, **settings)

    def release(self) -> None:
        """An instance never used (the worker stops before serving): the ring and
        the area go, the queue is unbound (by the kernel, shortly)."""
        if self._engine is not None and not self._used:
            self._engine.release_prepared()
        self._engine = None


def prepare_queue(interface: str | None, queue: int | None, *, engine: str = "auto",
                  area_size: int | None = None, rq_entries: int | None = None,
                  **settings: Any) -> PreparedQueue:
    """Prepares the zcrx instance of this process (see the module docstring).

    ``engine``: "zcrx" (the NIC queue, or the typed error naming the cause and the
    fix), "zcrx-copy" (NODEV, or the typed error), "auto" (zcrx on the queue, else
    zcrx-copy, else nothing prepared: the Receiver takes "uring" or "socket" later,
    saying why), "uring"/"socket" (nothing to prepare). ``settings``: Receiver's
    other keyword settings that size the instance (hugepages=, kernel_region=,
    cq_entries=, notifications=, buf_size=, wake=).
    """
    if engine not in WORKER_ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join(WORKER_ENGINES)}")
    base = dict(interface=interface, queue=queue, area_size=area_size, rq_entries=rq_entries, **settings)
    config = Config(engine=engine, **base).validate()
    tried: list[tuple[str, bool, str]] = []
    if engine in ("uring", "socket"):
        return PreparedQueue(interface, queue, engine, base, None, tried)
    from ..engines import ZcrxEngine  # noqa: PLC0415 - the compiled core, only when preparing
    candidates = [engine] if engine != "auto" else ["zcrx", "zcrx-copy"]
    for name in candidates:
        if name == "zcrx" and (interface is None or queue is None):
            tried.append(("zcrx", False, "no interface= given" if interface is None else "no queue= given"))
            continue
        if name == "zcrx" and engine == "auto":
            problem = config.nic_problem()
            if problem is not None:
                tried.append(("zcrx", False, problem))
                continue
        eng = ZcrxEngine(config, nodev=name == "zcrx-copy")
        try:
            eng.prepare()
        except EngineUnavailable as e:
            if engine != "auto":
                raise
            tried.append((name, False, e.reason))
            continue
        tried.append((name, True, "asked for by name" if engine != "auto" else "works here"))
        return PreparedQueue(interface, queue, engine, base, eng, tried)
    return PreparedQueue(interface, queue, engine,
                         dict(base, interface=None, queue=None), None, tried)

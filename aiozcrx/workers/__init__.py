"""N workers on N NIC queues: zero copy on every core, without root (docs/workers.md).

    aiozcrx serve myapp:app --queues 0-3 --interface eth0 --port 8000 --user nobody

``Launcher`` (what ``aiozcrx serve`` runs) forks one worker per queue; each
prepares its zcrx instance while privileged (``prepare_queue``), drops every
privilege (``drop_privileges``), then imports the application and serves,
receiving each connection on the worker that owns the queue its packets arrive
on (``handoff``). For another pre-fork server (a gunicorn worker class): call
``prepare_queue`` in the worker before it drops privileges, and open
``PreparedQueue.receiver()`` on its loop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .privileges import Identity, PrivilegeDropError, drop_privileges

__all__ = ["Identity", "Launcher", "PreparedQueue", "PrivilegeDropError", "WorkerContext", "current",
           "drop_privileges", "prepare_queue"]

if TYPE_CHECKING:
    from .launcher import Launcher
    from .prepare import PreparedQueue, prepare_queue
    from .worker import WorkerContext, current


def __getattr__(name: str) -> Any:
    # the compiled core is imported when first needed, not by `import aiozcrx.workers`
    if name == "Launcher":
        from .launcher import Launcher
        return Launcher
    if name in ("PreparedQueue", "prepare_queue"):
        from . import prepare
        return getattr(prepare, name)
    if name in ("WorkerContext", "current"):
        from . import worker
        return getattr(worker, name)
    raise AttributeError(f"module 'aiozcrx.workers' has no attribute {name!r}")

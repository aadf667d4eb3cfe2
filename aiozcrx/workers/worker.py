"""One worker process: prepare the queue, drop privileges, import the app, serve.

Runs in a child the launcher forked (``run_worker`` never returns). In order:
  1. the parent's death ends it (PR_SET_PDEATHSIG), even while preparing;
  2. ``prepare_queue``: ring, area, refill region, registration on its queue,
     while the process still holds the launcher's privileges;
  3. ``drop_privileges``: another uid/gid, no capability, no_new_privs (and the
     death signal again: changing credentials clears it);
  4. only now the application is imported, the event loop made, and the
     Receiver opened on it (adopting the prepared instance);
  5. accepts from the launcher's listening socket; each connection is served
     here if its packets arrive on this worker's queue (or on a queue no worker
     owns), else passed unread to its owner (``handoff``);
  6. answers the launcher's control messages (stats, stop) until told to stop
     (or SIGTERM): stops accepting, lets connections finish (up to
     ``graceful_timeout``), closes the Receiver, reports its last stats, exits.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import inspect
import json
import os
import signal
import socket
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, NoReturn

from ..errors import EngineUnavailable
from . import handoff
from .prepare import PreparedQueue, prepare_queue
from .privileges import Identity, capabilities, drop_privileges

# control messages (SOCK_SEQPACKET, one JSON object each)
MAX_MESSAGE = 1 << 20


@dataclass
class WorkerSpec:
    """What every worker is told by the launcher (inherited through fork)."""
    app: str
    app_kind: str = "auto"              # "asgi", "protocol" or "auto"
    interface: str | None = None
    queues: list[int | None] = field(default_factory=list)  # worker index -> its queue
    engine: str = "auto"
    loop: str = "asyncio"               # "asyncio" or "uvloop"
    area_size: int | None = None
    rq_entries: int | None = None
    identity: Identity | None = None
    graceful_timeout: float = 30.0
    launcher_pid: int = 0
    receiver_options: dict[str, Any] = field(default_factory=dict)
    death_signal: int = int(signal.SIGKILL)
    # every worker pid the launcher started so far (a child inherits the set as it
    # was at its fork; later ones come in "pids" messages)
    worker_pids: set[int] = field(default_factory=set)


@dataclass
class WorkerContext:
    """What the application can ask of the worker it runs in
    (``aiozcrx.workers.current()``), e.g. to report which queue served a request."""
    index: int
    queue: int | None
    interface: str | None
    pid: int
    receiver: Any = None                 # the worker's aiozcrx.Receiver, once open
    prepared: PreparedQueue | None = None
    counters: dict[str, int] = field(default_factory=dict)

    def queue_of(self, sock: socket.socket) -> int | None:
        """The RX queue ``sock``'s packets arrive on (None: unknown or not a NIC queue)."""
        napi = handoff.incoming_napi_id(sock)
        return _QMAP.queue_of(napi) if _QMAP is not None else None


_CURRENT: WorkerContext | None = None
_QMAP: handoff.QueueMap | None = None


def current() -> WorkerContext:
    """The worker this code runs in (RuntimeError outside a worker)."""
    if _CURRENT is None:
        raise RuntimeError("aiozcrx.workers.current(): not in an aiozcrx worker process")
    return _CURRENT


def _send(ctrl: socket.socket, message: dict[str, Any]) -> None:
    try:
        ctrl.send(json.dumps(message, default=str).encode())
    except OSError:
        pass  # the launcher is gone: the death signal ends us


def error_report(exc: BaseException) -> dict[str, Any]:
    """A worker's failure as the launcher rebuilds it (typed where it was typed)."""
    report: dict[str, Any] = {"type": "error", "kind": type(exc).__name__, "message": str(exc)}
    if isinstance(exc, EngineUnavailable):
        report.update(engine=exc.engine, errno=exc.errno, cause=exc.cause, fix=exc.fix)
    if not isinstance(exc, (EngineUnavailable, PermissionError)):
        report["traceback"] = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return report


def run_worker(spec: WorkerSpec, index: int, listener: socket.socket, ctrl: socket.socket,
               inboxes: list[socket.socket], outboxes: list[socket.socket]) -> NoReturn:
    """The child's whole life (see the module docstring); exits the process."""
    code = 1
    try:
        code = _run(spec, index, listener, ctrl, inboxes, outboxes)
    except BaseException as exc:  # noqa: BLE001 - reported to the launcher, then exit
        _send(ctrl, error_report(exc))
        code = 3
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _run(spec: WorkerSpec, index: int, listener: socket.socket, ctrl: socket.socket,
         inboxes: list[socket.socket], outboxes: list[socket.socket]) -> int:
    global _CURRENT, _QMAP
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # ^C reaches the launcher, which stops us
    from .privileges import PR_SET_PDEATHSIG, _prctl  # noqa: PLC0415
    _prctl(PR_SET_PDEATHSIG, spec.death_signal, what="PR_SET_PDEATHSIG")
    if os.getppid() != spec.launcher_pid:
        return 1
    # only this worker's inbox, and the others' sending ends
    for i, sock in enumerate(inboxes):
        if i != index:
            sock.close()
    outboxes[index].close()
    queue = spec.queues[index] if index < len(spec.queues) else None
    prepared = prepare_queue(spec.interface, queue, engine=spec.engine, area_size=spec.area_size,
                             rq_entries=spec.rq_entries)
    qmap = handoff.QueueMap(spec.interface)
    qmap.read()  # while privileged: the netdev family answers everyone, but be sure
    # The serving machinery (not the application) is loaded before the drop: the
    # interpreter's own modules need not be readable by the workers' user.
    preload(spec)
    loop = new_loop(spec.loop)
    privileged = os.geteuid() == 0 or capabilities().get("CapEff", 0) != 0
    if privileged:
        drop_privileges(spec.identity, parent_pid=spec.launcher_pid, death_signal=spec.death_signal)
    _QMAP = qmap
    _CURRENT = WorkerContext(index=index, queue=queue, interface=spec.interface, pid=os.getpid(),
                             prepared=prepared)
    try:
        app = load_app(spec.app)  # the application's code runs from here on, unprivileged
        asyncio.set_event_loop(loop)
        server = WorkerServer(spec, index, listener, ctrl, inboxes[index], outboxes, prepared, qmap,
                              _CURRENT, app)
        return loop.run_until_complete(server.serve())
    finally:
        loop.close()


# what a worker loads before it drops its privileges: the loops' lazily imported
# parts and uvicorn's protocol (for ASGI apps), where installed; never the app
PRELOAD = ("concurrent.futures.thread", "asyncio.unix_events", "asyncio.sslproto", "ssl", "hashlib",
           "json", "struct", "http", "email.utils", "urllib.parse", "logging.handlers")
PRELOAD_ASGI = ("uvicorn", "uvicorn.config", "uvicorn.server", "uvicorn.lifespan.on",
                "uvicorn.lifespan.off", "uvicorn.protocols.http.h11_impl",
                "uvicorn.protocols.http.httptools_impl", "uvicorn.protocols.http.auto",
                "uvicorn.protocols.websockets.auto", "uvicorn.middleware.proxy_headers",
                "uvicorn.middleware.message_logger", "uvicorn.middleware.asgi2")


def preload(spec: WorkerSpec) -> None:
    names = PRELOAD + (("uvloop",) if spec.loop == "uvloop" else ()) + \
        (PRELOAD_ASGI if spec.app_kind in ("auto", "asgi") else ())
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError:
            pass  # not installed: not used


def load_app(ref: str) -> Any:
    """``module:attr`` (``module:attr.sub`` too), imported now."""
    module_name, _, attr = ref.partition(":")
    if not module_name or not attr:
        raise ValueError(f"app {ref!r}: expected module:attribute, e.g. myapp:app")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def new_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind == "uvloop":
        import uvloop  # noqa: PLC0415 - optional dependency
        new: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        return new
    if kind != "asyncio":
        raise ValueError(f"loop {kind!r}: expected asyncio or uvloop")
    return asyncio.new_event_loop()


def is_asgi(app: Any) -> bool:
    """An ASGI 3 application: a coroutine function (or an object whose __call__
    is one) taking (scope, receive, send)."""
    call = app if inspect.isfunction(app) or inspect.ismethod(app) else getattr(app, "__call__", None)
    return inspect.iscoroutinefunction(call) and not inspect.isclass(app)


class WorkerServer:
    """The serving half of a worker: accept, hand over, wrap, report, stop."""

    def __init__(self, spec: WorkerSpec, index: int, listener: socket.socket, ctrl: socket.socket,
                 inbox: socket.socket, outboxes: list[socket.socket], prepared: PreparedQueue,
                 qmap: handoff.QueueMap, context: WorkerContext, app: Any) -> None:
        self.spec = spec
        self.index = index
        self.listener = listener
        self.ctrl = ctrl
        self.inbox = inbox
        self.outboxes = outboxes
        self.prepared = prepared
        self.qmap = qmap
        self.context = context
        self.app = app
        self.queue = spec.queues[index] if index < len(spec.queues) else None
        # queue -> the worker that owns it
        self.owner = {q: i for i, q in enumerate(spec.queues) if q is not None}
        self.rx: Any = None
        self.factory: Callable[[], asyncio.BaseProtocol] | None = None
        self.pending: dict[int, list[socket.socket]] = {}  # worker -> connections waiting for room
        self.stopping = False
        self.stopped: asyncio.Event | None = None
        self.uvicorn: Any = None
        self.counters = context.counters
        self.counters.update(accepted=0, served=0, handed_over=0, handed_in=0, unowned=0,
                             handoff_rejected=0, handoff_waits=0)
        self.loop: asyncio.AbstractEventLoop | None = None

    async def serve(self) -> int:
        loop = self.loop = asyncio.get_running_loop()
        self.stopped = asyncio.Event()
        options = dict(self.spec.receiver_options)
        if self.spec.app_kind == "asgi" or (self.spec.app_kind == "auto" and is_asgi(self.app)):
            self.factory = await self._start_uvicorn()
            options.setdefault("views", "opt-in")  # uvicorn's protocols take bytes
        else:
            made = self.app()  # the factory gives the protocol factory
            if not callable(made):
                raise TypeError(f"{self.spec.app}() returned {made!r}, not a protocol factory")
            self.factory = made
        self.rx = self.prepared.receiver(**options)
        self.rx.open()
        self.context.receiver = self.rx
        if self.qmap.interface is not None and self.queue is not None and not self.qmap.napi_of(self.queue):
            self.qmap.read()  # the registration may have restarted the queue
        self.listener.setblocking(False)
        self.inbox.setblocking(False)
        loop.add_reader(self.listener.fileno(), self._on_accept)
        loop.add_reader(self.inbox.fileno(), self._on_inbox)
        loop.add_reader(self.ctrl.fileno(), self._on_ctrl)
        loop.add_signal_handler(signal.SIGTERM, self.stop)
        _send(self.ctrl, {"type": "ready", "stats": self.stats()})
        await self.stopped.wait()
        await self._drain()
        return 0

    # -- connections --------------------------------------------------
    def _on_accept(self) -> None:
        for sock in handoff.accept_ready(self.listener):
            self.counters["accepted"] += 1
            self._place(sock)

    def _place(self, sock: socket.socket) -> None:
        napi = handoff.incoming_napi_id(sock)
        queue = self.qmap.queue_of(napi)
        owner = self.owner.get(queue) if queue is not None else None
        if owner is None or owner == self.index:
            if owner is None:
                self.counters["unowned"] += 1
            self._serve(sock)
            return
        self._hand_over(owner, sock)

    def _hand_over(self, owner: int, sock: socket.socket) -> None:
        waiting = self.pending.get(owner)
        if waiting:
            waiting.append(sock)
            return
        try:
            handoff.send_connection(self.outboxes[owner], sock)
        except BlockingIOError:
            self.counters["handoff_waits"] += 1
            self.pending[owner] = [sock]
            assert self.loop is not None
            self.loop.add_writer(self.outboxes[owner].fileno(), self._flush_pending, owner)
            return
        self.counters["handed_over"] += 1
        sock.close()  # the owner has its own reference now

    def _flush_pending(self, owner: int) -> None:
        waiting = self.pending.get(owner, [])
        while waiting:
            try:
                handoff.send_connection(self.outboxes[owner], waiting[0])
            except BlockingIOError:
                return
            self.counters["handed_over"] += 1
            waiting.pop(0).close()
        assert self.loop is not None
        self.loop.remove_writer(self.outboxes[owner].fileno())
        self.pending.pop(owner, None)

    def _on_inbox(self) -> None:
        for _ in range(64):
            try:
                sock = handoff.receive_connection(self.inbox, uid=os.getuid(),
                                                  launcher_pid=self.spec.launcher_pid,
                                                  siblings=self.spec.worker_pids)
            except (BlockingIOError, InterruptedError):
                return
            except handoff.Rejected as e:
                self.counters["handoff_rejected"] += 1
                print(f"aiozcrx worker {self.index}: refused a connection handed over: {e}",
                      file=sys.stderr)
                continue
            self.counters["handed_in"] += 1
            self._serve(sock)  # while stopping too: its queue is still ours until we exit

    def _serve(self, sock: socket.socket) -> None:
        assert self.factory is not None
        self.counters["served"] += 1
        try:
            self.rx._wrap_now(sock, self.factory)
        except Exception as exc:  # noqa: BLE001 - one connection, not the worker
            sock.close()
            assert self.loop is not None
            self.loop.call_exception_handler({"message": "aiozcrx worker: cannot serve a connection",
                                              "exception": exc})

    # -- control ------------------------------------------------------
    def _on_ctrl(self) -> None:
        try:
            data = self.ctrl.recv(MAX_MESSAGE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the launcher is gone
            assert self.loop is not None
            self.loop.remove_reader(self.ctrl.fileno())
            self.stop()
            return
        try:
            message = json.loads(data)
        except ValueError:
            return
        kind = message.get("type")
        if kind == "stats":
            _send(self.ctrl, {"type": "stats", "stats": self.stats()})
        elif kind == "stop":
            self.stop()
        elif kind == "owner":  # a queue whose worker could not be replaced, or is back
            queue, worker = message.get("queue"), message.get("worker")
            if worker is None:
                self.owner.pop(queue, None)  # served where accepted (by copy) from now on
            else:
                self.owner[queue] = int(worker)
        elif kind == "pids":
            self.spec.worker_pids.update(int(p) for p in message.get("pids", ()))

    def stop(self) -> None:
        if self.stopping:
            return
        self.stopping = True
        assert self.loop is not None and self.stopped is not None
        self.loop.remove_reader(self.listener.fileno())
        self.listener.close()  # the others go on accepting
        self.stopped.set()

    async def _drain(self) -> None:
        deadline = time.monotonic() + self.spec.graceful_timeout
        if self.uvicorn is not None:
            for conn in list(self.uvicorn.server_state.connections):
                conn.shutdown()
        while self.rx is not None and self.rx.stats()["connections"] and time.monotonic() < deadline:
            await asyncio.sleep(0.05)  # polling an end condition, bounded by the deadline
        if self.uvicorn is not None:
            await self.uvicorn.lifespan.shutdown()
        # connections handed over from now on wait in the inbox for this queue's next worker
        assert self.loop is not None
        self.loop.remove_reader(self.inbox.fileno())
        final = self.stats()
        if self.rx is not None:
            await self.rx.aclose()
        final["closed"] = True
        _send(self.ctrl, {"type": "stopped", "stats": final})

    async def _start_uvicorn(self) -> Callable[[], asyncio.BaseProtocol]:
        """uvicorn's HTTP protocol and lifespan for an ASGI app, on connections this
        worker accepts itself (uvicorn's own accept would not know the queues)."""
        try:
            import uvicorn  # noqa: PLC0415 - optional
        except ImportError:
            raise RuntimeError(f"{self.spec.app} is an ASGI app and uvicorn is not installed: "
                               "`pip install uvicorn`, or give a protocol factory") from None
        config = uvicorn.Config(self.app, loop="none", lifespan="auto", log_level="warning",
                                access_log=False)
        config.load()
        server = uvicorn.Server(config)
        server.lifespan = config.lifespan_class(config)
        await server.lifespan.startup()
        if server.lifespan.should_exit:
            raise RuntimeError(f"{self.spec.app}: the ASGI lifespan startup failed")
        self.uvicorn = server
        protocol_class: Any = config.http_protocol_class  # H11Protocol or HttpToolsProtocol
        factory: Callable[[], asyncio.BaseProtocol] = functools.partial(
            protocol_class, config=config, server_state=server.server_state,
            app_state=server.lifespan.state)
        return factory

    # -- stats --------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        s: dict[str, Any] = {"worker": self.index, "pid": os.getpid(), "queue": self.queue,
                             "interface": self.spec.interface, "uid": os.getuid(), "gid": os.getgid(),
                             "cap_eff": capabilities().get("CapEff", 0)}
        s.update(self.counters)
        s["napi_id"] = self.qmap.napi_of(self.queue) if self.queue is not None else 0
        s["unknown_napi"] = self.qmap.unknown
        s["pinned_bytes"] = self.prepared.pinned_bytes
        rx = self.rx
        if rx is None:
            return s
        r = rx.stats()
        total = int(r.get("bytes", 0)) - int(r.get("dropped_bytes", 0))
        kernel_copy = int(r.get("kernel_copy_bytes", 0))
        user_copy = int(r.get("bytes_copied", 0))
        zero_copy = max(0, total - user_copy - kernel_copy) if rx.engine == "zcrx" else 0
        s.update(engine=rx.engine, fallback_reason=rx.fallback_reason, connections=r.get("connections", 0),
                 bytes=total, bytes_zero_copy=zero_copy, bytes_copied=total - zero_copy,
                 kernel_copy_bytes=kernel_copy, user_copy_bytes=user_copy,
                 area_size=r.get("area_size"))
        return s

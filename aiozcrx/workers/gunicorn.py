"""A gunicorn worker class: each worker on its own NIC queue, unprivileged.

    AIOZCRX_INTERFACE=eth0 AIOZCRX_QUEUES=0-3 AIOZCRX_ENGINE=zcrx \\
        gunicorn -k aiozcrx.workers.gunicorn.ZcrxWorker --workers 4 --user nobody \\
        --bind 0.0.0.0:8000 myapp:app

(or ``-e AIOZCRX_QUEUES=0-3`` / ``raw_env`` in a gunicorn config file). gunicorn's
arbiter builds each worker object before it forks (as root), and the child's
``init_process`` changes to ``--user`` before it loads the application. This
class does its privileged part in between, in the child, before gunicorn's own
``init_process`` runs:

  1. waits for the queue it takes over to be free (a worker replacing one that
     died, or that a HUP is stopping: see "Queues" below);
  2. ``prepare_queue``: the ring, the area, the refill region, the registration
     on its queue (the process is still root);
  3. ``drop_privileges`` to gunicorn's ``--user``/``--group``: no capability in
     any set, no supplementary group, no_new_privs, the arbiter's death a SIGKILL;
  4. gunicorn's own ``init_process`` (its uid change is then a no-op), which
     loads the app and runs it: gunicorn's ASGI protocol
     (``gunicorn.workers.gasgi``, its lifespan, keep-alive, graceful shutdown) on
     connections this worker accepts itself and gives to the prepared queue's
     Receiver (aiozcrx transports on the base loop gunicorn's ``--asgi-loop``
     names), each on the worker that owns the queue its packets arrive on.

Queues: the worker objects are made in the arbiter, so the class keeps, in the
arbiter, which worker holds which queue (a slot per queue) and the handover
channels (one datagram socketpair per slot, made when the first worker is
built, inherited by every worker forked after). A new worker takes a slot no
living worker holds; where every slot is held (gunicorn's HUP starts the new
workers before it stops the old ones), it becomes the successor of the oldest
holder and, in its child, waits for that worker to exit (and for the kernel to
unbind the queue) before it registers the queue again. Without a queue (no
``AIOZCRX_QUEUES``: loopback, the fallback engines) nothing is waited for.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import grp
import pwd
import select
import socket
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from gunicorn.workers.gasgi import ASGIWorker

from ..errors import ZcrxUnavailable
from . import handoff
from .launcher import parse_queues
from .prepare import WORKER_ENGINES, PreparedQueue, prepare_queue
from .privileges import CAP_NET_ADMIN, Identity, capabilities, drop_privileges, has_capability

ENV = "AIOZCRX_"
# the modules a worker imports before it drops its privileges (never the app):
# the interpreter's own files need not be readable by the workers' user
PRELOAD = ("concurrent.futures.thread", "asyncio.unix_events", "hashlib", "json", "http", "email.utils",
           "urllib.parse", "logging.handlers", "gunicorn.asgi.protocol", "gunicorn.asgi.lifespan",
           "gunicorn.arbiter", "aiozcrx.transport", "aiozcrx.server")


@dataclass(frozen=True)
class Settings:
    """aiozcrx's settings for the gunicorn workers, from ``AIOZCRX_*`` in the
    environment or in gunicorn's ``--env``/``raw_env`` (which wins)."""
    interface: str | None = None
    queues: tuple[int, ...] = ()
    engine: str = "auto"
    area_size: int | None = None
    rq_entries: int | None = None
    stats_dir: str | None = None

    @classmethod
    def read(cls, environ: Mapping[str, str], raw_env: Mapping[str, str] | None = None) -> "Settings":
        env = dict(environ)
        env.update(raw_env or {})

        def get(name: str) -> str:
            return env.get(ENV + name) or ""

        from ..config import parse_size  # noqa: PLC0415

        queues = tuple(parse_queues(get("QUEUES"))) if get("QUEUES") else ()
        if queues and not get("INTERFACE"):
            raise ValueError("AIOZCRX_QUEUES needs AIOZCRX_INTERFACE (the NIC whose queues they are)")
        engine = get("ENGINE") or "auto"
        if engine not in WORKER_ENGINES:
            raise ValueError(f"AIOZCRX_ENGINE={engine!r}: choose one of {', '.join(WORKER_ENGINES)}")
        if engine == "zcrx" and not queues:
            raise ValueError("AIOZCRX_ENGINE=zcrx needs NIC queues: set AIOZCRX_INTERFACE and "
                             "AIOZCRX_QUEUES=FIRST-LAST (queues set up with `aiozcrx nic setup`)")
        try:
            area = parse_size(get("AREA_SIZE")) if get("AREA_SIZE") else None
        except ValueError as e:
            raise ValueError(f"AIOZCRX_AREA_SIZE={get('AREA_SIZE')!r}: {e}") from None
        try:
            rq = int(get("RQ_ENTRIES")) if get("RQ_ENTRIES") else None
        except ValueError:
            raise ValueError(f"AIOZCRX_RQ_ENTRIES={get('RQ_ENTRIES')!r}: expected a number, e.g. 4096") from None
        return cls(get("INTERFACE") or None, queues, engine, area, rq, get("STATS_DIR") or None)


def _alive(pid: Any) -> bool:
    """A worker that has not exited (a zombie has); "[booting]": not forked yet."""
    if not isinstance(pid, int):
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rindex(b")") + 2:][:1] != b"Z"


class _Slots:
    """In the arbiter: who holds each queue, and each queue's handover channel."""

    def __init__(self, n: int) -> None:
        self.holders: list[list[Any]] = [[] for _ in range(n)]
        self.channels: list[tuple[socket.socket, socket.socket]] = []
        for _ in range(n):
            inbox, outbox = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
            inbox.setsockopt(socket.SOL_SOCKET, handoff.SO_PASSCRED, 1)
            self.channels.append((inbox, outbox))

    def claim(self, worker: Any) -> tuple[int | None, int | None]:
        """The slot ``worker`` takes and the pid it must wait for (None: none)."""
        for holders in self.holders:
            holders[:] = [w for w in holders if _alive(w.pid)]
        for i, holders in enumerate(self.holders):
            if not holders:
                holders.append(worker)
                return i, None
        single = [i for i, h in enumerate(self.holders) if len(h) == 1]
        if not single:
            return None, None  # more workers than queues (TTIN): this one serves without a queue
        i = min(single, key=lambda k: self.holders[k][0].age)
        predecessor = self.holders[i][0].pid
        self.holders[i].append(worker)
        return i, predecessor if isinstance(predecessor, int) else None


class _Acceptor:
    """One listening socket, accepted from by this worker: what ASGIWorker's
    shutdown closes (``close``/``wait_closed``, as it does an asyncio Server)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket, on_socket: Callable[[socket.socket], None],
                 counters: dict[str, int]) -> None:
        self.loop, self.sock, self.on_socket, self.counters = loop, sock, on_socket, counters
        sock.setblocking(False)
        loop.add_reader(sock.fileno(), self._accept)
        self.closed = False

    def _accept(self) -> None:
        for conn in handoff.accept_ready(self.sock):
            self.counters["accepted"] += 1
            self.on_socket(conn)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.loop.remove_reader(self.sock.fileno())  # the listener stays open for the others

    async def wait_closed(self) -> None:
        return None


class ZcrxWorker(ASGIWorker):  # type: ignore[misc]  # gunicorn ships no annotations
    """gunicorn's ASGI worker, receiving through aiozcrx on its own NIC queue
    (module docstring; docs/workers.md, "gunicorn")."""

    _slots: _Slots | None = None  # in the arbiter, and inherited by each worker

    # -- in the arbiter ------------------------------------------------------
    @classmethod
    def check_config(cls, cfg: Any, log: Any) -> None:
        super().check_config(cfg, log)
        settings = Settings.read(os.environ, cfg.env)
        if settings.queues and cfg.workers != len(settings.queues):
            raise ValueError(f"--workers {cfg.workers} but AIOZCRX_QUEUES names {len(settings.queues)} "
                             f"queues: one worker serves one queue; give as many of each")
        if cfg.is_ssl:
            raise ValueError("aiozcrx.workers.gunicorn.ZcrxWorker serves plain TCP: terminate TLS in "
                             "front of gunicorn (or use gunicorn's own ASGI worker for TLS)")
        root = os.geteuid() == 0
        if root and not cfg.uid:
            raise ValueError("gunicorn runs as root with ZcrxWorker: give --user (e.g. --user nobody); "
                             "each worker drops to it after preparing its queue")
        if settings.engine in ("zcrx", "zcrx-copy") and not has_capability(CAP_NET_ADMIN):
            raise ZcrxUnavailable(settings.engine, errno.EPERM,
                                  "gunicorn's arbiter lacks CAP_NET_ADMIN, which each worker needs to "
                                  "register its queue (before it drops every privilege)",
                                  "start gunicorn as root with --user, or set AIOZCRX_ENGINE=auto to serve "
                                  "on the best engine that needs no privilege")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.settings = Settings.read(os.environ, self.cfg.env)
        cls = type(self)
        n = len(self.settings.queues) or max(1, int(self.cfg.workers))
        if cls._slots is None or len(cls._slots.holders) != n:
            cls._slots = _Slots(n)
        self.slot, self.predecessor = cls._slots.claim(self)
        self.queue: int | None = (self.settings.queues[self.slot]
                                  if self.settings.queues and self.slot is not None else None)
        self.prepared: PreparedQueue | None = None
        self.rx: Any = None
        self.qmap = handoff.QueueMap(self.settings.interface)
        self.counters = dict(accepted=0, served=0, handed_over=0, handed_in=0, unowned=0,
                             handoff_rejected=0, handoff_waits=0)
        self.pending: dict[int, list[socket.socket]] = {}
        self.inbox: socket.socket | None = None
        self.outboxes: dict[int, socket.socket] = {}
        self.stats_fd = -1
        self.waited = 0.0
        self.siblings: frozenset[int] = frozenset()

    # -- in the child, still privileged ------------------------------------------
    def init_process(self) -> None:
        self._take_channels()
        if self.queue is not None:
            self._wait_for_queue()
        s = self.settings
        engine = s.engine
        if s.queues and self.queue is None:
            # more workers than queues (gunicorn's TTIN): this one serves without a queue
            self.log.warning("aiozcrx: more workers than AIOZCRX_QUEUES: worker %s serves without a "
                             "queue (engine auto, its connections copied)", os.getpid())
            engine = "auto"
        self.prepared = prepare_queue(s.interface, self.queue, engine=engine, area_size=s.area_size,
                                      rq_entries=s.rq_entries)
        self.qmap.read()
        for name in PRELOAD + (("uvloop",) if self.cfg.asgi_loop in ("auto", "uvloop") else ()):
            try:
                __import__(name)
            except ImportError:
                pass
        if s.stats_dir:
            os.makedirs(s.stats_dir, exist_ok=True)
            self.stats_fd = os.open(os.path.join(s.stats_dir, f"worker-{os.getpid()}.json"),
                                    os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        if os.geteuid() == 0 or capabilities().get("CapEff", 0):
            drop_privileges(self._identity(), parent_pid=self.ppid)
        if self.cfg.initgroups:
            self.log.warning("aiozcrx: --initgroups ignored: the workers keep no supplementary group")
            self.cfg.set("initgroups", False)
        from . import worker as _worker  # noqa: PLC0415 - aiozcrx.workers.current() for the app
        _worker._QMAP = self.qmap
        _worker._CURRENT = _worker.WorkerContext(index=self.slot if self.slot is not None else -1,
                                                 queue=self.queue, interface=s.interface, pid=os.getpid(),
                                                 prepared=self.prepared, counters=self.counters)
        super().init_process()  # gunicorn: --user (done), signals, the app, run()

    def _identity(self) -> Identity | None:
        uid, gid = int(self.cfg.uid), int(self.cfg.gid)
        if uid == os.getuid() and uid != 0:
            return None  # not root: keep the user, give up every capability
        try:
            user = pwd.getpwuid(uid).pw_name
        except KeyError:
            user = str(uid)
        try:
            group = grp.getgrgid(gid).gr_name
        except KeyError:
            group = str(gid)
        return Identity(uid, gid, user, group)

    def _take_channels(self) -> None:
        slots = type(self)._slots
        assert slots is not None
        # the workers on the queues when this one was forked (a HUP's old ones too): a
        # connection one of them handed over just before it exited has a sender whose
        # parent is gone by the time it is read, and is still a sibling's
        self.siblings = frozenset(w.pid for holders in slots.holders for w in holders
                                  if isinstance(w.pid, int) and w is not self)
        for i, (inbox, outbox) in enumerate(slots.channels):
            if i == self.slot:
                self.inbox = inbox
                outbox.close()
            else:
                inbox.close()
                self.outboxes[i] = outbox

    def _wait_for_queue(self) -> None:
        """A predecessor on this queue (HUP, a worker still stopping): wait for it to
        exit, then for the kernel to unbind the queue, telling the arbiter we live."""
        started = time.monotonic()
        deadline = started + float(self.cfg.graceful_timeout) + 30.0
        if self.predecessor is not None:
            try:
                pidfd = os.pidfd_open(self.predecessor)
            except ProcessLookupError:
                pidfd = -1
            try:
                while pidfd >= 0 and time.monotonic() < deadline:
                    self.notify()
                    if select.select([pidfd], [], [], 1.0)[0]:
                        break
            finally:
                if pidfd >= 0:
                    os.close(pidfd)
        from ..tools.nic import wait_queue_released  # noqa: PLC0415
        assert self.settings.interface is not None and self.queue is not None
        wait_queue_released(self.settings.interface, self.queue, timeout=max(1.0, deadline - time.monotonic()))
        self.waited = time.monotonic() - started

    # -- serving (unprivileged) ------------------------------------------------
    async def _serve(self) -> None:
        from gunicorn.asgi.protocol import ASGIProtocol  # noqa: PLC0415

        self.lifespan = None
        if self.cfg.asgi_lifespan != "off":
            from gunicorn.asgi.lifespan import LifespanManager, LifespanStartupFailed  # noqa: PLC0415
            manager = LifespanManager(self.asgi, self.log, self.state)
            try:
                await manager.startup()
                self.lifespan = manager
            except Exception as e:  # noqa: BLE001 - gunicorn's rule: fatal when asked for
                if self.cfg.asgi_lifespan == "on" or isinstance(e, LifespanStartupFailed):
                    self.log.error("ASGI lifespan startup failed: %s", e)
                    from gunicorn.arbiter import Arbiter  # noqa: PLC0415
                    raise SystemExit(Arbiter.WORKER_BOOT_ERROR) from None
        assert self.prepared is not None
        # gunicorn's protocol takes bytes: one copy in user space per byte (counted)
        self.rx = self.prepared.receiver(views="opt-in")
        self.rx.open()
        from . import worker as _worker  # noqa: PLC0415
        if _worker._CURRENT is not None:
            _worker._CURRENT.receiver = self.rx
        if self.queue is not None and not self.qmap.napi_of(self.queue):
            self.qmap.read()  # the registration may have restarted the queue
        self._factory: Callable[[], asyncio.BaseProtocol] = lambda: ASGIProtocol(self)
        if self.inbox is not None:
            self.inbox.setblocking(False)
            self.loop.add_reader(self.inbox.fileno(), self._on_inbox)
        self.servers = [_Acceptor(self.loop, s.sock, self._place, self.counters) for s in self.sockets]
        self.log.info("aiozcrx: worker %s on queue %s (%s), engine %s%s", self.slot, self.queue,
                      self.settings.interface or "-", self.rx.engine,
                      f" ({self.rx.fallback_reason})" if self.rx.fallback_reason else "")
        self._write_stats()
        try:
            while self.alive:
                self.notify()
                if self.ppid != os.getppid():
                    self.log.info("Parent changed, shutting down: %s", self)
                    break
                await asyncio.sleep(1.0)
        except asyncio.CancelledError:
            pass
        await self._shutdown()  # gunicorn's: stop accepting, wait for connections, lifespan
        if self.inbox is not None:
            self.loop.remove_reader(self.inbox.fileno())
        final = self.stats()
        await self.rx.aclose()
        self._write_stats(dict(final, stopped=True))

    def _place(self, sock: socket.socket) -> None:
        queue = self.qmap.queue_of(handoff.incoming_napi_id(sock))
        owner = self.settings.queues.index(queue) if queue in self.settings.queues else None
        if owner is None or owner == self.slot:
            if owner is None:
                self.counters["unowned"] += 1
            self._serve_socket(sock)
            return
        self._hand_over(owner, sock)

    def _hand_over(self, owner: int, sock: socket.socket) -> None:
        waiting = self.pending.setdefault(owner, [])
        waiting.append(sock)
        if len(waiting) == 1:
            self._flush(owner)

    def _flush(self, owner: int) -> None:
        waiting = self.pending.get(owner, [])
        outbox = self.outboxes[owner]
        while waiting:
            try:
                handoff.send_connection(outbox, waiting[0])
            except BlockingIOError:  # its inbox is full: once it drains
                self.counters["handoff_waits"] += 1
                self.loop.add_writer(outbox.fileno(), self._flush, owner)
                return
            self.counters["handed_over"] += 1
            waiting.pop(0).close()  # the owner has its own reference now
        self.loop.remove_writer(outbox.fileno())

    def _on_inbox(self) -> None:
        assert self.inbox is not None
        for _ in range(64):
            try:
                sock = handoff.receive_connection(self.inbox, uid=os.getuid(), launcher_pid=self.ppid,
                                                  siblings=self.siblings)
            except (BlockingIOError, InterruptedError):
                return
            except handoff.Rejected as e:
                self.counters["handoff_rejected"] += 1
                self.log.warning("aiozcrx: refused a connection handed over: %s", e)
                continue
            self.counters["handed_in"] += 1
            self._serve_socket(sock)

    def _serve_socket(self, sock: socket.socket) -> None:
        self.counters["served"] += 1
        try:
            self.rx._wrap_now(sock, self._factory)
        except Exception as exc:  # noqa: BLE001 - one connection, not the worker
            sock.close()
            self.log.error("aiozcrx: cannot serve a connection: %s", exc)

    # -- stats ---------------------------------------------------------------
    def handle_usr1_signal(self) -> None:
        super().handle_usr1_signal()
        self._write_stats()

    def stats(self) -> dict[str, Any]:
        """This worker's counters, as aiozcrx serve reports them per worker."""
        s: dict[str, Any] = {"worker": self.slot, "pid": os.getpid(), "queue": self.queue,
                             "interface": self.settings.interface, "uid": os.getuid(), "gid": os.getgid(),
                             "cap_eff": capabilities().get("CapEff", 0), "waited_for_queue": self.waited,
                             "napi_id": self.qmap.napi_of(self.queue) if self.queue is not None else 0,
                             "pinned_bytes": self.prepared.pinned_bytes if self.prepared else 0,
                             "unknown_napi": self.qmap.unknown, "time": time.time(), **self.counters}
        if self.rx is None:
            return s
        r = self.rx.stats()
        total = int(r.get("bytes", 0)) - int(r.get("dropped_bytes", 0))
        kernel_copy = int(r.get("kernel_copy_bytes", 0))
        user_copy = int(r.get("bytes_copied", 0))
        zero_copy = max(0, total - user_copy - kernel_copy) if self.rx.engine == "zcrx" else 0
        s.update(engine=self.rx.engine, fallback_reason=self.rx.fallback_reason,
                 connections=r.get("connections", 0), bytes=total, bytes_zero_copy=zero_copy,
                 bytes_copied=total - zero_copy, kernel_copy_bytes=kernel_copy, user_copy_bytes=user_copy,
                 area_size=r.get("area_size"))
        return s

    def _write_stats(self, stats: dict[str, Any] | None = None) -> None:
        """AIOZCRX_STATS_DIR/worker-PID.json, rewritten in place (the file was
        opened before the drop: the directory need not be the workers' to write)."""
        if self.stats_fd < 0:
            return
        data = json.dumps(stats if stats is not None else self.stats(), default=str).encode()
        os.pwrite(self.stats_fd, data, 0)  # never empty: a reader retries a torn read
        os.ftruncate(self.stats_fd, len(data))

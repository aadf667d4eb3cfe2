"""The launcher: one listening socket, one worker per queue, and their lifecycle.

The launcher holds the privileges (root, or CAP_NET_ADMIN) and never opens a
ring itself. It checks what would fail in every worker before forking any
(``preflight``: an engine that cannot run, RLIMIT_MEMLOCK too small for N
areas), makes the listening socket, one control channel per worker
(SOCK_SEQPACKET) and one inbox per worker (a datagram socketpair with
SO_PASSCRED, for connections handed over), forks the workers
(``worker.run_worker``) and then only waits for signals and messages:

  SIGCHLD  a worker that died unasked is replaced: once the kernel released its
           queue (its ring's exit work), a new worker prepares it again
  SIGTERM  (or SIGINT) stop: every worker stops accepting, finishes what is in
           flight (up to graceful_timeout), releases its queue; then the launcher
           waits for the queues to be unbound and exits
  SIGHUP   rolling restart: one worker at a time is stopped, its queue
           released, and a new one started; the next one only once it is ready
  SIGUSR1  every worker's stats, printed and written as JSON (``stats_json``)
"""

from __future__ import annotations

import errno
import json
import os
import resource
import select
import signal
import socket
import sys
import time
from typing import IO, Any

from ..config import DEFAULT_CQ_ENTRIES, DEFAULT_RQ_ENTRIES, NIC_AREA_SIZE, NIC_RQ_ENTRIES, Config
from ..errors import EngineUnavailable, MemlockTooSmall, WorkerFailed, ZcrxUnavailable
from . import handoff
from .prepare import WORKER_ENGINES
from .privileges import CAP_IPC_LOCK, CAP_NET_ADMIN, Identity, has_capability
from .worker import WorkerSpec, run_worker

PAGE = os.sysconf("SC_PAGE_SIZE")
SIGNALS = (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)


def parse_queues(text: str) -> list[int]:
    """"4-7" -> [4, 5, 6, 7]; "3" -> [3]; "1,3,5" -> [1, 3, 5]."""
    out: list[int] = []
    try:
        for part in text.split(","):
            first, sep, last = part.strip().partition("-")
            lo = int(first)
            hi = int(last) if sep else lo
            if lo < 0 or hi < lo:
                raise ValueError
            out.extend(range(lo, hi + 1))
    except ValueError:
        raise ValueError(f"--queues {text!r}: expected FIRST-LAST (e.g. 0-3) or a list (0,1,2)") from None
    if len(set(out)) != len(out):
        raise ValueError(f"--queues {text!r}: a queue is named twice")
    return out


def pinned_per_worker(engine: str, area_size: int | None, rq_entries: int | None,
                      cq_entries: int = DEFAULT_CQ_ENTRIES, *, nic: bool = True) -> int:
    """What one worker's zcrx instance charges to RLIMIT_MEMLOCK, at least: the
    area, the refill ring (16-byte entries after a header) and the ring's queues
    (32-byte CQEs, 64-byte SQEs). ``nic``: on a NIC queue (its larger defaults)."""
    nic = nic and engine in ("auto", "zcrx")
    area = area_size if area_size is not None else (NIC_AREA_SIZE if nic else Config().area_size or 0)
    rq = rq_entries if rq_entries is not None else (NIC_RQ_ENTRIES if nic else DEFAULT_RQ_ENTRIES)

    def pages(n: int) -> int:
        return -(-n // PAGE) * PAGE

    return pages(int(area)) + pages(64 + 16 * rq) + pages(cq_entries * 32) + pages(cq_entries // 2 * 64)


class _Worker:
    def __init__(self, index: int, queue: int | None) -> None:
        self.index = index
        self.queue = queue
        self.pid = 0
        self.state = "new"  # starting, ready, stopping, exited
        self.stats: dict[str, Any] = {}
        self.stats_seq = 0
        self.error: dict[str, Any] | None = None
        self.restarts = 0
        self.replace = False  # start a new one when this one has exited


class Launcher:
    """Runs ``app`` in ``workers`` processes, one per NIC queue of ``queues``
    (``interface``), all serving ``host``:``port``; see the module docstring and
    docs/workers.md. ``app``: ``module:app`` (an ASGI app, served by uvicorn's
    HTTP protocol) or ``module:factory`` (``factory()`` returns an asyncio protocol
    factory); ``app_kind`` says which where the guess would be wrong."""

    def __init__(self, app: str, *, workers: int | None = None, queues: list[int] | str | None = None,
                 interface: str | None = None, host: str = "0.0.0.0", port: int = 8000,
                 user: str | int | None = None, group: str | int | None = None, engine: str = "auto",
                 loop: str = "asyncio", area_size: int | None = None, rq_entries: int | None = None,
                 stats_json: str | None = None, graceful_timeout: float = 30.0, app_kind: str = "auto",
                 backlog: int = 4096, receiver_options: dict[str, Any] | None = None,
                 out: IO[str] | None = None) -> None:
        if isinstance(queues, str):
            queues = parse_queues(queues)
        if queues:
            if interface is None:
                raise ValueError("--queues needs --interface (the NIC whose queues they are)")
            if workers is not None and workers != len(queues):
                raise ValueError(f"--workers {workers} but --queues names {len(queues)} queues: one "
                                 f"worker serves one queue; give as many of each")
            workers = len(queues)
        if workers is None or workers < 1:
            raise ValueError("give --workers N (N >= 1), or --queues FIRST-LAST")
        if engine not in WORKER_ENGINES:
            raise ValueError(f"--engine {engine!r}: choose one of {', '.join(WORKER_ENGINES)}")
        if loop not in ("asyncio", "uvloop"):
            raise ValueError(f"--loop {loop!r}: expected asyncio or uvloop")
        if app_kind not in ("auto", "asgi", "protocol"):
            raise ValueError(f"app_kind {app_kind!r}: expected auto, asgi or protocol")
        if not 0 <= port < 65536:
            raise ValueError(f"--port {port}: expected 0..65535")
        self.identity = Identity.resolve(user, group) if user is not None else None
        if self.identity is None and os.geteuid() == 0:
            raise ValueError("the launcher runs as root: give --user (e.g. --user nobody); workers "
                             "drop to that user after preparing their queues")
        self.app = app
        self.n = workers
        self.queues: list[int | None] = list(queues) if queues else [None] * workers
        self.interface = interface
        self.host, self.port, self.backlog = host, port, backlog
        self.engine = engine
        self.area_size, self.rq_entries = area_size, rq_entries
        self.stats_json = stats_json
        self.out = out if out is not None else sys.stderr
        self.spec = WorkerSpec(app=app, app_kind=app_kind, interface=interface, queues=self.queues,
                               engine=engine, loop=loop, area_size=area_size, rq_entries=rq_entries,
                               identity=self.identity, graceful_timeout=graceful_timeout,
                               launcher_pid=os.getpid(), receiver_options=dict(receiver_options or {}))
        self.graceful_timeout = graceful_timeout
        self.workers = [_Worker(i, q) for i, q in enumerate(self.queues)]
        self.listener: socket.socket | None = None
        self.ctrl: list[tuple[socket.socket, socket.socket]] = []   # (launcher's end, worker's end)
        self.inbox: list[tuple[socket.socket, socket.socket]] = []  # (worker's inbox, others' outbox)
        self._signals: list[int] = []
        self._wake_r = self._wake_w = -1
        self._stopping = False
        self._rolling: list[int] = []
        self._deferred: list[int] = []  # signals that wait for the main loop
        self._stop_deadline = 0.0
        self._old_handlers: dict[int, Any] = {}
        self.final_stats: dict[str, Any] = {}

    # -- before any worker -------------------------------------------------
    def preflight(self) -> None:
        """The errors every worker would meet, raised once, before any starts."""
        for queue in self.queues:  # bad settings (a queue the NIC does not have): ValueError
            Config(engine=self.engine, interface=self.interface, queue=queue, area_size=self.area_size,
                   rq_entries=self.rq_entries).validate()
        zcrx_engines = self.engine in ("zcrx", "zcrx-copy")
        if self.engine == "zcrx" and (self.interface is None or self.queues[0] is None):
            raise ZcrxUnavailable("zcrx", errno.EINVAL, "engine zcrx needs NIC queues: no --queues given",
                                  "pass --interface IF --queues FIRST-LAST (queues set up with "
                                  "`aiozcrx nic setup`)")
        net_admin = has_capability(CAP_NET_ADMIN)
        if zcrx_engines and not net_admin:
            raise ZcrxUnavailable(
                self.engine, errno.EPERM,
                "the launcher lacks CAP_NET_ADMIN, which each worker needs to register its queue "
                "(before it drops every privilege)",
                "run `aiozcrx serve` as root with --user, or grant it CAP_NET_ADMIN (setcap "
                "cap_net_admin+ep, AmbientCapabilities=CAP_NET_ADMIN in systemd); or pass --engine auto "
                "to serve on the best engine that needs no privilege")
        if net_admin and self.engine in ("auto", "zcrx", "zcrx-copy") and not has_capability(CAP_IPC_LOCK):
            soft, _hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
            per = pinned_per_worker(self.engine, self.area_size, self.rq_entries,
                                    nic=self.queues[0] is not None)
            need = per * self.n
            if soft != resource.RLIM_INFINITY and need > soft:
                raise MemlockTooSmall(self.engine if self.engine != "auto" else "zcrx", limit=soft,
                                      needed=need, workers=self.n, per_worker=per)

    # -- start -----------------------------------------------------------
    def start(self) -> None:
        """Preflight, listener, channels, the workers; returns once every worker is
        ready. Raises WorkerFailed (its ``error`` the typed error a worker met)."""
        self.preflight()
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        self.listener = socket.socket(family, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((self.host, self.port))
        self.listener.listen(self.backlog)
        self.listener.setblocking(False)
        self.port = self.listener.getsockname()[1]
        for _ in self.workers:
            self.ctrl.append(socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET))
            inbox, outbox = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
            inbox.setsockopt(socket.SOL_SOCKET, handoff.SO_PASSCRED, 1)
            self.inbox.append((inbox, outbox))
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        self._old_handlers = {sig: signal.signal(sig, self._on_signal) for sig in SIGNALS}
        for w in self.workers:
            self._spawn(w)
        self._wait_ready([w.index for w in self.workers])
        self.say(f"aiozcrx serve: {self.n} workers on {self.host}:{self.port} "
                 f"(pid {os.getpid()}; SIGUSR1: stats, SIGHUP: rolling restart, SIGTERM: stop)")
        self.report()

    def _on_signal(self, signum: int, _frame: object) -> None:
        pass  # the wake-up fd carries the signal number to the loop

    def _spawn(self, w: _Worker) -> None:
        assert self.listener is not None
        # what the launcher told the worker before (a "stop" it never read) is not
        # for its replacement
        theirs = self.ctrl[w.index][1]
        while True:
            try:
                if not theirs.recv(1 << 20, socket.MSG_DONTWAIT):
                    break
            except (BlockingIOError, InterruptedError):
                break
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the worker: never returns
            signal.set_wakeup_fd(-1)
            os.close(self._wake_r)
            os.close(self._wake_w)
            for i, (mine, _theirs) in enumerate(self.ctrl):
                mine.close()
                if i != w.index:
                    _theirs.close()
            run_worker(self.spec, w.index, self.listener, self.ctrl[w.index][1],
                       [inbox for inbox, _ in self.inbox], [outbox for _, outbox in self.inbox])
        w.pid = pid
        self.spec.worker_pids.add(pid)
        for other in self.workers:  # the new sibling, for the handover's credential check
            if other is not w and other.state != "exited":
                self._tell(other, {"type": "pids", "pids": [pid]})
        w.state = "starting"
        w.error = None
        w.stats = {}

    def _wait_ready(self, indices: list[int], timeout: float = 300.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            failed = [self.workers[i] for i in indices if self.workers[i].error is not None]
            if failed:
                self._abort_start(failed[0])
            if all(self.workers[i].state == "ready" for i in indices):
                return
            if time.monotonic() > deadline:
                self._kill_all()
                raise WorkerFailed(f"workers {indices} did not become ready in {timeout:.0f} s")
            self._poll(0.5, defer=True)

    def _abort_start(self, w: _Worker) -> None:
        report = w.error or {}
        self._kill_all()
        self._close_channels()
        raise WorkerFailed(f"aiozcrx worker {w.index} (queue {w.queue}) failed: "
                           f"{report.get('message', 'exited')}", rebuild_error(report))

    def _kill_all(self) -> None:
        for w in self.workers:
            if w.pid and w.state != "exited":
                try:
                    os.kill(w.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for w in self.workers:
            if w.pid and w.state != "exited":
                try:
                    os.waitpid(w.pid, 0)
                except ChildProcessError:
                    pass
                w.state = "exited"
        self._wait_queues_released()

    # -- the loop --------------------------------------------------------
    def run(self) -> int:
        """start(), then serve until SIGTERM/SIGINT; returns the exit status."""
        self.start()
        self._serve_until_stopped()
        return 0

    def shutdown(self) -> None:
        """For a launcher driven from Python after ``start()``: what SIGTERM does
        (graceful stop, every queue released), returning once it is done."""
        self.stop()
        self._serve_until_stopped()

    def _serve_until_stopped(self) -> None:
        while not (self._stopping and all(w.state == "exited" for w in self.workers)):
            self._poll(1.0)
            if self._stopping and time.monotonic() > self._stop_deadline:
                self.say("aiozcrx serve: workers still running after the graceful timeout: killing them")
                self._kill_all()
        self._finish()

    def _poll(self, timeout: float, *, defer: bool = False) -> None:
        """One wait for a signal or a worker's message. ``defer``: signals other
        than SIGCHLD wait for the main loop (while starting, or collecting stats)."""
        if not defer and self._deferred:
            pending, self._deferred = self._deferred, []
            for signum in pending:
                self._signal(signum)
        fds = [self._wake_r] + [mine.fileno() for mine, _ in self.ctrl]
        try:
            ready, _, _ = select.select(fds, [], [], timeout)
        except InterruptedError:
            ready = []
        for i, (mine, _theirs) in enumerate(self.ctrl):
            if mine.fileno() in ready:
                self._read_ctrl(i)
        if self._wake_r in ready:
            try:
                data = os.read(self._wake_r, 256)
            except BlockingIOError:
                data = b""
            for signum in data:
                if signum == signal.SIGCHLD:
                    self._reap()
                elif defer:
                    self._deferred.append(signum)
                else:
                    self._signal(signum)

    def _signal(self, signum: int) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            self.stop()
        elif signum == signal.SIGHUP:
            self.rolling_restart()
        elif signum == signal.SIGUSR1:
            self.report()

    def _read_ctrl(self, index: int) -> None:
        sock = self.ctrl[index][0]
        while True:
            try:
                data = sock.recv(1 << 20, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return
            if not data:
                return
            try:
                message = json.loads(data)
            except ValueError:
                continue
            self._message(self.workers[index], message)

    def _message(self, w: _Worker, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if isinstance(message.get("stats"), dict):
            if message["stats"].get("pid") not in (None, w.pid):
                return  # a message of a worker that was replaced
            w.stats = message["stats"]
            w.stats_seq += 1
        if kind == "ready":
            w.state = "ready" if w.state == "starting" else w.state
            if w.restarts:
                self._announce_owner(w, w.index)
            if self._rolling and self._rolling[0] == w.index:
                self._rolling.pop(0)
                self._next_rolling()
        elif kind == "error":
            w.error = message
            self.say(f"aiozcrx worker {w.index} (queue {w.queue}): {message.get('message')}")
        elif kind == "stopped":
            self.final_stats[str(w.index)] = message.get("stats", {})

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            w = next((w for w in self.workers if w.pid == pid), None)
            if w is None:
                continue
            self._read_ctrl(w.index)  # what it said before it went
            w.state = "exited"
            if self._stopping:
                continue
            if w.error is not None:
                # it said why it failed (it would fail again): its queue has no worker;
                # the others serve its connections where they accept them
                self._announce_owner(w, None)
                continue
            if not w.replace:
                how = (f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status)
                       else f"status {os.WEXITSTATUS(status)}")
                self.say(f"aiozcrx serve: worker {w.index} (pid {pid}, queue {w.queue}) died ({how}): "
                         "replacing it once its queue is released")
            w.replace = False
            w.restarts += 1
            self._wait_queue_released(w.queue)
            self._spawn(w)

    def stop(self) -> None:
        """Graceful stop (SIGTERM): see the module docstring."""
        if self._stopping:
            return
        self._stopping = True
        self._stop_deadline = time.monotonic() + self.graceful_timeout + 10.0
        self.say("aiozcrx serve: stopping (finishing connections in flight)")
        for w in self.workers:
            if w.state != "exited":
                w.state = "stopping"
                self._tell(w, {"type": "stop"})

    def rolling_restart(self) -> None:
        """SIGHUP: each worker in turn is stopped gracefully and replaced."""
        if self._rolling or self._stopping:
            return
        self.say("aiozcrx serve: rolling restart")
        self._rolling = [w.index for w in self.workers]
        self._next_rolling()

    def _next_rolling(self) -> None:
        if not self._rolling:
            self.say("aiozcrx serve: rolling restart done")
            self.report()
            return
        w = self.workers[self._rolling[0]]
        if w.state == "exited":
            self._spawn(w)
            return
        w.replace = True
        w.state = "stopping"
        self._tell(w, {"type": "stop"})

    def _announce_owner(self, w: _Worker, owner: int | None) -> None:
        if w.queue is None:
            return
        for other in self.workers:
            if other is not w and other.state != "exited":
                self._tell(other, {"type": "owner", "queue": w.queue, "worker": owner})

    def _tell(self, w: _Worker, message: dict[str, Any]) -> None:
        try:
            self.ctrl[w.index][0].send(json.dumps(message).encode())
        except OSError:
            pass

    # -- stats -----------------------------------------------------------
    def collect_stats(self, timeout: float = 10.0) -> dict[str, Any]:
        """Asks every live worker for its stats; returns the aggregate."""
        asked = {w.index: w.stats_seq for w in self.workers if w.state in ("ready", "stopping")}
        for i in asked:
            self._tell(self.workers[i], {"type": "stats"})
        deadline = time.monotonic() + timeout
        while any(self.workers[i].stats_seq == seq and self.workers[i].state != "exited"
                  for i, seq in asked.items()) and time.monotonic() < deadline:
            self._poll(0.2, defer=True)
        return self.aggregate()

    def aggregate(self) -> dict[str, Any]:
        per = []
        for w in self.workers:
            s = dict(w.stats)
            s.setdefault("worker", w.index)
            s.setdefault("queue", w.queue)
            s["pid"] = w.pid
            s["state"] = w.state
            s["restarts"] = w.restarts
            per.append(s)
        keys = ("connections", "accepted", "served", "handed_over", "handed_in", "unowned", "bytes",
                "bytes_zero_copy", "bytes_copied", "kernel_copy_bytes", "user_copy_bytes", "pinned_bytes")
        total = {k: sum(int(s.get(k) or 0) for s in per) for k in keys}
        return {"launcher_pid": os.getpid(), "interface": self.interface, "port": self.port,
                "engine": self.engine, "workers": per, "total": total, "time": time.time()}

    def report(self) -> dict[str, Any]:
        """Prints the workers' stats and writes them to ``stats_json``."""
        agg = self.collect_stats()
        lines = [f"{'worker':>6} {'pid':>7} {'queue':>5} {'engine':>9} {'conns':>6} {'handed':>6} "
                 f"{'zero-copy B':>12} {'copied B':>12} {'pinned B':>10}"]
        for s in agg["workers"]:
            lines.append(f"{s['worker']:>6} {s['pid']:>7} {str(s.get('queue')):>5} "
                         f"{str(s.get('engine')):>9} {s.get('served', 0):>6} {s.get('handed_over', 0):>6} "
                         f"{s.get('bytes_zero_copy', 0):>12} {s.get('bytes_copied', 0):>12} "
                         f"{s.get('pinned_bytes', 0):>10}")
            if s.get("fallback_reason"):
                lines.append(f"{'':>6} fallback: {s['fallback_reason']}")
        t = agg["total"]
        lines.append(f"{'total':>6} {'':>7} {'':>5} {'':>9} {t['served']:>6} {t['handed_over']:>6} "
                     f"{t['bytes_zero_copy']:>12} {t['bytes_copied']:>12} {t['pinned_bytes']:>10}")
        self.say("\n".join(lines))
        self._write_json(agg)
        return agg

    def _write_json(self, agg: dict[str, Any]) -> None:
        if not self.stats_json:
            return
        tmp = f"{self.stats_json}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(agg, f, indent=1, default=str)
        os.replace(tmp, self.stats_json)

    # -- the end ---------------------------------------------------------
    def _finish(self) -> None:
        self._wait_queues_released()
        agg = self.aggregate()
        for w in agg["workers"]:
            last = self.final_stats.get(str(w["worker"]))
            if last:
                w.update(last, pid=w["pid"], state="exited")
        keys = list(agg["total"])
        agg["total"] = {k: sum(int(s.get(k) or 0) for s in agg["workers"]) for k in keys}
        agg["stopped"] = True
        self._write_json(agg)
        self.say("aiozcrx serve: stopped; every queue released")
        self._close_channels()

    def _close_channels(self) -> None:
        for pair in self.ctrl + self.inbox:
            for s in pair:
                s.close()
        if self.listener is not None:
            self.listener.close()
        signal.set_wakeup_fd(-1)
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1
        for sig, handler in self._old_handlers.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._old_handlers = {}

    def _wait_queue_released(self, queue: int | None) -> None:
        if self.interface is None or queue is None:
            return
        from ..tools.nic import wait_queue_released  # noqa: PLC0415
        wait_queue_released(self.interface, queue, timeout=30.0)

    def _wait_queues_released(self) -> None:
        for q in self.queues:
            self._wait_queue_released(q)

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)


def rebuild_error(report: dict[str, Any]) -> BaseException | None:
    """The typed error a worker reported (``worker.error_report``), rebuilt."""
    kind = report.get("kind")
    if "cause" in report and "engine" in report:
        cls: type[EngineUnavailable] = ZcrxUnavailable if kind and kind.startswith("Zcrx") else EngineUnavailable
        return cls(report["engine"], int(report.get("errno") or errno.EIO), report["cause"],
                   report.get("fix") or "")
    if kind == "PrivilegeDropError":
        from .privileges import PrivilegeDropError  # noqa: PLC0415
        return PrivilegeDropError(report.get("message", ""))
    return None

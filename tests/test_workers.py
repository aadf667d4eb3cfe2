"""aiozcrx serve / aiozcrx.workers: N unprivileged workers, each on its own NIC queue.

Everything goes through the public CLI (`python -m aiozcrx serve`) or the Python
API (`aiozcrx.workers.Launcher`, in a child process: it forks and takes signals).
The application is tests/workers_app.py; the uploads come from
tests/workers_sender.py (in the peer's network namespace for the NIC tests).

Host: the fallback path (no zcrx here: engine uring) with N workers on loopback,
the drop to nobody, the typed errors, the handover's credential check, the
lifecycle. Guest with the simulated NIC (`run-in-guest.sh --nic`): 4 workers on
4 zcrx queues, every connection on its queue's worker, nothing copied.
"""

from __future__ import annotations

import array
import errno
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from aiozcrx.workers import handoff
from http_uploads import check as http_check, uploads, uploads_in
from aiozcrx.workers.launcher import parse_queues, pinned_per_worker

pytestmark = pytest.mark.workers

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
SENDER = os.path.join(TESTS, "workers_sender.py")
NOBODY = 65534
CEILING = 600.0  # only turns a hang into a failure

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the launcher must be root to start workers as nobody")


def env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([TESTS, ROOT, os.environ.get("PYTHONPATH", "")]))


def wait_until(cond, what: str, timeout: float = CEILING, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except OSError:
        return False


class Served:
    """`aiozcrx serve ...` in a child process, its stats JSON file, its signals."""

    def __init__(self, tmp_path, *args: str) -> None:
        self.stats_path = str(tmp_path / f"stats-{time.monotonic_ns()}.json")
        self.log_path = tmp_path / f"serve-{time.monotonic_ns()}.log"
        self.log = open(self.log_path, "w")
        self.terminated = False
        self.proc = subprocess.Popen([sys.executable, "-m", "aiozcrx", "serve", *args,
                                      "--stats-json", self.stats_path], env=env(),
                                     stdout=self.log, stderr=subprocess.STDOUT)
        wait_until(lambda: os.path.exists(self.stats_path) or self.proc.poll() is not None,
                   "the workers to be ready")
        assert self.proc.poll() is None, self.output()
        self.port = self.stats()["port"]

    def output(self) -> str:
        with open(self.log_path) as f:
            return f.read()

    def stats(self) -> dict:
        with open(self.stats_path) as f:
            return json.load(f)

    def fresh_stats(self) -> dict:
        """Asks for stats (SIGUSR1) and waits for the file to be rewritten."""
        before = self.stats()["time"]
        self.proc.send_signal(signal.SIGUSR1)
        return wait_until(lambda: (s := self.stats())["time"] != before and s, "fresh stats")

    def pids(self) -> list[int]:
        return [w["pid"] for w in self.stats()["workers"]]

    def terminate(self) -> None:
        """SIGTERM, once: a graceful stop (a second one after it is over would kill)."""
        if not self.terminated and self.proc.poll() is None:
            self.terminated = True
            self.proc.send_signal(signal.SIGTERM)

    def stop(self) -> int:
        self.terminate()
        rc = self.proc.wait(CEILING)
        self.log.close()
        return rc


def send(host: str, port: int, conns: int, size: int, *, netns: str | None = None, src_base: int = 0,
         pause: bool = False) -> subprocess.Popen:
    spec = json.dumps({"host": host, "port": port, "conns": conns, "size": size, "src_base": src_base,
                       "pause": pause})
    cmd = [sys.executable, SENDER, spec]
    if netns:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def results(proc: subprocess.Popen) -> list[dict]:
    out, _ = proc.communicate(timeout=CEILING)
    assert proc.returncode == 0, out
    return json.loads(out.splitlines()[-1])


def check_answers(res: list[dict], size: int) -> list[dict]:
    """Every byte verified, by whom: unprivileged, and refused a registration."""
    for r in res:
        a = r["answer"]
        assert not r["error"] and a is not None, r
        assert a["n"] == size and a["sha256"] == r["sha256"], r
        assert a["uid"] == NOBODY and a["gid"] == NOBODY and a["cap_eff"] == 0, a
        # the app's own attempt to register a zcrx queue: the typed permission error
        assert a["register"].startswith("ZcrxUnavailable: errno=1:") and "CAP_NET_ADMIN" in a["register"], a
    return [r["answer"] for r in res]


# --------------------------------------------------------------------------
# pure pieces
# --------------------------------------------------------------------------
def test_parse_queues_and_memlock_sizes():
    assert parse_queues("0-3") == [0, 1, 2, 3]
    assert parse_queues("5") == [5]
    assert parse_queues("1,3-4") == [1, 3, 4]
    for bad in ("3-1", "a-b", "1,1", "-1"):
        with pytest.raises(ValueError, match="--queues"):
            parse_queues(bad)
    # a NIC queue's default area (64 MiB) and refill ring, and the ring itself
    assert pinned_per_worker("zcrx", None, None) > 64 << 20
    assert pinned_per_worker("zcrx", 8 << 20, 4096) < 9 << 20


def test_bad_options_are_one_line_and_status_2(tmp_path):
    for args, words in ((["workers_app:factory", "--queues", "0-3", "--port", "0", "--user", "nobody"],
                         "--queues needs --interface"),
                        (["workers_app:factory", "--queues", "0-3", "--workers", "2", "--interface", "lo",
                          "--user", "nobody"], "one worker serves one queue"),
                        (["workers_app:factory", "--workers", "2", "--user", "no-such-user-here"],
                         "no user 'no-such-user-here'"),
                        (["workers_app:factory", "--engine", "zcrx", "--queues", "0-1", "--interface",
                          "nosuch0", "--user", "nobody"], "unknown interface 'nosuch0'")):
        r = subprocess.run([sys.executable, "-m", "aiozcrx", "serve", *args], env=env(),
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 2, r
        assert words in r.stderr and "Traceback" not in r.stderr, r.stderr


# --------------------------------------------------------------------------
# handing a connection over: SCM_RIGHTS, credentials checked, nothing read
# --------------------------------------------------------------------------
# A sibling worker's place: a child of this process that hands ``sock`` over on
# ``outbox``, then waits for a byte on ``hold`` (if given) before it exits. Spawned
# (fork + exec), not os.fork()ed: this process has threads, and a forked child of a
# threaded process may deadlock on a lock one of them held.
SEND_FROM_CHILD = """
import os, socket, sys
from aiozcrx.workers import handoff
outbox, conn, sent, hold = (int(a) for a in sys.argv[1:])
handoff.send_connection(socket.socket(fileno=outbox), socket.socket(fileno=conn))
os.write(sent, b"x")
if hold >= 0:
    os.read(hold, 1)  # alive until received: a sender that is gone is refused
"""


def send_from_child(outbox: socket.socket, sock: socket.socket, hold: int = -1) -> subprocess.Popen:
    """Starts the child and returns once it has sent."""
    sent_r, sent_w = os.pipe()
    fds = [outbox.fileno(), sock.fileno(), sent_w] + ([hold] if hold >= 0 else [])
    child = subprocess.Popen([sys.executable, "-c", SEND_FROM_CHILD, *map(str, fds[:3]), str(hold)],
                             pass_fds=fds, env=env())
    os.close(sent_w)
    try:
        assert os.read(sent_r, 1) == b"x", f"the child did not send (exit status {child.wait()})"
    finally:
        os.close(sent_r)
    return child


def test_handover_passes_the_socket_unread_and_checks_the_sender():
    inbox, outbox = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    inbox.setsockopt(socket.SOL_SOCKET, handoff.SO_PASSCRED, 1)
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    client.sendall(b"first bytes")
    accepted, _ = listener.accept()
    # a child of this process (a sibling worker's place) hands it over
    hold_r, hold_w = os.pipe()
    child = send_from_child(outbox, accepted, hold=hold_r)
    # its parent must be the launcher: here, this process
    got = handoff.receive_connection(inbox, uid=os.getuid(), launcher_pid=os.getpid())
    os.write(hold_w, b"x")
    assert child.wait(timeout=60) == 0
    os.close(hold_r)
    os.close(hold_w)
    accepted.close()
    assert got.recv(100) == b"first bytes"  # nothing was read on the way
    got.sendall(b"reply")
    assert client.recv(100) == b"reply"
    got.close()
    # a sibling that handed a connection over and exited before it was read (a
    # rolling restart): refused by its parent (it has none now), taken as a known one
    for known in (set(), None):
        child = send_from_child(outbox, client)
        assert child.wait(timeout=60) == 0
        if known is None:
            passed = handoff.receive_connection(inbox, uid=os.getuid(), launcher_pid=os.getpid(),
                                                siblings={child.pid})
            passed.close()
        else:
            with pytest.raises(handoff.Rejected, match="not a worker"):
                handoff.receive_connection(inbox, uid=os.getuid(), launcher_pid=os.getpid(), siblings=known)
    # a sender that is not a worker of this launcher: refused, the fd closed
    handoff.send_connection(outbox, client)
    fds_before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(handoff.Rejected, match="not a worker of launcher"):
        handoff.receive_connection(inbox, uid=os.getuid(), launcher_pid=os.getppid() + 1)
    assert len(os.listdir("/proc/self/fd")) == fds_before
    # another uid: refused
    outbox.sendmsg([b"aiozcrx-conn"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [client.fileno()]))])
    with pytest.raises(handoff.Rejected, match="uid"):
        handoff.receive_connection(inbox, uid=os.getuid() + 1, launcher_pid=os.getpid())
    with pytest.raises(BlockingIOError):
        handoff.receive_connection(inbox, uid=os.getuid(), launcher_pid=os.getpid())
    for s in (inbox, outbox, listener, client):
        s.close()


def test_napi_map_reads_again_on_an_unknown_id():
    answers = [[(0, 11), (1, 12)], [(0, 11), (1, 21)]]
    qm = handoff.QueueMap("eth-test", refresh=0.0, reader=lambda _name: answers.pop(0))
    qm.read()
    assert qm.queue_of(12) == 1 and qm.queue_of(0) is None  # 0: no NAPI (loopback)
    assert qm.queue_of(21) == 1 and qm.reads == 2  # the queue was restarted: a new id
    assert qm.queue_of(12) == 1  # a connection accepted before still carries the old one
    assert qm.napi_of(1) == 21 and qm.unknown == 0
    # loopback: no interface, every connection is the accepting worker's
    assert handoff.QueueMap(None).queue_of(5) is None


# --------------------------------------------------------------------------
# host: the fallback path, N workers on loopback
# --------------------------------------------------------------------------
@needs_root
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_workers_on_loopback_fall_back_as_nobody_and_stop_gracefully(tmp_path, loop):
    srv = Served(tmp_path, "workers_app:factory", "--workers", "3", "--host", "127.0.0.1", "--port", "0",
                 "--user", "nobody", "--loop", loop, "--area-size", "4M")
    try:
        start = srv.stats()
        assert [w["state"] for w in start["workers"]] == ["ready"] * 3
        for w in start["workers"]:
            # no NIC queue here: the best engine that works (zcrx-copy where the kernel
            # has ZCRX_REG_NODEV: the guest), and why not zcrx
            assert w["engine"] in ("zcrx-copy", "uring", "socket") and "zcrx:" in w["fallback_reason"], w
            assert w["uid"] == NOBODY and w["cap_eff"] == 0, w
            assert w["pinned_bytes"] == (4 << 20 if w["engine"] == "zcrx-copy" else 0), w
        size = 256 * 1024
        answers = check_answers(results(send("127.0.0.1", srv.port, 24, size)), size)
        stats = srv.fresh_stats()
        # loopback has no NAPI queue: each connection stays with the worker that accepted it
        assert stats["total"]["served"] == 24 and stats["total"]["unowned"] == 24
        assert stats["total"]["handed_over"] == 0
        assert stats["total"]["bytes"] == 24 * (size + 8) == stats["total"]["bytes_copied"]
        assert {a["worker"] for a in answers} <= {0, 1, 2}
        for w in stats["workers"]:
            assert w["served"] == sum(1 for a in answers if a["worker"] == w["worker"])
        pids = srv.pids()
    finally:
        rc = srv.stop()
    assert rc == 0, srv.output()
    assert not any(alive(p) for p in pids)
    final = json.load(open(srv.stats_path))
    assert final["stopped"] and final["total"]["served"] == 24


@needs_root
def test_sigkill_replaces_the_worker_sighup_restarts_each_without_refusing(tmp_path):
    srv = Served(tmp_path, "workers_app:factory", "--workers", "2", "--host", "127.0.0.1", "--port", "0",
                 "--user", "nobody", "--area-size", "4M")
    try:
        size = 64 * 1024
        first = srv.pids()
        # a worker killed mid-stream: its connections end, the other's finish
        upl = send("127.0.0.1", srv.port, 8, size, pause=True)
        assert upl.stdout.readline().strip() == "half"
        wait_until(lambda: srv.fresh_stats()["total"]["connections"] == 8, "8 connections in the workers")
        per = {w["worker"]: w["connections"] for w in srv.stats()["workers"]}
        victim = max(per, key=lambda k: per[k])
        os.kill(first[victim], signal.SIGKILL)
        upl.stdin.write("go\n")
        upl.stdin.flush()
        res = results(upl)
        ended = [r for r in res if r["error"]]
        assert len(ended) == per[victim], res
        check_answers([r for r in res if not r["error"]], size)
        # replaced: a new worker at that place, ready, serving
        wait_until(lambda: (w := srv.fresh_stats()["workers"][victim])["pid"] != first[victim]
                   and w["state"] == "ready", "the replacement")
        assert srv.stats()["workers"][victim]["restarts"] == 1
        assert srv.stats()["workers"][1 - victim]["pid"] == first[1 - victim]  # untouched
        check_answers(results(send("127.0.0.1", srv.port, 8, size)), size)
        # rolling restart: uploads keep coming while each worker is replaced in turn
        before = srv.pids()
        srv.proc.send_signal(signal.SIGHUP)
        answers = []
        while not all(w["state"] == "ready" and w["pid"] not in before for w in srv.fresh_stats()["workers"]):
            answers += check_answers(results(send("127.0.0.1", srv.port, 4, size)), size)
        answers += check_answers(results(send("127.0.0.1", srv.port, 4, size)), size)
        assert not set(srv.pids()) & set(before)
    finally:
        assert srv.stop() == 0, srv.output()
    assert "rolling restart done" in srv.output()


@needs_root
def test_launcher_death_ends_every_worker(tmp_path):
    srv = Served(tmp_path, "workers_app:factory", "--workers", "2", "--host", "127.0.0.1", "--port", "0",
                 "--user", "nobody", "--area-size", "4M")
    pids = srv.pids()
    assert all(alive(p) for p in pids)
    srv.proc.kill()
    srv.proc.wait(CEILING)
    wait_until(lambda: not any(alive(p) for p in pids), "the workers to exit (parent-death signal)")
    srv.log.close()


@needs_root
def test_asgi_app_through_uvicorns_protocol(tmp_path):
    """`aiozcrx serve` with an ASGI app: 64 uploads of 16 MiB over HTTP/1.1, each
    verified by its sha256, served by workers running as nobody."""
    pytest.importorskip("uvicorn")
    srv = Served(tmp_path, "workers_app:app", "--workers", "2", "--host", "127.0.0.1", "--port", "0",
                 "--user", "nobody", "--area-size", "4M")
    try:
        size = 16 << 20
        answers = http_check(uploads("127.0.0.1", srv.port, 64, size), size)
        assert {a["worker"] for a in answers} <= {0, 1}
        stats = srv.fresh_stats()
        assert stats["total"]["served"] == 64 and stats["total"]["bytes"] >= 64 * size, stats["total"]
    finally:
        assert srv.stop() == 0, srv.output()


# --------------------------------------------------------------------------
# host: typed errors before any worker serves
# --------------------------------------------------------------------------
def in_child(code: str) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter (it gives up capabilities for good)."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env(), capture_output=True,
                          text=True, timeout=CEILING)


@needs_root
def test_engine_zcrx_without_cap_net_admin_is_a_typed_error_naming_the_fix():
    r = in_child("""
        import json
        from aiozcrx.workers.privileges import CAP_NET_ADMIN, drop_capability
        drop_capability(CAP_NET_ADMIN)
        from aiozcrx.errors import ZcrxUnavailable
        from aiozcrx.workers import Launcher
        try:
            Launcher("workers_app:factory", workers=2, port=0, user="nobody", engine="zcrx-copy").start()
        except ZcrxUnavailable as e:
            print(json.dumps({"errno": e.errno, "text": str(e)}))
    """)
    assert r.stdout, r.stderr
    out = json.loads(r.stdout)
    assert out["errno"] == errno.EPERM and "CAP_NET_ADMIN" in out["text"] and "fix:" in out["text"], r
    # the CLI says the same in one line
    r = in_child("""
        import sys
        from aiozcrx.workers.privileges import CAP_NET_ADMIN, drop_capability
        drop_capability(CAP_NET_ADMIN)
        from aiozcrx.cli import main
        sys.exit(main(["serve", "workers_app:factory", "--workers", "2", "--port", "0",
                       "--user", "nobody", "--engine", "zcrx-copy"]))
    """)
    assert r.returncode == 2 and "lacks CAP_NET_ADMIN" in r.stderr and "Traceback" not in r.stderr, r


@needs_root
def test_without_cap_net_admin_auto_serves_on_the_best_engine_and_says_why():
    r = in_child("""
        import json, socket, struct, hashlib, os
        from aiozcrx.workers.privileges import CAP_NET_ADMIN, drop_capability
        drop_capability(CAP_NET_ADMIN)
        from aiozcrx.workers import Launcher
        launcher = Launcher("workers_app:factory", workers=2, host="127.0.0.1", port=0, user="nobody",
                            area_size=4 << 20)
        launcher.start()
        data = os.urandom(50000)
        with socket.create_connection(("127.0.0.1", launcher.port)) as c:
            c.sendall(struct.pack("!Q", len(data)) + data)
            answer = json.loads(c.makefile().readline())
        workers = launcher.collect_stats()["workers"]
        launcher.shutdown()
        print(json.dumps({"workers": workers, "ok": answer["sha256"] == hashlib.sha256(data).hexdigest()}))
    """)
    assert r.returncode == 0 and r.stdout, r.stderr
    out = json.loads(r.stdout.splitlines()[-1])
    assert out["ok"]
    for w in out["workers"]:
        assert w["engine"] in ("uring", "socket"), w
        # zcrx and zcrx-copy were passed over, and the reason says why
        assert "zcrx-copy: EPERM" in w["fallback_reason"] and "CAP_NET_ADMIN" in w["fallback_reason"], w


@needs_root
def test_a_worker_that_cannot_register_its_queue_fails_the_start_typed(tmp_path):
    """engine zcrx on queues that cannot take it (loopback has no queue API, or this
    kernel has no zcrx): every worker stops, the launcher raises the worker's
    typed error, nothing stays."""
    r = in_child("""
        import json, os
        from aiozcrx.workers.handoff import parent_of
        children = lambda: " ".join(p for p in os.listdir("/proc") if p.isdigit() and parent_of(int(p)) == os.getpid())
        from aiozcrx.errors import WorkerFailed, ZcrxUnavailable
        from aiozcrx.workers import Launcher
        try:
            Launcher("workers_app:factory", queues="0", interface="lo", port=0, user="nobody",
                     engine="zcrx", area_size=1 << 20).start()
        except WorkerFailed as e:
            print(json.dumps({"typed": isinstance(e.error, ZcrxUnavailable), "errno": e.error.errno,
                              "text": str(e), "children": children()}))
    """)
    assert r.stdout, r.stderr
    out = json.loads(r.stdout)
    assert out["typed"] and out["errno"] in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENODEV), out
    assert "queue" in out["text"] and out["children"].strip() == "", out


@needs_root
def test_memlock_too_small_is_a_typed_error_before_any_worker_starts():
    """A launcher with CAP_NET_ADMIN but not CAP_IPC_LOCK (as a non-root user with
    cap_net_admin would be): its workers' areas are charged to RLIMIT_MEMLOCK."""
    r = in_child("""
        import json, os, resource
        from aiozcrx.workers.handoff import parent_of
        children = lambda: " ".join(p for p in os.listdir("/proc") if p.isdigit() and parent_of(int(p)) == os.getpid())
        from aiozcrx.workers.privileges import CAP_IPC_LOCK, drop_capability
        drop_capability(CAP_IPC_LOCK)
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (8 << 20, 8 << 20))
        from aiozcrx.errors import MemlockTooSmall
        from aiozcrx.workers import Launcher
        try:
            Launcher("workers_app:factory", workers=4, port=0, user="nobody", engine="zcrx-copy",
                     area_size=4 << 20).start()
        except MemlockTooSmall as e:
            print(json.dumps({"limit": e.limit, "needed": e.needed, "workers": e.workers, "text": str(e),
                              "errno": e.errno,
                              "children": children()}))
    """)
    assert r.stdout, r.stderr
    out = json.loads(r.stdout)
    assert out["limit"] == 8 << 20 and out["workers"] == 4 and out["needed"] > 16 << 20, out
    assert out["errno"] == errno.ENOMEM
    assert "RLIMIT_MEMLOCK is 8388608 bytes" in out["text"] and str(out["needed"]) in out["text"]
    assert "ulimit -l" in out["text"] and out["children"].strip() == "", out


# --------------------------------------------------------------------------
# guest: 4 workers on 4 zcrx queues of the simulated NIC
# --------------------------------------------------------------------------
ZC_QUEUES = [0, 1, 2, 3]
OTHER_QUEUE = 4


@pytest.fixture
def steered(sim_nic):
    """The NIC set up for 4 workers by the public command, as docs/workers.md says:
    `aiozcrx nic setup --queues 0-3 --port P` (header split on, an RSS context over
    queues 0-3, tcp4 and tcp6 rules sending the port into it, the main RSS table on
    queue 4 only); `aiozcrx nic teardown` afterwards restores what was there."""
    from aiozcrx.tools import ethtool as et
    name, port = sim_nic.name, 9300
    most = et.get_channels(name)
    most = most.get("combined_max") or most.get("rx_max") or 0
    if most < OTHER_QUEUE + 1:
        pytest.fail(f"{name} has {most} queues at most; these tests need "
                    f"{OTHER_QUEUE + 1} (4 for the workers, 1 for the rest): run-in-guest.sh "
                    f"--nic --nic-queues {OTHER_QUEUE + 1} (as `make test-guest` does)")
    nic = [sys.executable, "-m", "aiozcrx", "nic"]
    setup = subprocess.run([*nic, "setup", "--interface", name,
                            "--queues", f"{ZC_QUEUES[0]}-{ZC_QUEUES[-1]}", "--port", str(port)],
                           capture_output=True, text=True, timeout=300)
    assert setup.returncode == 0, (setup.stdout, setup.stderr)
    try:
        yield port
    finally:
        # teardown waits for the kernel to release the recorded queues first
        down = subprocess.run([*nic, "teardown", "--interface", name],
                              capture_output=True, text=True, timeout=300)
        assert down.returncode == 0, (down.stdout, down.stderr)


def bound_queues(ifname: str) -> list[int]:
    from aiozcrx.tools import ethtool as et
    return [q["id"] for q in et.netdev_queues(ifname) if q["type"] == "rx" and q["io_uring"]]


def doctor_says_free(ifname: str, port: int) -> None:
    """What a user runs after the workers are gone: `aiozcrx doctor --queues 0-3
    --port P` finds each queue free (no io_uring zcrx instance, hence no area
    pinned for it: the kernel unpins the area when it unbinds the queue)."""
    r = subprocess.run([sys.executable, "-m", "aiozcrx", "doctor", "--interface", ifname,
                        "--queues", f"{ZC_QUEUES[0]}-{ZC_QUEUES[-1]}", "--port", str(port), "--json"],
                       capture_output=True, text=True, timeout=CEILING)
    checks = {c["name"]: c for c in json.loads(r.stdout)["checks"]}
    for q in ZC_QUEUES:
        c = checks[f"queue {q}"]
        assert c["status"] == "PASS" and c["detail"].endswith("; free"), c


def serve_on_nic(tmp_path, sim_nic, port: int, loop: str) -> Served:
    return Served(tmp_path, "workers_app:factory", "--engine", "zcrx", "--interface", sim_nic.name,
                  "--queues", "0-3", "--host", sim_nic.addr, "--port", str(port), "--user", "nobody",
                  "--loop", loop, "--area-size", "16M", "--rq-entries", "4096")


def check_zero_copy(stats: dict) -> None:
    for w in stats["workers"]:
        assert w["engine"] == "zcrx" and "zcrx:" not in w["fallback_reason"], w  # (a wake-up note may be there)
        assert w["kernel_copy_bytes"] == 0 and w["bytes_copied"] == 0, w
        assert w["bytes_zero_copy"] == w["bytes"], w
        assert w["pinned_bytes"] == 16 << 20 and w["uid"] == NOBODY and w["cap_eff"] == 0, w


@pytest.mark.nic
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_four_workers_on_four_zcrx_queues(tmp_path, sim_nic, steered, loop):
    conns, size = 256, 1 << 20  # about 35 s per loop in the one-CPU guest
    srv = serve_on_nic(tmp_path, sim_nic, steered, loop)
    try:
        assert sorted(bound_queues(sim_nic.name)) == ZC_QUEUES
        res = results(send(sim_nic.addr, steered, conns, size, netns=sim_nic.peer_ns, src_base=20000))
        answers = check_answers(res, size)
        assert len({r["src_port"] for r in res}) == conns
        for a in answers:
            # received by the worker that owns the queue its packets came in on
            assert a["engine"] == "zcrx" and a["conn_queue"] == a["queue"] == ZC_QUEUES[a["worker"]], a
        stats = srv.fresh_stats()
        check_zero_copy(stats)
        t = stats["total"]
        assert t["served"] == conns and t["unowned"] == 0 and t["handed_over"] == t["handed_in"]
        assert t["bytes_zero_copy"] == conns * (size + 8)
        for w in stats["workers"]:
            assert w["served"] == sum(1 for a in answers if a["worker"] == w["worker"]), w
        # a worker SIGKILLed mid-stream: its connections end, the others finish; its
        # queue is registered again by a replacement
        upl = send(sim_nic.addr, steered, 16, size, netns=sim_nic.peer_ns, src_base=21000, pause=True)
        assert upl.stdout.readline().strip() == "half"
        wait_until(lambda: srv.fresh_stats()["total"]["connections"] == 16, "16 connections in the workers")
        per = {w["worker"]: w["connections"] for w in srv.stats()["workers"]}
        victim = max(per, key=lambda k: per[k])
        old = srv.pids()
        os.kill(old[victim], signal.SIGKILL)
        upl.stdin.write("go\n")
        upl.stdin.flush()
        res = results(upl)
        assert len([r for r in res if r["error"]]) == per[victim], res
        check_answers([r for r in res if not r["error"]], size)
        wait_until(lambda: (w := srv.fresh_stats()["workers"][victim])["pid"] != old[victim]
                   and w["state"] == "ready", "the replacement")
        assert sorted(bound_queues(sim_nic.name)) == ZC_QUEUES
        answers = check_answers(results(send(sim_nic.addr, steered, 32, 256 << 10, netns=sim_nic.peer_ns,
                                             src_base=22000)), 256 << 10)
        assert all(a["conn_queue"] == a["queue"] for a in answers)
        check_zero_copy(srv.fresh_stats())
        # SIGHUP: a rolling restart, uploads going on throughout; none refused, each on
        # its queue's worker (what arrives on a queue while it is re-registered is
        # received by copy: zero copy is not asserted here)
        before = srv.pids()
        srv.proc.send_signal(signal.SIGHUP)
        rounds = 0
        while not all(w["state"] == "ready" and w["pid"] not in before for w in srv.fresh_stats()["workers"]):
            rounds += 1
            answers = check_answers(results(send(sim_nic.addr, steered, 8, 128 << 10, netns=sim_nic.peer_ns,
                                                 src_base=24000 + 8 * (rounds % 100))), 128 << 10)
            assert all(a["conn_queue"] == a["queue"] for a in answers)
        assert sorted(bound_queues(sim_nic.name)) == ZC_QUEUES
        answers = check_answers(results(send(sim_nic.addr, steered, 32, 256 << 10, netns=sim_nic.peer_ns,
                                             src_base=25000)), 256 << 10)
        assert all(a["conn_queue"] == a["queue"] for a in answers)
        # SIGTERM mid-stream: what is in flight finishes, then every queue is released
        upl = send(sim_nic.addr, steered, 16, size, netns=sim_nic.peer_ns, src_base=23000, pause=True)
        assert upl.stdout.readline().strip() == "half"
        wait_until(lambda: srv.fresh_stats()["total"]["connections"] == 16, "16 connections in the workers")
        srv.terminate()
        upl.stdin.write("go\n")
        upl.stdin.flush()
        check_answers(results(upl), size)
    finally:
        rc = srv.stop()
        print(srv.output())  # shown when the test fails
    assert rc == 0, srv.output()
    assert bound_queues(sim_nic.name) == []
    doctor_says_free(sim_nic.name, steered)
    assert srv.stats()["stopped"]


@pytest.mark.nic
def test_serve_asgi_on_four_zcrx_queues(tmp_path, sim_nic, steered):
    """`aiozcrx serve` with an ASGI app (uvicorn's HTTP protocol) on 4 zcrx queues:
    64 uploads of 16 MiB from the peer, each verified by its sha256, every byte
    placed by the NIC in a worker's area (the kernel copied nothing)."""
    pytest.importorskip("uvicorn")
    size, count = 16 << 20, 64
    srv = Served(tmp_path, "workers_app:app", "--engine", "zcrx", "--interface", sim_nic.name,
                 "--queues", "0-3", "--host", sim_nic.addr, "--port", str(steered), "--user", "nobody",
                 "--area-size", "16M", "--rq-entries", "4096")
    try:
        assert sorted(bound_queues(sim_nic.name)) == ZC_QUEUES
        answers = http_check(uploads_in(sim_nic.peer_ns, sim_nic.addr, steered, count, size), size)
        assert {a["worker"] for a in answers} <= set(range(len(ZC_QUEUES)))
        stats = srv.fresh_stats()
        for w in stats["workers"]:
            # uvicorn's protocol takes bytes: one copy in user space, counted
            assert w["engine"] == "zcrx" and w["kernel_copy_bytes"] == 0, w
            assert w["bytes_zero_copy"] + w["user_copy_bytes"] == w["bytes"], w
            assert w["uid"] == NOBODY and w["cap_eff"] == 0 and w["pinned_bytes"] == 16 << 20, w
        t = stats["total"]
        assert t["served"] == count and t["unowned"] == 0 and t["handed_over"] == t["handed_in"], t
        assert t["bytes"] >= count * size, t
    finally:
        rc = srv.stop()
    assert rc == 0, srv.output()
    wait_until(lambda: bound_queues(sim_nic.name) == [], "every queue to be released")
    doctor_says_free(sim_nic.name, steered)


@pytest.mark.nic
def test_launcher_killed_leaves_no_queue_bound(tmp_path, sim_nic, steered):
    srv = serve_on_nic(tmp_path, sim_nic, steered, "asyncio")
    pids = srv.pids()
    assert sorted(bound_queues(sim_nic.name)) == ZC_QUEUES
    srv.proc.kill()
    srv.proc.wait(CEILING)
    wait_until(lambda: not any(alive(p) for p in pids), "the workers to exit (parent-death signal)")
    wait_until(lambda: bound_queues(sim_nic.name) == [], "every queue to be released")
    doctor_says_free(sim_nic.name, steered)
    srv.log.close()

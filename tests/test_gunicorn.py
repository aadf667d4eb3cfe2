"""gunicorn with aiozcrx's worker class (aiozcrx.workers.gunicorn.ZcrxWorker).

The real gunicorn command line (`python -m gunicorn -k ... --workers N --user
nobody`), the ASGI app of tests/workers_app.py (it answers each upload with its
length, its sha256 and the worker's uid and CapEff), uploads as plain HTTP/1.1
POSTs (tests/http_uploads.py, run in the peer's network namespace for the NIC
test). Per-worker stats come from
AIOZCRX_STATS_DIR (written at start, on SIGUSR1 and at exit).

Host: engine uring (no zcrx here) on loopback, 2 workers. Guest with the
simulated NIC: 4 workers on 4 zcrx queues, nothing copied by the kernel.
"""

from __future__ import annotations

import concurrent.futures
import glob
import hashlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

# the NIC set-up for 4 workers (5 queues, an RSS context over 0-3), shared
from test_workers import ZC_QUEUES, alive, bound_queues, doctor_says_free, steered, wait_until  # noqa: F401
from http_uploads import CEILING, NOBODY, body_of, check, uploads, uploads_in

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)


# --------------------------------------------------------------------------
# gunicorn in a child process
# --------------------------------------------------------------------------
class Gunicorn:
    def __init__(self, tmp_path, workers: int, bind: str, environ: dict[str, str], *extra: str) -> None:
        self.stats_dir = str(tmp_path / f"stats-{time.monotonic_ns()}")
        self.log_path = tmp_path / f"gunicorn-{time.monotonic_ns()}.log"
        self.log = open(self.log_path, "w")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([TESTS, ROOT, os.environ.get("PYTHONPATH", "")]),
                   AIOZCRX_STATS_DIR=self.stats_dir, **environ)
        self.host, port = bind.rsplit(":", 1)
        if port == "0":
            with socket.socket() as s:  # gunicorn prints the port; a free one is simpler to know
                s.bind((self.host, 0))
                port = str(s.getsockname()[1])
        self.port = int(port)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-k", "aiozcrx.workers.gunicorn.ZcrxWorker",
             "--workers", str(workers), "--user", "nobody", "--group", str(NOBODY),
             "--bind", f"{self.host}:{self.port}", "--graceful-timeout", "120", "--timeout", "300",
             "--asgi-loop", "asyncio", "--no-control-socket", *extra, "workers_app:app"],
            env=env, stdout=self.log, stderr=subprocess.STDOUT, cwd=TESTS)
        self.n = workers
        try:
            wait_until(lambda: len(self.ready()) == workers or self.proc.poll() is not None, "the workers", timeout=240)
            assert self.proc.poll() is None, self.output()
        except BaseException:
            self.stop(timeout=60)
            raise AssertionError(f"gunicorn did not start its workers:\n{self.output()[-6000:]}") from None

    def output(self) -> str:
        with open(self.log_path) as f:
            return f.read()

    def children(self) -> list[int]:
        """The arbiter's living workers that have written their stats (ready once);
        by their parent, not /proc/PID/task/*/children (not in every kernel build)."""
        from aiozcrx.workers.handoff import parent_of
        pids = [int(os.path.basename(p)[len("worker-"):-len(".json")])
                for p in glob.glob(os.path.join(self.stats_dir, "worker-*.json"))]
        return [p for p in pids if alive(p) and parent_of(p) == self.proc.pid]

    def worker_stats(self, pid: int) -> dict | None:
        try:
            with open(os.path.join(self.stats_dir, f"worker-{pid}.json")) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None  # not written yet, or caught mid-write

    def ready(self) -> dict[int, dict]:
        """The living workers that are serving, and their last stats."""
        out = {}
        for pid in self.children():
            s = self.worker_stats(pid)
            if s is not None and "engine" in s and alive(pid):
                out[pid] = s
        return out

    def fresh_stats(self) -> dict[int, dict]:
        """SIGUSR1 to the arbiter (it passes it on): every worker rewrites its file."""
        before = {pid: s["time"] for pid, s in self.ready().items()}
        self.proc.send_signal(signal.SIGUSR1)
        return wait_until(lambda: (now := self.ready()).keys() == before.keys()
                          and all(now[p]["time"] != before[p] for p in now) and now, "fresh stats")

    def stop(self, timeout: float = CEILING) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()  # its workers follow (parent-death signal)
            rc = self.proc.wait(CEILING)
        self.log.close()
        return rc


def final_stats(g: Gunicorn) -> list[dict]:
    out = []
    for path in glob.glob(os.path.join(g.stats_dir, "worker-*.json")):
        with open(path) as f:
            out.append(json.load(f))
    return out


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="gunicorn must start as root to run workers as nobody")


@pytest.fixture(autouse=True)
def _gunicorn_installed():
    pytest.importorskip("gunicorn.workers.gasgi", reason="gunicorn >= 27 (the test extra) is not installed")


# --------------------------------------------------------------------------
# host: engine uring on loopback
# --------------------------------------------------------------------------
def test_settings_are_read_and_checked():
    from aiozcrx.workers.gunicorn import Settings
    s = Settings.read({"AIOZCRX_INTERFACE": "eth0", "AIOZCRX_QUEUES": "0-3"}, {"AIOZCRX_ENGINE": "zcrx"})
    assert s.queues == (0, 1, 2, 3) and s.engine == "zcrx" and s.interface == "eth0"
    for env, words in (({"AIOZCRX_QUEUES": "0-3"}, "needs AIOZCRX_INTERFACE"),
                       ({"AIOZCRX_ENGINE": "zcrx"}, "needs NIC queues"),
                       ({"AIOZCRX_ENGINE": "fast"}, "choose one of"),
                       ({"AIOZCRX_AREA_SIZE": "big"}, "AIOZCRX_AREA_SIZE"),
                       ({"AIOZCRX_QUEUES": "3-1", "AIOZCRX_INTERFACE": "x"}, "--queues")):
        with pytest.raises(ValueError, match=words):
            Settings.read(env)


@needs_root
def test_queues_and_workers_must_match(tmp_path):
    r = subprocess.run([sys.executable, "-m", "gunicorn", "-k", "aiozcrx.workers.gunicorn.ZcrxWorker",
                        "--workers", "3", "--user", "nobody", "--bind", "127.0.0.1:0", "workers_app:app"],
                       env=dict(os.environ, AIOZCRX_INTERFACE="lo", AIOZCRX_QUEUES="0-1",
                                PYTHONPATH=os.pathsep.join([TESTS, ROOT])),
                       capture_output=True, text=True, timeout=CEILING, cwd=TESTS)
    assert r.returncode != 0 and "one worker serves one queue" in r.stdout + r.stderr, r


@needs_root
def test_gunicorn_workers_upload_as_nobody_hup_and_term(tmp_path):
    # 64 uploads of 16 MiB, each verified by its sha256
    g = Gunicorn(tmp_path, 2, "127.0.0.1:0", {"AIOZCRX_AREA_SIZE": "4M"})
    try:
        start = g.ready()
        for s in start.values():
            assert s["engine"] in ("uring", "socket") and "zcrx:" in s["fallback_reason"], s
            assert s["uid"] == NOBODY and s["cap_eff"] == 0 and s["pinned_bytes"] == 0, s
        assert sorted(s["worker"] for s in start.values()) == [0, 1]
        size = 16 << 20
        answers = check(uploads(g.host, g.port, 64, size), size)
        assert {a["pid"] for a in answers} <= set(start)
        stats = g.fresh_stats()
        assert sum(s["served"] for s in stats.values()) == 64
        assert sum(s["unowned"] for s in stats.values()) == 64  # loopback: no NIC queue
        assert sum(s["handed_over"] for s in stats.values()) == 0
        assert sum(s["bytes"] for s in stats.values()) >= 64 * size

        # HUP: gunicorn starts new workers and stops the old ones; uploads meanwhile
        # all succeed (a refused connection would be an exception in the client)
        old = set(g.children())
        small = 256 << 10
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            g.proc.send_signal(signal.SIGHUP)
            answers = []
            while not (set(g.ready()) and not set(g.ready()) & old and len(g.ready()) == 2):
                answers += check(pool.submit(uploads, g.host, g.port, 4, small, 4).result(), small)
            answers += check(uploads(g.host, g.port, 8, small), small)
        assert {a["pid"] for a in answers[-8:]} <= set(g.ready())
        assert not any(alive(p) for p in old)

        # TERM with an upload in flight: it finishes, then gunicorn exits 0
        conn = http.client.HTTPConnection(g.host, g.port, timeout=CEILING)
        body = body_of(7, 4 << 20)
        conn.putrequest("POST", "/")
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders()
        conn.send(body[:len(body) // 2])
        wait_until(lambda: sum(s.get("connections", 0) for s in g.fresh_stats().values()) == 1,
                   "the upload in a worker")
        pids = list(g.ready())
        g.proc.send_signal(signal.SIGTERM)
        conn.send(body[len(body) // 2:])
        resp = conn.getresponse()
        answer = json.loads(resp.read())
        conn.close()
        assert answer["n"] == len(body) and answer["sha256"] == hashlib.sha256(body).hexdigest()
    finally:
        rc = g.stop()
    assert rc == 0, g.output()
    assert not any(alive(p) for p in pids)
    final = [s for s in final_stats(g) if s["pid"] in pids]
    assert len(final) == 2 and all(s.get("stopped") for s in final), final


# --------------------------------------------------------------------------
# guest: 4 workers on 4 zcrx queues of the simulated NIC
# --------------------------------------------------------------------------
@pytest.mark.workers
@pytest.mark.nic
def test_gunicorn_workers_on_four_zcrx_queues(tmp_path, sim_nic, steered):  # noqa: F811 - the fixture
    # 64 uploads of 16 MiB, each verified by its sha256
    size, count = 16 << 20, 64
    g = Gunicorn(tmp_path, 4, f"{sim_nic.addr}:{steered}",
                 {"AIOZCRX_INTERFACE": sim_nic.name, "AIOZCRX_QUEUES": "0-3", "AIOZCRX_ENGINE": "zcrx",
                  "AIOZCRX_AREA_SIZE": "16M", "AIOZCRX_RQ_ENTRIES": "4096"})
    try:
        assert sorted(bound_queues(sim_nic.name)) == ZC_QUEUES
        check(uploads_in(sim_nic.peer_ns, sim_nic.addr, steered, count, size), size)
        stats = g.fresh_stats()
        for s in stats.values():
            # (the reason may note the wake-up path; no engine was passed over)
            assert s["engine"] == "zcrx" and "zcrx:" not in s["fallback_reason"], s
            assert s["queue"] == ZC_QUEUES[s["worker"]] and s["pinned_bytes"] == 16 << 20, s
            # the kernel copied nothing (every byte was placed in the area by the
            # NIC); gunicorn's protocol takes bytes: one copy in user space, counted
            assert s["kernel_copy_bytes"] == 0 and s["bytes_zero_copy"] + s["user_copy_bytes"] == s["bytes"], s
            assert s["unowned"] == 0 and s["handoff_rejected"] == 0, s
        assert sum(s["served"] for s in stats.values()) == count
        assert sum(s["handed_over"] for s in stats.values()) == sum(s["handed_in"] for s in stats.values())
        assert sum(s["bytes"] for s in stats.values()) >= count * size

        # HUP: each new worker waits for the old one on its queue to exit, then
        # registers the queue again; every queue ends up bound to a new worker
        old = set(stats)
        g.proc.send_signal(signal.SIGHUP)
        new = wait_until(lambda: len(r := g.ready()) == 4 and not set(r) & old and r, "4 new workers")
        assert sorted(s["queue"] for s in new.values()) == ZC_QUEUES
        assert sorted(bound_queues(sim_nic.name)) == ZC_QUEUES
        answers = check(uploads_in(sim_nic.peer_ns, sim_nic.addr, steered, 16, 256 << 10), 256 << 10)
        assert {a["pid"] for a in answers} <= set(new)
        for s in g.fresh_stats().values():
            assert s["engine"] == "zcrx" and s["kernel_copy_bytes"] == 0, s

        # a worker killed: gunicorn's replacement takes the queue it freed (once the
        # kernel has unbound it) and serves it zero copy; the others are untouched
        victim = next(pid for pid, s in new.items() if s["queue"] == 2)
        os.kill(victim, signal.SIGKILL)
        after = wait_until(lambda: len(r := g.ready()) == 4 and victim not in r and r, "the replacement")
        assert set(after) - {victim} >= set(new) - {victim}
        assert {s["queue"] for pid, s in after.items() if pid not in new} == {2}
        assert sorted(bound_queues(sim_nic.name)) == ZC_QUEUES
        check(uploads_in(sim_nic.peer_ns, sim_nic.addr, steered, 16, 256 << 10), 256 << 10)
        for s in g.fresh_stats().values():
            assert s["engine"] == "zcrx" and s["kernel_copy_bytes"] == 0, s
    finally:
        rc = g.stop()
    assert rc == 0, g.output()
    wait_until(lambda: bound_queues(sim_nic.name) == [], "every queue to be released")
    doctor_says_free(sim_nic.name, steered)


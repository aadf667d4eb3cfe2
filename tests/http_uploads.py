"""HTTP uploads for the worker tests (tests/test_gunicorn.py, tests/test_workers.py):
POSTs of a known body, each on its own connection, to the ASGI app of
tests/workers_app.py, which answers with the length and sha256 it received and
the worker's identity; ``check`` holds each answer against what was sent.
``uploads_in`` runs the uploads from another network namespace (the simulated
NIC's peer): this file as a script, ``python http_uploads.py SPEC``."""

from __future__ import annotations

import concurrent.futures
import hashlib
import http.client
import json
import os
import subprocess
import sys

NOBODY = 65534
CEILING = 600.0  # only turns a hang into a failure
CHUNK = 1 << 20


def body_of(i: int, size: int) -> bytes:
    """Upload ``i``'s body: distinct per upload, cheap to make at 16 MiB."""
    seed = hashlib.sha256(f"{i}".encode()).digest()
    return (seed * (CHUNK // len(seed)))[:CHUNK] * (size // CHUNK) + os.urandom(size % CHUNK)


def upload(host: str, port: int, i: int, size: int) -> dict:
    """One POST on a new connection; the answer, and the sha256 of what was sent."""
    body = body_of(i, size)
    conn = http.client.HTTPConnection(host, port, timeout=CEILING)
    try:
        conn.request("POST", "/", body=body, headers={"Connection": "close"})
        resp = conn.getresponse()
        data = resp.read()
        return {"i": i, "status": resp.status, "sha256": hashlib.sha256(body).hexdigest(),
                "answer": json.loads(data) if resp.status == 200 else data.decode(errors="replace")}
    finally:
        conn.close()


def uploads(host: str, port: int, count: int, size: int, parallel: int = 8) -> list[dict]:
    with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
        return list(pool.map(lambda i: upload(host, port, i, size), range(count)))


def uploads_in(netns: str, host: str, port: int, count: int, size: int) -> list[dict]:
    """``uploads`` run in network namespace ``netns`` (this file as a script there)."""
    spec = json.dumps({"host": host, "port": port, "count": count, "size": size})
    out = subprocess.run(["ip", "netns", "exec", netns, sys.executable, os.path.abspath(__file__), spec],
                         capture_output=True, text=True, timeout=CEILING)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


def check(res: list[dict], size: int) -> list[dict]:
    """Every upload answered 200 with its own length and sha256, by a worker that
    runs as nobody with no capability and whose own zcrx registration was refused."""
    for r in res:
        assert r["status"] == 200, r
        a = r["answer"]
        assert a["n"] == size and a["sha256"] == r["sha256"], (r["i"], a)
        assert a["uid"] == NOBODY and a["gid"] == NOBODY and a["cap_eff"] == 0, a
        assert a["register"].startswith("ZcrxUnavailable: errno=1:") and "CAP_NET_ADMIN" in a["register"], a
    return [r["answer"] for r in res]


if __name__ == "__main__":
    p = json.loads(sys.argv[1])
    print(json.dumps(uploads(p["host"], p["port"], p["count"], p["size"])), flush=True)

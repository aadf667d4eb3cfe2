"""What `aiozcrx recv --verify` costs: the same loopback transfer with and without it.

Each run starts `aiozcrx recv` (as a subprocess, on an ephemeral port) and
`aiozcrx send --mib N` against it, and reads the receive rate recv prints
("received B bytes in T s = R GB/s"). Runs alternate plain / --verify so both
see the same machine load; the table gives the median per mode and the ratio.

Usage:
    .venv/bin/python benchmarks/cli_verify.py                 # 256 MiB, 3 runs per mode
    .venv/bin/python benchmarks/cli_verify.py --mib 64 --repeat 1 --engine socket
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys

RATE = re.compile(r"received (\d+) bytes in ([0-9.]+) s = ([0-9.]+) GB/s")


def one_run(mib: int, engine: str, verify: bool) -> tuple[float, float]:
    """Seconds and GB/s of one transfer as recv reports them."""
    cmd = [sys.executable, "-m", "aiozcrx", "recv", "--host", "127.0.0.1", "--port", "0",
           "--engine", engine]
    if verify:
        cmd.append("--verify")
    recv = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert recv.stdout is not None
        recv.stdout.readline()  # engine: ...
        line = recv.stdout.readline()
        m = re.search(r"listening on .*:(\d+)", line)
        if not m:
            raise RuntimeError(f"recv did not start: {line!r} {recv.stderr.read() if recv.stderr else ''}")
        send = subprocess.run([sys.executable, "-m", "aiozcrx", "send", "--host", "127.0.0.1",
                               "--port", m.group(1), "--mib", str(mib)],
                              capture_output=True, text=True, timeout=600)
        if send.returncode:
            raise RuntimeError(f"send failed: {send.stderr.strip()}")
        out, err = recv.communicate(timeout=600)
    finally:
        if recv.poll() is None:
            recv.kill()
            recv.wait()
    if recv.returncode:
        raise RuntimeError(f"recv exited {recv.returncode}: {err.strip()}")
    m = RATE.search(out)
    if not m:
        raise RuntimeError(f"no rate in recv's output: {out!r}")
    if verify and "verify: OK" not in out:
        raise RuntimeError(f"--verify did not say OK: {out!r}")
    return float(m.group(2)), float(m.group(3))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--engine", default="auto")
    args = ap.parse_args()
    runs: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    for _ in range(args.repeat):
        for verify in (False, True):
            runs[verify].append(one_run(args.mib, args.engine, verify))
    plain = statistics.median(r for _, r in runs[False])
    checked = statistics.median(r for _, r in runs[True])
    print(f"| recv ({args.mib} MiB, engine {args.engine}) | GB/s (median of {args.repeat}) | s |")
    print("|---|---|---|")
    for verify, label in ((False, "plain"), (True, "--verify")):
        secs = statistics.median(s for s, _ in runs[verify])
        rate = statistics.median(r for _, r in runs[verify])
        print(f"| {label} | {rate:.2f} | {secs:.3f} |")
    print(f"\n--verify receives at {checked / plain:.2f}x the plain rate "
          f"({plain / checked:.1f}x slower)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

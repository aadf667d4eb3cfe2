"""The bulk comparison inside the User-Mode Linux 7.x guest, where engine zcrx-copy works.

    .venv/bin/python benchmarks/guest.py                  # 5 rounds x 2 s
    .venv/bin/python benchmarks/guest.py --rounds 7 --seconds 3

Runs ``benchmarks/run.py --no-write --summary-json`` inside ``tests/uml/run-in-guest.sh``
with uvloop Protocol, uvloop BufferedProtocol and aiozcrx engines zcrx-copy and uring
on uvloop, prints the guest's table, and checks the target from the issue:
engine zcrx-copy's **user-space** CPU s/GB <= 0.5 x uvloop's **total** (user+sys)
receiver CPU s/GB, both from the same guest run (the better of uvloop's two
protocols is the reference). The guest has one CPU: sender and receiver share
it, so GB/s there is not comparable with the host's; CPU s/GB is.

User space, measured: User-Mode Linux's getrusage books the guest kernel's work
as *user* time, so the user column cannot say what is left once a NIC removes the
copy. ``run.py --kernel-split`` measures instead, with the exact per-thread CPU
clock, the CPU spent inside every io_uring syscall aiozcrx makes (enter, eventfd
read, refill flush: where the kernel receives and copies for us) and reports the
process's total CPU minus that. What remains is our user space plus the event
loop's epoll_wait and anything else the kernel did outside those syscalls, so it
overstates our share, never understates it.
Then, with ``tests/uml/run-in-guest.sh --nic``, the same variants plus engine
**zcrx on a NIC queue** (the simulated NIC, `aiozcrx nic setup` first) all receive
over the simulated NIC from a sender in the peer's network namespace: zcrx-copy
and zcrx side by side on the same path (``--no-nic`` skips this table).
``--rx-buf-len`` runs only the large receive buffer table: engine zcrx on the
simulated NIC with 4 KiB buffers and ``rx_buf_len`` 16/32/64 KiB, uvloop
BufferedProtocol beside them (completions per GB, CPU outside the io_uring
syscalls and total, each paired per round), e.g.
``benchmarks/guest.py --rx-buf-len --rounds 7 --seconds 3``.
Exit status: 0 target met, 1 not met, 77 guest unavailable (reason printed).

``--merged`` measures merged views instead (issue 22, docs/benchmarks.md "Merged
views"): over the simulated NIC, uvloop BufferedProtocol, engine zcrx with its
defaults (merged views, refills published in descending order), with
``max_view=4096`` (one view per completion: the build before merged views) and
with refills left in release order, interleaved per round; then the same for
zcrx-copy in the guest without the NIC. Reports bytes per ``data_received``,
completions per GB, CPU s/GB outside the io_uring syscalls and total, medians
(min-max), and the issue's targets for merged views:

    .venv/bin/python benchmarks/guest.py --merged --rounds 7 --seconds 2
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RUNNER = os.path.join(ROOT, "tests", "uml", "run-in-guest.sh")
VARIANTS = "uvloop-protocol,uvloop-buffered,aiozcrx-zcrx-copy-uvloop,aiozcrx-uring-uvloop"
NIC_VARIANTS = VARIANTS + ",aiozcrx-zcrx-uvloop"
NIC_PORT, NIC_QUEUE = 9300, 1


def run_guest(rounds: int, seconds: float, only: str = VARIANTS) -> tuple[int, str]:
    """Runs the guest comparison; (status, report text). Status: 0 target (c) met,
    1 not met, 2 the run failed, 77 no guest here (the text says why)."""
    chk = subprocess.run([RUNNER, "--check"], capture_output=True, text=True, cwd=ROOT)
    if chk.returncode != 0:
        return 77, f"guest benchmark not run: {(chk.stdout + chk.stderr).strip()}"
    inner = (f"{shlex.quote(sys.executable)} benchmarks/run.py --no-write --summary-json --kernel-split "
             f"--rounds {rounds} --seconds {seconds} --only {only}")
    timeout = int(rounds * len(only.split(",")) * (seconds + 15) + 120)
    out = subprocess.run([RUNNER, "--timeout", str(timeout), "--", inner], cwd=ROOT,
                         capture_output=True, text=True)
    summary = None
    lines = []
    for line in out.stdout.splitlines():
        if line.startswith("SUMMARY-JSON "):
            summary = json.loads(line[len("SUMMARY-JSON "):])
        elif not line.startswith("  round "):
            lines.append(line)
    if out.returncode != 0 or summary is None:
        return 2, f"guest run failed (status {out.returncode}):\n{out.stdout[-3000:]}{out.stderr[-2000:]}"
    zc = summary.get("aiozcrx-zcrx-copy-uvloop", {})
    refs = {n: summary[n]["total"] for n in ("uvloop-buffered", "uvloop-protocol")
            if n in summary and "total" in summary[n]}
    if "outside_syscalls" not in zc or not refs:
        lines.append(f"\ntarget (c) not evaluated: zcrx-copy {zc.get('skipped', 'missing')}, uvloop refs {refs}")
        return 2, "\n".join(lines)
    ref_name, ref = min(refs.items(), key=lambda kv: kv[1])
    ours = zc["outside_syscalls"]
    ratio = ours / ref
    met = ratio <= 0.5
    lines.append(f"\ntarget (c): zcrx-copy user space {ours:.3f} s/GB (total {zc['total']:.3f} minus the "
                 f"kernel's work inside our io_uring syscalls) vs {ref_name} total {ref:.3f} s/GB "
                 f"= {ratio:.2f}x (target <= 0.50x): {'MET' if met else 'NOT MET'}")
    return (0 if met else 1), "\n".join(lines)


def _run_on_nic(only: str, rounds: int, seconds: float) -> subprocess.CompletedProcess:
    """benchmarks/run.py over the simulated NIC in the guest (its queue set up for
    the port first), the variants ``only``, rounds interleaved."""
    py = shlex.quote(sys.executable)
    inner = (f"{py} -m aiozcrx nic setup -i $AIOZCRX_NIC -q {NIC_QUEUE} -p {NIC_PORT} --flow-type tcp4 "
             f">/dev/null && AIOZCRX_BENCH_PORT={NIC_PORT} AIOZCRX_BENCH_QUEUE={NIC_QUEUE} "
             f"{py} benchmarks/run.py --nic --no-write --summary-json --kernel-split "
             f"--rounds {rounds} --seconds {seconds} --only {only}")
    timeout = int(rounds * len(only.split(",")) * (seconds + 20) + 180)
    out = subprocess.run([RUNNER, "--nic", "--timeout", str(timeout), "--", inner], cwd=ROOT,
                         capture_output=True, text=True)
    return out


def run_guest_nic(rounds: int, seconds: float, only: str = NIC_VARIANTS) -> tuple[int, str]:
    """The variants over the simulated NIC, engine zcrx included; (status, text).
    Status: 0 ran, 2 the run failed, 77 no simulated NIC here."""
    chk = subprocess.run([RUNNER, "--nic", "--check"], capture_output=True, text=True, cwd=ROOT)
    if chk.returncode != 0:
        return 77, f"NIC benchmark not run: {(chk.stdout + chk.stderr).strip()}"
    out = _run_on_nic(only, rounds, seconds)
    lines = [ln for ln in out.stdout.splitlines()
             if not ln.startswith(("  round ", "SUMMARY-JSON "))]
    if out.returncode != 0 or not any(ln.startswith("SUMMARY-JSON ") for ln in out.stdout.splitlines()):
        return 2, f"NIC run failed (status {out.returncode}):\n{out.stdout[-3000:]}{out.stderr[-2000:]}"
    return 0, "\n".join(lines)


MERGED_NIC = "uvloop-buffered,aiozcrx-zcrx-uvloop,aiozcrx-zcrx-unmerged-uvloop,aiozcrx-zcrx-unordered-uvloop"
MERGED_COPY = ("uvloop-buffered,aiozcrx-zcrx-copy-uvloop,aiozcrx-zcrx-copy-unmerged-uvloop,"
               "aiozcrx-zcrx-copy-unordered-uvloop")


def _summary(stdout: str) -> dict | None:
    for line in stdout.splitlines():
        if line.startswith("SUMMARY-JSON "):
            return json.loads(line[len("SUMMARY-JSON "):])
    return None


def _cell(s: dict, key: str, fmt: str) -> str:
    if key not in s:
        return "n/a"
    lo, hi = s["ranges"][key]
    return f"{format(s[key], fmt)} ({format(lo, fmt)}-{format(hi, fmt)})"


def merged_table(summary: dict, order: str, ref: str = "uvloop-buffered") -> str:
    from common import EXTRA_VARIANTS, VARIANTS  # benchmarks/ is sys.path[0]: the labels
    labels = {v[0]: v[1] for v in VARIANTS + EXTRA_VARIANTS}
    lines = ["| receiver | bytes per data_received | completions per GB | CPU s/GB outside io_uring "
             "syscalls | CPU s/GB total | total vs uvloop Buffered |", "|---|---|---|---|---|---|"]
    ref_total = summary.get(ref, {}).get("total")
    for name in order.split(","):
        s = summary.get(name, {})
        label = labels[name]
        if "total" not in s:
            lines.append(f"| {label} | not run: {s.get('skipped', 'missing')} | | | | |")
            continue
        ratio = f"{s['total'] / ref_total:.2f}" if ref_total else "n/a"
        lines.append(f"| {label} | {_cell(s, 'bytes_per_call_runs', '.0f')} | "
                     f"{_cell(s, 'completions_per_gb', '.0f')} | {_cell(s, 'outside_syscalls', '.3f')} | "
                     f"{_cell(s, 'total', '.3f')} | {ratio} |")
    return "\n".join(lines)


def merged_targets(summary: dict, merged: str, unmerged: str) -> list[str]:
    m, u = summary.get(merged, {}), summary.get(unmerged, {})
    if "total" not in m or "total" not in u:
        return ["targets not evaluated: a variant did not run"]
    out = [f"- merged >= 32 KiB per data_received: {m['bytes_per_call_runs']:.0f} B: "
           f"{'MET' if m['bytes_per_call_runs'] >= 32768 else 'NOT MET'}"]
    if "outside_syscalls" in m:
        out.append(f"- merged CPU outside io_uring syscalls <= 0.035 s/GB: {m['outside_syscalls']:.3f}: "
                   f"{'MET' if m['outside_syscalls'] <= 0.035 else 'NOT MET'}")
    ratio = m["total"] / u["total"]
    out.append(f"- merged total <= 0.93x unmerged (max_view=4096, the build before): {ratio:.2f}x: "
               f"{'MET' if ratio <= 0.93 else 'NOT MET'}")
    # per round (the rounds interleave the variants: a busy host slows a round's
    # variants alike), merged / unmerged
    for key in ("total", "outside_syscalls"):
        a, b = m.get("rounds", {}).get(key, []), u.get("rounds", {}).get(key, [])
        if a and len(a) == len(b):
            r = sorted(x / y for x, y in zip(a, b))
            out.append(f"- paired per round, merged / unmerged CPU {key}: median {r[len(r) // 2]:.2f}x "
                       f"({r[0]:.2f}-{r[-1]:.2f})")
    ref = summary.get("uvloop-buffered", {}).get("total")
    if ref:
        r = m["total"] / ref
        out.append(f"- merged total <= 0.33x uvloop BufferedProtocol: {r:.2f}x: {'MET' if r <= 0.33 else 'NOT MET'}")
    return out


def run_merged(rounds: int, seconds: float) -> int:
    """guest.py --merged: the NIC table, then the zcrx-copy one; status 0 ran, 2 failed, 77 no guest."""
    chk = subprocess.run([RUNNER, "--nic", "--check"], capture_output=True, text=True, cwd=ROOT)
    if chk.returncode != 0:
        print(f"merged-views benchmark not run: {(chk.stdout + chk.stderr).strip()}")
        return 77
    py = shlex.quote(sys.executable)
    status = 0
    for title, only, nic in (("Over the simulated NIC (engine zcrx on queue 1)", MERGED_NIC, True),
                             ("In the guest over loopback (engine zcrx-copy)", MERGED_COPY, False)):
        bench = (f"{py} benchmarks/run.py --no-write --summary-json --kernel-split "
                 f"--rounds {rounds} --seconds {seconds} --only {only}")
        if nic:
            inner = (f"{py} -m aiozcrx nic setup -i $AIOZCRX_NIC -q {NIC_QUEUE} -p {NIC_PORT} "
                     f"--flow-type tcp4 >/dev/null && AIOZCRX_BENCH_PORT={NIC_PORT} "
                     f"AIOZCRX_BENCH_QUEUE={NIC_QUEUE} {bench} --nic")
        else:
            inner = bench
        timeout = int(rounds * len(only.split(",")) * (seconds + 20) + 180)
        cmd = [RUNNER] + (["--nic"] if nic else []) + ["--timeout", str(timeout), "--", inner]
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        summary = _summary(out.stdout)
        print(f"\n{title}: {rounds} rounds x {seconds:g} s, interleaved; medians (min-max)\n")
        if out.returncode != 0 or summary is None:
            print(f"run failed (status {out.returncode}):\n{out.stdout[-3000:]}{out.stderr[-2000:]}")
            status = 2
            continue
        print(merged_table(summary, only))
        names = only.split(",")
        print()
        print("\n".join(merged_targets(summary, names[1], names[2])))
    return status


# ----------------------------------------------------------- large receive buffers
RX_BUF_VARIANTS = ("uvloop-buffered,aiozcrx-zcrx-uvloop,aiozcrx-zcrx-16k-uvloop,"
                   "aiozcrx-zcrx-32k-uvloop,aiozcrx-zcrx-64k-uvloop")


def _paired(a: list[float], b: list[float]) -> list[float]:
    """Per-round ratios a[i] / b[i] (rounds interleave the variants: round i of
    each ran back to back); empty when a round failed on either side."""
    return [x / y for x, y in zip(a, b) if y > 0] if len(a) == len(b) else []


def _med(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2] if len(s) % 2 else (s[len(s) // 2 - 1] + s[len(s) // 2]) / 2


def _rng(xs: list[float], fmt: str) -> str:
    if not xs:
        return "n/a"
    return f"{_med(xs):{fmt}} ({min(xs):{fmt}}-{max(xs):{fmt}})"


def rx_buf_len_table(summary: dict) -> tuple[str, list[str]]:
    """The large-buffer table from run.py's summary, and the targets' verdicts."""
    ref = summary.get("uvloop-buffered", {})
    base = summary.get("aiozcrx-zcrx-uvloop", {})
    rows = ["| receiver | rx_buf_len granted | completions per GB | bytes per call | CPU s/GB outside "
            "io_uring syscalls | CPU s/GB total | total vs 4 KiB (paired) | total vs uvloop Buffered (paired) |",
            "|---|---|---|---|---|---|---|---|"]
    names = ["uvloop-buffered", "aiozcrx-zcrx-uvloop", "aiozcrx-zcrx-16k-uvloop",
             "aiozcrx-zcrx-32k-uvloop", "aiozcrx-zcrx-64k-uvloop"]
    labels = {"uvloop-buffered": "uvloop BufferedProtocol 256 KiB", "aiozcrx-zcrx-uvloop": "aiozcrx zcrx, 4 KiB",
              "aiozcrx-zcrx-16k-uvloop": "aiozcrx zcrx, 16 KiB", "aiozcrx-zcrx-32k-uvloop": "aiozcrx zcrx, 32 KiB",
              "aiozcrx-zcrx-64k-uvloop": "aiozcrx zcrx, 64 KiB"}
    for name in names:
        s = summary.get(name)
        if s is None:
            continue
        if "skipped" in s:
            rows.append(f"| {labels[name]} | not run: {s['skipped']} | | | | | | |")
            continue
        vs_base = _paired(s["total_runs"], base.get("total_runs", [])) if name.startswith("aiozcrx") else []
        vs_ref = _paired(s["total_runs"], ref.get("total_runs", [])) if name != "uvloop-buffered" else []
        rows.append(f"| {labels[name]} | {s.get('rx_buf_len') or '-'} | "
                    f"{_rng(s.get('completions_per_gb_runs', []), ',.0f')} | {s.get('bytes_per_call', 0):,.0f} | "
                    f"{_rng(s.get('outside_syscalls_runs', []), '.3f')} | {_rng(s['total_runs'], '.3f')} | "
                    f"{_rng(vs_base, '.2f') if name != 'aiozcrx-zcrx-uvloop' and vs_base else '-'} | "
                    f"{_rng(vs_ref, '.2f') if vs_ref else '-'} |")
    verdicts = []
    k32 = summary.get("aiozcrx-zcrx-32k-uvloop", {})
    if k32.get("completions_per_gb_runs"):
        c = _med(k32["completions_per_gb_runs"])
        verdicts.append(f"32 KiB completions per GB: median {c:,.0f} (target <= 35,000): "
                        f"{'MET' if c <= 35000 else 'NOT MET'}")
        r = _paired(k32["total_runs"], base.get("total_runs", []))
        if r:
            m = _med(r)
            verdicts.append(f"32 KiB total CPU vs 4 KiB, paired per round: median {m:.2f}x (target <= 0.80x): "
                            f"{'MET' if m <= 0.8 else 'NOT MET'}")
        r = _paired(k32["total_runs"], ref.get("total_runs", []))
        if r:
            m = _med(r)
            verdicts.append(f"32 KiB total CPU vs uvloop BufferedProtocol, paired per round: median {m:.2f}x "
                            f"(target <= 0.33x): {'MET' if m <= 0.33 else 'NOT MET'}")
    return "\n".join(rows), verdicts


def run_guest_rx_buf_len(rounds: int, seconds: float) -> tuple[int, str]:
    """Engine zcrx on the simulated NIC with 4 KiB buffers and rx_buf_len 16/32/64
    KiB, uvloop BufferedProtocol beside them, rounds interleaved; (status, text).
    Status: 0 ran, 2 the run failed, 77 no simulated NIC here."""
    chk = subprocess.run([RUNNER, "--nic", "--check"], capture_output=True, text=True, cwd=ROOT)
    if chk.returncode != 0:
        return 77, f"rx_buf_len benchmark not run: {(chk.stdout + chk.stderr).strip()}"
    out = _run_on_nic(RX_BUF_VARIANTS, rounds, seconds)
    summary = None
    for line in out.stdout.splitlines():
        if line.startswith("SUMMARY-JSON "):
            summary = json.loads(line[len("SUMMARY-JSON "):])
            print(line, file=sys.stderr)  # the raw numbers, for the record
    if out.returncode != 0 or summary is None:
        return 2, f"rx_buf_len run failed (status {out.returncode}):\n{out.stdout[-3000:]}{out.stderr[-2000:]}"
    text, verdicts = rx_buf_len_table(summary)
    return 0, text + "\n\n" + "\n".join(verdicts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--only", default=VARIANTS)
    ap.add_argument("--no-nic", action="store_true", help="skip the table over the simulated NIC")
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 round x 0.5 s (the guest boots twice)")
    ap.add_argument("--merged", action="store_true",
                    help="merged views: zcrx with and without them, refill order, beside uvloop BufferedProtocol")
    ap.add_argument("--rx-buf-len", action="store_true",
                    help="only the large receive buffer table (simulated NIC: 4 KiB vs rx_buf_len "
                         "16/32/64 KiB, uvloop BufferedProtocol beside)")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.seconds = 1, 0.5
    if args.merged:
        return run_merged(args.rounds, args.seconds)
    if args.rx_buf_len:
        status, text = run_guest_rx_buf_len(args.rounds, args.seconds)
        print(text)
        return status
    status, text = run_guest(args.rounds, args.seconds, args.only)
    print(text)
    if not args.no_nic:
        nic_status, nic_text = run_guest_nic(args.rounds, args.seconds)
        print("\nOver the simulated NIC (run-in-guest.sh --nic; sender in the peer namespace):")
        print(nic_text)
        if nic_status == 2 and status == 0:
            status = 2
    return status


if __name__ == "__main__":
    sys.exit(main())

"""``aiozcrx doctor``: can ``engine="zcrx"`` work here, and if not, what fixes it.

One screen of checks, each PASS / WARN / FAIL with the command that fixes it:

* system: kernel release and zcrx features, ``kernel.io_uring_disabled``,
  seccomp, CAP_NET_ADMIN, RLIMIT_MEMLOCK;
* interface (``--interface``): driver and queue API, channels, header/data
  split and hds-thresh, RSS table and contexts, ntuple rules and where
  ``--port`` lands, whether ``--queue`` is already bound to a memory provider;
  with ``--queues A-B`` instead: the port's RSS context holds exactly A..B, the
  main table none of them, a rule per flow type, and each queue's NAPI id and
  binding (``queues_checks``);
* the engine ``auto`` picks here and why (from :mod:`aiozcrx.tools.probe`).

Exit status 0 only when ``engine="zcrx"`` can work on (interface, queue):
no FAIL, and the core probe says zcrx works.

Facts are gathered first (``gather_*``), then judged by pure functions
(``system_checks``, ``interface_checks``), so the judgement is tested without
the machine it judges.

A fix is only suggested where this run found nothing that rules it out: once the
NIC is found unable to host zcrx (no queue API, no header/data split, no flow
steering, a single queue), configuration commands (``ethtool``, ``aiozcrx nic
setup``) are not offered for it, and the other engines are suggested only where
the probes found them working (``engine='zcrx-copy'`` needs NODEV, ``'uring'`` a
usable io_uring).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
from dataclasses import asdict, dataclass
from typing import Any

from ..config import NIC_AREA_SIZE
from . import ethtool as et
from . import nic as _nic
from .sysinfo import kernel_config_option, parse_release, read_int, read_proc_status

PASS, WARN, FAIL, INFO = "PASS", "WARN", "FAIL", "INFO"

CAP_NET_ADMIN = 12
CAP_IPC_LOCK = 14
CAP_SYS_ADMIN = 21

# kernel version -> what zcrx gained (KERNEL-NOTES.md, "Kernel versions")
ZCRX_FEATURES_BY_VERSION = [
    ((6, 15), "zcrx"),
    ((6, 16), "dmabuf areas, several ifqs per ring"),
    ((6, 18), "CQE_MIXED, IORING_REGISTER_QUERY"),
    ((6, 19), "QUERY_ZCRX, ZCRX_CTRL (flush, export/import)"),
    ((7, 0), "rx_buf_len"),
    ((7, 1), "ZCRX_REG_NODEV"),
    ((7, 2), "notifications (no buffers, copy fallback)"),
]


@dataclass
class Check:
    section: str
    name: str
    status: str
    detail: str
    fix: str = ""


# --------------------------------------------------------------------------
# facts (the readers of /proc, /sys and /boot are in sysinfo.py)
# --------------------------------------------------------------------------
def core_not_loaded(exc: BaseException) -> str:
    """The line for the probes doctor cannot run without the compiled core."""
    reason = f"{type(exc).__name__}: {exc}" if not isinstance(exc, ImportError) else str(exc)
    return f"not checked: the compiled core could not be loaded ({reason})"


def probe_core(interface: str | None, queue: int | None) -> dict[str, Any]:
    """What the core library says: ``{"available", "error", "kernel",
    "engine", "engine_error", "tried"}``. Imported lazily: doctor must work
    without it (``available`` False, ``error`` says why: the io_uring/zcrx
    probes are then "not checked")."""
    out: dict[str, Any] = {"available": False, "error": None, "kernel": None,
                           "engine": None, "engine_error": None, "tried": []}
    try:
        from . import probe  # noqa: PLC0415 - loads no compiled code itself
        load_core = probe.load_core
        kernel_report, choose_engine = probe.kernel_report, probe.choose_engine
    except (ImportError, AttributeError) as exc:
        out["error"] = f"core probe unavailable ({type(exc).__name__}: {exc})"
        return out
    try:
        load_core()
    except Exception as exc:  # noqa: BLE001 - ImportError, or a broken build
        out["error"] = core_not_loaded(exc)
        return out
    try:
        out["kernel"] = dict(kernel_report())
        out["available"] = True
    except Exception as exc:  # noqa: BLE001 - report, never crash the doctor
        out["error"] = f"core probe failed ({type(exc).__name__}: {exc})"
        return out
    try:
        engine, tried = choose_engine(interface, queue)
        out["engine"] = engine
        out["tried"] = [list(t) for t in tried]
    except Exception as exc:  # noqa: BLE001 - e.g. ValueError: queue out of range
        out["engine_error"] = f"{type(exc).__name__}: {exc}"
    return out


def gather_system() -> dict[str, Any]:
    release = platform.release()
    status = read_proc_status()
    soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    return {
        "release": release,
        "io_uring_disabled": read_int("/proc/sys/kernel/io_uring_disabled"),
        "io_uring_group": read_int("/proc/sys/kernel/io_uring_group"),
        "groups": sorted(set(os.getgroups()) | {os.getegid()}),
        "seccomp": status.get("Seccomp"),
        "cap_eff": int(status["CapEff"], 16) if "CapEff" in status else None,
        "memlock": [soft, hard],
        "config_zcrx": kernel_config_option("CONFIG_IO_URING_ZCRX", release),
    }


# --------------------------------------------------------------------------
# judgement (pure)
# --------------------------------------------------------------------------
def _fmt_bytes(n: float) -> str:
    if n == resource.RLIM_INFINITY or n < 0:
        return "unlimited"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}".replace(".0 ", " ")
        n /= 1024
    return str(n)


def _has_cap(cap_eff: int | None, bit: int) -> bool | None:
    return None if cap_eff is None else bool(cap_eff >> bit & 1)


def system_checks(sysf: dict[str, Any], core: dict[str, Any]) -> list[Check]:
    out: list[Check] = []
    S = "system"
    rel = sysf["release"]
    ver = parse_release(rel)
    gained = [f"{v[0]}.{v[1]}: {what}" for v, what in ZCRX_FEATURES_BY_VERSION if ver >= v]
    kr = core.get("kernel") or {}
    bits = []
    if core.get("available"):
        if kr.get("io_uring") is False:
            out.append(Check(S, "kernel", FAIL,
                             f"{rel}: cannot create an io_uring ({kr.get('reason', '')})",
                             "sysctl -w kernel.io_uring_disabled=0 (or see the seccomp check)"))
        q = kr.get("zcrx_query")
        bits.append("zcrx query: " + (json.dumps(q, sort_keys=True) if q else "not supported"))
        bits.append("NODEV: " + ("available" if kr.get("zcrx_nodev") else "not available"))
    else:
        bits.append(core.get("error") or "core probe unavailable")
    cfg = sysf.get("config_zcrx")
    bits.append({"y": "CONFIG_IO_URING_ZCRX=y", "n": "CONFIG_IO_URING_ZCRX is not set",
                 None: "kernel config not readable"}.get(cfg, f"CONFIG_IO_URING_ZCRX={cfg}"))
    detail = f"{rel}; by version: " + (f"zcrx, features up to {gained[-1]}" if gained else
                                        "no zcrx (needs 6.15+)") + "; " + "; ".join(bits)
    if not any(c.name == "kernel" for c in out):
        if ver < (6, 15) or cfg == "n":
            out.append(Check(S, "kernel", FAIL, detail,
                             "boot a kernel >= 6.15 built with CONFIG_IO_URING_ZCRX=y"))
        elif not core.get("available"):
            out.append(Check(S, "kernel", WARN, detail,
                             "build/install the aiozcrx core, then rerun (python -m aiozcrx.tools.probe)"))
        else:
            out.append(Check(S, "kernel", PASS, detail))

    if core.get("available") and kr.get("eventfd_wake"):
        # the eventfd's timing decides how the ring engines wake (engines/wake.py):
        # never a failure, but where it is late the socket path must be in use
        late = kr.get("eventfd_inline") is False
        path = kr.get("wake", "?")
        out.append(Check(S, "wake-ups", WARN if late and path != "socket" else PASS,
                         f"the ring's eventfd is {kr['eventfd_wake']}; ring engines wake on "
                         f"{'the sockets' if path == 'socket' else 'the eventfd'} "
                         f"({kr.get('wake_reason', '')})",
                         "unset AIOZCRX_WAKE (or set it to socket): the eventfd path is "
                         "12-20 ms late on this kernel" if late and path != "socket" else ""))

    dis = sysf.get("io_uring_disabled")
    if dis is None:
        out.append(Check(S, "io_uring_disabled", PASS,
                         "sysctl absent (kernel < 6.6): io_uring is enabled"))
    elif dis == 0:
        out.append(Check(S, "io_uring_disabled", PASS, "kernel.io_uring_disabled = 0"))
    elif dis == 1:
        grp = sysf.get("io_uring_group")
        in_group = grp is not None and grp in sysf.get("groups", [])
        admin = _has_cap(sysf.get("cap_eff"), CAP_SYS_ADMIN)
        ok = in_group or admin
        out.append(Check(S, "io_uring_disabled", PASS if ok else FAIL,
                         f"kernel.io_uring_disabled = 1: only CAP_SYS_ADMIN or group "
                         f"{grp} may create rings; this process "
                         f"{'may' if ok else 'may not'}",
                         "" if ok else "sysctl -w kernel.io_uring_disabled=0 "
                         f"(or add the user to group {grp})"))
    else:
        out.append(Check(S, "io_uring_disabled", FAIL,
                         f"kernel.io_uring_disabled = {dis}: io_uring is off for everyone",
                         "sysctl -w kernel.io_uring_disabled=0"))

    sec = sysf.get("seccomp")
    if sec in (None, "0"):
        out.append(Check(S, "seccomp", PASS, "no seccomp filter" if sec else "not reported"))
    elif sec == "2":
        out.append(Check(S, "seccomp", WARN,
                         "a seccomp filter is active (container?): it may refuse "
                         "io_uring_setup/io_uring_register with EPERM or ENOSYS",
                         "docker/podman: --security-opt seccomp=<profile allowing io_uring_*>; "
                         "systemd: drop SystemCallFilter for io_uring"))
    else:
        out.append(Check(S, "seccomp", FAIL, f"strict seccomp (mode {sec})",
                         "run outside the strict seccomp sandbox"))

    cap = _has_cap(sysf.get("cap_eff"), CAP_NET_ADMIN)
    if cap is None:
        out.append(Check(S, "CAP_NET_ADMIN", WARN, "CapEff not readable"))
    elif cap:
        out.append(Check(S, "CAP_NET_ADMIN", PASS, "in the effective set"))
    else:
        out.append(Check(S, "CAP_NET_ADMIN", FAIL,
                         "not in the effective set: registering a zcrx queue gives EPERM",
                         "run as root, or grant it: docker --cap-add NET_ADMIN / "
                         "systemd AmbientCapabilities=CAP_NET_ADMIN"))

    soft, hard = sysf["memlock"]
    ipc = _has_cap(sysf.get("cap_eff"), CAP_IPC_LOCK)
    if ipc:
        out.append(Check(S, "RLIMIT_MEMLOCK", PASS,
                         f"soft {_fmt_bytes(soft)}, hard {_fmt_bytes(hard)}; CAP_IPC_LOCK "
                         f"exempts io_uring from the limit"))
    elif soft == resource.RLIM_INFINITY:
        out.append(Check(S, "RLIMIT_MEMLOCK", PASS, "unlimited"))
    else:
        status = WARN if soft < NIC_AREA_SIZE else PASS
        out.append(Check(S, "RLIMIT_MEMLOCK", status,
                         f"soft {_fmt_bytes(soft)}, hard {_fmt_bytes(hard)}: the zcrx area "
                         f"({_fmt_bytes(NIC_AREA_SIZE)} by default on a NIC queue) and rings "
                         f"must fit, else ENOMEM",
                         "" if status == PASS else
                         "ulimit -l unlimited (systemd: LimitMEMLOCK=infinity; "
                         "docker: --ulimit memlock=-1)"))
    return out


def trial_errno(trial: tuple[bool, str] | None) -> str | None:
    """The errno name of a failed trial registration ("EINVAL: ..." -> "EINVAL")."""
    if trial is None or trial[0]:
        return None
    return trial[1].split(":", 1)[0].strip() or None


def other_engines(nodev: bool | None, io_uring: bool | None) -> str:
    """The engines to use instead of a NIC queue, as far as this run found them
    working: ``zcrx-copy`` only where the probe found NODEV, ``uring`` unless the
    probe found io_uring unusable (None: not probed)."""
    names = []
    if nodev:
        names.append("'zcrx-copy'")
    if io_uring is not False:
        names.append("'uring'")
    if not names:
        return "engine='socket' (engine='auto' falls back to it)"
    return "engine=" + " / ".join(names)


def _driver_check(st: _nic.NicState, queue: int | None,
                  trial: tuple[bool, str] | None, alternatives: str = "engine='uring'") -> Check:
    """Whether the queue can take a memory provider: the kernel's answer to a trial
    registration where there is one; the list of known drivers is only a hint."""
    I = "interface"
    drv = st.driver or "unknown"
    where = f"{drv} (from {st.driver_source})"
    hint = (f"a known zcrx driver ({_nic.KNOWN_ZCRX_DRIVERS[drv]})" if st.known_zcrx_driver
            else f"not one of the drivers known to support zcrx ({', '.join(sorted(KNOWN))})")
    no_api_fix = f"use a NIC whose driver has the queue API (bnxt, mlx5, gve, fbnic), or {alternatives}"
    err = trial_errno(trial)
    if trial is not None and trial[0]:
        return Check(I, "driver", PASS, f"{where}: a trial zcrx registration on queue {queue} "
                                        f"succeeded; {hint}")
    if err == "EOPNOTSUPP":
        return Check(I, "driver", FAIL,
                     f"{where}: no queue API: a trial zcrx registration on queue {queue} gave "
                     f"EOPNOTSUPP (no queue management ops or no DMA device); {hint}", no_api_fix)
    if trial is not None and err in ("EINVAL", "EEXIST", "EBUSY", "ERANGE"):
        return Check(I, "driver", PASS,
                     f"{where}: has the queue API (a trial registration on queue {queue} got past "
                     f"it, then {trial[1]}: see the checks below); {hint}")
    if trial is not None:
        return Check(I, "driver", WARN, f"{where}: a trial registration on queue {queue} "
                                        f"failed: {trial[1]}; {hint}")
    # no trial (no --queue, or the core is not loaded): the driver's name is all there is
    if st.known_zcrx_driver:
        return Check(I, "driver", PASS, f"{drv} ({_nic.KNOWN_ZCRX_DRIVERS[drv]}, from "
                                        f"{st.driver_source}): has the queue API zcrx needs "
                                        f"(by name; --queue tries a registration)")
    return Check(I, "driver", FAIL,
                 f"{where}: no queue API: registering a zcrx queue gives EOPNOTSUPP (known zcrx "
                 f"drivers: {', '.join(sorted(KNOWN))}; by name: --queue tries a registration)",
                 no_api_fix)


def interface_checks(st: _nic.NicState, queue: int | None, port: int | None,
                     flow_type: str = "tcp6", release: str = "",
                     trial: tuple[bool, str] | None = None, *,
                     nodev: bool | None = None, io_uring: bool | None = None) -> list[Check]:
    """Judge a NIC snapshot for zcrx on ``queue`` (and ``port``'s steering).

    ``trial``: ``(ok, why)`` of a trial zcrx registration on (interface, queue)
    by the core, where it ran: the kernel's own answer, which overrides what the
    driver's name and its reported settings suggest. ``nodev`` / ``io_uring``:
    whether the core probe found ZCRX_REG_NODEV / a usable io_uring (None: not
    probed); only engines found working are suggested instead of the NIC."""
    if not st.exists:
        return [_no_interface_check(st)]
    alternatives = other_engines(nodev, io_uring)
    out = [_driver_check(st, queue, trial, alternatives),
           _queue_count_check(st, queue, alternatives)]
    setup = (f"aiozcrx nic setup --interface {st.ifname} "
             f"--queue {queue if queue is not None else 'Q'} --port {port if port else 'P'}")
    out += _split_checks(st, trial, setup)
    out.append(_main_table_check(st, [queue] if queue is not None else None))
    out += _ntuple_checks(st)
    out.append(_steering_check(st, queue, port, flow_type))
    out.append(_binding_check(st, queue, release))
    return _without_moot_fixes(out, st.ifname, _blockers(st, out, trial))


def queues_checks(st: _nic.NicState, first: int, last: int, port: int | None,
                  release: str = "", trial: tuple[bool, str] | None = None, *,
                  flow_types: tuple[str, ...] | list[str] = _nic.FLOW_TYPES,
                  nodev: bool | None = None, io_uring: bool | None = None) -> list[Check]:
    """Judge a NIC snapshot for a port spread over zcrx queues ``first..last``
    (``aiozcrx nic setup --queues``): header split on; each queue in the port's
    RSS context and none in the main table; a rule per flow type; and for each
    queue its NAPI id (what SO_INCOMING_NAPI_ID reads on a connection arriving
    there) and whether it is bound to io_uring already. ``trial`` is a trial
    registration on ``first``."""
    if not st.exists:
        return [_no_interface_check(st)]
    queues = list(range(first, last + 1))
    alternatives = other_engines(nodev, io_uring)
    setup = (f"aiozcrx nic setup --interface {st.ifname} --queues {first}-{last} "
             f"--port {port if port else 'P'}")
    out = [_driver_check(st, first, trial, alternatives),
           _range_count_check(st, first, last, setup)]
    out += _split_checks(st, trial, setup)
    out.append(_main_table_check(st, queues))
    out += _ntuple_checks(st)
    if port is None:
        out.append(Check("interface", "RSS context", INFO, _rules_text(st),
                         "pass --port P to check the port's steering"))
    else:
        out.append(_context_check(st, queues, port, flow_types, setup))
        out += [_range_steering_check(st, queues, port, ft, setup) for ft in flow_types]
    out += _queue_lines(st, queues, release)
    return _without_moot_fixes(out, st.ifname, _blockers(st, out, trial))


def _no_interface_check(st: _nic.NicState) -> Check:
    return Check("interface", "interface", FAIL, st.errors.get("interface", f"no {st.ifname}"),
                 "ip -br link  # pick an existing interface")


def _channels_text(st: _nic.NicState) -> str:
    ch = st.channels
    return ("channels: " + ", ".join(f"{k}={v}" for k, v in sorted(ch.items()))
            if ch else f"channels not reported ({st.errors.get('channels', '')}); "
            f"sysfs rx queues: {st.sysfs_rx_queues}")


def _queue_count_check(st: _nic.NicState, queue: int | None, alternatives: str) -> Check:
    """The queue exists, with at least one more for the other traffic."""
    I, ifn = "interface", st.ifname
    n, ch, kind = st.rx_queues, st.channels, st.channel_kind or "combined"
    ch_text = _channels_text(st)
    if queue is None:
        return Check(I, "queues", INFO, f"{n} RX queue(s); {ch_text}",
                     "pass --queue N to check a queue")
    if n is not None and queue < n and n >= 2:
        return Check(I, "queue", PASS, f"queue {queue} of {n} RX queues; {ch_text}")
    need = max(queue + 1, 2)
    mx = st.rx_queues_max
    if not ch:
        # the driver reports no channels: ethtool -L cannot change them either
        fix = (f"pick a queue of at most {n - 1} (the driver cannot change its "
               f"channel count)" if n and n >= 2 else
               f"this NIC has one RX queue: use another NIC, or {alternatives}")
    elif mx is None or need <= mx:
        fix = f"ethtool -L {ifn} {kind} {need}"
    else:
        fix = (f"pick a queue of at most {mx - 1}" if mx and mx >= 2 else
               f"this NIC has one RX queue: use another NIC, or {alternatives}")
    return Check(I, "queue", FAIL, f"queue {queue} needs {need} RX queues, {ifn} has {n}; "
                                   f"{ch_text}", fix)


def _range_count_check(st: _nic.NicState, first: int, last: int, setup: str) -> Check:
    """Every queue of the range exists, and one at least is left for the main table."""
    n, count = st.rx_queues, last - first + 1
    detail = f"queues {first}-{last} of {n} RX queues; {_channels_text(st)}"
    if n is not None and last < n and n > count:
        return Check("interface", "queues", PASS, detail)
    need = last + 1 if first > 0 else last + 2
    mx = st.rx_queues_max
    if st.channels and (mx is None or need <= mx):
        fix = setup + f"  (raises the channels to {need})"
    elif mx and mx >= 2:
        fix = (f"pick queues within 0-{mx - 2}: one RX queue must stay for the main RSS "
               f"table (the other traffic)")
    else:
        fix = "this NIC has one RX queue: use another NIC"
    why = ("leaves no RX queue for the main RSS table (the other traffic)" if n is not None
           and last < n else f"needs {need} RX queues")
    return Check("interface", "queues", FAIL, f"{detail}: the range {why}", fix)


def _split_checks(st: _nic.NicState, trial: tuple[bool, str] | None, setup: str) -> list[Check]:
    """tcp-data-split on and hds-thresh 0, as the kernel will check them."""
    I, ifn = "interface", st.ifname
    rings = st.rings
    split_fix = f"ethtool -G {ifn} tcp-data-split on hds-thresh 0  (ethtool >= 6.14; or: {setup})"
    if rings is None:
        return [Check(I, "tcp-data-split", FAIL,
                      f"ring parameters not reported ({st.errors.get('rings', '')})",
                      "needs a driver with header/data split (bnxt, mlx5, gve, fbnic)")]
    out: list[Check] = []
    split = rings.get("tcp_data_split")
    if split == 2 and trial_errno(trial) == "EINVAL" and not rings.get("hds_thresh"):
        # A driver may report its "auto" as on, while the kernel checks its own
        # configuration, which is still unset: only setting it explicitly helps
        # (setting "on" over a reported "on" changes nothing).
        out.append(Check(I, "tcp-data-split", FAIL,
                         "reported on, but the kernel refuses the queue (a trial "
                         "registration gave EINVAL): the configured value is not 'on' "
                         "(the driver reports its default as on)",
                         f"ethtool -G {ifn} tcp-data-split off; ethtool -G {ifn} "
                         f"tcp-data-split on"))
    elif split == 2:
        out.append(Check(I, "tcp-data-split", PASS, "on"))
    elif split is None:
        out.append(Check(I, "tcp-data-split", FAIL,
                         "not reported by the driver: it cannot split headers from payload",
                         "needs a driver with header/data split (bnxt, mlx5, gve, fbnic)"))
    else:
        out.append(Check(I, "tcp-data-split", FAIL,
                         f"{'off' if split == 1 else 'unknown/auto'}: registering gives EINVAL",
                         split_fix))
    hds = rings.get("hds_thresh")
    if hds is None:
        out.append(Check(I, "hds-thresh", PASS if split == 2 else INFO,
                         "not reported (kernel < 6.13 or no threshold in the driver): "
                         "treated as 0"))
    elif hds == 0:
        out.append(Check(I, "hds-thresh", PASS, f"0 (max {rings.get('hds_thresh_max')})"))
    else:
        out.append(Check(I, "hds-thresh", FAIL, f"{hds}: must be 0, else EINVAL",
                         f"ethtool -G {ifn} hds-thresh 0"))
    return out


def _contexts_text(st: _nic.NicState) -> str:
    ctxs = {c: t for c, t in (st.rss or {}).items() if c}
    return ("; contexts: " + ", ".join(f"{c}->{sorted(set(t))}" for c, t in sorted(ctxs.items()))
            if ctxs else "; no extra RSS contexts")


def _main_table_check(st: _nic.NicState, queues: list[int] | None) -> Check:
    """The main RSS table (context 0) sends no other flow to the zcrx queues."""
    I, ifn, n = "interface", st.ifname, st.rx_queues
    main = st.main_indir
    ctx_text = _contexts_text(st)
    if main is None:
        return Check(I, "RSS", WARN if (n or 0) < 2 else FAIL,
                     f"no RSS indirection table ({st.errors.get('rss', '')})",
                     "needs a multi-queue NIC with RSS")
    if queues is None:
        return Check(I, "RSS", INFO, f"table of {len(main)} spreads over queues "
                                     f"{sorted(set(main))}{ctx_text}")
    what = f"queue {queues[0]}" if len(queues) == 1 else f"queues {queues[0]}-{queues[-1]}"
    inside = sorted(set(queues) & set(main))
    if inside:
        return Check(I, "RSS", FAIL,
                     f"the main table ({len(main)} entries) sends other flows to "
                     + (f"queue {queues[0]}" if len(queues) == 1 else f"queue(s) {inside}")
                     + f" too: they would be copied, or break zero copy{ctx_text}",
                     _nic._rss_command(ifn, max(n or 0, queues[-1] + 1), queues[0], len(queues)))
    return Check(I, "RSS", PASS, f"main table spreads over {sorted(set(main))}, "
                                 f"not {what}{ctx_text}")


def _ntuple_checks(st: _nic.NicState) -> list[Check]:
    if st.ntuple_active is not False:
        return []
    ifn = st.ifname
    return [Check("interface", "ntuple", FAIL,
                  "ntuple filters are off" + (" and fixed (driver has no flow steering)"
                                              if st.ntuple_changeable is False else ""),
                  f"ethtool -K {ifn} ntuple on" if st.ntuple_changeable else
                  "needs a NIC with flow steering")]


def _rules_text(st: _nic.NicState) -> str:
    rules = st.rules
    if rules is None:
        return f"rules not readable ({st.errors.get('ntuple', '')})"
    return f"{len(rules)} rule(s)" + (
        ": " + "; ".join(_rule_text(r) for r in rules[:6]) if rules else "")


def _steering_check(st: _nic.NicState, queue: int | None, port: int | None,
                    flow_type: str) -> Check:
    """Where the port lands (one queue)."""
    I, ifn = "interface", st.ifname
    rule_text = _rules_text(st)
    if port is None:
        return Check(I, "steering", INFO, rule_text, "pass --port P to check a flow")
    where = _nic.port_steering(st, port, flow_type)
    lands = where["queues"]
    how = (f"rule {where['location']}" if where["by"] == "rule" else
           "RSS (no rule)" if where["by"] == "rss" else where["by"])
    detail = f"{flow_type} dst-port {port} lands on queue(s) {lands} by {how}; {rule_text}"
    if queue is not None and lands == [queue]:
        return Check(I, "steering", PASS, detail)
    if queue is None:
        return Check(I, "steering", INFO, detail)
    return Check(I, "steering", FAIL, detail + f": not (only) queue {queue}, "
                 f"so the data is copied or never reaches the zcrx queue",
                 f"ethtool -N {ifn} flow-type {flow_type} dst-port {port} action {queue}")


def _context_check(st: _nic.NicState, queues: list[int], port: int,
                   flow_types: tuple[str, ...] | list[str], setup: str) -> Check:
    """The port's rules point at one RSS context whose table holds exactly the queues."""
    I = "interface"
    ctxs = sorted({r.rss_context for ft in flow_types for r in _nic.matching_rules(st, port, ft)
                   if r.rss_context is not None})
    want = f"queues {queues[0]}-{queues[-1]}"
    if not ctxs:
        return Check(I, "RSS context", FAIL, f"no rule sends dst-port {port} to an RSS context"
                                             f"{_contexts_text(st)}", setup)
    details, good = [], True
    for ctx in ctxs:
        table = (st.rss or {}).get(ctx)
        spread = sorted(set(table)) if table else None
        details.append(f"context {ctx} spreads over {spread if spread is not None else '?'}")
        good = good and spread == queues
    detail = f"dst-port {port}: " + "; ".join(details)
    if good:
        return Check(I, "RSS context", PASS, f"{detail}: each of {want}, nothing else")
    return Check(I, "RSS context", FAIL, f"{detail}: not exactly {want}", setup)


def _range_steering_check(st: _nic.NicState, queues: list[int], port: int, flow_type: str,
                          setup: str) -> Check:
    """A rule sends ``flow_type dst-port port`` to exactly the queues."""
    where = _nic.port_steering(st, port, flow_type)
    lands = where["queues"]
    how = (f"rule {where['location']}" + (f" (context {where['rss_context']})"
                                          if where.get("rss_context") is not None else "")
           if where["by"] == "rule" else "RSS (no rule)" if where["by"] == "rss" else where["by"])
    detail = f"{flow_type} dst-port {port} lands on queue(s) {lands} by {how}"
    if where["by"] == "rule" and lands == queues:
        return Check("interface", f"steering {flow_type}", PASS, detail)
    return Check("interface", f"steering {flow_type}", FAIL,
                 detail + f": not queues {queues[0]}-{queues[-1]}, so these connections are "
                 f"copied or never reach the zcrx queues", setup)


def _queue_lines(st: _nic.NicState, queues: list[int], release: str) -> list[Check]:
    """Per queue: its NAPI id (a worker matches SO_INCOMING_NAPI_ID against it) and
    whether an io_uring zcrx instance (or another memory provider) holds it."""
    I, ifn = "interface", st.ifname
    if st.queues is None:
        return [Check(I, "queue", WARN, f"netdev netlink queue info unavailable "
                                        f"({st.errors.get('queues', '')}): no NAPI ids, cannot "
                                        f"tell whether the queues are bound")]
    rx = {q["id"]: q for q in st.queues if q["type"] == "rx"}
    napi_seen: dict[int, int] = {}
    out: list[Check] = []
    reliable = parse_release(release) >= (6, 15) if release else True
    for queue in queues:
        q = rx.get(queue)
        name = f"queue {queue}"
        if q is None:
            out.append(Check(I, name, FAIL, f"not listed by the netdev family (interface down, "
                                            f"or no such queue)", f"ip link set {ifn} up"))
            continue
        napi = q.get("napi_id")
        napi_text = f"napi id {napi}" if napi else "no NAPI id"
        if q.get("io_uring") or q.get("dmabuf") is not None or q.get("xsk"):
            what = ("io_uring zcrx" if q.get("io_uring") else "devmem dmabuf"
                    if q.get("dmabuf") is not None else "AF_XDP socket")
            out.append(Check(I, name, FAIL, f"{napi_text}; bound to an {what}: registering it "
                                            f"again gives EEXIST until its holder closes it",
                             "stop the process (or worker) that holds it"))
        elif not napi:
            out.append(Check(I, name, WARN, f"{napi_text}: SO_INCOMING_NAPI_ID cannot tell "
                                            f"which connections arrive here; free",
                             f"ip link set {ifn} up"))
        elif napi in napi_seen:
            out.append(Check(I, name, WARN, f"{napi_text}, the same as queue {napi_seen[napi]}: "
                                            f"their connections cannot be told apart; free"))
        else:
            out.append(Check(I, name, PASS if reliable else WARN,
                             f"{napi_text}; free" if reliable else
                             f"{napi_text}; kernel {release} predates the queue's io-uring "
                             f"attribute (6.15): binding unknown"))
        if napi:
            napi_seen.setdefault(napi, queue)
    return out


def _blockers(st: _nic.NicState, checks: list[Check],
              trial: tuple[bool, str] | None) -> list[str]:
    """What this run found that no setting of the NIC can change: with any of
    these, configuring it for zcrx (ethtool, `aiozcrx nic setup`) cannot help."""
    out = []
    if trial_errno(trial) == "EOPNOTSUPP":
        out.append(f"{st.ifname} has no queue API (the kernel answered EOPNOTSUPP)")
    rings = st.rings
    if rings is None or rings.get("tcp_data_split") is None:
        out.append(f"{st.ifname} cannot split headers from payload (no tcp-data-split)")
    if st.ntuple_active is False and st.ntuple_changeable is False:
        out.append(f"{st.ifname} has no flow steering (ntuple fixed off)")
    n, mx = st.rx_queues, st.rx_queues_max
    if n is not None and n < 2 and (not st.channels or mx is None or mx < 2):
        out.append(f"{st.ifname} has a single RX queue")
    return out


def _is_nic_config(fix: str) -> bool:
    return fix.startswith("ethtool ") or "aiozcrx nic setup" in fix


def _without_moot_fixes(checks: list[Check], ifn: str, blockers: list[str]) -> list[Check]:
    """Where the NIC cannot host zcrx at all, the configuration commands of the
    other checks would change settings for nothing: they are replaced by why."""
    if not blockers:
        return checks
    why = f"none on {ifn}: " + "; ".join(blockers)
    for c in checks:
        if c.status != PASS and c.fix and _is_nic_config(c.fix):
            c.fix = why
    return checks


KNOWN = _nic.KNOWN_ZCRX_DRIVERS


def _rule_text(r: et.NtupleRule) -> str:
    match = f"{r.flow_type}" + (f" dst-port {r.dst_port}" if r.dst_port is not None else "") \
        + (f" src-port {r.src_port}" if r.src_port is not None else "") \
        + (" +more" if r.other_match else "")
    act = (f"context {r.rss_context} +{r.queue}" if r.rss_context is not None else
           f"queue {r.queue}" if r.action == "queue" else r.action)
    return f"[{r.location}] {match} -> {act}"


def _binding_check(st: _nic.NicState, queue: int | None, release: str) -> Check:
    I = "interface"
    if st.queues is None:
        return Check(I, "memory provider", WARN,
                     f"netdev netlink queue info unavailable ({st.errors.get('queues', '')}): "
                     f"cannot tell whether the queue is already bound (EEXIST)")
    if not st.queues:
        return Check(I, "memory provider", WARN,
                     f"the netdev family lists no queues for {st.ifname} (interface down?)",
                     f"ip link set {st.ifname} up")
    reliable = parse_release(release) >= (6, 15) if release else True
    bound = [q for q in st.queues if q["type"] == "rx" and (q.get("io_uring") or
                                                          q.get("dmabuf") is not None or q.get("xsk"))]
    mine = [q for q in bound if q["id"] == queue]
    desc = "; ".join(f"rx {q['id']}: " + ("io_uring" if q.get("io_uring") else
                                          f"dmabuf {q['dmabuf']}" if q.get("dmabuf") is not None
                                          else "AF_XDP") for q in bound) or "none bound"
    if queue is None:
        return Check(I, "memory provider", INFO, f"queue bindings: {desc}")
    if mine:
        q = mine[0]
        what = "io_uring zcrx" if q.get("io_uring") else "devmem dmabuf" if \
            q.get("dmabuf") is not None else "AF_XDP socket"
        err = "EBUSY" if q.get("xsk") and not q.get("io_uring") else "EEXIST"
        return Check(I, "memory provider", FAIL,
                     f"queue {queue} is already bound to an {what}: registering gives {err}",
                     "close the process holding it (or pick another queue)")
    if not reliable:
        return Check(I, "memory provider", WARN,
                     f"kernel {release} predates the queue's io-uring attribute (6.15): "
                     f"binding unknown ({desc})")
    return Check(I, "memory provider", PASS, f"queue {queue} is free ({desc})")


def engine_section(core: dict[str, Any], interface: str | None,
                   queue: int | None) -> tuple[list[str], bool]:
    """Lines about the engine choice, and whether zcrx works on (interface, queue)."""
    if not core.get("available"):
        return [f"engine: {core.get('error') or 'core probe unavailable'}: cannot tell which "
                f"engine auto would choose"], False
    if core.get("engine_error"):
        return [f"engine: the core refused (interface, queue): {core['engine_error']}"], False
    lines = [f"engine auto -> {core['engine']}"
             + (f"  (on {interface} queue {queue})" if interface else "")]
    zcrx_ok = False
    for entry in core.get("tried", []):
        name, ok, why = (list(entry) + ["", False, ""])[:3]
        lines.append(f"  {name:<10} {'yes' if ok else 'no ':<4} {why}")
        if name == "zcrx" and ok:
            zcrx_ok = True
    return lines, zcrx_ok


# --------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="aiozcrx doctor",
                                description="Check whether io_uring zero-copy receive can work.")
    p.add_argument("--interface", "-i", help="the NIC to check")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--queue", "-q", type=int, help="the RX queue zcrx would use")
    which.add_argument("--queues", type=_nic._queue_range_arg, metavar="FIRST-LAST",
                       help="a port spread over these RX queues (aiozcrx nic setup --queues)")
    p.add_argument("--port", "-p", type=int, help="destination port of the flow to receive")
    p.add_argument("--flow-type", choices=_nic.FLOW_TYPES,
                   help="the flow type to check (--queue: default tcp6; --queues: default both)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    return p


def found_engines(core: dict[str, Any]) -> tuple[bool | None, bool | None]:
    """(NODEV works, io_uring works) as the core probe found them; None where it
    could not look."""
    if not core.get("available"):
        return None, None
    kr = core.get("kernel") or {}
    nodev = kr.get("zcrx_nodev")
    for entry in core.get("tried") or []:
        if entry and entry[0] == "zcrx-copy":
            nodev = bool(entry[1])
    return (None if nodev is None else bool(nodev),
            None if kr.get("io_uring") is None else bool(kr.get("io_uring")))


def run(interface: str | None, queue: int | None, port: int | None,
        flow_type: str = "tcp6", *, queues: tuple[int, int] | None = None,
        flow_types: tuple[str, ...] | list[str] = _nic.FLOW_TYPES) -> dict[str, Any]:
    """Gather, judge, report. ``queues=(first, last)``: a port spread over those
    queues (``queue`` is then ignored; the trial registration is on ``first``)."""
    if queues is not None:
        queue = queues[0]
    sysf = gather_system()
    core = probe_core(interface, queue)
    if interface and queue is not None and any(t and t[0] == "zcrx" and t[1]
                                               for t in core.get("tried") or []):
        _nic.wait_queue_released(interface, queue)  # the trial bound it
    checks = system_checks(sysf, core)
    state = None
    if interface:
        state = _nic.read_state(interface)
        trial = None
        for entry in core.get("tried") or []:
            if queue is not None and entry and entry[0] == "zcrx":
                trial = (bool(entry[1]), str(entry[2]))
        nodev, io_uring = found_engines(core)
        if queues is not None:
            checks += queues_checks(state, queues[0], queues[1], port, sysf["release"], trial,
                                    flow_types=flow_types, nodev=nodev, io_uring=io_uring)
        else:
            checks += interface_checks(state, queue, port, flow_type, sysf["release"], trial,
                                       nodev=nodev, io_uring=io_uring)
    eng_lines, zcrx_ok = engine_section(core, interface, queue)
    fails = [c for c in checks if c.status == FAIL]
    ok = zcrx_ok and not fails and interface is not None and queue is not None
    if interface is None and zcrx_ok and not fails:
        ok = True  # e.g. NODEV zcrx: no NIC involved
    return {"ok": ok, "system": sysf, "core": core, "checks": [asdict(c) for c in checks],
            "interface": state.to_dict() if state else None, "engine_lines": eng_lines,
            "zcrx_ok": zcrx_ok, "queue": queue, "port": port,
            "queues": list(queues) if queues is not None else None,
            "napi_ids": _napi_ids(state, queues) if state is not None and queues else None}


def _napi_ids(state: _nic.NicState, queues: tuple[int, int]) -> dict[str, int | None]:
    """Queue -> NAPI id as the snapshot has them (JSON keys are strings)."""
    rx = {q["id"]: q.get("napi_id") for q in state.queues or [] if q["type"] == "rx"}
    return {str(q): rx.get(q) for q in range(queues[0], queues[1] + 1)}


def render(report: dict[str, Any]) -> str:
    lines = []
    head = f"aiozcrx doctor: kernel {report['system']['release']}"
    if report["interface"]:
        head += f", interface {report['interface']['ifname']}"
        if report.get("queues"):
            head += f" queues {report['queues'][0]}-{report['queues'][1]}"
        elif report["queue"] is not None:
            head += f" queue {report['queue']}"
        if report["port"] is not None:
            head += f" port {report['port']}"
    lines.append(head)
    for c in report["checks"]:
        lines.append(f"{c['status']:<5} {c['name']:<18} {c['detail']}")
        if c["fix"] and c["status"] != PASS:
            lines.append(f"{'':24}fix: {c['fix']}")
    lines.extend(report["engine_lines"])
    nfail = sum(1 for c in report["checks"] if c["status"] == FAIL)
    target = (f"{report['interface']['ifname']} queues {report['queues'][0]}-"
              f"{report['queues'][1]}" if report["interface"] and report.get("queues") else
              f"{report['interface']['ifname']} queue {report['queue']}"
              if report["interface"] and report["queue"] is not None else
              report["interface"]["ifname"] if report["interface"] else "this host")
    if report["ok"]:
        lines.append(f"result: engine=\"zcrx\" can work on {target}")
    else:
        why = []
        if nfail:
            why.append(f"{nfail} FAIL")
        if not report["zcrx_ok"]:
            why.append("core probe: zcrx unavailable" if report["core"]["available"]
                       else "core probe unavailable")
        if report["interface"] and report["queue"] is None:
            why.append("no --queue given")
        lines.append(f"result: engine=\"zcrx\" cannot work on {target} ({', '.join(why)})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.queues is not None and not args.interface:
        parser.error("--queues needs --interface IF")
    report = run(args.interface, args.queue, args.port, args.flow_type or "tcp6",
                 queues=args.queues,
                 flow_types=(args.flow_type,) if args.flow_type else _nic.FLOW_TYPES)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        print(render(report))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

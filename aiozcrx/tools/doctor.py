"""``aiozcrx doctor``: can ``engine="zcrx"`` work here, and if not, what fixes it.

One screen of checks, each PASS / WARN / FAIL with the command that fixes it:

* system: kernel release and zcrx features, ``kernel.io_uring_disabled``,
  seccomp, CAP_NET_ADMIN, RLIMIT_MEMLOCK;
* interface (``--interface``): driver and queue API, channels, header/data
  split and hds-thresh, RSS table and contexts, ntuple rules and where
  ``--port`` lands, whether ``--queue`` is already bound to a memory provider;
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
    I = "interface"
    ifn = st.ifname
    out: list[Check] = []
    if not st.exists:
        out.append(Check(I, "interface", FAIL, st.errors.get("interface", f"no {ifn}"),
                         "ip -br link  # pick an existing interface"))
        return out

    alternatives = other_engines(nodev, io_uring)
    out.append(_driver_check(st, queue, trial, alternatives))

    n = st.rx_queues
    ch = st.channels
    kind = st.channel_kind or "combined"
    ch_text = ("channels: " + ", ".join(f"{k}={v}" for k, v in sorted(ch.items()))
               if ch else f"channels not reported ({st.errors.get('channels', '')}); "
               f"sysfs rx queues: {st.sysfs_rx_queues}")
    q_label = "queue" if queue is not None else "queues"
    if queue is None:
        out.append(Check(I, "queues", INFO, f"{n} RX queue(s); {ch_text}",
                         "pass --queue N to check a queue"))
    elif n is not None and queue < n and n >= 2:
        out.append(Check(I, q_label, PASS, f"queue {queue} of {n} RX queues; {ch_text}"))
    else:
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
        out.append(Check(I, q_label, FAIL,
                         f"queue {queue} needs {need} RX queues, {ifn} has {n}; {ch_text}", fix))

    rings = st.rings
    split_fix = f"ethtool -G {ifn} tcp-data-split on hds-thresh 0  (ethtool >= 6.14; or: " \
                f"aiozcrx nic setup --interface {ifn} --queue {queue if queue is not None else 'Q'} " \
                f"--port {port if port else 'P'})"
    if rings is None:
        out.append(Check(I, "tcp-data-split", FAIL,
                         f"ring parameters not reported ({st.errors.get('rings', '')})",
                         "needs a driver with header/data split (bnxt, mlx5, gve, fbnic)"))
    else:
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

    main = st.main_indir
    ctxs = {c: t for c, t in (st.rss or {}).items() if c}
    ctx_text = ("; contexts: " + ", ".join(f"{c}->{sorted(set(t))}" for c, t in sorted(ctxs.items()))
                if ctxs else "; no extra RSS contexts")
    if main is None:
        out.append(Check(I, "RSS", WARN if (n or 0) < 2 else FAIL,
                         f"no RSS indirection table ({st.errors.get('rss', '')})",
                         "needs a multi-queue NIC with RSS"))
    elif queue is None:
        out.append(Check(I, "RSS", INFO, f"table of {len(main)} spreads over queues "
                                         f"{sorted(set(main))}{ctx_text}"))
    elif queue in main:
        out.append(Check(I, "RSS", FAIL,
                         f"the main table ({len(main)} entries) sends other flows to queue "
                         f"{queue} too: they would be copied, or break zero copy{ctx_text}",
                         _nic._rss_command(ifn, n or queue + 1, queue)))
    else:
        out.append(Check(I, "RSS", PASS, f"main table spreads over {sorted(set(main))}, "
                                         f"not queue {queue}{ctx_text}"))

    if st.ntuple_active is False:
        out.append(Check(I, "ntuple", FAIL,
                         "ntuple filters are off" + (" and fixed (driver has no flow steering)"
                                                     if st.ntuple_changeable is False else ""),
                         f"ethtool -K {ifn} ntuple on" if st.ntuple_changeable else
                         "needs a NIC with flow steering"))
    rules = st.rules
    if rules is None:
        rule_text = f"rules not readable ({st.errors.get('ntuple', '')})"
    else:
        rule_text = f"{len(rules)} rule(s)" + (
            ": " + "; ".join(_rule_text(r) for r in rules[:6]) if rules else "")
    if port is None:
        out.append(Check(I, "steering", INFO, rule_text, "pass --port P to check a flow"))
    else:
        where = _nic.port_steering(st, port, flow_type)
        lands = where["queues"]
        how = (f"rule {where['location']}" if where["by"] == "rule" else
               "RSS (no rule)" if where["by"] == "rss" else where["by"])
        detail = f"{flow_type} dst-port {port} lands on queue(s) {lands} by {how}; {rule_text}"
        if queue is not None and lands == [queue]:
            out.append(Check(I, "steering", PASS, detail))
        elif queue is None:
            out.append(Check(I, "steering", INFO, detail))
        else:
            out.append(Check(I, "steering", FAIL, detail + f": not (only) queue {queue}, "
                             f"so the data is copied or never reaches the zcrx queue",
                             f"ethtool -N {ifn} flow-type {flow_type} dst-port {port} "
                             f"action {queue}"))

    out.append(_binding_check(st, queue, release))
    return _without_moot_fixes(out, ifn, _blockers(st, out, trial))


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
    p.add_argument("--queue", "-q", type=int, help="the RX queue zcrx would use")
    p.add_argument("--port", "-p", type=int, help="destination port of the flow to receive")
    p.add_argument("--flow-type", default="tcp6", choices=_nic.FLOW_TYPES)
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
        flow_type: str = "tcp6") -> dict[str, Any]:
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
        checks += interface_checks(state, queue, port, flow_type, sysf["release"], trial,
                                   nodev=nodev, io_uring=io_uring)
    eng_lines, zcrx_ok = engine_section(core, interface, queue)
    fails = [c for c in checks if c.status == FAIL]
    ok = zcrx_ok and not fails and interface is not None and queue is not None
    if interface is None and zcrx_ok and not fails:
        ok = True  # e.g. NODEV zcrx: no NIC involved
    return {"ok": ok, "system": sysf, "core": core, "checks": [asdict(c) for c in checks],
            "interface": state.to_dict() if state else None, "engine_lines": eng_lines,
            "zcrx_ok": zcrx_ok, "queue": queue, "port": port}


def render(report: dict[str, Any]) -> str:
    lines = []
    head = f"aiozcrx doctor: kernel {report['system']['release']}"
    if report["interface"]:
        head += f", interface {report['interface']['ifname']}"
        if report["queue"] is not None:
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
    target = (f"{report['interface']['ifname']} queue {report['queue']}"
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
    args = _parser().parse_args(argv)
    report = run(args.interface, args.queue, args.port, args.flow_type)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        print(render(report))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

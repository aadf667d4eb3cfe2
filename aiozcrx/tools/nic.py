"""``aiozcrx nic setup|teardown``: configure a NIC for io_uring zero-copy receive.

Zero copy needs the NIC set up out of band (Documentation/networking/iou-zcrx.rst,
"Setup NIC"; the kernel selftest drivers/net/hw/iou-zcrx.py does the same):

1. enough RX queues (``ethtool -L IF combined N``),
2. header/data split on, threshold 0 (``ethtool -G IF tcp-data-split on hds-thresh 0``),
3. ntuple filters on (``ethtool -K IF ntuple on``),
4. RSS steering every other flow away from the zcrx queue
   (``ethtool -X IF equal N-1``, or weights that leave the queue out),
5. optionally a dedicated RSS context holding only that queue
   (``ethtool -X IF context new start Q equal 1``),
6. a flow-steering rule for the wanted flow
   (``ethtool -N IF flow-type tcp6 dst-port P action Q`` or ``... context C``).

One port spread over several queues (``--queues FIRST-LAST``, :func:`plan_queues`,
one worker per queue) takes the same steps with a range: the main table is kept
off every queue of it, the RSS context spreads evenly over exactly those queues
(``context new start FIRST equal COUNT``), and there is one rule per flow type
(tcp6 and tcp4) sending the port to that context.

The module is split the sans-IO way:

* :class:`NicState` is a snapshot of what the kernel reports (``read_state``
  fills it through :mod:`aiozcrx.tools.ethtool`);
* :func:`plan_setup` is a pure function from a snapshot to a :class:`Plan`:
  the steps to run, each with its operation, its inverse and the equivalent
  ``ethtool`` command line, plus problems that stop the plan and notes;
* :func:`apply_plan` runs a plan through an executor (:class:`KernelExecutor`
  talks to the kernel; tests pass a fake), records each step in a state file
  as soon as it is done, and on the first failure rolls back what it did, in
  reverse, naming the step and the driver's answer;
* :func:`teardown` replays the recorded inverses, newest first;
* :func:`setup_queues` / :func:`setup_queue` / :func:`teardown_interface` are
  the same for Python callers (a launcher of workers), with typed errors:
  :class:`NicRefused` subclasses (nothing changed, the message names the fix)
  and :class:`NicSetupFailed`.

State files live in ``$AIOZCRX_STATE_DIR`` (default ``/run/aiozcrx``), one per
interface: ``nic-IF.json``. They are written atomically (a new temporary file,
O_EXCL and mode 0600, renamed over the old one: a symlink planted in a shared
directory is never followed) and read only when they are a regular file of this
user that nobody else can write (``StateFileError`` otherwise): ``teardown``
runs what the file says with CAP_NET_ADMIN. SIGINT and SIGTERM are held while
the NIC is being changed, so that an interruption rolls back what a setup did
(docs/security.md).
"""
from __future__ import annotations

import argparse
import copy
import errno as _errno
import json
import os
import re
import signal
import stat
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import IO, Any, Callable, Protocol

from . import ethtool as et

KNOWN_ZCRX_DRIVERS = {"bnxt_en": "bnxt", "mlx5_core": "mlx5", "gve": "gve", "fbnic": "fbnic"}
FLOW_TYPES = ("tcp6", "tcp4")
DEFAULT_STATE_DIR = "/run/aiozcrx"

# exit statuses of `aiozcrx nic`
EXIT_OK = 0
EXIT_FAILED = 1      # a step failed (rolled back), or teardown left something behind
EXIT_REFUSED = 3     # the plan has problems; nothing was changed
EXIT_INTERRUPTED = 130  # Ctrl-C: what was done is rolled back


# --------------------------------------------------------------------------
# snapshot
# --------------------------------------------------------------------------
@dataclass
class NicState:
    """What the kernel reports about one interface. ``None`` means "could not
    be read"; ``errors`` says why (``{"rings": "RINGS_GET: EOPNOTSUPP ..."}``)."""

    ifname: str
    exists: bool = True
    ifindex: int | None = None
    driver: str | None = None
    driver_source: str = "unknown"
    channels: dict[str, Any] | None = None  # CHANNELS_GET: rx/tx/combined counts and maxima
    sysfs_rx_queues: int | None = None    # /sys/class/net/IF/queues/rx-*
    rings: dict[str, Any] | None = None     # RINGS_GET: tcp_data_split, hds_thresh, ...
    ntuple_active: bool | None = None     # feature rx-ntuple-filter on
    ntuple_changeable: bool | None = None
    rss: dict[int, list[int]] | None = None   # context id -> indirection table (0 = main)
    rules: list[et.NtupleRule] | None = None
    rule_table_size: int | None = None
    queues: list[et.NetdevQueue] | None = None  # netdev QUEUE_GET: id, type, io_uring, ...
    errors: dict[str, str] = field(default_factory=dict)

    # ---- derived facts -------------------------------------------------
    @property
    def channel_kind(self) -> str | None:
        """Which channel count carries the RX queues: "combined" or "rx"."""
        ch = self.channels or {}
        if ch.get("combined_max"):
            return "combined"
        if ch.get("rx_max"):
            return "rx"
        return None

    @property
    def rx_queues(self) -> int | None:
        ch = self.channels
        if ch:
            n: int = ch.get("combined_count", 0) + ch.get("rx_count", 0)
            if n:
                return n
        return self.sysfs_rx_queues

    @property
    def rx_queues_max(self) -> int | None:
        ch = self.channels
        if not ch or not self.channel_kind:
            return None
        # combined and rx-only channels both carry an RX queue
        most: int = ch.get("combined_max", 0) + ch.get("rx_max", 0)
        return most

    @property
    def known_zcrx_driver(self) -> bool:
        return self.driver in KNOWN_ZCRX_DRIVERS

    @property
    def main_indir(self) -> list[int] | None:
        if self.rss is None:
            return None
        return self.rss.get(0) or None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["rules"] = None if self.rules is None else [r.to_dict() for r in self.rules]
        d["rss"] = None if self.rss is None else {str(k): v for k, v in self.rss.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NicState:
        d = dict(d)
        if d.get("rules") is not None:
            d["rules"] = [et.NtupleRule.from_dict(r) for r in d["rules"]]
        if d.get("rss") is not None:
            d["rss"] = {int(k): v for k, v in d["rss"].items()}
        return cls(**d)


def _err(exc: Exception) -> str:
    return str(exc)


def read_state(ifname: str) -> NicState:
    """Take a snapshot of ``ifname`` (in the caller's network namespace)."""
    st = NicState(ifname=ifname)
    try:
        st.ifindex = et.ifindex(ifname)
    except et.EthtoolError as exc:
        st.exists = False
        st.errors["interface"] = _err(exc)
        return st
    st.driver, st.driver_source = et.driver_name(ifname)
    st.sysfs_rx_queues = et.sysfs_rx_queues(ifname)
    try:
        st.channels = et.get_channels(ifname)
    except et.EthtoolError as exc:
        st.errors["channels"] = _err(exc)
    try:
        st.rings = et.get_rings(ifname)
    except et.EthtoolError as exc:
        st.errors["rings"] = _err(exc)
    try:
        feats = et.get_features(ifname)
        st.ntuple_active = et.NTUPLE_FEATURE in feats["active"]
        st.ntuple_changeable = et.NTUPLE_FEATURE in feats["hw"]
    except et.EthtoolError as exc:
        st.errors["features"] = _err(exc)
    try:
        rss = et.dump_rss(ifname)
        if not rss or not rss.get(0, {}).get("indir"):
            main = et.get_rss(ifname)
            rss[0] = main
        st.rss = {ctx: v.get("indir", []) for ctx, v in rss.items()}
        if not st.rss.get(0):
            st.errors["rss"] = "RSS_GET: the driver reports no indirection table"
    except et.EthtoolError as exc:
        st.errors["rss"] = _err(exc)
    try:
        st.rules, st.rule_table_size, _special = et.get_ntuple_rules(ifname)
    except et.EthtoolError as exc:
        st.errors["ntuple"] = _err(exc)
    try:
        st.queues = et.netdev_queues(ifname)
    except et.EthtoolError as exc:
        st.errors["queues"] = _err(exc)
    return st


# --------------------------------------------------------------------------
# plan
# --------------------------------------------------------------------------
@dataclass
class Op:
    """One kernel operation, JSON-serialisable. String arguments ``"@"`` and
    ``"@STEP"`` stand for the result of this step / of step STEP (an RSS
    context id, a rule location) and are filled in when the plan runs."""

    kind: str
    args: dict[str, Any] = field(default_factory=dict)


@dataclass
class Step:
    id: str
    title: str
    command: str            # the equivalent ethtool command line
    apply: Op
    inverse: Op | None
    inverse_command: str = ""
    unsupported_fix: str = ""  # what to do instead when the driver answers EOPNOTSUPP


# What kind of refusal a problem is (Plan.problem_kinds); NicRefused picks its
# subclass from the first one.
REFUSED_INTERFACE = "interface"      # no such interface
REFUSED_REQUEST = "request"          # a bad port, flow type, queue number or range
REFUSED_RANGE = "range"              # a queue beyond what the NIC has or can have
REFUSED_NO_MAIN_QUEUE = "no-main-queue"  # nothing left for the main RSS table
REFUSED_STEERING = "steering"        # the device cannot steer the way the plan needs
REFUSED_CONFLICT = "conflict"        # a rule for the port that sends it elsewhere
REFUSED_UNKNOWN = "unknown"          # a fact the plan needs could not be read


@dataclass
class Plan:
    ifname: str
    queue: int                      # the zcrx queue; in mode "queues" the first of the range
    port: int
    mode: str                       # "equal", "rss-context" or "queues" (several, see plan_queues)
    flow_type: str = "tcp6"         # the flow type steered (mode "queues": the first of flow_types)
    steps: list[Step] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)   # any: nothing may run
    notes: list[str] = field(default_factory=list)
    last: int | None = None         # mode "queues": the last queue of the range
    flow_types: list[str] = field(default_factory=list)  # mode "queues": every flow type steered
    problem_kinds: list[str] = field(default_factory=list)  # one REFUSED_* per problem

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def queues(self) -> list[int]:
        """The zcrx queues this plan steers the port to."""
        return list(range(self.queue, (self.queue if self.last is None else self.last) + 1))

    @property
    def label(self) -> str:
        """"queue 7", or "queues 0-3" for a range."""
        return f"queue {self.queue}" if self.last is None else f"queues {self.queue}-{self.last}"

    def refuse(self, kind: str, text: str) -> None:
        self.problems.append(text)
        self.problem_kinds.append(kind)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class NicRefused(ValueError):
    """``aiozcrx nic setup`` refused: nothing was changed. ``problems`` says why,
    each with what fixes it; the subclass names the first kind of problem."""

    kind = REFUSED_REQUEST

    def __init__(self, ifname: str, problems: list[str], outcome: Outcome | None = None):
        self.ifname = ifname
        self.problems = list(problems)
        self.outcome = outcome  # where a step found it out (then rolled back): its outcome
        super().__init__(f"{ifname}: " + "; ".join(self.problems) + " (nothing was changed)")


class QueueRangeError(NicRefused):
    """A queue (or range) beyond what the NIC has or can be given."""
    kind = REFUSED_RANGE


class NoQueueLeftError(NicRefused):
    """The queues asked for would leave the main RSS table no queue for other traffic."""
    kind = REFUSED_NO_MAIN_QUEUE


class SteeringUnsupportedError(NicRefused):
    """The device has no RSS contexts or no ntuple flow steering. Where the snapshot
    cannot tell (the kernel reports no count of RSS contexts), the step that needs
    them finds out (EOPNOTSUPP); what the setup did before it is rolled back."""
    kind = REFUSED_STEERING


class RuleConflictError(NicRefused):
    """An ntuple rule already sends the port somewhere else."""
    kind = REFUSED_CONFLICT


class EarlierSetupError(NicRefused):
    """A state file records an earlier setup of the interface: tear it down first."""
    kind = "recorded"


_REFUSALS: dict[str, type[NicRefused]] = {
    c.kind: c for c in (QueueRangeError, NoQueueLeftError, SteeringUnsupportedError,
                        RuleConflictError, EarlierSetupError)}


def refusal(plan: Plan) -> NicRefused:
    """The typed error for a plan with problems."""
    kind = plan.problem_kinds[0] if plan.problem_kinds else REFUSED_REQUEST
    return _REFUSALS.get(kind, NicRefused)(plan.ifname, plan.problems)


def default_indir(size: int, nqueues: int) -> list[int]:
    """The kernel's default spread (ethtool_rxfh_indir_default)."""
    return [i % nqueues for i in range(size)] if nqueues > 0 else []


def spread_table(size: int, first: int, count: int) -> list[int]:
    """A table of ``size`` entries spreading evenly over queues first..first+count-1
    (``ethtool -X IF context new start FIRST equal COUNT``)."""
    return [first + i % count for i in range(size)]


def exclude_table(size: int, nqueues: int, queue: int, count: int = 1) -> list[int]:
    """An indirection table of ``size`` entries spreading over every queue in
    ``0..nqueues-1`` except ``queue..queue+count-1``. With the excluded queues at
    the top this is exactly ``ethtool -X IF equal QUEUE``."""
    others = [q for q in range(nqueues) if not queue <= q < queue + count]
    if not others:
        raise ValueError("no queue left for the other flows")
    return [others[i % len(others)] for i in range(size)]


def _rss_command(ifname: str, nqueues: int, queue: int, count: int = 1) -> str:
    if queue + count == nqueues:
        return f"ethtool -X {ifname} equal {queue}"
    weights = " ".join("0" if queue <= q < queue + count else "1" for q in range(nqueues))
    return f"ethtool -X {ifname} weight {weights}"


def _split_word(v: int | None) -> str:
    words: dict[int | None, str] = {et.TCP_DATA_SPLIT_ENABLED: "on",
                                    et.TCP_DATA_SPLIT_DISABLED: "off"}
    return words.get(v, "auto")


def matching_rules(state: NicState, port: int, flow_type: str) -> list[et.NtupleRule]:
    """Rules that match exactly ``flow_type dst-port port`` and nothing else."""
    return [r for r in (state.rules or [])
            if r.flow_type == flow_type and r.dst_port == port
            and r.src_port is None and not r.other_match]


def rule_target_queues(state: NicState, rule: et.NtupleRule) -> list[int] | None:
    """The queues a rule sends traffic to (None: cannot tell; [] for drop)."""
    if rule.action != "queue" or rule.queue is None:
        return []
    if rule.rss_context is None:
        return [rule.queue]
    table = (state.rss or {}).get(rule.rss_context)
    if not table:
        return None
    return sorted({q + rule.queue for q in table})


def port_steering(state: NicState, port: int, flow_type: str = "tcp6") -> dict[str, Any]:
    """Where a ``flow_type`` flow to ``port`` lands: by a rule, or by RSS."""
    for rule in matching_rules(state, port, flow_type):
        return {"by": "rule", "location": rule.location, "rss_context": rule.rss_context,
                "queues": rule_target_queues(state, rule)}
    main = state.main_indir
    if main:
        return {"by": "rss", "queues": sorted(set(main))}
    if state.rx_queues == 1:
        return {"by": "single-queue", "queues": [0]}
    return {"by": "unknown", "queues": None}


def plan_setup(state: NicState, queue: int, port: int, *, rss_context: bool = False,
               flow_type: str = "tcp6") -> Plan:
    """Pure: the steps that make ``flow_type dst-port port`` land on RX queue
    ``queue`` of ``state.ifname`` and nothing else land there. An already
    configured NIC gives an empty plan."""
    plan = Plan(ifname=state.ifname, queue=queue, port=port,
                mode="rss-context" if rss_context else "equal", flow_type=flow_type)
    return _plan(state, plan, (flow_type,), through_context=rss_context)


def plan_queues(state: NicState, first: int, last: int, port: int, *,
                flow_types: tuple[str, ...] | list[str] = FLOW_TYPES) -> Plan:
    """Pure: the steps that spread ``dst-port port`` (each of ``flow_types``, tcp4
    and tcp6 by default) over RX queues ``first..last`` through an RSS context of
    its own, with the main RSS table kept off those queues. ``first == last`` is
    one queue (through a context, unlike :func:`plan_setup`). An already
    configured NIC gives an empty plan."""
    fts = list(dict.fromkeys(flow_types))
    plan = Plan(ifname=state.ifname, queue=first, port=port, mode="queues",
                flow_type=fts[0] if fts else "", last=last, flow_types=fts)
    return _plan(state, plan, tuple(fts), through_context=True)


def _plan(state: NicState, plan: Plan, flow_types: tuple[str, ...], *,
          through_context: bool) -> Plan:
    """The steps in the order they run; a step's own function decides whether it
    is needed. The rules are looked at before the tables: a rule that already
    steers the port decides whether a context is needed at all."""
    if not _check_request(state, plan, flow_types):
        return plan
    n_after = _plan_channels(state, plan)
    _plan_header_split(state, plan)
    _plan_ntuple_feature(state, plan)
    steered, ctx_existing = _existing_steering(state, plan, flow_types, through_context)
    _plan_main_table(state, plan, n_after)
    to_steer = [ft for ft in flow_types if ft not in steered]
    ctx_ref: Any = None
    if through_context and to_steer:
        ctx_ref = _plan_context(state, plan, ctx_existing)
    for ft in to_steer:
        _plan_rule(plan, ft, ctx_ref if through_context else None, through_context)
    _note_bound_queues(state, plan)
    return plan


def _check_request(state: NicState, plan: Plan, flow_types: tuple[str, ...]) -> bool:
    """The request itself, and (several queues) whether the device can steer that
    way at all. False: nothing more to plan (no interface)."""
    ifn = state.ifname
    if not state.exists:
        plan.refuse(REFUSED_INTERFACE,
                    f"no interface {ifn}: {state.errors.get('interface', '')}".rstrip(": "))
        return False
    for ft in flow_types:
        if ft not in FLOW_TYPES:
            plan.refuse(REFUSED_REQUEST, f"flow type {ft!r} not supported "
                                         f"(use one of {', '.join(FLOW_TYPES)})")
    if not flow_types:
        plan.refuse(REFUSED_REQUEST, f"no flow type given (use {' and/or '.join(FLOW_TYPES)})")
    if not 0 < plan.port < 65536:
        plan.refuse(REFUSED_REQUEST, f"port {plan.port} out of range 1..65535")
    if plan.queue < 0:
        plan.refuse(REFUSED_REQUEST, f"queue {plan.queue} is negative")
    if plan.last is not None and plan.last < plan.queue:
        plan.refuse(REFUSED_REQUEST, f"queue range {plan.queue}-{plan.last} is empty: "
                                     f"write it FIRST-LAST with FIRST <= LAST")
    if state.driver and not state.known_zcrx_driver:
        plan.notes.append(
            f"driver {state.driver} is not a known zcrx driver "
            f"({', '.join(sorted(KNOWN_ZCRX_DRIVERS))}): without the queue API the "
            f"kernel answers EOPNOTSUPP when io_uring registers the queue "
            f"(`aiozcrx doctor --interface {ifn} --queue {plan.queue}` asks it)")
    if plan.mode == "queues":
        one = f"aiozcrx nic setup --interface {ifn} --queue Q --port {plan.port}"
        if state.main_indir is None:
            plan.refuse(REFUSED_STEERING,
                        f"{ifn} has no RSS indirection table "
                        f"({state.errors.get('rss', 'none reported')}): spreading a port over "
                        f"several queues needs RSS contexts; use a NIC with RSS contexts "
                        f"(bnxt, mlx5, gve, fbnic), or one queue for the port: {one}")
        if state.ntuple_active is not True and state.ntuple_changeable is False:
            plan.refuse(REFUSED_STEERING,
                        f"{ifn} has no ntuple flow steering (rx-ntuple-filter is fixed off): "
                        f"nothing can send the port to an RSS context; use a NIC with flow "
                        f"steering (bnxt, mlx5, gve, fbnic)")
    return True


def _plan_channels(state: NicState, plan: Plan) -> int | None:
    """Enough RX queues for the zcrx queues and at least one more for the rest:
    raised where the driver allows it. Returns the count once the plan ran."""
    ifn, first, last = state.ifname, plan.queue, plan.queues[-1] if plan.queues else plan.queue
    n_now, n_max, kind = state.rx_queues, state.rx_queues_max, state.channel_kind
    # queues below the first are left for the main table; with none, one above the last
    need = last + 1 if first > 0 else last + 2
    if plan.last is None:
        need = max(first + 1, 2)  # the one-queue form of the same rule
    if n_now is None:
        plan.refuse(REFUSED_UNKNOWN, f"cannot tell how many RX queues {ifn} has "
                                     f"({state.errors.get('channels', 'no channel information')})")
        return None
    if n_now >= need:
        return n_now
    what = plan.label
    if state.channels is None or kind is None:
        fix = (f"; pick queues within 0-{n_now - 1} leaving one for other traffic"
               if plan.last is not None and n_now >= 2 else "")
        plan.refuse(REFUSED_RANGE,
                    f"{what} out of range: {ifn} has {n_now} RX queue(s) and its "
                    f"driver cannot change that ({state.errors.get('channels', 'no channels')}){fix}")
        return n_now
    if n_max is not None and need > n_max:
        if plan.last is None:
            if first < n_max:
                plan.refuse(REFUSED_NO_MAIN_QUEUE,
                            f"queue {first} out of range: {ifn} supports at most {n_max} RX "
                            f"queue(s) (0..{n_max - 1}), and zcrx needs one more for other traffic")
            else:
                plan.refuse(REFUSED_RANGE, f"queue {first} out of range: {ifn} supports at most "
                                           f"{n_max} RX queue(s) (0..{n_max - 1})")
        elif last < n_max:
            plan.refuse(REFUSED_NO_MAIN_QUEUE,
                        f"{what} leave no RX queue for the main RSS table (other traffic): "
                        f"{ifn} supports at most {n_max} RX queue(s) (0..{n_max - 1}); "
                        + (f"end the range at {n_max - 2} (--queues {first}-{n_max - 2})"
                           if n_max >= 2 else "it needs a NIC with more than one"))
        else:
            plan.refuse(REFUSED_RANGE,
                        f"{what} out of range: {ifn} supports at most {n_max} RX queue(s) "
                        f"(0..{n_max - 1}); pick queues within 0-{n_max - 1}, leaving at "
                        f"least one of those for other traffic")
        return n_now
    plan.steps.append(Step(
        id="channels", title=f"raise {kind} channels {n_now} -> {need}",
        command=f"ethtool -L {ifn} {kind} {need}",
        apply=Op("channels", {"kind": kind, "count": need}),
        inverse=Op("channels", {"kind": kind, "count": n_now}),
        inverse_command=f"ethtool -L {ifn} {kind} {n_now}"))
    return need


def _plan_header_split(state: NicState, plan: Plan) -> None:
    """tcp-data-split on, hds-thresh 0 (where the kernel has a threshold)."""
    ifn, N = state.ifname, plan.notes
    rings = state.rings
    if rings is None:
        N.append(f"{ifn} does not report ring parameters "
                 f"({state.errors.get('rings', 'unknown')}): header/data split "
                 f"is probably unsupported")
        prev_split, prev_hds, has_hds = None, None, True
    else:
        prev_split = rings.get("tcp_data_split")
        prev_hds = rings.get("hds_thresh")
        has_hds = "hds_thresh_max" in rings or "hds_thresh" in rings
        if prev_split is None:
            N.append(f"{ifn} does not report tcp-data-split: the driver probably "
                     f"cannot split headers from payload")
        if not has_hds:
            N.append(f"{ifn} reports no hds-thresh (kernel < 6.13 or driver without "
                     f"a threshold): zcrx needs it to be 0, the default when unsupported")
        if prev_split == et.TCP_DATA_SPLIT_ENABLED and not prev_hds:
            return
    args: dict[str, Any] = {"tcp_data_split": et.TCP_DATA_SPLIT_ENABLED}
    inv: dict[str, Any] = {"tcp_data_split": prev_split or et.TCP_DATA_SPLIT_UNKNOWN}
    cmd = f"ethtool -G {ifn} tcp-data-split on"
    inv_cmd = f"ethtool -G {ifn} tcp-data-split {_split_word(prev_split)}"
    if has_hds:
        args["hds_thresh"] = 0
        cmd += " hds-thresh 0"
        if prev_hds is not None:
            inv["hds_thresh"] = prev_hds
            inv_cmd += f" hds-thresh {prev_hds}"
    plan.steps.append(Step(
        id="rings", title="turn on header/data split with threshold 0",
        command=cmd, apply=Op("rings", args), inverse=Op("rings", inv),
        inverse_command=inv_cmd))


def _plan_ntuple_feature(state: NicState, plan: Plan) -> None:
    """ntuple filters on."""
    ifn = state.ifname
    if state.ntuple_active is True:
        return
    if state.ntuple_active is None:
        plan.notes.append(f"could not read {ifn}'s features ({state.errors.get('features', '')})")
    elif state.ntuple_changeable is False:
        plan.notes.append(f"ntuple filters are fixed off on {ifn}: its driver has no flow steering")
    plan.steps.append(Step(
        id="ntuple", title="turn on ntuple flow steering",
        command=f"ethtool -K {ifn} ntuple on",
        apply=Op("features", {et.NTUPLE_FEATURE: True}),
        inverse=Op("features", {et.NTUPLE_FEATURE: False}),
        inverse_command=f"ethtool -K {ifn} ntuple off"))


def _existing_steering(state: NicState, plan: Plan, flow_types: tuple[str, ...],
                       through_context: bool) -> tuple[set[str], int | None]:
    """What is already there: the flow types whose rule already sends the port to
    exactly the plan's queues, and an existing context over exactly those queues
    (a rule's own context first) to reuse. A rule sending the port elsewhere is a
    problem: it is the user's, so it is never replaced."""
    ifn, port, want = state.ifname, plan.port, plan.queues
    ctx_existing = None
    if through_context and state.rss:
        for ctx, table in sorted(state.rss.items()):
            if ctx and table and set(table) == set(want):
                ctx_existing = ctx
                break
    if state.rules is None:
        plan.notes.append(f"could not read {ifn}'s ntuple rules ({state.errors.get('ntuple', '')})")
    steered: set[str] = set()
    for ft in flow_types:
        for rule in matching_rules(state, port, ft):
            targets = rule_target_queues(state, rule)
            if targets == want:
                steered.add(ft)
                if rule.rss_context is not None:
                    ctx_existing = rule.rss_context
            else:
                where = ("drops it" if rule.action != "queue" else
                         f"sends it to queue(s) {targets}" if targets else
                         f"sends it to RSS context {rule.rss_context}")
                plan.refuse(REFUSED_CONFLICT,
                            f"ntuple rule {rule.location} already matches {ft} dst-port "
                            f"{port} and {where}; remove it first: "
                            f"ethtool -N {ifn} delete {rule.location}")
    return steered, ctx_existing


def _plan_main_table(state: NicState, plan: Plan, n_after: int | None) -> None:
    """The main RSS table (context 0) kept off the zcrx queues. A table that was
    the driver's default is restored as the default (it follows the channel
    count); one the user set is restored verbatim."""
    ifn, first = state.ifname, plan.queue
    count = len(plan.queues)
    if n_after is None or n_after <= count or first < 0 or first + count > n_after:
        return
    title = f"keep RSS off {plan.label}"
    command = _rss_command(ifn, n_after, first, count)
    args: dict[str, Any] = {"queue": first, "queues": n_after}
    if plan.last is not None:
        args["count"] = count
    main = state.main_indir
    if main is None:
        plan.notes.append(f"{ifn} exposes no RSS indirection table "
                          f"({state.errors.get('rss', 'unknown')}): other flows may land on "
                          f"{plan.label}")
        plan.steps.append(Step(
            id="rss", title=title, command=command,
            apply=Op("rss_exclude", {**args, "size": None}),
            inverse=Op("rss_indir", {"context": 0, "indir": None}),
            inverse_command=f"ethtool -X {ifn} default"))
        return
    n_now = state.rx_queues
    was_default = n_now is not None and main == default_indir(len(main), n_now)
    effective = default_indir(len(main), n_after) if (was_default and n_after != n_now) else main
    if not set(plan.queues) & set(effective):
        return
    plan.steps.append(Step(
        id="rss", title=title, command=command,
        apply=Op("rss_exclude", {**args, "size": len(main)}),
        inverse=Op("rss_indir", {"context": 0, "indir": None if was_default else list(main)}),
        inverse_command=(f"ethtool -X {ifn} default" if was_default else
                         f"ethtool -X {ifn} weight ... (restore the recorded table)")))


def _plan_context(state: NicState, plan: Plan, ctx_existing: int | None) -> Any:
    """An RSS context over exactly the plan's queues: an existing one, or a new
    one (then ``"@rss-context"``, the id the kernel gives it when the step runs)."""
    if ctx_existing is not None:
        return ctx_existing
    ifn, first, count = state.ifname, plan.queue, len(plan.queues)
    main = state.main_indir
    args: dict[str, Any] = {"queue": first, "size": len(main) if main else None}
    if plan.last is None:
        title = f"create an RSS context holding only queue {first}"
    else:
        args["count"] = count
        title = f"create an RSS context spreading over {plan.label}"
    plan.steps.append(Step(
        id="rss-context", title=title,
        command=f"ethtool -X {ifn} context new start {first} equal {count}",
        apply=Op("rss_create", args),
        inverse=Op("rss_delete", {"context": "@"}),
        inverse_command=f"ethtool -X {ifn} context {{@rss-context}} delete",
        unsupported_fix=(f"{ifn}'s driver has no additional RSS contexts: use a NIC that has "
                         f"them (bnxt, mlx5, gve, fbnic), or one queue for the port: aiozcrx "
                         f"nic setup --interface {ifn} --queue Q --port {plan.port}")))
    return "@rss-context"


def _plan_rule(plan: Plan, flow_type: str, ctx_ref: Any, through_context: bool) -> None:
    """The ntuple rule for one flow type: to the context (queue offset 0) or
    straight to the queue."""
    ifn, port, queue = plan.ifname, plan.port, plan.queue
    if through_context:
        shown = ctx_ref if isinstance(ctx_ref, int) else "{@rss-context}"
        cmd = f"ethtool -N {ifn} flow-type {flow_type} dst-port {port} context {shown}"
        args = {"flow_type": flow_type, "dst_port": port, "queue": 0, "rss_context": ctx_ref}
    else:
        cmd = f"ethtool -N {ifn} flow-type {flow_type} dst-port {port} action {queue}"
        args = {"flow_type": flow_type, "dst_port": port, "queue": queue, "rss_context": None}
    step_id = "rule" if plan.last is None else f"rule-{flow_type}"
    plan.steps.append(Step(
        id=step_id, title=f"steer {flow_type} dst-port {port} to {plan.label}",
        command=cmd, apply=Op("ntuple_insert", args),
        inverse=Op("ntuple_delete", {"location": "@"}),
        inverse_command=f"ethtool -N {ifn} delete {{@{step_id}}}",
        unsupported_fix=(f"{ifn}'s driver cannot steer a {flow_type} port"
                         + (" to an RSS context" if through_context else "")
                         + ": use a NIC with ntuple flow steering (bnxt, mlx5, gve, fbnic)")))


def _note_bound_queues(state: NicState, plan: Plan) -> None:
    want = set(plan.queues)
    for q in state.queues or []:
        if q.get("type") == "rx" and q.get("id") in want and q.get("io_uring"):
            plan.notes.append(f"queue {q.get('id')} of {state.ifname} is already bound to an "
                              f"io_uring zcrx instance: registering another gives EEXIST until "
                              f"it is closed")


# --------------------------------------------------------------------------
# execution
# --------------------------------------------------------------------------
class Executor(Protocol):
    def run(self, op: Op) -> Any: ...


class KernelExecutor:
    """Runs :class:`Op`s against the kernel, and checks afterwards that the
    change took (a driver may accept a request and leave a feature fixed)."""

    def __init__(self, ifname: str):
        self.ifname = ifname

    def run(self, op: Op) -> Any:
        fn: Callable[..., Any] = getattr(self, "_op_" + op.kind)
        return fn(**op.args)

    def _op_channels(self, kind: str, count: int) -> None:
        et.set_channels(self.ifname, **{f"{kind}_count": count})
        got = et.get_channels(self.ifname).get(f"{kind}_count")
        if got != count:
            raise et.EthtoolError(_errno.EIO, f"{kind} channels are {got} after setting {count}",
                                  "CHANNELS_SET")

    def _op_rings(self, tcp_data_split: int | None = None, hds_thresh: int | None = None) -> None:
        et.set_rings(self.ifname, tcp_data_split=tcp_data_split, hds_thresh=hds_thresh)
        got = et.get_rings(self.ifname)
        if tcp_data_split == et.TCP_DATA_SPLIT_ENABLED and \
                got.get("tcp_data_split") not in (None, et.TCP_DATA_SPLIT_ENABLED):
            raise et.EthtoolError(_errno.EOPNOTSUPP, "tcp-data-split stayed off", "RINGS_SET")
        if hds_thresh is not None and got.get("hds_thresh", hds_thresh) != hds_thresh:
            raise et.EthtoolError(_errno.EINVAL, f"hds-thresh is {got.get('hds_thresh')} "
                                  f"after setting {hds_thresh}", "RINGS_SET")

    def _op_features(self, **wanted: bool) -> None:
        et.set_features(self.ifname, wanted)
        active = et.get_features(self.ifname)["active"]
        for name, on in wanted.items():
            if (name in active) != on:
                raise et.EthtoolError(_errno.EOPNOTSUPP,
                                      f"{name} stayed {'off' if on else 'on'} "
                                      f"(the driver does not let it change)", "FEATURES_SET")

    def _table_size(self, size: int | None) -> int:
        if size:
            return size
        size = len(et.get_rss(self.ifname).get("indir") or [])
        if not size:
            raise et.EthtoolError(_errno.EOPNOTSUPP, "the driver reports no RSS table", "RSS_GET")
        return size

    def _op_rss_exclude(self, queue: int, queues: int, size: int | None, count: int = 1) -> None:
        et.set_rss_indir(self.ifname, exclude_table(self._table_size(size), queues, queue, count))

    def _op_rss_indir(self, indir: list[int] | None, context: int = 0) -> None:
        et.set_rss_indir(self.ifname, indir, context)

    def _op_rss_create(self, queue: int, size: int | None, count: int = 1) -> int:
        return et.create_rss_context(self.ifname,
                                     spread_table(self._table_size(size), queue, count))

    def _op_rss_delete(self, context: int) -> None:
        et.delete_rss_context(self.ifname, context)

    def _op_ntuple_insert(self, flow_type: str, dst_port: int, queue: int,
                          rss_context: int | None = None) -> int:
        return et.insert_ntuple_rule(self.ifname, flow_type, dst_port, queue, rss_context)

    def _op_ntuple_delete(self, location: int) -> None:
        et.delete_ntuple_rule(self.ifname, location)


def _resolve(value: Any, results: dict[str, Any], own: Any) -> Any:
    if isinstance(value, str) and value.startswith("@"):
        key = value[1:]
        return own if key == "" else results[key]
    if isinstance(value, dict):
        return {k: _resolve(v, results, own) for k, v in value.items()}
    return value


def _resolve_text(text: str, results: dict[str, Any]) -> str:
    for key, val in results.items():
        text = text.replace("{@" + key + "}", str(val))
    return text


def state_dir() -> str:
    return os.environ.get("AIOZCRX_STATE_DIR") or DEFAULT_STATE_DIR


def state_path(ifname: str) -> str:
    return os.path.join(state_dir(), f"nic-{ifname}.json")


class StateFileError(Exception):
    """A state file that is not safely ours: not read, nothing replayed from it."""


def _write_record(path: str, record: dict[str, Any]) -> None:
    """Atomically: a new temporary file (mkstemp: O_EXCL, so never through a
    symlink, mode 0600) in the same directory, synced, renamed over ``path``
    (rename replaces a symlink there, it does not follow it)."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, mode=0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".nic-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(record, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def load_record(path: str) -> dict[str, Any] | None:
    """The record at ``path``, None if there is none. ``StateFileError`` if it is
    a symlink, not a regular file, not this user's, or writable by others:
    whoever could write it would choose what ``teardown`` does to the NIC."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno == _errno.ELOOP:
            raise StateFileError(f"{path} is a symbolic link: not read (a state file is never "
                                 "followed elsewhere); remove it if it is not yours") from None
        raise
    with os.fdopen(fd) as f:
        st = os.fstat(f.fileno())
        why = ("is not a regular file" if not stat.S_ISREG(st.st_mode) else
               f"belongs to uid {st.st_uid}, not {os.geteuid()}" if st.st_uid != os.geteuid() else
               "is writable by others" if st.st_mode & 0o022 else None)
        if why:
            raise StateFileError(f"{path} {why}: not read (its undo steps would run with "
                                 "CAP_NET_ADMIN); check and remove it")
        record: dict[str, Any] = json.load(f)
        return record


class _HeldSignals:
    """SIGINT and SIGTERM are held (recorded, not acted on) while the NIC is
    being changed, so that a step is never cut in half and a setup can roll back;
    on leaving, a held signal is raised again with its own handler (Ctrl-C:
    KeyboardInterrupt). A signal the process ignores stays ignored. Only the main
    thread can install handlers: elsewhere this holds nothing."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.caught: int | None = None
        self._old: dict[int, Any] = {}

    def _hold(self, signum: int, _frame: object) -> None:
        if self.caught is None:
            self.caught = signum

    def __enter__(self) -> "_HeldSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                if signal.getsignal(sig) is not signal.SIG_IGN:  # an ignored one stays ignored
                    self._old[sig] = signal.signal(sig, self._hold)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        if self.caught is not None and exc[0] is None:
            signal.raise_signal(self.caught)


@dataclass
class Outcome:
    ok: bool
    done: list[str] = field(default_factory=list)           # step ids applied (and kept)
    failed_step: str | None = None
    failed_command: str | None = None
    error: str | None = None
    errno: int | None = None
    rolled_back: list[str] = field(default_factory=list)    # inverse commands run
    rollback_errors: list[str] = field(default_factory=list)
    record_path: str | None = None
    fix: str | None = None  # what to do instead, where the driver cannot do a step at all


def _describe(exc: BaseException) -> tuple[str, int | None]:
    if isinstance(exc, et.EthtoolError):
        return str(exc), exc.errno
    if isinstance(exc, OSError) and exc.errno:
        return f"{et.errname(exc.errno)} ({exc.strerror})", exc.errno
    return f"{type(exc).__name__}: {exc}", None


def apply_plan(plan: Plan, executor: Executor, record_path: str | None) -> Outcome:
    """Run ``plan``; record each done step (with its resolved inverse) in
    ``record_path``; on the first failure, or an interruption (SIGINT, SIGTERM,
    KeyboardInterrupt), undo the done steps newest first. An interruption goes
    on once the rollback is over."""
    with _HeldSignals() as held:
        out, interrupt = _apply_steps(plan, executor, record_path, held)
    if interrupt is not None:
        raise interrupt
    return out


def _apply_steps(plan: Plan, executor: Executor, record_path: str | None,
                 held: _HeldSignals) -> tuple[Outcome, BaseException | None]:
    out = Outcome(ok=True, record_path=record_path)
    interrupt: BaseException | None = None
    results: dict[str, Any] = {}
    record: dict[str, Any] = {
        "version": 1, "interface": plan.ifname, "queue": plan.queue, "port": plan.port,
        "mode": plan.mode, "flow_type": plan.flow_type, "created": time.time(), "steps": []}
    if plan.last is not None:
        record["last"] = plan.last
        record["flow_types"] = list(plan.flow_types)
    for step in plan.steps:
        if held.caught is not None:
            out.ok = False
            out.failed_step = step.title
            out.error = f"interrupted ({signal.Signals(held.caught).name}) before this step"
            break
        try:
            result = executor.run(Op(step.apply.kind, _resolve(step.apply.args, results, None)))
        except BaseException as exc:  # noqa: BLE001 - every failure, and an interruption, rolls back
            out.ok = False
            out.failed_step = step.title
            out.failed_command = _resolve_text(step.command, results)
            out.error, out.errno = _describe(exc)
            if out.errno == _errno.EOPNOTSUPP and step.unsupported_fix:
                out.fix = step.unsupported_fix
            if not isinstance(exc, Exception):
                interrupt = exc
            break
        results[step.id] = result
        entry: dict[str, Any] = {
            "id": step.id, "title": step.title, "command": _resolve_text(step.command, results),
            "inverse": None, "inverse_command": _resolve_text(step.inverse_command, results)}
        if step.inverse is not None:
            entry["inverse"] = {"kind": step.inverse.kind,
                                "args": _resolve(step.inverse.args, results, result)}
        record["steps"].append(entry)
        out.done.append(step.id)
        if record_path:
            _write_record(record_path, record)
    if out.ok and held.caught is not None:
        # the signal came with the last step: the setup is whole, but it was asked
        # to stop; undo it all, as for any interruption
        out.ok = False
        out.error = f"interrupted ({signal.Signals(held.caught).name})"
    if out.ok:
        return out, None
    remaining = _undo(record["steps"], executor, out)
    out.done = [e["id"] for e in remaining]
    if record_path:
        if remaining:
            record["steps"] = remaining
            _write_record(record_path, record)
        elif os.path.exists(record_path):
            os.unlink(record_path)
    return out, interrupt


def _undo(entries: list[dict[str, Any]], executor: Executor, out: Outcome) -> list[dict[str, Any]]:
    """Run the inverses newest first; return the entries that could not be undone."""
    left: list[dict[str, Any]] = []
    for entry in reversed(entries):
        inv = entry.get("inverse")
        if inv is None:
            continue
        try:
            executor.run(Op(inv["kind"], copy.deepcopy(inv["args"])))
            out.rolled_back.append(entry["inverse_command"] or entry["title"])
        except Exception as exc:  # noqa: BLE001
            text, _ = _describe(exc)
            out.rollback_errors.append(f"{entry['title']} ({entry['inverse_command']}): {text}")
            left.insert(0, entry)
    return left


def teardown(record_path: str, executor: Executor) -> Outcome:
    """Undo a recorded setup. Entries that fail stay in the record."""
    out = Outcome(ok=True, record_path=record_path)
    record = load_record(record_path)
    if record is None:
        return out
    with _HeldSignals():  # a teardown is finished, and recorded, before an interruption acts
        left = _undo(record.get("steps", []), executor, out)
        if left:
            out.ok = False
            record["steps"] = left
            _write_record(record_path, record)
        else:
            os.unlink(record_path)
    return out


# --------------------------------------------------------------------------
# Python API: set up, and tear down, as the CLI does
# --------------------------------------------------------------------------
class NicSetupFailed(OSError):
    """A step of a setup failed; what the setup did is rolled back. ``outcome``
    has the step, the driver's answer, and what could not be rolled back (left in
    the state file for ``aiozcrx nic teardown``)."""

    def __init__(self, plan: Plan, outcome: Outcome):
        self.plan = plan
        self.outcome = outcome
        msg = (f"{plan.ifname}: step '{outcome.failed_step}' ({outcome.failed_command}) "
               f"failed: {outcome.error}")
        if outcome.fix:
            msg += f"; {outcome.fix}"
        if outcome.rollback_errors:
            msg += (f"; NOT rolled back: {'; '.join(outcome.rollback_errors)} (recorded in "
                    f"{outcome.record_path}: aiozcrx nic teardown --interface {plan.ifname})")
        else:
            msg += "; what was done is rolled back"
        super().__init__(outcome.errno or _errno.EIO, msg)


def queue_range(text: str) -> tuple[int, int]:
    """``"FIRST-LAST"`` (or one queue, ``"Q"``) as ``(first, last)``; ValueError
    naming the form otherwise."""
    first, sep, last = text.strip().partition("-")
    try:
        a = int(first)
        b = int(last) if sep else a
    except ValueError:
        raise ValueError(f"queues must be FIRST-LAST, like 0-3 (or one queue, like 5), "
                         f"got {text!r}") from None
    if a < 0 or b < a:
        raise ValueError(f"queues {text!r}: want FIRST-LAST with 0 <= FIRST <= LAST, like 0-3")
    return a, b


def _apply_or_raise(plan: Plan, executor: Executor, path: str) -> Outcome:
    if not plan.ok:
        raise refusal(plan)
    if not plan.steps:
        return Outcome(ok=True)  # already configured: nothing done, nothing recorded
    if load_record(path) is not None:
        raise EarlierSetupError(plan.ifname, [
            f"{path} records an earlier setup of {plan.ifname}; run `aiozcrx nic teardown "
            f"--interface {plan.ifname}` (or teardown_interface({plan.ifname!r})) first"])
    out = apply_plan(plan, executor, path)
    if not out.ok and out.fix and not out.rollback_errors:
        # the driver cannot do it at all: the same refusal as one the snapshot shows
        raise SteeringUnsupportedError(plan.ifname, [
            f"step '{out.failed_step}' ({out.failed_command}) failed: {out.error}; {out.fix} "
            f"(what was done is rolled back)"], out)
    if not out.ok:
        raise NicSetupFailed(plan, out)
    return out


def setup_queues(ifname: str, first: int, last: int, port: int, *,
                 flow_types: tuple[str, ...] | list[str] = FLOW_TYPES,
                 executor: Executor | None = None, record_path: str | None = None) -> Outcome:
    """What ``aiozcrx nic setup --interface IF --queues FIRST-LAST --port P`` does:
    header split on, an RSS context over exactly queues first..last, a rule per
    flow type (tcp4 and tcp6) sending ``port`` to it, the main RSS table kept off
    those queues; recorded in the state file for :func:`teardown_interface`.
    Needs CAP_NET_ADMIN; SIGINT/SIGTERM during it roll it back.

    Raises a :class:`NicRefused` subclass when nothing may be done (the message
    names the fix): :class:`QueueRangeError`, :class:`NoQueueLeftError`,
    :class:`SteeringUnsupportedError`, :class:`RuleConflictError`,
    :class:`EarlierSetupError`; :class:`NicSetupFailed` when a step failed (what
    was done is rolled back). Returns the outcome: ``done`` is empty where the NIC
    was already configured (nothing is recorded then)."""
    plan = plan_queues(read_state(ifname), first, last, port, flow_types=flow_types)
    return _apply_or_raise(plan, executor or KernelExecutor(ifname),
                           record_path or state_path(ifname))


def setup_queue(ifname: str, queue: int, port: int, *, rss_context: bool = False,
                flow_type: str = "tcp6", executor: Executor | None = None,
                record_path: str | None = None) -> Outcome:
    """What ``aiozcrx nic setup --interface IF --queue Q --port P`` does (one flow
    type to one queue); raises as :func:`setup_queues`."""
    plan = plan_setup(read_state(ifname), queue, port, rss_context=rss_context,
                      flow_type=flow_type)
    return _apply_or_raise(plan, executor or KernelExecutor(ifname),
                           record_path or state_path(ifname))


def recorded_queues(record: dict[str, Any]) -> list[int]:
    """The zcrx queues a state record's setup steered to."""
    first = record.get("queue")
    if not isinstance(first, int):
        return []
    last = record.get("last")
    return list(range(first, (last if isinstance(last, int) else first) + 1))


def teardown_interface(ifname: str, *, executor: Executor | None = None,
                       record_path: str | None = None) -> Outcome:
    """What ``aiozcrx nic teardown --interface IF`` does: undo the recorded setup
    (rules, contexts, main table, ntuple, header split, channels: newest first),
    once the kernel has released the recorded queues. ``ok`` False: what could not
    be undone stays recorded (``rollback_errors`` says why)."""
    path = record_path or state_path(ifname)
    record = load_record(path)
    if record is None:
        return Outcome(ok=True, record_path=path)
    if executor is None:
        wait_queues_released(ifname, recorded_queues(record))
        executor = KernelExecutor(ifname)
    return teardown(path, executor)


# --------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------
def _queue_range_arg(text: str) -> tuple[int, int]:
    try:
        return queue_range(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="aiozcrx nic",
                                description="Configure a NIC for io_uring zero-copy receive.")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("setup", help="configure IF so that a port lands on one queue, "
                                     "or is spread over several")
    s.add_argument("--interface", "-i", required=True)
    which = s.add_mutually_exclusive_group(required=True)
    which.add_argument("--queue", "-q", type=int, help="the zcrx RX queue (one flow type)")
    which.add_argument("--queues", type=_queue_range_arg, metavar="FIRST-LAST",
                       help="spread the port over these zcrx RX queues through an RSS "
                            "context of their own, tcp4 and tcp6 (e.g. 0-3)")
    s.add_argument("--port", "-p", type=int, required=True, help="destination port of the flow")
    s.add_argument("--rss-context", action="store_true",
                   help="steer the flow through a dedicated RSS context instead of a queue "
                        "(--queues always does)")
    s.add_argument("--flow-type", choices=FLOW_TYPES,
                   help="the flow type steered (--queue: default tcp6; --queues: default both)")
    s.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    t = sub.add_parser("teardown", help="undo what `nic setup` recorded")
    t.add_argument("--interface", "-i", help="only this interface (default: every record)")
    t.add_argument("--json", action="store_true")
    return p


def _print_plan(plan: Plan, file: IO[str] | None = None) -> None:
    file = file or sys.stdout
    if plan.last is None:
        print(f"plan for {plan.ifname}: {plan.flow_type} dst-port {plan.port} -> queue "
              f"{plan.queue} ({plan.mode})", file=file)
    else:
        print(f"plan for {plan.ifname}: {' and '.join(plan.flow_types)} dst-port {plan.port} "
              f"-> {plan.label} (an RSS context of their own)", file=file)
    for note in plan.notes:
        print(f"  note: {note}", file=file)
    for prob in plan.problems:
        print(f"  PROBLEM: {prob}", file=file)
    if not plan.ok:
        return
    if not plan.steps:
        print("  nothing to change: already configured", file=file)
    for i, step in enumerate(plan.steps, 1):
        text = f"  {i}. {step.title}\n       {step.command}\n       undo: {step.inverse_command}"
        print(re.sub(r"\{@([\w-]+)\}", r"<\1>", text), file=file)


def _setup(args: argparse.Namespace) -> int:
    state = read_state(args.interface)
    if args.queues is not None:
        first, last = args.queues
        plan = plan_queues(state, first, last, args.port,
                           flow_types=(args.flow_type,) if args.flow_type else FLOW_TYPES)
    else:
        plan = plan_setup(state, args.queue, args.port, rss_context=args.rss_context,
                          flow_type=args.flow_type or "tcp6")
    path = state_path(args.interface)
    result: dict[str, Any] = {"plan": plan.to_dict(), "state_file": path}
    if args.json and (args.dry_run or not plan.ok or not plan.steps):
        result["applied"] = False
        print(json.dumps(result, indent=2))
        return EXIT_OK if plan.ok else EXIT_REFUSED
    if not args.json:
        _print_plan(plan)
    if not plan.ok:
        print("refused: nothing was changed", file=sys.stderr)
        return EXIT_REFUSED
    if args.dry_run or not plan.steps:
        return EXIT_OK
    try:
        earlier = load_record(path)
    except StateFileError as e:
        print(f"refused: {e}", file=sys.stderr)
        return EXIT_REFUSED
    if earlier is not None:
        msg = (f"{path} records an earlier setup of {args.interface}; run "
               f"`aiozcrx nic teardown --interface {args.interface}` first")
        if args.json:
            print(json.dumps({**result, "applied": False, "error": msg}, indent=2))
        else:
            print(f"refused: {msg}", file=sys.stderr)
        return EXIT_REFUSED
    try:
        out = apply_plan(plan, KernelExecutor(args.interface), path)
    except KeyboardInterrupt:
        print("interrupted: what was done is rolled back", file=sys.stderr)
        return EXIT_INTERRUPTED
    if args.json:
        print(json.dumps({**result, "applied": out.ok, "outcome": asdict(out)}, indent=2))
    elif out.ok:
        print(f"done: {len(out.done)} step(s) applied; recorded in {path}")
        print(f"undo with: aiozcrx nic teardown --interface {args.interface}")
    else:
        print(f"FAILED at step '{out.failed_step}' ({out.failed_command}): {out.error}",
              file=sys.stderr)
        if out.fix:
            print(f"  fix: {out.fix}", file=sys.stderr)
        for cmd in out.rolled_back:
            print(f"  rolled back: {cmd}", file=sys.stderr)
        for err in out.rollback_errors:
            print(f"  ROLLBACK FAILED: {err}", file=sys.stderr)
        if out.rollback_errors:
            print(f"  what is left is recorded in {path}", file=sys.stderr)
        print("  see docs/troubleshooting.md for this error", file=sys.stderr)
    return EXIT_OK if out.ok else EXIT_FAILED


def wait_queue_released(interface: str, queue: int, timeout: float = 5.0) -> None:
    """The kernel unbinds a zcrx queue when the ring's exit work runs, a moment after
    the ring is closed (io_ring_exit_work): wait for a binding that is about to go
    (doctor's own trial, an application that just exited), so that the next step
    does not meet it (EEXIST, or EINVAL turning header split off)."""
    wait_queues_released(interface, [queue], timeout)


def wait_queues_released(interface: str, queues: list[int], timeout: float = 5.0) -> None:
    """:func:`wait_queue_released` for several queues, one deadline for all."""
    wanted = set(queues)
    deadline = time.monotonic() + timeout
    while wanted and time.monotonic() < deadline:
        try:
            if not any(q["type"] == "rx" and q["id"] in wanted and q["io_uring"]
                       for q in et.netdev_queues(interface)):
                return
        except (et.EthtoolError, OSError):
            return  # cannot tell (no netdev family): nothing to wait for
        time.sleep(0.02)


def _teardown(args: argparse.Namespace) -> int:
    if args.interface:
        paths = [state_path(args.interface)]
    else:
        try:
            paths = sorted(os.path.join(state_dir(), n) for n in os.listdir(state_dir())
                           if n.startswith("nic-") and n.endswith(".json"))
        except FileNotFoundError:
            paths = []
    rc = EXIT_OK
    report = []
    for path in paths:
        try:
            record = load_record(path)
        except StateFileError as e:
            print(f"refused: {e}", file=sys.stderr)
            rc = EXIT_FAILED
            continue
        if record is None:
            if not args.json:
                print(f"nothing recorded in {path}")
            continue
        wait_queues_released(record["interface"], recorded_queues(record))
        out = teardown(path, KernelExecutor(record["interface"]))
        report.append({"interface": record["interface"], **asdict(out)})
        if not args.json:
            for cmd in out.rolled_back:
                print(f"{record['interface']}: undone: {cmd}")
            for err in out.rollback_errors:
                print(f"{record['interface']}: FAILED: {err}", file=sys.stderr)
        if not out.ok:
            rc = EXIT_FAILED
    if not paths and not args.json:
        print(f"nothing recorded in {state_dir()}")
    if args.json:
        print(json.dumps(report, indent=2))
    return rc


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.cmd == "setup":
        return _setup(args)
    return _teardown(args)


if __name__ == "__main__":
    sys.exit(main())

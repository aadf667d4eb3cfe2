"""`aiozcrx doctor`: the judgement as pure functions, what it reports on this
host against what the kernel says, a veth in a private network namespace, and
(guest tier) the 7.x kernel's NODEV zcrx."""
from __future__ import annotations

import json
import os
import platform
import resource
import sys

import pytest

from aiozcrx.tools import doctor, nic
from aiozcrx.tools.doctor import FAIL, INFO, PASS, WARN

from test_nic import configured, fresh, netns  # noqa: F401 - the netns fixture

IN_GUEST = os.environ.get("AIOZCRX_GUEST") == "1"


def by_name(checks):
    return {c.name: c for c in checks}


def sysfacts(**kw):
    base = {"release": "7.2.7", "io_uring_disabled": 0, "io_uring_group": -1, "groups": [0],
            "seccomp": "0", "cap_eff": (1 << 12) | (1 << 14) | (1 << 21),
            "memlock": [resource.RLIM_INFINITY, resource.RLIM_INFINITY], "config_zcrx": "y"}
    base.update(kw)
    return base


CORE_OK = {"available": True, "error": None, "engine_error": None,
           "kernel": {"release": "7.2.7", "io_uring": True, "zcrx_query": {"features": 3},
                      "zcrx_nodev": True, "reason": ""},
           "engine": "zcrx", "tried": [["zcrx", True, "works here"]]}


# --------------------------------------------------------------------------
# system checks (pure)
# --------------------------------------------------------------------------
def test_healthy_system_all_pass():
    checks = by_name(doctor.system_checks(sysfacts(), CORE_OK))
    assert {c.status for c in checks.values()} == {PASS}
    assert "NODEV: available" in checks["kernel"].detail
    assert "features up to 7.2: notifications" in checks["kernel"].detail


def test_old_kernel_fails_with_fix():
    c = by_name(doctor.system_checks(sysfacts(release="6.8.0-45-generic"), CORE_OK))["kernel"]
    assert c.status == FAIL and "6.15" in c.fix
    c = by_name(doctor.system_checks(sysfacts(config_zcrx="n"), CORE_OK))["kernel"]
    assert c.status == FAIL


@pytest.mark.parametrize("value,status", [(None, PASS), (0, PASS), (1, FAIL), (2, FAIL)])
def test_io_uring_disabled(value, status):
    facts = sysfacts(io_uring_disabled=value, cap_eff=1 << 12)     # no CAP_SYS_ADMIN
    c = by_name(doctor.system_checks(facts, CORE_OK))["io_uring_disabled"]
    assert c.status == status
    if status == FAIL:
        assert c.fix.startswith("sysctl -w kernel.io_uring_disabled=0")


def test_io_uring_disabled_1_allows_group_members_and_admins():
    c = by_name(doctor.system_checks(sysfacts(io_uring_disabled=1, io_uring_group=1234,
                                              groups=[1234], cap_eff=0), CORE_OK))
    assert c["io_uring_disabled"].status == PASS
    c = by_name(doctor.system_checks(sysfacts(io_uring_disabled=1), CORE_OK))
    assert c["io_uring_disabled"].status == PASS                 # CAP_SYS_ADMIN


def test_seccomp_and_caps_and_memlock():
    c = by_name(doctor.system_checks(sysfacts(seccomp="2", cap_eff=0,
                                              memlock=[8 << 20, 8 << 20]), CORE_OK))
    assert c["seccomp"].status == WARN
    assert c["CAP_NET_ADMIN"].status == FAIL and "NET_ADMIN" in c["CAP_NET_ADMIN"].fix
    assert c["RLIMIT_MEMLOCK"].status == WARN and "ulimit -l unlimited" in c["RLIMIT_MEMLOCK"].fix
    assert "8 MiB" in c["RLIMIT_MEMLOCK"].detail
    # CAP_IPC_LOCK exempts io_uring's accounting from the limit
    c = by_name(doctor.system_checks(sysfacts(memlock=[8 << 20, 8 << 20]), CORE_OK))
    assert c["RLIMIT_MEMLOCK"].status == PASS


def test_core_probe_unavailable_is_reported_and_never_ok(monkeypatch):
    import aiozcrx.tools
    monkeypatch.setitem(sys.modules, "aiozcrx.tools.probe", None)     # import raises ImportError
    monkeypatch.delattr(aiozcrx.tools, "probe", raising=False)      # `from . import` sees it
    core = doctor.probe_core("eth1", 7)
    assert not core["available"] and "core probe unavailable" in core["error"]
    lines, ok = doctor.engine_section(core, "eth1", 7)
    assert not ok and "core probe unavailable" in lines[0]
    kernel = by_name(doctor.system_checks(sysfacts(), core))["kernel"]
    assert kernel.status == WARN and "core probe unavailable" in kernel.detail


def test_core_not_loadable_is_not_checked_and_never_ok(monkeypatch):
    from aiozcrx.tools import probe

    def no_core():
        raise ImportError("No module named 'aiozcrx._fastpath'", name="aiozcrx._fastpath")

    monkeypatch.setattr(probe, "load_core", no_core)
    monkeypatch.setattr(probe, "kernel_report", lambda: pytest.fail("probed without the core"))
    core = doctor.probe_core("eth1", 7)
    assert not core["available"]
    assert core["error"] == ("not checked: the compiled core could not be loaded "
                             "(No module named 'aiozcrx._fastpath')")
    lines, ok = doctor.engine_section(core, "eth1", 7)
    assert not ok and "not checked: the compiled core could not be loaded" in lines[0]
    kernel = by_name(doctor.system_checks(sysfacts(), core))["kernel"]
    assert kernel.status == WARN and "not checked: the compiled core" in kernel.detail
    assert "python -m aiozcrx.tools.probe" in kernel.fix


def test_engine_section_reads_choose_engine():
    core = dict(CORE_OK, engine="uring", tried=[["zcrx", False, "EOPNOTSUPP: no queue API"],
                                               ["zcrx-copy", False, "EINVAL"],
                                               ["uring", True, "works here"]])
    lines, ok = doctor.engine_section(core, "eth0", 1)
    assert not ok and lines[0].startswith("engine auto -> uring")
    assert any("EOPNOTSUPP: no queue API" in ln for ln in lines)
    assert doctor.engine_section(CORE_OK, "eth1", 7)[1]


# --------------------------------------------------------------------------
# interface checks (pure)
# --------------------------------------------------------------------------
def test_configured_mlx5_passes_everything():
    checks = doctor.interface_checks(configured(), 7, 9999, release="6.18.0")
    bad = [c for c in checks if c.status != PASS]
    assert bad == []
    assert "lands on queue(s) [7] by rule 1023" in by_name(checks)["steering"].detail


def test_fresh_mlx5_fails_with_the_fixing_commands():
    c = by_name(doctor.interface_checks(fresh(), 7, 9999, release="6.18.0"))
    assert c["driver"].status == PASS
    assert c["tcp-data-split"].status == FAIL
    assert c["tcp-data-split"].fix.startswith("ethtool -G eth1 tcp-data-split on hds-thresh 0")
    assert c["hds-thresh"].status == FAIL and c["hds-thresh"].fix == "ethtool -G eth1 hds-thresh 0"
    assert c["RSS"].status == FAIL and c["RSS"].fix == "ethtool -X eth1 equal 7"
    assert c["ntuple"].status == FAIL and c["ntuple"].fix == "ethtool -K eth1 ntuple on"
    assert c["steering"].status == FAIL
    assert c["steering"].fix == "ethtool -N eth1 flow-type tcp6 dst-port 9999 action 7"
    assert "by RSS" in c["steering"].detail


def test_queue_out_of_range_and_channel_fix():
    c = by_name(doctor.interface_checks(fresh(), 11, None, release="6.18.0"))
    assert c["queue"].status == FAIL and c["queue"].fix == "ethtool -L eth1 combined 12"
    assert c["steering"].status == INFO                 # no --port: nothing to judge


def test_bound_queue_is_eexist_and_other_queues_are_free():
    st = configured()
    st.queues[7]["io_uring"] = True
    c = by_name(doctor.interface_checks(st, 7, 9999, release="6.18.0"))["memory provider"]
    assert c.status == FAIL and "EEXIST" in c.detail
    c = by_name(doctor.interface_checks(st, 6, None, release="6.18.0"))["memory provider"]
    assert c.status == PASS and "rx 7: io_uring" in c.detail
    st.queues[7] = {"id": 7, "type": "rx", "io_uring": False, "dmabuf": 3, "xsk": False}
    c = by_name(doctor.interface_checks(st, 7, None, release="6.18.0"))["memory provider"]
    assert c.status == FAIL and "dmabuf" in c.detail
    # before 6.15 the absence of the io-uring attribute proves nothing
    st.queues[7] = {"id": 7, "type": "rx", "io_uring": False, "dmabuf": None, "xsk": False}
    c = by_name(doctor.interface_checks(st, 7, None, release="6.12.0"))["memory provider"]
    assert c.status == WARN


def test_unknown_driver_and_missing_features():
    st = nic.NicState(ifname="eth0", ifindex=2, driver="virtio_net", driver_source="sysfs",
                      channels={"combined_count": 1, "combined_max": 1}, sysfs_rx_queues=1,
                      rings={"rx": 256}, ntuple_active=False, ntuple_changeable=False,
                      rss={0: []}, rules=None, queues=None,
                      errors={"ntuple": "ETHTOOL_GRXCLSRLCNT: EOPNOTSUPP",
                              "queues": "netdev QUEUE_GET: EOPNOTSUPP"})
    c = by_name(doctor.interface_checks(st, 0, 80, release="6.18.0"))
    assert c["driver"].status == FAIL and "no queue API" in c["driver"].detail
    assert "EOPNOTSUPP" in c["driver"].detail
    assert c["queue"].status == FAIL
    assert c["tcp-data-split"].status == FAIL
    assert c["ntuple"].status == FAIL and "fixed" in c["ntuple"].detail
    assert c["memory provider"].status == WARN and "unavailable" in c["memory provider"].detail


def test_trial_registration_decides_the_queue_api_not_the_driver_name():
    """The kernel's answer to a trial registration overrides the known-driver list."""
    netdevsim = fresh(driver="netdevsim")
    c = by_name(doctor.interface_checks(netdevsim, 1, None, trial=(True, "works here")))
    assert c["driver"].status == PASS and "trial zcrx registration on queue 1 succeeded" \
        in c["driver"].detail and "not one of the drivers known" in c["driver"].detail
    c = by_name(doctor.interface_checks(netdevsim, 1, None, trial=(False, "EINVAL: bad queue")))
    assert c["driver"].status == PASS and "has the queue API" in c["driver"].detail
    # a known driver whose queue the kernel refuses outright
    c = by_name(doctor.interface_checks(fresh(), 7, None, trial=(False, "EOPNOTSUPP: no")))
    assert c["driver"].status == FAIL and "gave EOPNOTSUPP" in c["driver"].detail
    assert "a known zcrx driver (mlx5)" in c["driver"].detail
    # without a trial, the name is a hint
    c = by_name(doctor.interface_checks(netdevsim, 1, None))
    assert c["driver"].status == FAIL and "by name" in c["driver"].detail


def test_split_reported_on_but_refused_by_the_kernel_is_a_fail():
    """A driver may report its default ("auto") as on while the kernel's own
    configuration is unset: the trial registration (EINVAL) tells."""
    st = configured()
    c = by_name(doctor.interface_checks(st, 7, 9999, trial=(False, "EINVAL: header split")))
    assert c["tcp-data-split"].status == FAIL and "reported on" in c["tcp-data-split"].detail
    assert c["tcp-data-split"].fix == ("ethtool -G eth1 tcp-data-split off; "
                                       "ethtool -G eth1 tcp-data-split on")
    c = by_name(doctor.interface_checks(st, 7, 9999, trial=(True, "works here")))
    assert c["tcp-data-split"].status == PASS


# --------------------------------------------------------------------------
# never a fix this run found unavailable (issue 12)
# --------------------------------------------------------------------------
def fix_lines(text: str) -> list[str]:
    return [ln.strip() for ln in text.splitlines() if ln.strip().startswith("fix:")]


def nic_config_fixes(checks) -> list[str]:
    """Fixes that configure the NIC for zcrx: ethtool, `aiozcrx nic setup`."""
    return [f"{c.name}: {c.fix}" for c in checks
            if c.status != PASS and (c.fix.startswith("ethtool") or "nic setup" in c.fix)]


def test_no_queue_api_suggests_no_nic_configuration():
    """The kernel refused the queue (EOPNOTSUPP): header split, RSS, ntuple and a
    rule would change settings for nothing, and `aiozcrx nic setup` with them."""
    st = fresh()                         # split off, RSS over the queue, ntuple off
    checks = doctor.interface_checks(st, 7, 9999, trial=(False, "EOPNOTSUPP: no queue API"))
    assert nic_config_fixes(checks) == []
    c = by_name(checks)
    for name in ("tcp-data-split", "hds-thresh", "RSS", "ntuple", "steering"):
        assert c[name].status == FAIL                   # the facts stay
        assert c[name].fix == "none on eth1: eth1 has no queue API (the kernel answered EOPNOTSUPP)"
    # the same NIC whose queue the kernel accepts gets every command
    fixes = nic_config_fixes(doctor.interface_checks(st, 7, 9999, trial=(False, "EINVAL: split")))
    assert any("aiozcrx nic setup" in f for f in fixes) and len(fixes) == 5


@pytest.mark.parametrize("what,state", [
    ("cannot split headers from payload", fresh(rings={"rx": 1024, "rx_max": 8192})),
    ("cannot split headers from payload", fresh(rings=None, errors={"rings": "EOPNOTSUPP"})),
    ("has no flow steering", fresh(ntuple_changeable=False)),
], ids=["split-not-reported", "no-rings", "ntuple-fixed-off"])
def test_nic_that_cannot_do_zcrx_gets_no_setup_commands(what, state):
    checks = doctor.interface_checks(state, 7, 9999, trial=(False, "EINVAL: header split"))
    assert nic_config_fixes(checks) == [], what
    assert any(what in c.fix for c in checks if c.status == FAIL)


def test_single_queue_nic_is_not_told_to_add_channels():
    """No channel information: `ethtool -L` cannot add a queue either."""
    st = fresh(channels=None, sysfs_rx_queues=1, rss={0: [0] * 8},
               errors={"channels": "CHANNELS_GET: EOPNOTSUPP"})
    c = by_name(doctor.interface_checks(st, 0, None))
    assert c["queue"].status == FAIL and "ethtool -L" not in c["queue"].fix
    assert "one RX queue" in c["queue"].fix
    st = fresh(channels=None, sysfs_rx_queues=4, errors={"channels": "CHANNELS_GET: EOPNOTSUPP"})
    c = by_name(doctor.interface_checks(st, 5, None))
    assert c["queue"].fix.startswith("pick a queue of at most 3")


@pytest.mark.parametrize("nodev,io_uring,want,unwanted", [
    (True, True, ["engine='zcrx-copy' / 'uring'"], []),
    (False, True, ["engine='uring'"], ["zcrx-copy"]),
    (None, None, ["engine='uring'"], ["zcrx-copy"]),      # not probed: nothing promised
    (False, False, ["engine='socket'"], ["zcrx-copy", "'uring'"]),
])
def test_other_engines_only_where_the_probes_found_them(nodev, io_uring, want, unwanted):
    c = by_name(doctor.interface_checks(fresh(), 7, None, trial=(False, "EOPNOTSUPP: x"),
                                        nodev=nodev, io_uring=io_uring))["driver"]
    assert c.status == FAIL
    for w in want:
        assert w in c.fix
    for u in unwanted:
        assert u not in c.fix


def test_run_takes_the_engines_from_the_core_probe(monkeypatch):
    """Through run()/render(): a kernel without NODEV is never told to use zcrx-copy."""
    core = dict(CORE_OK, engine="uring",
                kernel=dict(CORE_OK["kernel"], zcrx_nodev=False),
                tried=[["zcrx", False, "EOPNOTSUPP: eth1 (virtio_net) has no queue API"],
                       ["zcrx-copy", False, "EINVAL: this kernel has no ZCRX_REG_NODEV"],
                       ["uring", True, "works here"]])
    monkeypatch.setattr(doctor, "gather_system", lambda: sysfacts(release="6.18.0"))
    monkeypatch.setattr(doctor, "probe_core", lambda i, q: core)
    monkeypatch.setattr(nic, "read_state", lambda ifn: fresh())
    monkeypatch.setattr(nic, "wait_queue_released", lambda i, q: None)
    text = doctor.render(doctor.run("eth1", 7, 9999))
    fixes = fix_lines(text)
    assert fixes and not [f for f in fixes if "zcrx-copy" in f or "nic setup" in f
                          or f.startswith("fix: ethtool")]
    assert "fix: use a NIC whose driver has the queue API (bnxt, mlx5, gve, fbnic), or " \
           "engine='uring'" in fixes
    # NODEV there: it is offered
    core["kernel"]["zcrx_nodev"] = True
    core["tried"][1] = ["zcrx-copy", True, "works here"]
    assert any("'zcrx-copy'" in f for f in fix_lines(doctor.render(doctor.run("eth1", 7, 9999))))


def test_missing_interface():
    st = nic.NicState(ifname="nope", exists=False, errors={"interface": "ENODEV: no interface"})
    checks = doctor.interface_checks(st, 1, 9999)
    assert [c.status for c in checks] == [FAIL]


def test_run_verdict_needs_no_fail_and_core_zcrx(monkeypatch):
    monkeypatch.setattr(doctor, "gather_system", lambda: sysfacts())
    monkeypatch.setattr(doctor, "probe_core", lambda i, q: CORE_OK)
    monkeypatch.setattr(nic, "read_state", lambda ifn: configured())
    assert doctor.run("eth1", 7, 9999)["ok"]
    assert not doctor.run("eth1", None, None)["ok"]               # no queue: cannot say
    monkeypatch.setattr(nic, "read_state", lambda ifn: fresh())
    rep = doctor.run("eth1", 7, 9999)
    assert not rep["ok"]
    text = doctor.render(rep)
    assert "result: engine=\"zcrx\" cannot work on eth1 queue 7" in text
    assert "fix: ethtool -X eth1 equal 7" in text
    assert len(text.splitlines()) <= 40                            # one screen


# --------------------------------------------------------------------------
# this host: what doctor reports must be what the kernel says
# --------------------------------------------------------------------------
def _cap_eff() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    raise AssertionError("no CapEff")


def test_host_report_matches_the_kernel(capsys):
    rc = doctor.main(["--json"])
    rep = json.loads(capsys.readouterr().out)
    sysf = rep["system"]
    assert sysf["release"] == os.uname().release == platform.release()
    try:
        with open("/proc/sys/kernel/io_uring_disabled") as f:
            expected = int(f.read())
    except FileNotFoundError:
        expected = None
    assert sysf["io_uring_disabled"] == expected
    checks = {c["name"]: c for c in rep["checks"]}
    assert checks["io_uring_disabled"]["status"] == (PASS if expected in (None, 0) else
                                                     checks["io_uring_disabled"]["status"])
    assert sysf["cap_eff"] == _cap_eff()
    has_net_admin = bool(_cap_eff() >> 12 & 1)
    assert checks["CAP_NET_ADMIN"]["status"] == (PASS if has_net_admin else FAIL)
    assert sysf["memlock"] == list(resource.getrlimit(resource.RLIMIT_MEMLOCK))
    with open("/proc/self/status") as f:
        seccomp = next(ln.split()[1] for ln in f if ln.startswith("Seccomp:"))
    assert sysf["seccomp"] == seccomp
    # without an interface and queue zcrx cannot be confirmed on a host without
    # NODEV: the exit status says so
    if not rep["zcrx_ok"]:
        assert rc == 1 and not rep["ok"]
    if rep["core"]["available"]:
        kr = rep["core"]["kernel"]
        assert kr["release"] == sysf["release"]
        assert kr["io_uring_disabled"] == expected


def test_host_loopback_is_not_zcrx_capable(capsys):
    rc = doctor.main(["--interface", "lo", "--queue", "0", "--port", "9999"])
    out = capsys.readouterr().out
    assert rc == 1
    assert "FAIL  driver" in out and "no queue API" in out
    assert out.rstrip().splitlines()[-1].startswith('result: engine="zcrx" cannot work on lo')
    # lo has no queue API, no header split, one queue: nothing to configure on it
    fixes = fix_lines(out)
    assert not [f for f in fixes if "nic setup" in f or f.startswith("fix: ethtool")], fixes
    # the engines offered instead are those the probe found working here
    doctor.main(["--interface", "lo", "--queue", "0", "--json"])
    rep = json.loads(capsys.readouterr().out)
    works = {name: ok for name, ok, _why in rep["core"]["tried"]} if rep["core"]["available"] else {}
    driver_fix = {c["name"]: c for c in rep["checks"]}["driver"]["fix"]
    assert ("zcrx-copy" in driver_fix) == bool(works.get("zcrx-copy")), driver_fix


# --------------------------------------------------------------------------
# a veth in a private namespace
# --------------------------------------------------------------------------
def test_doctor_on_veth_reports_driver_and_no_queue_api(netns):
    netns.veth("va", "vb")
    r = netns.aiozcrx("doctor", "--interface", "va", "--queue", "0", "--port", "9999", "--json")
    assert r.returncode == 1, r.stderr
    rep = json.loads(r.stdout)
    checks = {c["name"]: c for c in rep["checks"]}
    assert checks["driver"]["status"] == FAIL
    assert checks["driver"]["detail"].startswith("veth (from ETHTOOL_GDRVINFO): no queue API")
    assert rep["interface"]["driver"] == "veth"
    assert not rep["ok"]
    text = netns.aiozcrx("doctor", "-i", "va", "-q", "0", "-p", "9999")
    assert text.returncode == 1
    assert "veth" in text.stdout and "no queue API" in text.stdout
    # a veth cannot host zcrx whatever its settings: no ethtool, no `nic setup`
    fixes = fix_lines(text.stdout)
    assert not [f for f in fixes if "nic setup" in f or f.startswith("fix: ethtool")], fixes


# --------------------------------------------------------------------------
# guest tier: the 7.x kernel
# --------------------------------------------------------------------------
@pytest.mark.guest
@pytest.mark.skipif(not IN_GUEST, reason="needs the 7.1+ guest kernel (AIOZCRX_GUEST=1): "
                                         "`make test-guest` runs it in User-Mode Linux")
def test_guest_doctor_reports_nodev_zcrx(capsys):
    doctor.main(["--json"])
    rep = json.loads(capsys.readouterr().out)
    assert rep["core"]["available"], rep["core"]["error"]
    assert rep["core"]["kernel"]["zcrx_nodev"] is True
    kernel = {c["name"]: c for c in rep["checks"]}["kernel"]
    assert kernel["status"] == PASS
    assert "NODEV: available" in kernel["detail"]
    assert doctor.parse_release(rep["system"]["release"]) >= (7, 1)
    # NODEV works here: instead of lo (no queue API), zcrx-copy is offered
    doctor.main(["--interface", "lo", "--queue", "0", "--json"])
    rep = json.loads(capsys.readouterr().out)
    driver = {c["name"]: c for c in rep["checks"]}["driver"]
    assert driver["status"] == FAIL and "'zcrx-copy'" in driver["fix"]


# --------------------------------------------------------------------------
# several queues for one port: `doctor --queues A-B --port P` (issue 19)
# --------------------------------------------------------------------------
def with_napi(st, bound=()):
    for q in st.queues:
        q["napi_id"] = 8193 + q["id"]
        q["io_uring"] = q["id"] in bound
    return st


def test_queues_configured_pass_with_each_queues_napi_id():
    from test_nic import spread_over

    checks = doctor.queues_checks(with_napi(spread_over()), 0, 3, 9999, release="7.2.13",
                                  trial=(True, "works here"))
    c = by_name(checks)
    assert {x.status for x in checks} == {PASS}, [(x.name, x.status, x.detail) for x in checks]
    assert "context 5 spreads over [0, 1, 2, 3]" in c["RSS context"].detail
    assert "tcp4 dst-port 9999 lands on queue(s) [0, 1, 2, 3] by rule 1023 (context 5)" in \
        c["steering tcp4"].detail
    assert c["steering tcp6"].status == PASS
    assert c["queue 2"].detail == "napi id 8195; free"
    assert "queue 4" not in c


def test_queues_on_a_fresh_nic_fail_naming_nic_setup_queues():
    c = by_name(doctor.queues_checks(with_napi(fresh()), 0, 3, 9999, release="7.2.13"))
    setup = "aiozcrx nic setup --interface eth1 --queues 0-3 --port 9999"
    for name in ("tcp-data-split", "RSS", "RSS context", "steering tcp4", "steering tcp6"):
        assert c[name].status == FAIL, name
    assert setup in c["tcp-data-split"].fix
    assert c["RSS context"].fix == c["steering tcp4"].fix == setup
    assert c["RSS"].fix == "ethtool -X eth1 weight 0 0 0 0 1 1 1 1"
    assert "queue(s) [0, 1, 2, 3]" in c["RSS"].detail


def test_queues_bound_missing_napi_and_shared_napi():
    from test_nic import spread_over

    st = with_napi(spread_over(), bound={1})
    st.queues[2]["napi_id"] = None
    st.queues[3]["napi_id"] = st.queues[0]["napi_id"]
    c = by_name(doctor.queues_checks(st, 0, 3, 9999, release="7.2.13"))
    assert c["queue 1"].status == FAIL and "bound to an io_uring zcrx" in c["queue 1"].detail
    assert "EEXIST" in c["queue 1"].detail
    assert c["queue 2"].status == WARN and "no NAPI id" in c["queue 2"].detail
    assert c["queue 3"].status == WARN and "the same as queue 0" in c["queue 3"].detail


def test_queues_range_leaving_nothing_for_the_main_table():
    c = by_name(doctor.queues_checks(with_napi(fresh()), 0, 7, 9999))
    assert c["queues"].status == FAIL and "leaves no RX queue" in c["queues"].detail
    assert "--queues 0-7" in c["queues"].fix and "raises the channels to 9" in c["queues"].fix
    st = fresh(channels={"combined_count": 8, "combined_max": 8})
    c = by_name(doctor.queues_checks(with_napi(st), 0, 7, 9999))
    assert c["queues"].fix.startswith("pick queues within 0-6")


def test_run_and_render_with_queues(monkeypatch):
    from test_nic import spread_over

    monkeypatch.setattr(doctor, "gather_system", lambda: sysfacts())
    probed = []
    monkeypatch.setattr(doctor, "probe_core", lambda i, q: probed.append(q) or CORE_OK)
    monkeypatch.setattr(nic, "read_state", lambda ifn: with_napi(spread_over()))
    monkeypatch.setattr(nic, "wait_queue_released", lambda i, q: None)
    rep = doctor.run("eth1", None, 9999, queues=(0, 3))
    assert rep["ok"] and probed == [0]                 # the trial is on the first queue
    assert rep["napi_ids"] == {"0": 8193, "1": 8194, "2": 8195, "3": 8196}
    text = doctor.render(rep)
    assert text.splitlines()[0].endswith("interface eth1 queues 0-3 port 9999")
    assert 'result: engine="zcrx" can work on eth1 queues 0-3' in text
    monkeypatch.setattr(nic, "read_state", lambda ifn: with_napi(fresh()))
    rep = doctor.run("eth1", None, 9999, queues=(0, 3))
    assert not rep["ok"]
    assert 'cannot work on eth1 queues 0-3' in doctor.render(rep)


def test_cli_queues_needs_an_interface_and_a_range(capsys):
    for argv in (["--queues", "0-3"], ["-i", "eth1", "--queues", "3-0"],
                 ["-i", "eth1", "--queues", "0-3", "--queue", "1"]):
        with pytest.raises(SystemExit) as e:
            doctor.main(argv)
        assert e.value.code == 2

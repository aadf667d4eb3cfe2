"""`aiozcrx nic`: plan building (pure), execution/rollback/teardown (fake
executor), the netlink/ioctl codecs, and real runs on veth/dummy/ifb devices
in a network namespace the test creates."""
from __future__ import annotations

import errno
import json
import os
import shutil
import struct
import subprocess
import sys
import uuid

import pytest

import aiozcrx
from aiozcrx.tools import ethtool as et
from aiozcrx.tools import nic
from aiozcrx.tools.nic import NicState, Op, exclude_table, plan_setup

ENABLED, DISABLED = et.TCP_DATA_SPLIT_ENABLED, et.TCP_DATA_SPLIT_DISABLED


def rule(loc, port, queue=None, *, ft="tcp6", ctx=None, action="queue", other=False):
    return et.NtupleRule(location=loc, flow_type=ft, dst_port=port, queue=queue,
                         rss_context=ctx, action=action, other_match=other)


def fresh(**kw) -> NicState:
    """An mlx5 NIC as it comes up: 8 of 16 combined channels, default RSS over
    all 8, header/data split off, ntuple off, no rules."""
    base = dict(
        ifname="eth1", ifindex=3, driver="mlx5_core", driver_source="sysfs",
        channels={"combined_count": 8, "combined_max": 16},
        sysfs_rx_queues=8,
        rings={"rx": 1024, "rx_max": 8192, "tcp_data_split": DISABLED,
               "hds_thresh": 256, "hds_thresh_max": 1024},
        ntuple_active=False, ntuple_changeable=True,
        rss={0: nic.default_indir(128, 8)}, rules=[], rule_table_size=1024,
        queues=[{"id": q, "type": "rx", "io_uring": False, "dmabuf": None, "xsk": False}
                for q in range(8)])
    base.update(kw)
    return NicState(**base)


def configured(queue=7, port=9999) -> NicState:
    return fresh(rings={"tcp_data_split": ENABLED, "hds_thresh": 0, "hds_thresh_max": 1024},
                 ntuple_active=True, rss={0: exclude_table(128, 8, queue)},
                 rules=[rule(1023, port, queue)])


def ids(plan):
    return [s.id for s in plan.steps]


# --------------------------------------------------------------------------
# pure helpers
# --------------------------------------------------------------------------
def test_default_and_exclude_tables():
    assert nic.default_indir(8, 3) == [0, 1, 2, 0, 1, 2, 0, 1]
    # queue N-1 excluded == `ethtool -X IF equal N-1`
    assert exclude_table(8, 4, 3) == nic.default_indir(8, 3)
    t = exclude_table(128, 8, 2)
    assert 2 not in t and set(t) == {0, 1, 3, 4, 5, 6, 7}
    with pytest.raises(ValueError):
        exclude_table(8, 1, 0)


def test_rss_command_equal_or_weight():
    assert nic._rss_command("eth1", 8, 7) == "ethtool -X eth1 equal 7"
    assert nic._rss_command("eth1", 4, 1) == "ethtool -X eth1 weight 1 0 1 1"


# --------------------------------------------------------------------------
# plan building
# --------------------------------------------------------------------------
def test_already_configured_nic_gives_empty_plan():
    plan = plan_setup(configured(), 7, 9999)
    assert plan.ok and plan.steps == []


def test_already_configured_with_rss_context_gives_empty_plan():
    st = configured()
    st.rss[5] = [7] * 128
    st.rules = [rule(1023, 9999, 0, ctx=5)]
    assert plan_setup(st, 7, 9999, rss_context=True).steps == []
    # a rule through a context that holds only the queue also satisfies "equal" mode
    assert plan_setup(st, 7, 9999).steps == []


def test_fresh_nic_equal_mode_full_plan():
    plan = plan_setup(fresh(), 7, 9999)
    assert plan.ok
    assert ids(plan) == ["rings", "ntuple", "rss", "rule"]
    rings, ntuple, rss, rl = plan.steps
    assert rings.command == "ethtool -G eth1 tcp-data-split on hds-thresh 0"
    assert rings.apply == Op("rings", {"tcp_data_split": ENABLED, "hds_thresh": 0})
    assert rings.inverse == Op("rings", {"tcp_data_split": DISABLED, "hds_thresh": 256})
    assert ntuple.command == "ethtool -K eth1 ntuple on"
    assert ntuple.inverse == Op("features", {"rx-ntuple-filter": False})
    assert rss.command == "ethtool -X eth1 equal 7"
    assert rss.apply == Op("rss_exclude", {"queue": 7, "queues": 8, "size": 128})
    # the table was the driver default: undo resets to default, not a frozen copy
    assert rss.inverse == Op("rss_indir", {"context": 0, "indir": None})
    assert rss.inverse_command == "ethtool -X eth1 default"
    assert rl.command == "ethtool -N eth1 flow-type tcp6 dst-port 9999 action 7"
    assert rl.apply.args == {"flow_type": "tcp6", "dst_port": 9999, "queue": 7,
                             "rss_context": None}
    assert rl.inverse == Op("ntuple_delete", {"location": "@"})
    # a driver-bound NIC from the known list gets no "not a zcrx driver" note
    assert not any("not a known zcrx driver" in n for n in plan.notes)


def test_queue_in_the_middle_uses_weights_and_keeps_other_queues():
    plan = plan_setup(fresh(), 3, 443)
    rss = next(s for s in plan.steps if s.id == "rss")
    assert rss.command == "ethtool -X eth1 weight 1 1 1 0 1 1 1 1"
    assert rss.apply.args["queue"] == 3


def test_user_configured_rss_table_is_restored_verbatim():
    custom = [0, 1, 2, 7] * 32
    plan = plan_setup(fresh(rss={0: custom}), 7, 9999)
    rss = next(s for s in plan.steps if s.id == "rss")
    assert rss.inverse == Op("rss_indir", {"context": 0, "indir": custom})


def test_rss_table_already_excluding_queue_needs_no_rss_step():
    plan = plan_setup(fresh(rss={0: [0, 1, 2] * 10}), 7, 9999)
    assert "rss" not in ids(plan)


def test_queue_beyond_current_channels_raises_channel_count_first():
    plan = plan_setup(fresh(), 11, 9999)
    assert ids(plan)[0] == "channels"
    ch = plan.steps[0]
    assert ch.command == "ethtool -L eth1 combined 12"
    assert ch.apply == Op("channels", {"kind": "combined", "count": 12})
    assert ch.inverse == Op("channels", {"kind": "combined", "count": 8})
    # the default table would follow the new channel count and include queue 11
    rss = next(s for s in plan.steps if s.id == "rss")
    assert rss.apply.args == {"queue": 11, "queues": 12, "size": 128}


def test_queue_out_of_range_is_refused():
    plan = plan_setup(fresh(), 16, 9999)
    assert not plan.ok
    assert any("queue 16 out of range" in p and "at most 16" in p for p in plan.problems)


def test_single_queue_nic_is_refused_even_for_queue_0():
    st = fresh(channels={"combined_count": 1, "combined_max": 1}, sysfs_rx_queues=1,
               rss={0: [0] * 64})
    plan = plan_setup(st, 0, 9999)
    assert not plan.ok
    assert any("one more for other traffic" in p for p in plan.problems)


def test_negative_queue_and_bad_port_are_refused():
    assert not plan_setup(fresh(), -1, 9999).ok
    assert not plan_setup(fresh(), 7, 0).ok
    assert not plan_setup(fresh(), 7, 70000).ok


def test_missing_interface_is_refused():
    st = NicState(ifname="nope", exists=False, errors={"interface": "ENODEV: no interface"})
    plan = plan_setup(st, 1, 9999)
    assert not plan.ok and plan.steps == []
    assert "ENODEV" in plan.problems[0]


def test_rss_context_mode_creates_context_and_points_rule_at_it():
    plan = plan_setup(fresh(), 7, 9999, rss_context=True)
    assert plan.mode == "rss-context"
    assert ids(plan) == ["rings", "ntuple", "rss", "rss-context", "rule"]
    ctx = plan.steps[3]
    assert ctx.command == "ethtool -X eth1 context new start 7 equal 1"
    assert ctx.apply == Op("rss_create", {"queue": 7, "size": 128})
    assert ctx.inverse == Op("rss_delete", {"context": "@"})
    rl = plan.steps[4]
    assert rl.apply.args == {"flow_type": "tcp6", "dst_port": 9999, "queue": 0,
                             "rss_context": "@rss-context"}
    assert "context {@rss-context}" in rl.command


def test_rss_context_mode_reuses_an_existing_context_for_the_queue():
    st = fresh(rss={0: exclude_table(128, 8, 7), 3: [7] * 128})
    plan = plan_setup(st, 7, 9999, rss_context=True)
    assert "rss-context" not in ids(plan)
    rl = next(s for s in plan.steps if s.id == "rule")
    assert rl.apply.args["rss_context"] == 3
    assert rl.command.endswith("context 3")


def test_conflicting_rule_is_refused_with_the_delete_command():
    st = configured()
    st.rules = [rule(5, 9999, 2)]
    plan = plan_setup(st, 7, 9999)
    assert not plan.ok
    assert any("ethtool -N eth1 delete 5" in p for p in plan.problems)


def test_rules_for_other_ports_or_wider_matches_do_not_count():
    st = configured()
    st.rules = [rule(1, 80, 7), rule(2, 9999, 7, other=True), rule(3, 9999, 7, ft="tcp4")]
    plan = plan_setup(st, 7, 9999)
    assert plan.ok and ids(plan) == ["rule"]


def test_tcp4_flow_type():
    plan = plan_setup(fresh(), 7, 8080, flow_type="tcp4")
    rl = plan.steps[-1]
    assert rl.command == "ethtool -N eth1 flow-type tcp4 dst-port 8080 action 7"
    assert not plan_setup(fresh(), 7, 8080, flow_type="udp6").ok


def test_hds_thresh_nonzero_with_split_on_still_needs_rings_step():
    st = configured()
    st.rings = {"tcp_data_split": ENABLED, "hds_thresh": 128, "hds_thresh_max": 1024}
    plan = plan_setup(st, 7, 9999)
    assert ids(plan) == ["rings"]
    assert plan.steps[0].inverse.args == {"tcp_data_split": ENABLED, "hds_thresh": 128}


def test_missing_features_become_notes_and_steps_the_kernel_will_answer():
    """A device without rings/ntuple/RSS (veth-like): the plan still tries, so
    the driver's own answer is reported and what was done is rolled back."""
    st = NicState(ifname="va", ifindex=4, driver="veth", driver_source="ETHTOOL_GDRVINFO",
                  channels={"rx_count": 1, "rx_max": 2, "tx_count": 1, "tx_max": 2},
                  sysfs_rx_queues=1, rings=None, ntuple_active=False,
                  ntuple_changeable=False, rss=None, rules=None,
                  errors={"rings": "RINGS_GET: EOPNOTSUPP", "rss": "RSS_GET: EOPNOTSUPP",
                          "ntuple": "ETHTOOL_GRXCLSRLCNT: EOPNOTSUPP"})
    plan = plan_setup(st, 1, 9999)
    assert plan.ok
    assert ids(plan) == ["channels", "rings", "ntuple", "rss", "rule"]
    assert plan.steps[0].command == "ethtool -L va rx 2"
    notes = " | ".join(plan.notes)
    for text in ("not a known zcrx driver", "does not report ring parameters",
                 "fixed off", "no RSS indirection table", "ntuple rules"):
        assert text in notes
    rss = plan.steps[3]
    assert rss.apply == Op("rss_exclude", {"queue": 1, "queues": 2, "size": None})


def test_driver_without_tcp_data_split_or_hds_reporting():
    st = configured()
    st.rings = {"rx": 256}                       # neither reported
    plan = plan_setup(st, 7, 9999)
    assert ids(plan) == ["rings"]
    assert plan.steps[0].apply.args == {"tcp_data_split": ENABLED}  # no hds-thresh
    assert any("does not report tcp-data-split" in n for n in plan.notes)
    assert any("reports no hds-thresh" in n for n in plan.notes)


def test_channels_unreadable_and_queue_beyond_sysfs_count_is_refused():
    st = fresh(channels=None, sysfs_rx_queues=1, errors={"channels": "CHANNELS_GET: EOPNOTSUPP"})
    plan = plan_setup(st, 1, 9999)
    assert not plan.ok and "cannot change" in plan.problems[0]


def test_already_bound_queue_is_noted():
    st = configured()
    st.queues[7]["io_uring"] = True
    plan = plan_setup(st, 7, 9999)
    assert any("EEXIST" in n for n in plan.notes)


def test_port_steering():
    st = configured()
    assert nic.port_steering(st, 9999) == {"by": "rule", "location": 1023,
                                           "rss_context": None, "queues": [7]}
    assert nic.port_steering(st, 80) == {"by": "rss", "queues": [0, 1, 2, 3, 4, 5, 6]}
    st.rss[2] = [6, 7] * 64
    st.rules = [rule(9, 9999, 0, ctx=2)]
    assert nic.port_steering(st, 9999)["queues"] == [6, 7]


def test_state_roundtrips_through_json():
    st = configured()
    st.rss[4] = [7] * 128
    again = NicState.from_dict(json.loads(json.dumps(st.to_dict())))
    assert again == st


# --------------------------------------------------------------------------
# execution, rollback, teardown (fake executor)
# --------------------------------------------------------------------------
class FakeNic:
    """Executes Ops against an in-memory NIC and logs them; fails on demand."""

    def __init__(self, fail_on: str | None = None, fail_inverse: str | None = None):
        self.log: list[tuple[str, dict]] = []
        self.fail_on = fail_on
        self.fail_inverse = fail_inverse
        self.next_ctx = 1
        self.next_loc = 1000

    def run(self, op: Op):
        self.log.append((op.kind, dict(op.args)))
        if op.kind == self.fail_on:
            raise et.EthtoolError(errno.EOPNOTSUPP, "setting TCP data split is not supported",
                                  "RINGS_SET")
        if op.kind == self.fail_inverse:
            raise et.EthtoolError(errno.EBUSY, "", "CHANNELS_SET")
        if op.kind == "rss_create":
            self.next_ctx += 1
            return self.next_ctx
        if op.kind == "ntuple_insert":
            self.next_loc += 1
            return self.next_loc
        return None


def test_apply_records_resolved_inverses_and_teardown_replays_them(tmp_path):
    plan = plan_setup(fresh(), 11, 9999, rss_context=True)
    path = str(tmp_path / "nic-eth1.json")
    fake = FakeNic()
    out = nic.apply_plan(plan, fake, path)
    assert out.ok and out.done == ids(plan)
    kinds = [k for k, _ in fake.log]
    assert kinds == ["channels", "rings", "features", "rss_exclude", "rss_create", "ntuple_insert"]
    # the rule was pointed at the context the kernel returned
    assert fake.log[-1][1]["rss_context"] == 2
    rec = json.load(open(path))
    assert rec["interface"] == "eth1" and rec["queue"] == 11 and rec["port"] == 9999
    by_id = {e["id"]: e for e in rec["steps"]}
    assert by_id["rss-context"]["inverse"] == {"kind": "rss_delete", "args": {"context": 2}}
    assert by_id["rule"]["inverse"] == {"kind": "ntuple_delete", "args": {"location": 1001}}
    assert by_id["rule"]["inverse_command"] == "ethtool -N eth1 delete 1001"
    assert by_id["rule"]["command"].endswith("context 2")

    fake2 = FakeNic()
    out2 = nic.teardown(path, fake2)
    assert out2.ok and not os.path.exists(path)
    assert [k for k, _ in fake2.log] == ["ntuple_delete", "rss_delete", "rss_indir",
                                         "features", "rings", "channels"]
    assert fake2.log[-1][1] == {"kind": "combined", "count": 8}


def test_failure_rolls_back_in_reverse_and_names_step_and_errno(tmp_path):
    plan = plan_setup(fresh(), 11, 9999)
    path = str(tmp_path / "nic-eth1.json")
    fake = FakeNic(fail_on="rings")
    out = nic.apply_plan(plan, fake, path)
    assert not out.ok
    assert out.failed_step == "turn on header/data split with threshold 0"
    assert out.failed_command == "ethtool -G eth1 tcp-data-split on hds-thresh 0"
    assert out.errno == errno.EOPNOTSUPP
    assert "EOPNOTSUPP: setting TCP data split is not supported" in out.error
    assert out.rolled_back == ["ethtool -L eth1 combined 8"]
    assert [k for k, _ in fake.log] == ["channels", "rings", "channels"]
    assert not os.path.exists(path) and out.done == []


def test_failed_rollback_keeps_what_is_left_in_the_record(tmp_path):
    plan = plan_setup(fresh(), 11, 9999)
    path = str(tmp_path / "nic-eth1.json")

    class Fake(FakeNic):
        def run(self, op):
            if op.kind == "channels" and op.args["count"] == 8:
                raise et.EthtoolError(errno.EINVAL, "requested channel counts are too low", "CHANNELS_SET")
            return super().run(op)

    out = nic.apply_plan(plan, Fake(fail_on="ntuple_insert"), path)
    assert not out.ok
    assert len(out.rollback_errors) == 1 and "EINVAL" in out.rollback_errors[0]
    rec = json.load(open(path))
    assert [e["id"] for e in rec["steps"]] == ["channels"]
    assert out.done == ["channels"]


def test_teardown_failure_keeps_entry_and_reports(tmp_path):
    plan = plan_setup(fresh(), 11, 9999)
    path = str(tmp_path / "nic-eth1.json")
    assert nic.apply_plan(plan, FakeNic(), path).ok
    out = nic.teardown(path, FakeNic(fail_inverse="features"))
    assert not out.ok
    rec = json.load(open(path))
    assert [e["id"] for e in rec["steps"]] == ["ntuple"]
    assert nic.teardown(path, FakeNic()).ok and not os.path.exists(path)


def test_teardown_without_record_is_a_noop(tmp_path):
    assert nic.teardown(str(tmp_path / "nic-x.json"), FakeNic()).ok


# -- the state file and interruptions (issue 20; see docs/security.md) -------
# `nic setup` runs with CAP_NET_ADMIN and may write into a shared directory
# (AIOZCRX_STATE_DIR); `nic teardown` replays what the file says, with the same
# privilege. The file is written atomically (a new temporary name, O_EXCL, no
# symlink followed, 0600, then rename), read only if it is a regular file of
# ours that nobody else can write; an interruption (Ctrl-C, SIGTERM) part-way
# through a setup rolls back what was done before the signal takes effect.

def test_state_file_is_0600_and_never_written_through_a_planted_symlink(tmp_path):
    plan = plan_setup(fresh(), 11, 9999)
    path = tmp_path / "nic-eth1.json"
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (tmp_path / "nic-eth1.json.tmp").symlink_to(victim)  # the old fixed temporary name
    old = os.umask(0)
    try:
        out = nic.apply_plan(plan, FakeNic(), str(path))
    finally:
        os.umask(old)
    assert out.ok
    assert victim.read_text() == "precious\n"
    assert not path.is_symlink() and (path.stat().st_mode & 0o777) == 0o600
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp") and not p.is_symlink()] == []


def _planted_record(path, **kw) -> None:
    """A record someone else put there: its 'undo' would change the NIC."""
    rec = {"version": 1, "interface": "eth1", "queue": 1, "port": 1, "steps": [
        {"id": "x", "title": "planted", "command": "", "inverse_command": "ethtool -L eth1 combined 1",
         "inverse": {"kind": "channels", "args": {"kind": "combined", "count": 1}}}]}
    path.write_text(json.dumps(rec))


@pytest.mark.parametrize("how", ["symlink", "group-writable", "world-writable", "not ours"])
def test_a_record_not_safely_ours_is_refused_and_replays_nothing(tmp_path, how):
    path = tmp_path / "nic-eth1.json"
    if how == "symlink":
        real = tmp_path / "elsewhere.json"
        _planted_record(real)
        path.symlink_to(real)
    else:
        _planted_record(path)
        if how == "not ours":
            if os.geteuid() != 0:
                pytest.skip("needs root to give the file to another user")
            os.chown(path, 65534, 65534)
        else:
            path.chmod(0o620 if how == "group-writable" else 0o602)
    with pytest.raises(nic.StateFileError, match="nic-eth1.json"):
        nic.load_record(str(path))
    fake = FakeNic()
    with pytest.raises(nic.StateFileError):
        nic.teardown(str(path), fake)
    assert fake.log == []


@pytest.mark.parametrize("how", ["signal", "exception"])
def test_ctrl_c_part_way_through_setup_rolls_back(tmp_path, how):
    """SIGINT while the third step runs (it completes, then everything is undone),
    or a KeyboardInterrupt out of it (it did not happen; the two before are
    undone): newest first, nothing stays recorded, and the interruption then goes
    on (KeyboardInterrupt)."""
    import signal

    plan = plan_setup(fresh(), 11, 9999)
    path = tmp_path / "nic-eth1.json"

    class Interrupted(FakeNic):
        def run(self, op):
            if op.kind == "features" and op.args.get("rx-ntuple-filter") is True:
                if how == "exception":
                    self.log.append((op.kind, dict(op.args)))
                    raise KeyboardInterrupt
                r = super().run(op)
                os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C, while the step runs
                return r
            return super().run(op)

    fake = Interrupted()
    old = signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C as in a terminal
    try:
        with pytest.raises(KeyboardInterrupt):
            nic.apply_plan(plan, fake, str(path))
    finally:
        signal.signal(signal.SIGINT, old)
    undone = ["features", "rings", "channels"] if how == "signal" else ["rings", "channels"]
    assert [k for k, _ in fake.log] == ["channels", "rings", "features", *undone]
    assert not path.exists()


# --------------------------------------------------------------------------
# CLI (snapshot and executor replaced)
# --------------------------------------------------------------------------
@pytest.fixture
def state_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("AIOZCRX_STATE_DIR", str(tmp_path))
    return tmp_path


def test_cli_dry_run_prints_plan_and_changes_nothing(state_dir, monkeypatch, capsys):
    monkeypatch.setattr(nic, "read_state", lambda ifn: fresh())
    monkeypatch.setattr(nic, "KernelExecutor", lambda ifn: pytest.fail("must not execute"))
    rc = nic.main(["setup", "--interface", "eth1", "--queue", "7", "--port", "9999", "--dry-run"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "ethtool -X eth1 equal 7" in out and "undo: ethtool -N eth1 delete <rule>" in out
    assert list(state_dir.iterdir()) == []


def test_cli_refused_plan_exits_3(state_dir, monkeypatch, capsys):
    monkeypatch.setattr(nic, "read_state", lambda ifn: fresh())
    rc = nic.main(["setup", "-i", "eth1", "-q", "40", "-p", "9999"])
    assert rc == nic.EXIT_REFUSED
    assert "out of range" in capsys.readouterr().out


def test_cli_json_setup_and_teardown(state_dir, monkeypatch, capsys):
    monkeypatch.setattr(nic, "read_state", lambda ifn: fresh())
    monkeypatch.setattr(nic, "KernelExecutor", lambda ifn: FakeNic())
    rc = nic.main(["setup", "-i", "eth1", "-q", "7", "-p", "9999", "--json"])
    res = json.loads(capsys.readouterr().out)
    assert rc == 0 and res["applied"] and (state_dir / "nic-eth1.json").exists()
    # a second setup with work to do is refused while the record exists
    assert nic.main(["setup", "-i", "eth1", "-q", "7", "-p", "9999"]) == nic.EXIT_REFUSED
    capsys.readouterr()
    assert nic.main(["teardown", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep[0]["interface"] == "eth1" and rep[0]["ok"]
    assert not (state_dir / "nic-eth1.json").exists()


def test_cli_setup_failure_exits_1_and_names_step(state_dir, monkeypatch, capsys):
    monkeypatch.setattr(nic, "read_state", lambda ifn: fresh())
    monkeypatch.setattr(nic, "KernelExecutor", lambda ifn: FakeNic(fail_on="rings"))
    rc = nic.main(["setup", "-i", "eth1", "-q", "11", "-p", "9999"])
    err = capsys.readouterr().err
    assert rc == nic.EXIT_FAILED
    assert "FAILED at step 'turn on header/data split" in err
    assert "RINGS_SET: EOPNOTSUPP: setting TCP data split is not supported" in err
    assert "rolled back: ethtool -L eth1 combined 8" in err


def test_cli_already_configured_changes_nothing(state_dir, monkeypatch, capsys):
    monkeypatch.setattr(nic, "read_state", lambda ifn: configured())
    monkeypatch.setattr(nic, "KernelExecutor", lambda ifn: pytest.fail("must not execute"))
    assert nic.main(["setup", "-i", "eth1", "-q", "7", "-p", "9999"]) == 0
    assert "nothing to change: already configured" in capsys.readouterr().out
    assert nic.main(["setup", "-i", "eth1", "-q", "7", "-p", "9999", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["applied"] is False and res["plan"]["steps"] == []
    assert list(state_dir.iterdir()) == []


# --------------------------------------------------------------------------
# codecs
# --------------------------------------------------------------------------
def test_netlink_attribute_roundtrip_with_nesting_and_repeats():
    data = et.encode_attrs(et._FEATURES, [
        ("header", [("dev_name", "eth1"), ("flags", 2)]),
        ("wanted", [("bits", [("bit", [("name", "rx-ntuple-filter"), ("value", True)]),
                              ("bit", [("name", "rx-gro"), ("value", False)])])]),
    ])
    # nests carry NLA_F_NESTED (strict kernel parsing rejects them otherwise)
    assert struct.unpack_from("=H", data, 2)[0] & et.NLA_F_NESTED
    back = et.decode_attrs(et._FEATURES, data)
    assert back["header"] == {"dev_name": "eth1", "flags": 2}
    bits = back["wanted"]["bits"]["bit"]
    assert [b["name"] for b in bits] == ["rx-ntuple-filter", "rx-gro"]
    assert et._bitset_names(back["wanted"]) == {"rx-ntuple-filter"}


def test_extack_message_is_extracted():
    msg = b"setting TCP data split is not supported\0"
    tlv = struct.pack("=HH", 4 + len(msg), et.NLMSGERR_ATTR_MSG) + msg + b"\0" * (-len(msg) % 4)
    chunk = struct.pack("=i", -errno.EOPNOTSUPP) + struct.pack("=IHHII", 36, 30, 5, 1, 0) + tlv
    assert et._extack_message(chunk, et.NLM_F_ACK_TLVS | et.NLM_F_CAPPED) == \
        "setting TCP data split is not supported"
    assert et._extack_message(chunk, 0) == ""


def test_ntuple_rule_struct_roundtrip():
    r = et.parse_rule(et.build_rule("tcp6", 9999, 7, None, 1023).raw)
    assert (r.flow_type, r.dst_port, r.queue, r.location, r.rss_context, r.other_match) == \
        ("tcp6", 9999, 7, 1023, None, False)
    r = et.parse_rule(et.build_rule("tcp4", 443, 0, 5, 3).raw)
    assert (r.flow_type, r.dst_port, r.queue, r.rss_context) == ("tcp4", 443, 0, 5)


def test_errname_uses_kernel_spelling():
    assert et.errname(errno.EOPNOTSUPP) == "EOPNOTSUPP"
    assert str(et.EthtoolError(errno.EINVAL, "bad", "RINGS_SET")) == "RINGS_SET: EINVAL: bad"


# --------------------------------------------------------------------------
# real runs in a private network namespace
# --------------------------------------------------------------------------
# the directory the tests import aiozcrx from, so `ip netns exec python -m ...`
# runs the same code (checkout or installed copy)
PKG_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(aiozcrx.__file__)))


class Netns:
    """A network namespace of our own; commands run inside with `ip netns exec`."""

    def __init__(self, name: str):
        self.name = name

    def _run(self, argv, env=None, check=False):
        full_env = dict(os.environ)
        full_env["PYTHONPATH"] = os.pathsep.join(
            [PKG_PARENT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
        full_env.update(env or {})
        return subprocess.run(["ip", "netns", "exec", self.name, *argv], env=full_env,
                              capture_output=True, text=True, timeout=120, check=check)

    def link(self, kind: str, name: str, *extra: str) -> None:
        r = subprocess.run(["ip", "-n", self.name, "link", "add", name, "type", kind, *extra],
                           capture_output=True, text=True)
        if r.returncode:
            pytest.skip(f"this kernel cannot create {kind} devices: {r.stderr.strip()}")

    def veth(self, a: str, b: str) -> None:
        self.link("veth", a, "peer", "name", b)

    def py(self, code: str, env=None):
        r = self._run([sys.executable, "-c", code], env)
        assert r.returncode == 0, r.stderr
        return r

    def aiozcrx(self, module: str, *args: str, env=None):
        """`python -m aiozcrx.tools.MODULE ARGS` (what `aiozcrx MODULE ARGS` dispatches to)."""
        return self._run([sys.executable, "-m", f"aiozcrx.tools.{module}", *args], env)


@pytest.fixture
def netns():
    """A fresh, uniquely named network namespace, deleted in the finalizer."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create a network namespace")
    if shutil.which("ip") is None:
        pytest.skip("needs iproute2's `ip` to create a network namespace")
    name = f"aiozcrx-t{os.getpid()}-{uuid.uuid4().hex[:8]}"
    r = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"`ip netns add` failed: {r.stderr.strip()}")
    try:
        yield Netns(name)
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def test_real_veth_snapshot_and_setup_rolls_back(netns, tmp_path):
    netns.veth("va", "vb")
    snap = netns.py("from aiozcrx.tools import nic; import json; "
                    "print(json.dumps(nic.read_state('va').to_dict()))")
    st = json.loads(snap.stdout)
    assert st["driver"] == "veth" and st["channels"]["rx_count"] == 1
    assert "EOPNOTSUPP" in st["errors"]["rings"]

    env = {"AIOZCRX_STATE_DIR": str(tmp_path)}
    if st["channels"]["rx_max"] < 2:
        # veth allows one RX queue per CPU: with one CPU queue 1 cannot exist
        run = netns.aiozcrx("nic", "setup", "-i", "va", "-q", "1", "-p", "9999", env=env)
        assert run.returncode == nic.EXIT_REFUSED and "out of range" in run.stdout
        pytest.skip(f"veth allows rx_max={st['channels']['rx_max']} here (one CPU): no step "
                    f"can succeed before the failing one, so the rollback is not exercised")
    dry = netns.aiozcrx("nic", "setup", "-i", "va", "-q", "1", "-p", "9999", "--dry-run", env=env)
    assert dry.returncode == 0, dry.stderr
    assert "ethtool -L va rx 2" in dry.stdout

    run = netns.aiozcrx("nic", "setup", "-i", "va", "-q", "1", "-p", "9999", env=env)
    assert run.returncode == nic.EXIT_FAILED, run.stdout + run.stderr
    assert "FAILED at step 'turn on header/data split with threshold 0'" in run.stderr
    assert "RINGS_SET: EOPNOTSUPP" in run.stderr
    assert "rolled back: ethtool -L va rx 1" in run.stderr
    after = json.loads(netns.py("import json; from aiozcrx.tools import ethtool as et; "
                                "print(json.dumps(et.get_channels('va')))").stdout)
    assert after["rx_count"] == 1            # really rolled back
    assert list(tmp_path.iterdir()) == []    # nothing left recorded

    td = netns.aiozcrx("nic", "teardown", env=env)
    assert td.returncode == 0 and "nothing recorded" in td.stdout


@pytest.mark.parametrize("kind", ["dummy", "ifb"])
def test_real_single_queue_device_is_refused(kind, netns, tmp_path):
    netns.link(kind, "zd0")
    run = netns.aiozcrx("nic", "setup", "-i", "zd0", "-q", "0", "-p", "9999",
                        env={"AIOZCRX_STATE_DIR": str(tmp_path)})
    assert run.returncode == nic.EXIT_REFUSED, run.stdout + run.stderr
    assert "PROBLEM: queue 0 out of range" in run.stdout
    assert "refused: nothing was changed" in run.stderr
    assert list(tmp_path.iterdir()) == []


def test_real_missing_interface_is_refused(netns, tmp_path):
    run = netns.aiozcrx("nic", "setup", "-i", "nosuch0", "-q", "1", "-p", "9999",
                        env={"AIOZCRX_STATE_DIR": str(tmp_path)})
    assert run.returncode == nic.EXIT_REFUSED
    assert "no interface nosuch0" in run.stdout



# --------------------------------------------------------------------------
# several queues for one port: `nic setup --queues FIRST-LAST` (issue 19)
# --------------------------------------------------------------------------
def spread_over(first=0, last=3, port=9999, n=8, ctx=5) -> NicState:
    """``fresh()`` as `nic setup --queues FIRST-LAST` leaves it."""
    return fresh(rings={"tcp_data_split": ENABLED, "hds_thresh": 0, "hds_thresh_max": 1024},
                 ntuple_active=True,
                 rss={0: exclude_table(128, n, first, last - first + 1),
                      ctx: nic.spread_table(128, first, last - first + 1)},
                 rules=[rule(1022, port, 0, ft="tcp6", ctx=ctx), rule(1023, port, 0, ft="tcp4", ctx=ctx)])


def test_spread_and_exclude_tables_for_a_range():
    assert nic.spread_table(8, 2, 3) == [2, 3, 4, 2, 3, 4, 2, 3]
    t = exclude_table(128, 8, 0, 4)
    assert set(t) == {4, 5, 6, 7}
    assert exclude_table(8, 8, 4, 4) == nic.default_indir(8, 4)   # `ethtool -X IF equal 4`
    with pytest.raises(ValueError):
        exclude_table(8, 4, 0, 4)


def test_queue_range_parsing():
    assert nic.queue_range("0-3") == (0, 3)
    assert nic.queue_range("5") == (5, 5)
    for bad in ("3-1", "a-b", "-1", "1-", ""):
        with pytest.raises(ValueError, match="FIRST-LAST"):
            nic.queue_range(bad)


def test_queues_plan_on_a_fresh_nic():
    """Header split, ntuple, the main table off 0-3, a context over 0-3, one rule per
    flow type to that context."""
    plan = nic.plan_queues(fresh(), 0, 3, 9999)
    assert plan.ok and plan.mode == "queues" and plan.queues == [0, 1, 2, 3]
    assert ids(plan) == ["rings", "ntuple", "rss", "rss-context", "rule-tcp6", "rule-tcp4"]
    rss, ctx, r6, r4 = plan.steps[2:]
    assert rss.title == "keep RSS off queues 0-3"
    assert rss.command == "ethtool -X eth1 weight 0 0 0 0 1 1 1 1"
    assert rss.apply == Op("rss_exclude", {"queue": 0, "queues": 8, "count": 4, "size": 128})
    assert rss.inverse == Op("rss_indir", {"context": 0, "indir": None})
    assert ctx.command == "ethtool -X eth1 context new start 0 equal 4"
    assert ctx.apply == Op("rss_create", {"queue": 0, "count": 4, "size": 128})
    assert ctx.inverse == Op("rss_delete", {"context": "@"})
    for step, ft in ((r6, "tcp6"), (r4, "tcp4")):
        assert step.apply == Op("ntuple_insert", {"flow_type": ft, "dst_port": 9999, "queue": 0,
                                                  "rss_context": "@rss-context"})
        assert step.command == f"ethtool -N eth1 flow-type {ft} dst-port 9999 context {{@rss-context}}"
        assert step.inverse_command == f"ethtool -N eth1 delete {{@rule-{ft}}}"


def test_queues_at_the_top_use_equal_and_a_range_beyond_the_channels_raises_them():
    plan = nic.plan_queues(fresh(), 4, 7, 443)
    assert next(s for s in plan.steps if s.id == "rss").command == "ethtool -X eth1 equal 4"
    plan = nic.plan_queues(fresh(), 0, 7, 443)       # 8 queues: one more for the rest
    ch = plan.steps[0]
    assert ch.id == "channels" and ch.apply == Op("channels", {"kind": "combined", "count": 9})
    assert next(s for s in plan.steps if s.id == "rss").apply.args["queues"] == 9
    plan = nic.plan_queues(fresh(), 6, 9, 443)       # queues below the range stay for the rest
    assert plan.steps[0].apply == Op("channels", {"kind": "combined", "count": 10})


def test_queues_one_flow_type_and_one_queue():
    plan = nic.plan_queues(fresh(), 2, 5, 80, flow_types=("tcp4",))
    assert ids(plan)[-1] == "rule-tcp4" and "rule-tcp6" not in ids(plan)
    plan = nic.plan_queues(fresh(), 7, 7, 80)        # Q-Q: one queue, through a context
    ctx = next(s for s in plan.steps if s.id == "rss-context")
    assert ctx.command == "ethtool -X eth1 context new start 7 equal 1"
    assert next(s for s in plan.steps if s.id == "rss").command == "ethtool -X eth1 equal 7"


@pytest.mark.parametrize("first,last,error,text", [
    (0, 15, nic.NoQueueLeftError, "leave no RX queue for the main RSS table"),
    (4, 16, nic.QueueRangeError, "queues 4-16 out of range"),
    (3, 1, nic.NicRefused, "queue range 3-1 is empty"),
])
def test_queues_refused_with_a_typed_error_naming_the_fix(first, last, error, text):
    plan = nic.plan_queues(fresh(), first, last, 9999)
    assert not plan.ok and text in plan.problems[0]
    exc = nic.refusal(plan)
    assert type(exc) is error and isinstance(exc, ValueError) and text in str(exc)
    if error is nic.NoQueueLeftError:
        assert "--queues 0-14" in str(exc)                          # the fix
    if error is nic.QueueRangeError:
        assert "pick queues within 0-15" in str(exc)


def test_queues_refused_on_a_device_without_rss_or_ntuple():
    st = fresh(rss=None, errors={"rss": "RSS_GET: EOPNOTSUPP"})
    exc = nic.refusal(nic.plan_queues(st, 0, 3, 9999))
    assert isinstance(exc, nic.SteeringUnsupportedError)
    assert "no RSS indirection table" in str(exc) and "--queue Q --port 9999" in str(exc)
    st = fresh(ntuple_active=False, ntuple_changeable=False)
    exc = nic.refusal(nic.plan_queues(st, 0, 3, 9999))
    assert isinstance(exc, nic.SteeringUnsupportedError) and "no ntuple flow steering" in str(exc)
    # the one-queue form keeps trying and lets the driver answer (as before)
    assert plan_setup(st, 3, 9999).ok


def test_queues_already_configured_gives_an_empty_plan_and_reuses_a_context():
    assert nic.plan_queues(spread_over(), 0, 3, 9999).steps == []
    st = spread_over()
    st.rules = st.rules[:1]                          # only tcp6 steered, through context 5
    plan = nic.plan_queues(st, 0, 3, 9999)
    assert ids(plan) == ["rule-tcp4"]
    assert plan.steps[0].apply.args["rss_context"] == 5
    assert plan.steps[0].command.endswith("context 5")


def test_queues_conflicting_rule_is_refused():
    st = spread_over()
    st.rss[5] = nic.spread_table(128, 0, 2)         # the port's context covers 0-1 only
    exc = nic.refusal(nic.plan_queues(st, 0, 3, 9999))
    assert isinstance(exc, nic.RuleConflictError)
    assert "ethtool -N eth1 delete 1022" in str(exc) and "ethtool -N eth1 delete 1023" in str(exc)


def test_queues_already_bound_are_noted():
    st = fresh()
    st.queues[1]["io_uring"] = True
    st.queues[2]["io_uring"] = True
    notes = [n for n in nic.plan_queues(st, 0, 3, 9999).notes if "EEXIST" in n]
    assert len(notes) == 2 and notes[0].startswith("queue 1 ")


def test_queues_apply_records_and_teardown_restores_everything(tmp_path):
    plan = nic.plan_queues(fresh(), 0, 7, 9999)
    path = str(tmp_path / "nic-eth1.json")
    fake = FakeNic()
    out = nic.apply_plan(plan, fake, path)
    assert out.ok
    assert [k for k, _ in fake.log] == ["channels", "rings", "features", "rss_exclude",
                                        "rss_create", "ntuple_insert", "ntuple_insert"]
    assert fake.log[-1][1]["rss_context"] == fake.log[-2][1]["rss_context"] == 2
    rec = json.load(open(path))
    assert (rec["queue"], rec["last"], rec["flow_types"], rec["mode"]) == (0, 7, ["tcp6", "tcp4"], "queues")
    assert nic.recorded_queues(rec) == list(range(8))
    fake2 = FakeNic()
    assert nic.teardown(path, fake2).ok and not os.path.exists(path)
    assert [k for k, _ in fake2.log] == ["ntuple_delete", "ntuple_delete", "rss_delete",
                                         "rss_indir", "features", "rings", "channels"]
    assert [a for k, a in fake2.log if k == "ntuple_delete"] == [{"location": 1002},
                                                                  {"location": 1001}]


def test_ctrl_c_during_a_queues_setup_rolls_back(tmp_path):
    import signal

    plan = nic.plan_queues(fresh(), 0, 3, 9999)
    path = tmp_path / "nic-eth1.json"

    class Interrupted(FakeNic):
        def run(self, op):
            r = super().run(op)
            if op.kind == "rss_create":
                os.kill(os.getpid(), signal.SIGINT)
            return r

    fake = Interrupted()
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            nic.apply_plan(plan, fake, str(path))
    finally:
        signal.signal(signal.SIGINT, old)
    assert [k for k, _ in fake.log] == ["rings", "features", "rss_exclude", "rss_create",
                                        "rss_delete", "rss_indir", "features", "rings"]
    assert not path.exists()


def test_python_api_setup_queues_and_teardown_interface(state_dir, monkeypatch):
    monkeypatch.setattr(nic, "read_state", lambda ifn: fresh())
    out = nic.setup_queues("eth1", 0, 3, 9999, executor=FakeNic())
    assert out.ok and out.done[-2:] == ["rule-tcp6", "rule-tcp4"]
    assert (state_dir / "nic-eth1.json").exists()
    with pytest.raises(nic.EarlierSetupError, match="aiozcrx nic teardown --interface eth1"):
        nic.setup_queues("eth1", 0, 3, 9999, executor=FakeNic())
    fake = FakeNic()
    assert nic.teardown_interface("eth1", executor=fake).ok
    assert not (state_dir / "nic-eth1.json").exists() and len(fake.log) == 6
    assert nic.teardown_interface("eth1", executor=FakeNic()).ok      # nothing recorded
    with pytest.raises(nic.NoQueueLeftError):
        nic.setup_queues("eth1", 0, 15, 9999, executor=pytest.fail)
    monkeypatch.setattr(nic, "read_state", lambda ifn: spread_over())
    assert nic.setup_queues("eth1", 0, 3, 9999, executor=pytest.fail).done == []
    assert list(state_dir.iterdir()) == []


def test_python_api_driver_without_rss_contexts_fails_typed_and_rolls_back(state_dir, monkeypatch):
    monkeypatch.setattr(nic, "read_state", lambda ifn: fresh())

    class NoContexts(FakeNic):
        def run(self, op):
            if op.kind == "rss_create":
                self.log.append((op.kind, dict(op.args)))
                raise et.EthtoolError(errno.EOPNOTSUPP, "", "RSS_CREATE_ACT")
            return super().run(op)

    fake = NoContexts()
    # the snapshot cannot show it: the step finds out, and it is the same refusal
    with pytest.raises(nic.SteeringUnsupportedError) as e:
        nic.setup_queues("eth1", 0, 3, 9999, executor=fake)
    assert e.value.outcome.errno == errno.EOPNOTSUPP
    assert "no additional RSS contexts" in str(e.value) and "--queue Q --port 9999" in str(e.value)
    assert "rolled back" in str(e.value)
    assert [k for k, _ in fake.log][-3:] == ["rss_indir", "features", "rings"]
    assert list(state_dir.iterdir()) == []

    class Stuck(NoContexts):            # and its rollback fails: not a clean refusal
        def run(self, op):
            if op.kind == "rings" and op.args["tcp_data_split"] != ENABLED:
                raise et.EthtoolError(errno.EBUSY, "", "RINGS_SET")
            return super().run(op)

    with pytest.raises(nic.NicSetupFailed) as e:
        nic.setup_queues("eth1", 0, 3, 9999, executor=Stuck())
    assert e.value.errno == errno.EOPNOTSUPP and "NOT rolled back" in str(e.value)
    assert "aiozcrx nic teardown --interface eth1" in str(e.value)
    assert (state_dir / "nic-eth1.json").exists()


def test_cli_queues_dry_run_refusal_and_failure(state_dir, monkeypatch, capsys):
    monkeypatch.setattr(nic, "read_state", lambda ifn: fresh())
    monkeypatch.setattr(nic, "KernelExecutor", lambda ifn: pytest.fail("must not execute"))
    assert nic.main(["setup", "-i", "eth1", "--queues", "0-3", "-p", "9999", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "tcp6 and tcp4 dst-port 9999 -> queues 0-3" in out
    assert "ethtool -X eth1 context new start 0 equal 4" in out
    assert "undo: ethtool -N eth1 delete <rule-tcp4>" in out
    assert nic.main(["setup", "-i", "eth1", "--queues", "0-15", "-p", "9999"]) == nic.EXIT_REFUSED
    assert "--queues 0-14" in capsys.readouterr().out
    for bad in (["--queues", "3-1"], ["--queues", "0-3", "--queue", "1"]):
        with pytest.raises(SystemExit) as e:
            nic.main(["setup", "-i", "eth1", *bad, "-p", "9999"])
        assert e.value.code == 2
    assert "FIRST-LAST" in capsys.readouterr().err

    class NoContexts(FakeNic):
        def run(self, op):
            if op.kind == "rss_create":
                raise et.EthtoolError(errno.EOPNOTSUPP, "", "RSS_CREATE_ACT")
            return super().run(op)

    monkeypatch.setattr(nic, "KernelExecutor", lambda ifn: NoContexts())
    assert nic.main(["setup", "-i", "eth1", "--queues", "0-3", "-p", "9999"]) == nic.EXIT_FAILED
    err = capsys.readouterr().err
    assert "FAILED at step 'create an RSS context spreading over queues 0-3'" in err
    assert "fix: eth1's driver has no additional RSS contexts" in err


def test_cli_queues_json_setup_and_teardown(state_dir, monkeypatch, capsys):
    monkeypatch.setattr(nic, "read_state", lambda ifn: fresh())
    monkeypatch.setattr(nic, "KernelExecutor", lambda ifn: FakeNic())
    monkeypatch.setattr(nic, "wait_queues_released", lambda i, q: None)
    assert nic.main(["setup", "-i", "eth1", "--queues", "0-3", "-p", "9999",
                     "--flow-type", "tcp4", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["applied"] and res["plan"]["flow_types"] == ["tcp4"]
    assert [s["id"] for s in res["plan"]["steps"]][-1] == "rule-tcp4"
    assert nic.main(["teardown", "-i", "eth1", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep[0]["ok"] and rep[0]["rolled_back"][0] == "ethtool -N eth1 delete 1001"

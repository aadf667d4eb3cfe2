"""One port spread over several zcrx queues (`aiozcrx nic setup --queues FIRST-LAST`),
on the simulated NIC of the guest tier (`tests/uml/run-in-guest.sh --nic
[--nic-queues N]`: netdevsim with the project's extension). Connections come from the
peer's network namespace, so every packet crosses the NIC's steering: where a
connection landed is read back from the kernel itself, as SO_INCOMING_NAPI_ID on the
accepted socket, matched against each queue's NAPI id (netdev QUEUE_GET).

The range is queues 0..N-2 of the NIC's N (any N >= 3; `make test` may run it with
the runner's default of 4), queue N-1 stays for everything else. Each test leaves the
NIC as it found it. Skipped without the simulated NIC; where it is present, a skip is
a failure (conftest.py).
"""

from __future__ import annotations

import os
import socket
import struct

import pytest

from aiozcrx.tools import ethtool as et
from aiozcrx.tools import nic
from peers import payload, start_many
from test_guest_nic import cli, nic_settings

pytestmark = pytest.mark.nic

SO_INCOMING_NAPI_ID = getattr(socket, "SO_INCOMING_NAPI_ID", 56)  # asm-generic/socket.h


def rx_queue_count(ifname: str) -> int:
    return len([q for q in et.netdev_queues(ifname) if q["type"] == "rx"])


@pytest.fixture
def state_dir(tmp_path):
    return str(tmp_path)


@pytest.fixture
def spread(sim_nic):
    """(first, last, rest): the zcrx range 0..N-2 and the queue left for the rest."""
    n = rx_queue_count(sim_nic.name)
    if n < 3:
        pytest.skip(f"{sim_nic.name} has {n} RX queues; a range of two and one more for the "
                    f"rest needs 3 (run-in-guest.sh --nic --nic-queues 5)")
    return 0, n - 2, n - 1


def land(sim_nic, host: str, port: int, n: int, seed0: int, size: int = 4096) -> list[int]:
    """``n`` connections from the peer namespace to ``host``:``port`` (each from its
    own ephemeral source port), every byte checked; returns, per connection, the NAPI
    id the kernel recorded for its packets (SO_INCOMING_NAPI_ID)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.create_server((host, port), family=family, backlog=n + 8) as lst:
        lst.settimeout(120)
        seeds = [seed0 + i for i in range(n)]
        proc = start_many(port, [size] * n, seeds, host=host, netns=sim_nic.peer_ns)
        napis = []
        try:
            for _ in range(n):
                conn, _addr = lst.accept()
                with conn:
                    conn.settimeout(120)
                    data = bytearray()
                    while chunk := conn.recv(65536):
                        data += chunk
                    (index,) = struct.unpack_from("<I", data)
                    assert bytes(data[4:]) == payload(seeds[index], size)
                    napis.append(conn.getsockopt(socket.SOL_SOCKET, SO_INCOMING_NAPI_ID))
        finally:
            proc.join(120)
            if proc.exitcode is None:
                proc.kill()
        assert proc.exitcode == 0
    return napis


def test_every_rx_queue_has_its_own_napi_id(sim_nic):
    """What a worker matches SO_INCOMING_NAPI_ID against: one NAPI instance per RX
    queue, each id distinct and non-zero; a queue the NIC lacks is a typed error."""
    n = rx_queue_count(sim_nic.name)
    ids = et.queue_napi_ids(sim_nic.name, range(n))
    assert sorted(ids) == list(range(n))
    assert all(v > 0 for v in ids.values()) and len(set(ids.values())) == n, ids
    with pytest.raises(et.EthtoolError, match=f"no RX queue {n}") as e:
        et.queue_napi_ids(sim_nic.name, [n])
    assert e.value.errno == 2  # ENOENT


def test_port_spread_over_queues_lands_only_there_and_teardown_restores(sim_nic, state_dir,
                                                                        spread):
    """doctor says no; `nic setup --queues` configures; doctor says yes, with each
    queue's NAPI id; 64 IPv4 and 16 IPv6 connections to the port land only on the
    range, on more than one queue of it; a connection to another port lands on the
    queue left for the rest; `nic teardown` restores every setting; doctor says no."""
    ifn = sim_nic.name
    first, last, rest = spread
    port, other_port = 9301, 9302
    rng = f"{first}-{last}"
    doctor = ("doctor", "-i", ifn, "--queues", rng, "-p", str(port))
    before = nic_settings(ifn)

    r = cli(*doctor, state_dir=state_dir)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "FAIL  steering tcp4" in r.stdout and "FAIL  steering tcp6" in r.stdout
    assert "FAIL  RSS context" in r.stdout and "FAIL  tcp-data-split" in r.stdout

    r = cli("nic", "setup", "-i", ifn, "--queues", rng, "-p", str(port), state_dir=state_dir)
    assert r.returncode == 0, r.stdout + r.stderr
    try:
        napi = et.queue_napi_ids(ifn, range(rest + 1))
        queue_of = {v: q for q, v in napi.items()}
        r = cli(*doctor, state_dir=state_dir)
        assert r.returncode == 0, r.stdout + r.stderr
        assert f'result: engine="zcrx" can work on {ifn} queues {rng}' in r.stdout
        for name in ("tcp-data-split", "RSS", "RSS context", "steering tcp4", "steering tcp6"):
            assert f"PASS  {name} " in r.stdout, r.stdout
        for q in range(first, last + 1):
            assert f"PASS  queue {q} " in r.stdout and f"napi id {napi[q]}; free" in r.stdout

        landed4 = [queue_of[v] for v in land(sim_nic, sim_nic.addr, port, 64, 1000)]
        landed6 = [queue_of[v] for v in land(sim_nic, sim_nic.addr6, port, 16, 2000)]
        elsewhere = [queue_of[v] for v in land(sim_nic, sim_nic.addr, other_port, 4, 3000)]
    finally:
        r = cli("nic", "teardown", "-i", ifn, state_dir=state_dir)
    assert r.returncode == 0, r.stdout + r.stderr
    assert nic_settings(ifn) == before

    print(f"tcp4 queues {sorted(landed4)}\ntcp6 queues {sorted(landed6)}\n"
          f"other port {elsewhere}")
    assert set(landed4) <= set(range(first, last + 1)) and len(set(landed4)) > 1, landed4
    assert set(landed6) <= set(range(first, last + 1)), landed6
    assert elsewhere == [rest] * 4

    r = cli(*doctor, state_dir=state_dir)
    assert r.returncode == 1, r.stdout


def test_python_api_refuses_typed_raises_channels_and_restores_exactly(sim_nic, state_dir,
                                                                         spread):
    """The Python API: a range that leaves no queue for the rest, or lies beyond the
    NIC, is a typed refusal naming the fix and changes nothing. From fewer channels,
    setup_queues raises them; teardown_interface restores the exact prior state
    (rules, then the context, the main table, ntuple, split, and the channel count
    last: the kernel refuses fewer channels while a context points past them).
    Q-Q is one queue through a context of its own."""
    ifn = sim_nic.name
    first, last, rest = spread
    original = nic_settings(ifn)
    path = os.path.join(state_dir, f"nic-{ifn}.json")
    most = rest + 1                                   # netdevsim: max = its queue count
    et.set_channels(ifn, combined_count=most - 2)
    try:
        before = nic_settings(ifn)
        with pytest.raises(nic.NoQueueLeftError, match=rf"--queues 0-{most - 2}"):
            nic.setup_queues(ifn, 0, most - 1, 9303, record_path=path)
        with pytest.raises(nic.QueueRangeError, match="out of range"):
            nic.setup_queues(ifn, 1, most, 9303, record_path=path)
        assert nic_settings(ifn) == before and not os.path.exists(path)

        out = nic.setup_queues(ifn, first, last, 9303, record_path=path)
        try:
            assert out.ok and out.done[0] == "channels"
            st = nic.read_state(ifn)
            assert st.rx_queues == most
            for ft in ("tcp4", "tcp6"):
                assert nic.port_steering(st, 9303, ft)["queues"] == list(range(first, last + 1))
            assert set(st.main_indir) == {rest}
            # already configured: nothing to do, the record stays as it is
            assert nic.setup_queues(ifn, first, last, 9303, record_path=path).done == []
        finally:
            assert nic.teardown_interface(ifn, record_path=path).ok
        assert nic_settings(ifn) == before and not os.path.exists(path)
    finally:
        et.set_channels(ifn, combined_count=most)
    assert nic_settings(ifn) == original

    out = nic.setup_queues(ifn, last, last, 9303, record_path=path)
    try:
        assert out.ok and "rss-context" in out.done
        st = nic.read_state(ifn)
        for ft in ("tcp4", "tcp6"):
            assert nic.port_steering(st, 9303, ft)["queues"] == [last]
        assert last not in set(st.main_indir)
    finally:
        assert nic.teardown_interface(ifn, record_path=path).ok
    assert nic_settings(ifn) == original


def test_ctrl_c_during_a_queues_setup_rolls_the_nic_back(sim_nic, state_dir, spread):
    """SIGINT arrives while the RSS context is being created (the step completes,
    the signal is held): everything done so far is undone on the real NIC, newest
    first, nothing stays recorded, and then the interruption goes on."""
    import signal

    ifn = sim_nic.name
    first, last, _rest = spread
    before = nic_settings(ifn)
    path = os.path.join(state_dir, f"nic-{ifn}.json")

    class CtrlCWhileCreatingTheContext(nic.KernelExecutor):
        def run(self, op):
            result = super().run(op)
            if op.kind == "rss_create":
                os.kill(os.getpid(), signal.SIGINT)
            return result

    plan = nic.plan_queues(nic.read_state(ifn), first, last, 9304)
    assert "rss-context" in [s.id for s in plan.steps]
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            nic.apply_plan(plan, CtrlCWhileCreatingTheContext(ifn), path)
    finally:
        signal.signal(signal.SIGINT, old)
    assert nic_settings(ifn) == before and not os.path.exists(path)

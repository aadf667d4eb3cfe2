"""The zcrx engine's watch on its NIC's device (aiozcrx/engines/linkwatch.py),
against the real kernel's rtnetlink, in a network namespace of our own: deleting
another interface is no removal, deleting the watched one is, and so is moving it
to another namespace (veth pairs: the host kernel may lack dummy). (The engine's reaction, connection_lost naming the
interface, is tested on the simulated NIC: tests/test_guest_nic.py.)"""
from __future__ import annotations

import textwrap

from test_nic import netns  # noqa: F401 - the fixture

SCRIPT = textwrap.dedent("""
    import select, socket, subprocess
    from aiozcrx.engines.linkwatch import LinkWatch, interface_exists

    def ip(*args):
        subprocess.run(["ip", *args], check=True)

    def readable(w):
        # the notification of a change made before this call is queued already:
        # no waiting on time, only on what is there
        return bool(select.select([w], [], [], 0)[0])

    ip("link", "add", "zw0", "type", "veth", "peer", "name", "zw0p")
    ip("link", "add", "zw1", "type", "veth", "peer", "name", "zw1p")
    idx = socket.if_nametoindex("zw0")
    w = LinkWatch(idx)
    assert not readable(w) and not w.gone()

    ip("link", "set", "zw1", "up")           # a change elsewhere: a notification, no removal
    assert readable(w) and not w.gone()
    ip("link", "del", "zw1")                 # other interfaces removed (zw1, its peer)
    assert readable(w) and not w.gone()
    assert interface_exists(idx)
    ip("link", "set", "zw0", "up")           # ours changes, still there
    assert readable(w) and not w.gone()

    ip("link", "del", "zw0")
    assert readable(w) and w.gone()
    assert not interface_exists(idx)
    w.close()

    # moved to another namespace: gone from here, just the same
    ip("link", "add", "zw2", "type", "veth", "peer", "name", "zw2p")
    w = LinkWatch(socket.if_nametoindex("zw2"))
    ip("netns", "add", NS2)
    try:
        ip("link", "set", "zw2", "netns", NS2)
        assert readable(w) and w.gone()
    finally:
        ip("netns", "del", NS2)
    w.close()
    print("ok")
""")


def test_linkwatch_sees_its_interface_go_and_nothing_else(netns):  # noqa: F811
    netns.veth("zprobe0", "zprobe1")  # skips where this kernel cannot make veth devices
    r = netns.py(f"NS2 = {netns.name + '-b'!r}\n" + SCRIPT)
    assert r.stdout.strip() == "ok", r.stdout + r.stderr

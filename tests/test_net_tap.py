"""The tap backend: a TAP device the test creates through the machine, talked to through a
raw socket bound to it; removed on halt."""
import socket
import time

import pytest

import pybaremetal as bm
from netns_helper import disable_ipv6, link_exists, ping_pingd, unique
from pyroute2 import IPRoute


@pytest.fixture
def tap():
    name = unique("t")
    m = bm.Machine(cores=1, memory="16M", console="capture", input=False,
                   nics=[f"tap:{name},mac=02:00:00:00:00:42"])
    try:
        disable_ipv6(name)
        m.boot()
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
        sock.bind((name, 0x0003))
        sock.settimeout(2.0)
        yield m, name, sock
        sock.close()
    finally:
        m.halt()
        if link_exists(name):                           # the test failed before halt removed it
            with IPRoute() as ipr:
                ipr.link("del", ifname=name)


def abba(n, size=80):
    return b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x42" + b"\xab\xba" + bytes((n + i) & 0xFF for i in range(size - 14))


def test_tap_created_up_and_removed_on_halt(tap):
    m, name, _ = tap
    assert link_exists(name)
    with IPRoute() as ipr:
        assert ipr.get_links(ifname=name)[0].get_attr("IFLA_OPERSTATE") in ("UP", "UNKNOWN")
    assert m.nics[0].mac == 0x020000000042
    m.halt()
    assert not link_exists(name)


def test_tap_frames_from_the_app_appear_on_the_interface_and_back(tap):
    m, name, sock = tap
    for n in range(3):
        bm.b_net_tx(abba(n, 60 + n * 700))
    seen = []
    while len(seen) < 3:
        data = sock.recv(4096)
        if data[12:14] == b"\xab\xba":
            seen.append(data)
    assert seen == [abba(n, 60 + n * 700) for n in range(3)]
    for n in range(3):
        sock.send(abba(10 + n))
    got, end = [], time.monotonic() + 5
    while len(got) < 3 and time.monotonic() < end:
        data = bm.b_net_rx(0)
        if len(data) and data[12:14] == b"\xab\xba":
            got.append(bytes(data))
    assert got == [abba(10 + n) for n in range(3)]
    assert m.nics[0].stats["tx_packets"] == 3


def test_tap_tx_on_a_deleted_device_raises_not_crashes(tap):
    m, name, _ = tap
    with IPRoute() as ipr:
        ipr.link("del", ifname=name)
    with pytest.raises(bm.NetError, match="tap"):
        bm.b_net_tx(abba(1))
    with pytest.raises(bm.NetError, match="tap"):
        bm.b_net_rx(0)
    assert m.nics[0].stats["tx_dropped"] == 1


def test_tap_at_fd_uses_an_inherited_descriptor():
    import fcntl
    import os
    import struct
    from pybaremetal.net.tap import IFF_NO_PI, IFF_TAP, TUNSETIFF
    name = unique("f")
    fd = os.open("/dev/net/tun", os.O_RDWR)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), IFF_TAP | IFF_NO_PI))
        with bm.Machine(cores=1, memory="16M", console="capture", input=False, nics=[f"tap:@{fd}"]) as m:
            assert m.nics[0].name == name
            bm.b_net_tx(abba(1))
            assert m.nics[0].stats["tx_packets"] == 1
        os.fstat(fd)                                    # the parent's fd is still open
    finally:
        os.close(fd)


def test_pingd_answers_ping_over_a_tap_moved_into_a_namespace():
    from pyroute2 import NetNS, netns
    namespace, name = unique("n"), unique("t")
    netns.create(namespace)
    try:
        m = bm.Machine(cores=1, memory="16M", console="capture", input=False, nics=[f"tap:{name}"])
        with IPRoute() as ipr:                          # the fd stays ours wherever the device is
            ipr.link("set", index=ipr.link_lookup(ifname=name)[0], net_ns_fd=namespace)
        with NetNS(namespace) as ns:
            index = ns.link_lookup(ifname=name)[0]
            ns.link("set", index=index, state="up")
            ns.addr("add", index=index, address="10.81.0.1", prefixlen=24)
        replies, ping = ping_pingd(m, namespace, "10.81.0.2")
        assert replies == 3
        assert ping.returncode == 0 and " 0% packet loss" in ping.stdout, ping.stdout
    finally:
        netns.remove(namespace)                         # takes the TAP with it
    assert not link_exists(name)


def test_tap_created_here_vanishes_when_the_process_is_killed():
    """Not persistent: a `baremetal run` killed with SIGKILL leaves no device behind."""
    import os
    import subprocess
    import sys
    name = unique("k")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    process = subprocess.Popen([sys.executable, "-m", "pybaremetal", "run", "--no-pin",
                                os.path.join(root, "examples", "pingd.py"), "--nic", f"tap:{name}",
                                "--", "10.82.0.2", "--seconds", "30"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert process.stdout.readline().startswith("pingd: answering")   # the NIC is open
        assert link_exists(name)
    finally:
        process.kill()
        process.wait(10)
    assert not link_exists(name)


def test_tap_keep_stays_after_halt_for_the_next_run():
    name = unique("p")
    try:
        with bm.Machine(cores=1, memory="16M", console="capture", input=False, nics=[f"tap:{name},keep"]):
            pass
        assert link_exists(name)
        with bm.Machine(cores=1, memory="16M", console="capture", input=False, nics=[f"tap:{name}"]) as m:
            bm.b_net_tx(abba(1))
            assert m.nics[0].stats["tx_packets"] == 1
        assert link_exists(name)                        # not ours to remove: it was there before
    finally:
        if link_exists(name):
            with IPRoute() as ipr:
                ipr.link("del", ifname=name)


def test_tap_bad_options_are_refused():
    with pytest.raises(bm.NetError, match="unknown option"):
        bm.Machine(cores=1, memory="16M", nics=[f"tap:{unique('o')},persist"])
    with pytest.raises(bm.NetError, match="keep is for devices"):
        bm.Machine(cores=1, memory="16M", nics=["tap:@0,keep"])

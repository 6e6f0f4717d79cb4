"""The socket backend: frames in UDP datagrams over loopback, point-to-point and a multicast
hub; two `baremetal run` processes pinging each other over it."""
import os
import secrets
import socket
import subprocess
import sys
import time

import pytest

import pybaremetal as bm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def fresh_group():
    """A random multicast group of the site-local range: test runs in parallel (other
    checkouts on this host) never share a hub."""
    return f"239.255.{secrets.randbelow(256)}.{1 + secrets.randbelow(254)}"


_booted = []


def machine(spec):
    """A booted machine with one NIC.  Booting binds this thread to it (core 0), so the
    machines are halted in the reverse order (the autouse fixture below): bindings nest."""
    m = bm.Machine(cores=1, memory="16M", console="capture", input=False, nics=[spec]).boot()
    _booted.append(m)
    return m


@pytest.fixture(autouse=True)
def halt_in_reverse_order():
    yield
    while _booted:
        _booted.pop().halt()


def frame(n, size=64, src=b"\x02\x00\x00\x00\x00\x01"):
    return (b"\xff" * 6 + src + b"\xab\xba" + n.to_bytes(4, "little") * 400)[:size]


def port_of(m):
    return int(m.nics[0].name.rsplit(":", 1)[1])


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def receive(m, count, limit=5.0):
    """The next `count` frames machine m receives (polling at most `limit` seconds)."""
    def poll():
        got, end = [], time.monotonic() + limit
        while len(got) < count and time.monotonic() < end:
            data = bm.b_net_rx(0)
            if data:
                got.append(bytes(data))
        return got
    return m.run(poll)


@pytest.fixture
def pair():
    a = machine("socket:listen=127.0.0.1:0")
    b = machine(f"socket:connect=127.0.0.1:{port_of(a)}")
    return a, b


def test_socket_listen_and_connect_carry_frames_both_ways_byte_exact(pair):
    a, b = pair
    out = [frame(1, 14), frame(2, 60), frame(3, 1522)]
    for f in out:
        b.run(bm.b_net_tx, f)
    assert receive(a, 3) == out
    back = [frame(4, 1514), frame(5, 15)]
    for f in back:
        a.run(bm.b_net_tx, f)                 # to the peer a learned from b's frames
    assert receive(b, 2) == back
    assert a.nics[0].stats == {"rx_packets": 3, "rx_bytes": 14 + 60 + 1522, "rx_dropped": 0,
                               "tx_packets": 2, "tx_bytes": 1514 + 15, "tx_dropped": 0}
    assert b.nics[0].stats == {"rx_packets": 2, "rx_bytes": 1514 + 15, "rx_dropped": 0,
                               "tx_packets": 3, "tx_bytes": 14 + 60 + 1522, "tx_dropped": 0}


def test_socket_listening_nic_without_a_peer_drops_with_the_reason():
    m = machine("socket:listen=127.0.0.1:0")
    with pytest.raises(bm.NetError, match="no peer yet"):
        m.run(bm.b_net_tx, frame(1))
    assert m.nics[0].stats["tx_dropped"] == 1 and m.nics[0].stats["tx_packets"] == 0


def test_socket_fixed_pair_talks_without_a_first_frame():
    pa, pb = free_port(), free_port()
    a = machine(f"socket:listen=127.0.0.1:{pa},connect=127.0.0.1:{pb}")
    b = machine(f"socket:listen=127.0.0.1:{pb},connect=127.0.0.1:{pa}")
    assert a.nics[0].name == f"127.0.0.1:{pa}"
    a.run(bm.b_net_tx, frame(7))
    b.run(bm.b_net_tx, frame(8))
    assert receive(b, 1) == [frame(7)] and receive(a, 1) == [frame(8)]


def test_socket_connect_to_nobody_sends_and_a_late_listener_gets_the_next_frames():
    port = free_port()
    b = machine(f"socket:connect=127.0.0.1:{port}")
    for n in range(3):                          # ICMP port unreachable comes back for these
        b.run(bm.b_net_tx, frame(n))
    late = machine(f"socket:listen=127.0.0.1:{port}")
    b.run(bm.b_net_tx, frame(9))                # the pending ECONNREFUSED does not eat it
    assert receive(late, 1) == [frame(9)]
    assert b.nics[0].stats["tx_packets"] == 4 and b.nics[0].stats["tx_dropped"] == 0


def test_socket_ipv6_loopback():
    a = machine("socket:listen=[::1]:0")
    b = machine(f"socket:connect=[::1]:{port_of(a)}")
    b.run(bm.b_net_tx, frame(6, 200))
    assert receive(a, 1) == [frame(6, 200)]


def test_socket_datagrams_that_are_not_frames_are_dropped_and_counted():
    m = machine("socket:listen=127.0.0.1:0")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for data in (b"tiny", bytes(1523), frame(1)):
            s.sendto(data, ("127.0.0.1", port_of(m)))
    assert receive(m, 1) == [frame(1)]
    assert receive(m, 1, limit=0.1) == []
    assert m.nics[0].stats["rx_dropped"] == 2 and m.nics[0].stats["rx_packets"] == 1


def test_socket_hub_frame_reaches_every_other_member_never_its_sender():
    group, port = fresh_group(), free_port()
    members = [machine(f"socket:mcast={group}:{port},mac=02:00:00:00:00:0{n}") for n in range(3)]
    for n, m in enumerate(members):
        m.run(bm.b_net_tx, frame(n, 100 + n))
    for n, m in enumerate(members):
        expected = sorted(frame(k, 100 + k) for k in range(3) if k != n)
        assert sorted(receive(m, 2)) == expected
        assert receive(m, 1, limit=0.2) == []               # not its own
        assert m.nics[0].stats["rx_packets"] == 2 and m.nics[0].stats["tx_packets"] == 1


def test_socket_network_callback_runs_once_per_frame(pair):
    a, b = pair
    got = []

    def on_frame():
        data = bm.b_net_rx(0)
        if data:
            got.append(bytes(data))
    a.run(bm.b_system, bm.CALLBACK_NETWORK, on_frame)
    sent = [frame(n) for n in range(20)]
    for f in sent:
        b.run(bm.b_net_tx, f)
    end = time.monotonic() + 5
    while len(got) < 20 and time.monotonic() < end:
        time.sleep(0.01)
    a.run(bm.b_system, bm.CALLBACK_NETWORK, 0)
    assert got == sent


@pytest.mark.parametrize("spec, message", [
    ("socket", "expected socket:listen"),
    ("socket:listen=127.0.0.1", "HOST:PORT"),
    ("socket:connect=127.0.0.1:0", "port must be 1..65535"),
    ("socket:connect=127.0.0.1:70000", "port must be"),
    ("socket:connect=no-such-host.invalid:5", "cannot resolve"),
    ("socket:mcast=127.0.0.1:5000", "multicast address"),
    ("socket:mcast=239.1.1.1:5000,connect=127.0.0.1:5", "takes no listen= or connect="),
    ("socket:mcast=239.1.1.1:5000,ttl=300", "ttl=300"),
    ("socket:mcast=239.1.1.1:5000,ifaddr=nowhere", "ifaddr=nowhere"),
    ("socket:connect=127.0.0.1:5,ttl=1", "for mcast= only"),
    ("socket:connect=127.0.0.1:5,colour=blue", "unknown option"),
    ("socket:listen=[::1]:0,connect=127.0.0.1:5", "both be IPv4 or both IPv6"),
])
def test_socket_bad_specs_are_refused_with_the_reason(spec, message):
    with pytest.raises(bm.NetError, match=message):
        machine(spec)


def test_socket_port_in_use_is_refused():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        with pytest.raises(bm.NetError, match="cannot listen on .*in use"):
            machine(f"socket:listen=127.0.0.1:{s.getsockname()[1]}")


def test_two_baremetal_processes_ping_each_other_100000_frames_counts_exact(tmp_path):
    """pingd.py (Python) answers pinger.c (C) in another process: 50,000 echo requests and
    50,000 replies, every one checked.  --no-pin: both processes would pin core 0 to the same
    first CPU of their (equal) allowed sets."""
    port, count = free_port(), 50_000
    env = dict(os.environ, BAREMETAL_CACHE=str(tmp_path / "cache"))
    baremetal = [sys.executable, "-m", "pybaremetal", "run", "--no-pin"]
    pingd = subprocess.Popen(baremetal + [os.path.join(ROOT, "examples", "pingd.py"),
                                          "--nic", f"socket:listen=127.0.0.1:{port}", "--",
                                          "10.9.0.2", "--quiet", "--count", str(count), "--seconds", "50"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        pinger = subprocess.run(baremetal + [os.path.join(ROOT, "examples", "pinger.c"),
                                             "--nic", f"socket:connect=127.0.0.1:{port}", "--",
                                             "10.9.0.2", str(count)],
                                capture_output=True, text=True, timeout=55, env=env)
        try:
            out, err = pingd.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            pingd.kill()
            out, err = pingd.communicate()
    finally:
        pingd.kill()
    assert pinger.returncode == 0, f"{pinger.stdout}{pinger.stderr}\npingd: {out}{err}"
    assert f"pinger: {count} sent, {count} replies, 0 lost, 0 bad" in pinger.stdout
    assert f"pingd: {count} echo replies" in out, out + err

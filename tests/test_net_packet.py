"""The packet backend over a real veth pair into a namespace the test creates; pingd answers
real `ping` from that namespace."""
import time

import pytest

import pybaremetal as bm
from netns_helper import VethNamespace, ping_pingd

@pytest.fixture
def veth():
    ns = VethNamespace()
    yield ns
    ns.close()


@pytest.fixture(params=["", ",txring"], ids=["send", "txring"])
def machine(veth, request):
    m = bm.Machine(cores=1, memory="16M", console="capture", input=False,
                   nics=[f"packet:{veth.outer}{request.param}"])
    m.boot()
    yield m
    m.halt()


def mac_bytes(text):
    return bytes.fromhex(text.replace(":", ""))


def test_frame(n, size, dst, src):
    """Not a test: a frame of EtherType 0xABBA numbered n."""
    body = bytes((n + i) & 0xFF for i in range(size - 14))
    return dst + src + b"\xab\xba" + body


test_frame.__test__ = False


def recv_abba(sock, count):
    """The next `count` 0xABBA frames the namespace's raw socket sees."""
    frames = []
    while len(frames) < count:
        data = sock.recv(4096)
        if data[12:14] == b"\xab\xba":
            frames.append(data)
    return frames


def poll_abba(iid, count, limit=5.0):
    """The next `count` 0xABBA frames b_net_rx returns (polling at most `limit` seconds)."""
    frames, end = [], time.monotonic() + limit
    while len(frames) < count and time.monotonic() < end:
        data = bm.b_net_rx(iid)
        if len(data) and data[12:14] == b"\xab\xba":
            frames.append(bytes(data))
    return frames


def test_packet_frames_both_ways_byte_exact_broadcast_and_unicast(veth, machine):
    sock = veth.raw_socket()
    mine, theirs = machine.nics[0].mac.to_bytes(6, "big"), mac_bytes(veth.inner_mac)
    assert bm.b_system(bm.NET_STATUS, 0, 0) == machine.nics[0].mac
    out = [test_frame(1, 60, b"\xff" * 6, mine), test_frame(2, 1514, theirs, mine)]
    for f in out:
        bm.b_net_tx(f)
    assert recv_abba(sock, 2) == out
    back = [test_frame(3, 60, b"\xff" * 6, theirs), test_frame(4, 1514, mine, theirs),
            test_frame(5, 14, mine, theirs)]
    for f in back:
        sock.send(f)
    got = poll_abba(0, 3)
    # the wire pads short frames? veth does not: byte-exact, 14-byte frames included
    assert got == back
    stats = machine.nics[0].stats
    assert stats["tx_packets"] == 2 and stats["tx_bytes"] == 60 + 1514 and stats["tx_dropped"] == 0
    assert stats["rx_packets"] >= 3 and stats["rx_bytes"] >= 60 + 1514 + 14
    sock.close()


def test_packet_nic_does_not_see_its_own_frames(veth, machine):
    mine = machine.nics[0].mac.to_bytes(6, "big")
    for n in range(5):
        bm.b_net_tx(test_frame(n, 64, b"\xff" * 6, mine))
    assert poll_abba(0, 1, limit=0.3) == []


def test_packet_many_frames_arrive_in_order(veth, machine):
    sock = veth.raw_socket()
    mine, theirs = machine.nics[0].mac.to_bytes(6, "big"), mac_bytes(veth.inner_mac)
    sent = [test_frame(n, 100, mine, theirs) for n in range(200)]
    for f in sent:
        sock.send(f)
    assert poll_abba(0, 200) == sent
    sock.close()


def test_packet_network_callback_runs_once_per_arriving_frame(veth, machine):
    sock = veth.raw_socket()
    mine, theirs = machine.nics[0].mac.to_bytes(6, "big"), mac_bytes(veth.inner_mac)
    got = []

    def on_frame():
        data = bm.b_net_rx(0)
        if len(data) and data[12:14] == b"\xab\xba":
            got.append(bytes(data))
    bm.b_system(bm.CALLBACK_NETWORK, on_frame)
    sent = [test_frame(n, 80, mine, theirs) for n in range(20)]
    for f in sent:
        sock.send(f)
    end = time.monotonic() + 5
    while len(got) < 20 and time.monotonic() < end:
        time.sleep(0.01)
    bm.b_system(bm.CALLBACK_NETWORK, 0)
    assert got == sent
    calls = bm.net.callback_counts(machine)[1]
    assert calls == machine.nics[0].stats["rx_packets"]   # one call per frame, each read once
    sock.close()


def test_packet_tx_after_the_interface_vanished_raises(veth, machine):
    veth.close()
    with pytest.raises(bm.NetError):
        bm.b_net_tx(b"\xff" * 12 + b"\xab\xba" + bytes(50))
    assert machine.nics[0].stats["tx_dropped"] == 1


def test_pingd_answers_ping_from_the_namespace(veth):
    m = bm.Machine(cores=1, memory="16M", console="capture", input=False, nics=[f"packet:{veth.outer}"])
    replies, ping = ping_pingd(m, veth.name, "10.77.0.2")
    assert replies == 3
    assert ping.returncode == 0 and " 0% packet loss" in ping.stdout, ping.stdout + ping.stderr


def ones_complement_sum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def transport_checksum_ok(frame):
    """1 if the TCP/UDP checksum of an IPv4/IPv6 frame is right (pseudo header included)."""
    kind = frame[12:14]
    if kind == b"\x08\x00":
        ihl = (frame[14] & 0x0F) * 4
        total = int.from_bytes(frame[16:18], "big")
        proto, segment = frame[23], frame[14 + ihl:14 + total]
        pseudo = frame[26:34] + bytes([0, proto]) + len(segment).to_bytes(2, "big")
    else:
        proto, segment = frame[20], frame[54:54 + int.from_bytes(frame[18:20], "big")]
        pseudo = frame[22:54] + len(segment).to_bytes(4, "big") + bytes([0, 0, 0, proto])
    return ones_complement_sum(pseudo + segment) == 0xFFFF


@pytest.mark.parametrize("family, kind", [("ipv4", "udp"), ("ipv4", "tcp"), ("ipv6", "udp"), ("ipv6", "tcp")])
def test_packet_completes_checksums_the_veth_peer_left_to_offload(veth, family, kind):
    """The namespace's kernel sends with checksum offload on (the veth default): the frames'
    TCP/UDP checksums are partial (TP_STATUS_CSUMNOTREADY); the app gets them finished."""
    import socket as sockets
    from pyroute2 import netns
    with bm.Machine(cores=1, memory="16M", console="capture", input=False,
                    nics=[f"packet:{veth.outer},mac=02:00:00:00:00:07"]) as m:
        if family == "ipv6":
            veth.run("sysctl", "-qw", f"net.ipv6.conf.{veth.inner}.disable_ipv6=0")
            veth.run("ip", "-6", "addr", "add", "fd00:77::1/64", "dev", veth.inner, "nodad")
            address, af = "fd00:77::2", sockets.AF_INET6
        else:
            address, af = "10.77.0.2", sockets.AF_INET
        veth.run("ip", "neigh", "replace", address, "lladdr", "02:00:00:00:00:07", "dev", veth.inner)
        netns.pushns(veth.name)
        try:
            sock = sockets.socket(af, sockets.SOCK_DGRAM if kind == "udp" else sockets.SOCK_STREAM)
        finally:
            netns.popns()
        sock.setblocking(False)
        if kind == "udp":
            sock.sendto(b"checksum me" * 20, (address, 9999))
        else:
            try:
                sock.connect((address, 80))               # the SYN is what we look at
            except BlockingIOError:
                pass
        ether = b"\x08\x00" if family == "ipv4" else b"\x86\xdd"
        proto = 17 if kind == "udp" else 6
        got, end = None, time.monotonic() + 5
        while got is None and time.monotonic() < end:
            data = bytes(bm.b_net_rx(0))
            if data[12:14] == ether and data[23 if family == "ipv4" else 20] == proto:
                got = data
        sock.close()
        assert got is not None
        assert transport_checksum_ok(got), got.hex()


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_packet_cuts_segmentation_offload_super_frames_into_frames(veth, family):
    """A TCP sender in the namespace with TSO/GSO on (the veth default) sends its first flight
    as segments of several MSS; the app gets them as frames of at most 1514 bytes, contiguous
    in sequence, every checksum right, nothing dropped."""
    import socket as sockets
    import struct
    from pyroute2 import netns
    mine = b"\x02\0\0\0\0\x08"
    v6 = family == "ipv6"
    af, ours, theirs = ((sockets.AF_INET6, "fd00:77::2", "fd00:77::1") if v6 else
                        (sockets.AF_INET, "10.77.0.2", "10.77.0.1"))
    ours_ip, theirs_ip = sockets.inet_pton(af, ours), sockets.inet_pton(af, theirs)
    ether, l4 = (b"\x86\xdd", 54) if v6 else (b"\x08\x00", 34)
    with bm.Machine(cores=1, memory="16M", console="capture", input=False,
                    nics=[f"packet:{veth.outer},mac=02:00:00:00:00:08"]) as m:
        if v6:
            veth.run("sysctl", "-qw", f"net.ipv6.conf.{veth.inner}.disable_ipv6=0")
            veth.run("ip", "-6", "addr", "add", f"{theirs}/64", "dev", veth.inner, "nodad")
        veth.run("ip", "neigh", "replace", ours, "lladdr", "02:00:00:00:00:08", "dev", veth.inner)
        netns.pushns(veth.name)
        try:
            sock = sockets.socket(af)
        finally:
            netns.popns()
        sock.setblocking(False)
        try:
            sock.connect((ours, 80))
        except BlockingIOError:
            pass
        isn, data, end = None, {}, time.monotonic() + 5
        while time.monotonic() < end and sum(len(d) for d in data.values()) < 10 * 1400:
            f = bytes(bm.b_net_rx(0))
            if f[12:14] != ether or f[20 if v6 else 23] != 6:
                continue
            assert len(f) <= 1514 and transport_checksum_ok(f)
            assert v6 or ones_complement_sum(f[14:34]) == 0xFFFF          # the IP header's
            tcp = f[l4:]
            seq = int.from_bytes(tcp[4:8], "big")
            if tcp[13] & 0x02:                                             # SYN: SYN|ACK, window 64K
                isn = seq
                segment = bytearray(struct.pack("!HHIIBBHHH", 80, int.from_bytes(tcp[0:2], "big"), 7000,
                                                seq + 1, 0x60, 0x12, 65535, 0, 0) + b"\x02\x04\x05\xb4")
                if v6:
                    pseudo = ours_ip + theirs_ip + struct.pack("!IxxxB", len(segment), 6)
                    header = struct.pack("!IHBB", 0x60000000, len(segment), 6, 64) + ours_ip + theirs_ip
                else:
                    pseudo = ours_ip + theirs_ip + struct.pack("!BBH", 0, 6, len(segment))
                    header = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(segment), 1, 0, 64, 6, 0,
                                                   ours_ip, theirs_ip))
                    header[10:12] = (0xFFFF - ones_complement_sum(bytes(header))).to_bytes(2, "big")
                segment[16:18] = (0xFFFF - ones_complement_sum(pseudo + bytes(segment))).to_bytes(2, "big")
                bm.b_net_tx(f[6:12] + mine + ether + bytes(header) + bytes(segment))
                time.sleep(0.05)                                           # established
                try:
                    sock.send(bytes(range(256)) * 200)
                except BlockingIOError:
                    pass
            elif isn is not None and len(f) > l4 + 20:
                data[seq - isn - 1] = tcp[(tcp[12] >> 4) * 4:]
        sock.close()
        stream, at = b"", 0
        while at in data:                                                  # contiguous from the start
            stream += data[at]
            at += len(data[at])
        assert len(stream) >= 10 * 1400, sorted(data)                      # the whole first flight
        assert stream == (bytes(range(256)) * 200)[:len(stream)]
        assert m.nics[0].stats["rx_dropped"] == 0

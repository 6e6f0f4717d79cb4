"""The wire backend, the b_net_* faces' argument checks, NET_STATUS / NET_CONFIG."""
import threading

import pytest

import pybaremetal as bm
from pybaremetal.net import format_mac, parse_mac


def frame(n, size=64, dst=b"\xff" * 6, src=b"\x02\x00\x00\x00\x00\x01"):
    body = n.to_bytes(8, "little")
    return (dst + src + b"\xab\xba" + body * (size // 8 + 1))[:size]


@pytest.fixture
def loop():
    m = bm.Machine(cores=1, memory="16M", console="capture", input=False, nics=["wire"])
    m.boot()
    yield m
    m.halt()


def test_wire_loopback_returns_the_frame_byte_exact(loop):
    sent = frame(7, 1514)
    bm.b_net_tx(sent)
    got = bm.b_net_rx(0)
    assert bytes(got) == sent
    assert len(bm.b_net_rx(0)) == 0
    assert loop.nics[0].stats == {"rx_packets": 1, "rx_bytes": 1514, "rx_dropped": 0,
                                  "tx_packets": 1, "tx_bytes": 1514, "tx_dropped": 0}


def test_rx_frame_lives_in_the_nic_buffer_in_machine_memory(loop):
    bm.b_net_tx(frame(1, 60))
    view = bm.b_net_rx(0)
    start = bm.net.NET_BUFFERS
    assert bytes(loop.memory[start:start + 60]) == bytes(view)


@pytest.mark.parametrize("length", [0, 13, 1523, 1 << 20])
def test_tx_bad_length_sends_nothing_and_counts_a_drop(loop, length):
    with pytest.raises(bm.NetError, match="length"):
        bm.b_net_tx(bytes(length))
    assert len(bm.b_net_rx(0)) == 0
    assert loop.nics[0].stats["tx_dropped"] == 1
    assert loop.nics[0].stats["tx_packets"] == 0


def test_tx_and_rx_on_a_missing_interface_raise(loop):
    with pytest.raises(bm.NetError, match="no interface 1"):
        bm.b_net_tx(frame(1), iid=1)
    with pytest.raises(bm.NetError, match="no interface 9"):
        bm.b_net_rx(9)
    with pytest.raises(bm.NetError):
        bm.b_net_rx(-1)
    assert bm._native.lib.bm_net_bad_iid_drops(loop._c) == 1


def test_net_status_is_the_mac_first_byte_most_significant():
    with bm.Machine(cores=1, memory="16M", console="capture", input=False,
                    nics=["wire,mac=10:11:12:00:1a:f4"]) as m:
        assert bm.b_system(bm.NET_STATUS, 0, 0) == 0x101112001AF4
        assert bm.b_system(bm.NET_STATUS, 0, 1) == 0
        assert bm.b_system(bm.NET_CONFIG, 0x300000, 0) == 1
        assert format_mac(m.nics[0].mac) == "10:11:12:00:1a:f4"


def test_bad_specs_are_refused_with_the_reason():
    with pytest.raises(bm.ArgumentError, match="unknown kind"):
        bm.Machine(cores=1, memory="16M", nics=["carrier-pigeon"])
    with pytest.raises(bm.ArgumentError, match="MAC"):
        parse_mac("01:02:03")
    with pytest.raises(bm.NetError, match="no interface named"):
        bm.Machine(cores=1, memory="16M", nics=["packet:bmt-no-such-if"])


def test_two_machines_exchange_10000_frames_none_lost_or_reordered():
    a = bm.Machine(cores=1, memory="16M", console="capture", input=False)
    b = bm.Machine(cores=1, memory="16M", console="capture", input=False)
    nic_a, nic_b = bm.wire(a, b)
    total, received = 10000, []

    def receive():
        while len(received) < total:
            data = bm.b_net_rx(nic_b.iid)
            if data:
                received.append(int.from_bytes(data[14:22], "little"))

    thread = threading.Thread(target=lambda: b.run(receive))
    thread.start()
    try:
        def send():
            for n in range(total):
                bm.b_net_tx(frame(n), nic_a.iid)
        a.run(send)
        thread.join(60)
    finally:
        a.halt()
        b.halt()
    assert received == list(range(total))
    assert nic_a.stats["tx_packets"] == total and nic_a.stats["tx_dropped"] == 0
    assert nic_b.stats["rx_packets"] == total


def test_wire_port_lets_python_talk_to_a_machine(loop):
    port = bm.wire(loop)
    iid = port.nic.iid
    port.send(frame(3))
    assert bytes(bm.b_net_rx(iid)) == frame(3)
    bm.b_net_tx(frame(4), iid)
    assert port.recv() == frame(4)
    assert port.recv() == b""
    assert port.stats["tx_packets"] == 1 and port.stats["rx_packets"] == 1
    port.close()
    with pytest.raises(bm.NetError, match="closed"):
        bm.b_net_tx(frame(5), iid)


def test_halted_machine_end_makes_the_peer_drop_with_an_error():
    m = bm.Machine(cores=1, memory="16M", console="capture", input=False)
    port = bm.wire(m)
    m.halt()
    with pytest.raises(bm.NetError, match="closed"):
        port.send(frame(1))
    assert port.stats["tx_dropped"] == 1
    assert m.nics[0].stats["rx_packets"] == 0          # counters survive the halt


def test_tx_from_several_cores_at_once_loses_and_mixes_nothing():
    m = bm.Machine(cores=4, memory="16M", console="capture", input=False)
    port = bm.wire(m)
    per_core, received = 500, []
    errors = []

    def core(core_id):
        m._bind(core_id)
        try:
            for n in range(per_core):
                bm.b_net_tx(frame(core_id * 100000 + n, 200), port.nic.iid)
        except Exception as error:                 # reported below, not lost in the thread
            errors.append(error)
        finally:
            m._unbind()

    threads = [threading.Thread(target=core, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    while len(received) < 4 * per_core:
        finished = not any(t.is_alive() for t in threads)   # read before polling: no race
        data = port.recv()
        if data:
            received.append(data)
        elif finished:
            break
    for t in threads:
        t.join()
    m.halt()
    assert errors == []
    # per-core counters, summed: exact (each core counts in its own set)
    assert m.nics[0].stats["tx_packets"] == 4 * per_core and m.nics[0].stats["tx_bytes"] == 4 * per_core * 200
    assert port.stats["rx_packets"] == 4 * per_core
    numbers = [int.from_bytes(d[14:22], "little") for d in received]
    assert all(d == frame(n, 200) for d, n in zip(received, numbers))
    for core_id in range(4):                           # each core's frames in its own order
        mine = [n - core_id * 100000 for n in numbers if n // 100000 == core_id]
        assert mine == list(range(per_core))


def test_a_full_wire_drops_after_waiting_instead_of_blocking_forever(loop):
    port = bm.wire(loop)
    sent = 0
    with pytest.raises(bm.NetError, match="read nothing"):
        while sent < 5000:
            bm.b_net_tx(frame(sent), port.nic.iid)
            sent += 1
    assert sent == 1024                                # the queue's size
    assert port.nic.stats["tx_dropped"] == 1
    assert port.recv() == frame(0)


def test_unprivileged_users_are_told_how_to_get_a_nic():
    import sys
    from unprivileged import run_unprivileged
    code = ("import pybaremetal as bm\n"
            "for spec in ('tap:bmtnopriv', 'packet:lo'):\n"
            "    try:\n"
            "        bm.Machine(cores=1, memory='16M', nics=[spec])\n"
            "    except bm.NetError as e:\n"
            "        print(e)\n")
    result = run_unprivileged([sys.executable, "-c", code])
    assert "needs CAP_NET_ADMIN" in result.stdout and "ip tuntap add" in result.stdout, result.stderr
    assert "needs CAP_NET_RAW" in result.stdout


def test_a_flat_binary_sends_and_receives_through_the_same_calls(tmp_path):
    import subprocess
    from pybaremetal.apps import binary
    source, image = tmp_path / "net.asm", tmp_path / "net.app"
    source.write_text("""BITS 64
DEFAULT REL
ORG 0xFFFF800000000000
    lea rsi, [frame]
    mov rcx, 20
    xor edx, edx
    call [abs 0x100020]             ; b_net_tx(frame, 20, 0)
    xor edx, edx
    call [abs 0x100028]             ; b_net_rx(0): RDI = frame, RCX = length
    mov rsi, rdi
    call [abs 0x100018]             ; b_output(frame, length)
    ret
frame: db 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 2, 0, 0, 0, 0, 1, 0xab, 0xba, 'B', 'a', 'r', 'e', 'M', 'e'
""")
    subprocess.run(["nasm", "-f", "bin", str(source), "-o", str(image)], check=True)
    with bm.Machine(cores=1, memory="16M", console="capture", input=False, nics=["wire"]) as m:
        binary.run(m, str(image), [])
        assert m.console.output() == b"\xff" * 6 + b"\x02\0\0\0\0\x01\xab\xbaBareMe"
        assert m.nics[0].stats["rx_packets"] == 1 and m.nics[0].stats["tx_packets"] == 1

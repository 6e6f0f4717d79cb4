"""Packet capture (pcap=FILE on any NIC, --pcap FILE): every frame in and out, timestamped,
in the pcap format tcpdump reads."""
import os
import struct
import subprocess
import sys
import time

import pytest

import pybaremetal as bm
from test_net_socket import free_port, fresh_group

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def frame(n, size):
    return (b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x01" + b"\xab\xba" + bytes([n]) * size)[:size]


def read_pcap(path):
    """(header fields, [(seconds, nanoseconds, frame)]) of a pcap file, read by hand."""
    with open(path, "rb") as f:
        data = f.read()
    header = struct.unpack("<IHHiIII", data[:24])
    records, at = [], 24
    while at < len(data):
        seconds, fraction, captured, length = struct.unpack("<IIII", data[at:at + 16])
        assert captured == length
        records.append((seconds, fraction, data[at + 16:at + 16 + captured]))
        at += 16 + captured
    return header, records


def tcpdump(path):
    result = subprocess.run(["tcpdump", "-r", path, "-nn", "-e", "-tt"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return [line for line in result.stdout.splitlines() if not line.startswith("\t")]   # no hex dumps


def test_pcap_holds_every_frame_in_and_out_in_order_readable_by_tcpdump(tmp_path):
    path = str(tmp_path / "wire.pcap")
    before = time.time()
    with bm.Machine(cores=1, memory="16M", console="capture", input=False, nics=[f"wire,pcap={path}"]) as m:
        assert m.nics[0].pcap == path
        expected = []
        for n, size in enumerate((14, 60, 1522)):
            bm.b_net_tx(frame(n, size))
            expected.append(frame(n, size))                  # out
            assert bytes(bm.b_net_rx(0)) == frame(n, size)
            expected.append(frame(n, size))                  # and back in
    header, records = read_pcap(path)
    assert header == (0xA1B23C4D, 2, 4, 0, 0, 65535, 1)     # nanoseconds, v2.4, Ethernet
    assert [r[2] for r in records] == expected
    stamps = [r[0] + r[1] / 1e9 for r in records]
    assert stamps == sorted(stamps) and before - 1 <= stamps[0] <= stamps[-1] <= time.time() + 1
    lines = tcpdump(path)
    assert len(lines) == 6
    assert "02:00:00:00:00:01 > ff:ff:ff:ff:ff:ff, ethertype Unknown (0xabba), length 1522" in lines[4]


def test_pcap_flush_writes_the_frames_so_far_while_running(tmp_path):
    path = str(tmp_path / "run.pcap")
    with bm.Machine(cores=1, memory="16M", console="capture", input=False, nics=[f"wire,pcap={path}"]) as m:
        for n in range(5):
            bm.b_net_tx(frame(n, 64))
        m.nics[0].flush_pcap()
        assert len(tcpdump(path)) == 5
        assert m.nics[0].stats["tx_packets"] == 5


def test_pcap_on_a_socket_nic_through_the_cli(tmp_path):
    """--pcap FILE applies to the --nic before it; a frame the app sends is in the file."""
    path = str(tmp_path / "cli.pcap")
    result = subprocess.run([sys.executable, "-m", "pybaremetal", "run", "--no-pin",
                             os.path.join(ROOT, "examples", "ethtest.py"),
                             "--nic", f"socket:mcast={fresh_group()}:{free_port()},mac=02:00:00:00:00:0a",
                             "--pcap", path, "--", "--seconds", "0.2"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    lines = tcpdump(path)
    assert len(lines) == 1 and "02:00:00:00:00:0a > ff:ff:ff:ff:ff:ff" in lines[0]


def test_pcap_bad_file_is_refused_with_the_reason(tmp_path):
    with pytest.raises(bm.NetError, match="pcap=.*No such file"):
        bm.Machine(cores=1, memory="16M", nics=[f"wire,pcap={tmp_path}/no/such/dir/x.pcap"])
    with pytest.raises(bm.NetError, match="pcap= needs a file name"):
        bm.Machine(cores=1, memory="16M", nics=["wire,pcap"])


def test_cli_pcap_adds_to_the_nic_before_it_and_needs_one(capsys):
    from pybaremetal.cli import build_parser
    args = build_parser().parse_args(["run", "app.py", "--nic", "wire", "--pcap", "a.pcap",
                                      "--nic", "wire,mac=02:00:00:00:00:01"])
    assert args.nic == ["wire,pcap=a.pcap", "wire,mac=02:00:00:00:00:01"]
    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args(["run", "app.py", "--pcap", "x.pcap"])
    assert stop.value.code == 2 and "--pcap FILE follows the --nic" in capsys.readouterr().err

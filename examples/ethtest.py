"""Upstream's ethtest idea: send a broadcast frame of EtherType 0xABBA, then print every frame
of that type that arrives (from other machines running ethtest on the same link).

    baremetal run examples/ethtest.py --nic wire                 # loopback: hears itself
    sudo baremetal run examples/ethtest.py --nic packet:veth0 -- --seconds 10

Arguments: [--iid N] [--seconds S: listen this long, default 5] [--count N: stop after N frames].
"""
import argparse
import sys
import time

import pybaremetal as bm

ETHERTYPE = b"\xab\xba"


def hello_frame(mac):
    """A broadcast frame of type 0xABBA carrying a greeting."""
    payload = b"Hello from BareMetal (pybaremetal)!"
    frame = b"\xff" * 6 + mac + ETHERTYPE + payload
    return frame + b"\0" * max(0, 60 - len(frame))      # pad to Ethernet's minimum


def show(frame):
    source = ":".join(f"{b:02x}" for b in frame[6:12])
    text = bytes(frame[14:]).rstrip(b"\0").decode("ascii", "replace")
    return f"from {source}: {text!r} ({len(frame)} bytes)\n"


def main():
    parser = argparse.ArgumentParser(prog="ethtest")
    parser.add_argument("--iid", type=int, default=0)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--count", type=int, default=None)
    args = parser.parse_args(sys.argv[1:])
    mac = bm.b_system(bm.NET_STATUS, 0, args.iid).to_bytes(6, "big")
    if mac == bytes(6):
        bm.b_output(f"ethtest: no interface {args.iid}; attach one with --nic (e.g. --nic wire)\n")
        return 1
    bm.b_net_tx(hello_frame(mac), args.iid)
    bm.b_output("ethtest: sent a broadcast frame of type 0xABBA; listening\n")
    seen, end = 0, time.monotonic() + args.seconds
    while time.monotonic() < end and (args.count is None or seen < args.count):
        frame = bm.b_net_rx(args.iid)
        if len(frame) >= 14 and frame[12:14] == ETHERTYPE:
            bm.b_output(show(frame))
            seen += 1
    return 0

"""Answer ARP and ICMP echo (ping) for an IPv4 address, polling b_net_rx on core 0.

    sudo ip link add bm0 type veth peer name bm1 && sudo ip link set bm0 up
    sudo ip addr add 10.0.0.1/24 dev bm1 && sudo ip link set bm1 up
    sudo .venv/bin/baremetal run examples/pingd.py --nic packet:bm0 -- 10.0.0.2
    ping 10.0.0.2                       # from another terminal

Arguments: ADDRESS [--iid N] [--count N: stop after N echo replies] [--seconds S: stop after S]
[--quiet: no line per reply, only the total at the end].
The MAC is the NIC's own (NET_STATUS).  Frames are built by hand, as a BareMetal app would.
"""
import argparse
import socket
import struct
import sys
import time

import pybaremetal as bm


def checksum(data):
    """The Internet checksum (RFC 1071) of data."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def arp_reply(frame, mac, ip):
    """The reply to an ARP request for ip, or None."""
    if len(frame) < 42 or frame[14:22] != b"\x00\x01\x08\x00\x06\x04\x00\x01" or frame[38:42] != ip:
        return None
    sender_mac, sender_ip = frame[22:28], frame[28:32]
    return (sender_mac + mac + b"\x08\x06" + b"\x00\x01\x08\x00\x06\x04\x00\x02"
            + mac + ip + sender_mac + sender_ip)


def echo_reply(frame, mac, ip):
    """The reply to an ICMP echo request to ip, or None."""
    if len(frame) < 42 or frame[23] != 1 or frame[30:34] != ip:
        return None
    header_len = (frame[14] & 0x0F) * 4
    total_len = struct.unpack("!H", frame[16:18])[0]
    icmp = bytearray(frame[14 + header_len:14 + total_len])
    if len(icmp) < 8 or icmp[0] != 8:
        return None
    icmp[0] = 0
    icmp[2:4] = b"\0\0"
    icmp[2:4] = struct.pack("!H", checksum(bytes(icmp)))
    header = bytearray(frame[14:14 + header_len])
    header[8] = 64                                      # TTL
    header[12:16], header[16:20] = ip, frame[26:30]     # from us, to the sender
    header[10:12] = b"\0\0"
    header[10:12] = struct.pack("!H", checksum(bytes(header)))
    return frame[6:12] + mac + b"\x08\x00" + bytes(header) + bytes(icmp)


def serve(ip, iid=0, count=None, seconds=None, log=print):
    """Poll interface iid and answer for ip; returns the number of echo replies sent."""
    mac = bm.b_system(bm.NET_STATUS, 0, iid).to_bytes(6, "big")
    address = socket.inet_aton(ip)
    replies, end = 0, (time.monotonic() + seconds) if seconds else None
    log(f"pingd: answering for {ip} at {':'.join(f'{b:02x}' for b in mac)} on interface {iid}")
    while (count is None or replies < count) and (end is None or time.monotonic() < end):
        frame = bm.b_net_rx(iid)
        if not frame:
            continue
        frame = bytes(frame)
        kind = frame[12:14]
        reply = (arp_reply(frame, mac, address) if kind == b"\x08\x06" else
                 echo_reply(frame, mac, address) if kind == b"\x08\x00" else None)
        if reply is not None:
            bm.b_net_tx(reply, iid)
            if kind == b"\x08\x00":
                replies += 1
                log(f"pingd: echo reply to {socket.inet_ntoa(frame[26:30])}")
    return replies


def main():
    parser = argparse.ArgumentParser(prog="pingd")
    parser.add_argument("address")
    parser.add_argument("--iid", type=int, default=0)
    parser.add_argument("--count", type=int, default=None)
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(sys.argv[1:])
    say = lambda text: bm.b_output(text + "\n")
    replies = serve(args.address, args.iid, args.count, args.seconds,
                    log=(lambda text: None) if args.quiet else say)
    say(f"pingd: {replies} echo replies")
    return 0

"""The `packet` backend: an AF_PACKET socket with mmap'd rings (native/net_packet.c).

``packet:IFACE[,promisc][,txring]`` opens a raw socket on the existing interface IFACE (one
end of a veth pair, a physical NIC); C sets up a TPACKET_V2 RX ring and then binds it, so an
empty poll reads a status word instead of making a system call.  Frames go out with one
send() each, or through a mapped TX ring with ``txring`` (slower per frame: see
native/net_packet.c).  Needs CAP_NET_RAW.
The app's MAC is the interface's own unless ``mac=`` is given (the interface keeps its own;
give ``promisc`` on a physical NIC so frames for that MAC get through its filter).
"""
import errno
import socket
import struct


from .._native import ffi, lib
from . import register
from ..errors import raise_recorded

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1


def open(machine, argument, mac, options, spec):
    """(Nic, C NIC) for ``packet:IFACE``."""
    from pyroute2 import IPRoute                    # imported when used: slow to import
    from . import Nic, NetError, parse_mac
    promisc = bool(options.pop("promisc", False))
    tx_ring = bool(options.pop("txring", False))
    if options:
        raise NetError(f"{spec}: unknown option(s) {', '.join(options)} (packet takes mac=, promisc, txring)")
    with IPRoute() as ipr:
        index = ipr.link_lookup(ifname=argument) if argument else []
        if not index:
            raise NetError(f"{spec}: no interface named {argument!r}")
        index = index[0]
        own_mac = parse_mac(ipr.get_links(index)[0].get_attr("IFLA_ADDRESS"))
    try:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)   # receives nothing until bound
    except PermissionError:
        raise NetError(f"{spec}: an AF_PACKET socket needs CAP_NET_RAW (root, or "
                       f"`setcap cap_net_raw+ep` on the Python binary); without it use a TAP "
                       f"made for your user, a wire, or a socket: NIC (UDP)") from None
    try:
        if promisc:
            sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP,
                            struct.pack("iHH8s", index, PACKET_MR_PROMISC, 0, b""))
    except OSError as error:
        sock.close()
        raise NetError(f"{spec}: promiscuous mode: {error.strerror or errno.errorcode.get(error.errno)}") from None
    pointer = lib.bm_net_packet_open(sock.detach(), index, own_mac if mac is None else mac,
                                      1 if tx_ring else 0)
    if pointer == ffi.NULL:
        raise_recorded(NetError, f"{spec}: ")
    return Nic(machine, "packet", argument, own_mac if mac is None else mac), pointer


register("packet", __name__, "packet:IFACE[,promisc][,txring]",
         "an AF_PACKET socket on an existing interface (a veth end, a physical NIC)")

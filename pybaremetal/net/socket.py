"""The `socket` backend: Ethernet frames in UDP datagrams (native/net_socket.c).  No privileges.

One datagram carries exactly one frame (14..1522 bytes), nothing else: byte-exact, the framing
of QEMU's ``-netdev dgram``.  It links machines in different processes or on different hosts.

Spec grammar (HOST is an IPv4 address, a name, or an IPv6 address in brackets: ``[::1]``;
PORT is 0..65535, 0 meaning "any free port", for ``listen=`` only)::

    socket:listen=HOST:PORT                     bind HOST:PORT; the peer is whoever sent the
                                                last datagram; sending before any arrived
                                                drops the frame (NetError: "no peer yet")
    socket:connect=HOST:PORT                    send to HOST:PORT from a free local port;
                                                receive only from it (point-to-point)
    socket:listen=HOST:PORT,connect=HOST:PORT   both fixed: bind the first, talk to the second
                                                (each side names the other: no first frame needed)
    socket:mcast=GROUP:PORT[,ifaddr=A][,ttl=N]  a hub: every machine with the same GROUP:PORT
                                                shares one Ethernet segment (each frame reaches
                                                all the others, never its sender).  GROUP is an
                                                IPv4 multicast address (224.0.0.0/4, e.g.
                                                239.255.0.1); ifaddr= is the local IPv4 address
                                                of the interface to use (default 127.0.0.1: this
                                                host only); ttl= the multicast TTL (default 0
                                                on 127.0.0.1: frames never leave the host; 1
                                                otherwise: the local link).

Options shared by every NIC kind: ``mac=`` (the MAC the app sees; here by default a random
locally administered one, 02:xx:xx:xx:xx:xx, so machines in different processes differ;
give fixed ones for a cluster) and ``pcap=FILE``.  The receive buffer is 4 MiB where the host
allows it (SO_RCVBUFFORCE as root, else SO_RCVBUF up to net.core.rmem_max).

``Nic.name`` is the local address actually bound ("127.0.0.1:40123": useful with port 0).
UDP has no flow control: a receiver that does not keep up loses frames (counted in its
rx_dropped); over loopback nothing else is lost.  MAC learning is the apps' business.
"""
import ipaddress
import os
import socket as _socket

from .._native import ffi, lib
from . import register
from ..errors import raise_recorded

SO_RCVBUFFORCE = 33
SO_SNDBUFFORCE = 32
BUFFER_BYTES = 4 << 20
DEFAULT_IFADDR = "127.0.0.1"
_OPTIONS = ("listen", "connect", "mcast", "ifaddr", "ttl")


def _error(message):
    from . import NetError
    return NetError(message)


def parse_address(text, spec, what, port_zero=False):
    """(family, sockaddr) of "HOST:PORT" / "[V6]:PORT", resolved.  Raises NetError."""
    if not isinstance(text, str) or not text:
        raise _error(f"{spec}: {what}= needs HOST:PORT")
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
    else:
        host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise _error(f"{spec}: {what}={text}: expected HOST:PORT (IPv6: [ADDRESS]:PORT)")
    if not port.isdigit() or not (0 if port_zero else 1) <= int(port) <= 65535:
        raise _error(f"{spec}: {what}={text}: the port must be {'0' if port_zero else '1'}..65535")
    try:
        family, _, _, _, sockaddr = _socket.getaddrinfo(host, int(port), type=_socket.SOCK_DGRAM)[0]
    except (_socket.gaierror, UnicodeError) as error:
        raise _error(f"{spec}: {what}={text}: cannot resolve {host!r} ({error})") from None
    return family, sockaddr


def _format(sockaddr):
    host, port = sockaddr[0], sockaddr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _buffers(sock):
    """Room for bursts: 4 MiB buffers where the host allows (SO_*BUFFORCE needs CAP_NET_ADMIN)."""
    for force, plain in ((SO_RCVBUFFORCE, _socket.SO_RCVBUF), (SO_SNDBUFFORCE, _socket.SO_SNDBUF)):
        try:
            sock.setsockopt(_socket.SOL_SOCKET, force, BUFFER_BYTES)
        except OSError:
            sock.setsockopt(_socket.SOL_SOCKET, plain, BUFFER_BYTES)


def _os_error(spec, step, error):
    return _error(f"{spec}: {step}: {error.strerror or error}")


def _point_to_point(options, spec):
    """(sock, mode, name) for listen= and/or connect=."""
    listen, connect = options.get("listen"), options.get("connect")
    local = parse_address(listen, spec, "listen", port_zero=True) if listen is not None else None
    remote = parse_address(connect, spec, "connect") if connect is not None else None
    if local and remote and local[0] != remote[0]:
        raise _error(f"{spec}: listen= and connect= must both be IPv4 or both IPv6")
    family = (local or remote)[0]
    sock = _socket.socket(family, _socket.SOCK_DGRAM)
    try:
        _buffers(sock)
        if local:
            try:
                sock.bind(local[1])
            except OSError as error:
                raise _os_error(spec, f"cannot listen on {listen}", error) from None
        if remote:
            try:
                sock.connect(remote[1])
            except OSError as error:
                raise _os_error(spec, f"cannot connect to {connect}", error) from None
        name = _format(sock.getsockname())
    except BaseException:
        sock.close()
        raise
    mode = lib.BM_SOCKET_CONNECTED if remote else lib.BM_SOCKET_LISTEN
    return sock, sock, mode, name


def _hub(options, spec):
    """(rx socket, tx socket, mode, name) for mcast=GROUP:PORT."""
    text = options["mcast"]
    family, group = parse_address(text, spec, "mcast")
    if family != _socket.AF_INET or not ipaddress.ip_address(group[0]).is_multicast:
        raise _error(f"{spec}: mcast={text}: GROUP must be an IPv4 multicast address "
                     f"(224.0.0.0/4, e.g. 239.255.0.1)")
    ifaddr = options.get("ifaddr", DEFAULT_IFADDR)
    try:
        interface = _socket.inet_aton(ipaddress.IPv4Address(ifaddr).compressed)
    except (ValueError, OSError):
        raise _error(f"{spec}: ifaddr={ifaddr}: expected a local IPv4 address") from None
    ttl = options.get("ttl", "0" if ipaddress.IPv4Address(ifaddr).is_loopback else "1")
    if not str(ttl).isdigit() or not 0 <= int(ttl) <= 255:
        raise _error(f"{spec}: ttl={ttl}: expected 0..255")
    rx = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
    tx = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
    try:
        _buffers(rx)
        _buffers(tx)
        step = f"cannot join {text} on {ifaddr}"
        try:
            rx.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)   # every member binds it
            rx.bind(group)
            rx.setsockopt(_socket.IPPROTO_IP, _socket.IP_ADD_MEMBERSHIP, _socket.inet_aton(group[0]) + interface)
            step = f"cannot send to {text} from {ifaddr}"
            tx.setsockopt(_socket.IPPROTO_IP, _socket.IP_MULTICAST_IF, interface)
            tx.setsockopt(_socket.IPPROTO_IP, _socket.IP_MULTICAST_TTL, int(ttl))
            tx.setsockopt(_socket.IPPROTO_IP, _socket.IP_MULTICAST_LOOP, 1)
            tx.connect(group)
        except OSError as error:
            raise _os_error(spec, step, error) from None
        name = _format(tx.getsockname())
    except BaseException:
        rx.close()
        tx.close()
        raise
    return rx, tx, lib.BM_SOCKET_HUB, name


def random_mac():
    """A random locally administered unicast MAC (02:xx:xx:xx:xx:xx)."""
    return (0x02 << 40) | int.from_bytes(os.urandom(5), "big")


def open(machine, argument, mac, options, spec):
    """(Nic, C NIC) for ``socket:listen=...`` / ``connect=`` / ``mcast=`` (see above)."""
    from . import Nic
    key, eq, value = argument.partition("=")
    if not eq or key not in ("listen", "connect", "mcast"):
        raise _error(f"{spec}: expected socket:listen=HOST:PORT, socket:connect=HOST:PORT or "
                     f"socket:mcast=GROUP:PORT")
    options = dict(options)
    if key in options:
        raise _error(f"{spec}: {key}= given twice")
    options[key] = value
    unknown = [k for k in options if k not in _OPTIONS]
    if unknown:
        raise _error(f"{spec}: unknown option(s) {', '.join(unknown)} "
                     f"(socket takes listen=, connect=, mcast=, ifaddr=, ttl=, mac=, pcap=)")
    if "mcast" in options:
        if "listen" in options or "connect" in options:
            raise _error(f"{spec}: mcast= is a hub; it takes no listen= or connect=")
        rx, tx, mode, name = _hub(options, spec)
    else:
        if "ifaddr" in options or "ttl" in options:
            raise _error(f"{spec}: ifaddr= and ttl= are for mcast= only")
        rx, tx, mode, name = _point_to_point(options, spec)
    mac = random_mac() if mac is None else mac
    rx_fd = rx.detach()
    tx_fd = rx_fd if tx is rx else tx.detach()
    pointer = lib.bm_net_socket_open(rx_fd, tx_fd, mode, mac)
    if pointer == ffi.NULL:
        from . import NetError
        raise_recorded(NetError, f"{spec}: ")
    return Nic(machine, "socket", name, mac), pointer


register("socket", __name__, "socket:listen=HOST:PORT, socket:connect=HOST:PORT, socket:mcast=GROUP:PORT",
         "Ethernet frames in UDP datagrams between processes or hosts; no privileges")

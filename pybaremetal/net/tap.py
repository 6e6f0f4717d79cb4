"""The `tap` backend: a TAP device, frames straight through its fd (native/net_tap.c).

``tap:NAME`` attaches to the TAP device NAME, creating it (and bringing it up) when it does
not exist.  A device created here is not persistent: the kernel removes it when its fd
closes -- on halt, and also when the process dies, even by SIGKILL; ``tap:NAME,keep`` makes
it persistent instead (TUNSETPERSIST: it stays after the run, for the next one; remove it
with ``ip link del NAME``).  A device that existed before is attached and left as it was.
Creating one needs CAP_NET_ADMIN; without it, attach to a device made for your user
beforehand (``ip tuntap add dev NAME mode tap user $USER``) or pass ``tap:@FD``, a TAP fd
inherited from a privileged parent (it is duplicated; the parent's fd stays open).
"""
import errno
import fcntl
import os
import struct


from .._native import ffi, lib
from . import register
from ..errors import raise_recorded

TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
TUNGETIFF = 0x800454D2
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
_IFREQ = "16sH22x"


def _error(message):
    from . import NetError
    return NetError(message)


def _device_mac(ipr, name):
    """(index, MAC as a 48-bit int) of the interface ``name``."""
    index = ipr.link_lookup(ifname=name)
    if not index:
        raise _error(f"tap:{name}: the device vanished")
    from . import parse_mac
    return index[0], parse_mac(ipr.get_links(index[0])[0].get_attr("IFLA_ADDRESS"))


def _open_named(name, spec, keep):
    """(fd, created) of TAP device ``name``: attached, or created by the attach (TUNSETIFF)
    when absent -- then gone with the fd unless ``keep`` (TUNSETPERSIST)."""
    from pyroute2 import IPRoute                    # imported when used: slow to import
    if not 0 < len(name.encode()) < 16:
        raise _error(f"{spec}: a TAP name has 1 to 15 characters")
    with IPRoute() as ipr:
        created = not ipr.link_lookup(ifname=name)
    refused = _error(f"{spec}: creating a TAP device needs CAP_NET_ADMIN (root). Without it, "
                     f"attach to one made for you: `sudo ip tuntap add dev {name} mode tap user "
                     f"$USER`, then --nic tap:{name}; or pass an inherited TAP fd as tap:@FD")
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as error:
        if created and error.errno in (errno.EPERM, errno.EACCES):
            raise refused from None
        raise _error(f"{spec}: /dev/net/tun: {error.strerror}") from None
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack(_IFREQ, name.encode(), IFF_TAP | IFF_NO_PI))
        if keep:
            fcntl.ioctl(fd, TUNSETPERSIST, 1)
    except OSError as error:
        os.close(fd)
        if error.errno == errno.EPERM and created:
            raise refused from None
        hint = (" (it is not yours: make it with `ip tuntap add ... user $USER`)"
                if error.errno == errno.EPERM else
                " (is it a TUN device, or a TAP with other flags?)" if error.errno == errno.EINVAL else "")
        raise _error(f"{spec}: cannot attach to the TAP device: {error.strerror}{hint}") from None
    return fd, created


def _open_fd(text, spec):
    """(fd, name) for tap:@FD: a duplicate of the inherited fd, made non-blocking."""
    try:
        inherited = int(text)
        fd = os.dup(inherited)
    except (ValueError, OSError) as error:
        raise _error(f"{spec}: @FD must be an open TAP file descriptor ({error})") from None
    try:
        name = fcntl.ioctl(fd, TUNGETIFF, bytes(40))[:16].split(b"\0")[0].decode()
    except OSError as error:
        os.close(fd)
        raise _error(f"{spec}: fd {inherited} is not a TAP device ({error.strerror})") from None
    os.set_blocking(fd, False)
    return fd, name


def open(machine, argument, mac, options, spec):
    """(Nic, C NIC) for ``tap:NAME`` / ``tap:@FD``."""
    from pyroute2 import IPRoute                    # imported when used: slow to import
    from pyroute2.netlink.exceptions import NetlinkError
    from . import Nic
    keep = bool(options.pop("keep", False))
    if options:
        raise _error(f"{spec}: unknown option(s) {', '.join(options)} (tap takes mac=, keep, pcap=)")
    if argument.startswith("@"):
        if keep:
            raise _error(f"{spec}: keep is for devices the runtime creates (tap:NAME)")
        fd, name = _open_fd(argument[1:], spec)
        created = False
    else:
        fd, created = _open_named(argument, spec, keep)
        name = argument
    try:
        with IPRoute() as ipr:
            index, own_mac = _device_mac(ipr, name)
            try:
                ipr.link("set", index=index, state="up")
            except NetlinkError as error:
                if created or error.code not in (errno.EPERM, errno.EACCES):   # theirs to set up
                    raise
    except BaseException:
        if created and keep:
            fcntl.ioctl(fd, TUNSETPERSIST, 0)
        os.close(fd)                             # a device created here goes with it
        raise
    pointer = lib.bm_net_tap_open(fd, own_mac if mac is None else mac)
    if pointer == ffi.NULL:
        from . import NetError
        raise_recorded(NetError, f"{spec}: ")
    return Nic(machine, "tap", name, own_mac if mac is None else mac), pointer


register("tap", __name__, "tap:NAME[,keep], tap:@FD",
         "a TAP device, created when absent (gone with the process unless keep), or an inherited TAP fd")

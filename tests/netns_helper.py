"""Network namespaces and veth pairs for the NIC tests (pyroute2), always removed afterwards.

Names are "bmt" + pid + a counter, so parallel runs do not collide.  Tests only talk to
these namespaces (and TAP devices they create)."""
import itertools
import os
import socket
import subprocess

from pyroute2 import IPRoute, NetNS, netns

_count = itertools.count()


def unique(suffix=""):
    """A fresh interface / namespace name (at most 15 characters)."""
    return f"bmt{os.getpid() % 1000000}{next(_count)}{suffix}"[:15]


def disable_ipv6(name, namespace=None):
    """No IPv6 chatter (router solicitations, MLD) on the interface: quiet tests."""
    command = ["sysctl", "-qw", f"net.ipv6.conf.{name}.disable_ipv6=1"]
    if namespace:
        command = ["ip", "netns", "exec", namespace] + command
    subprocess.run(command, check=False, capture_output=True)


class VethNamespace:
    """A namespace holding one end of a veth pair (``inner``, address ``inner_ip``/24); the
    other end (``outer``) stays in this namespace, up, without an address."""

    def __init__(self, inner_ip="10.77.0.1"):
        self.name = unique("n")
        self.outer, self.inner, self.inner_ip = unique("h"), unique("i"), inner_ip
        netns.create(self.name)
        try:
            with IPRoute() as ipr:
                ipr.link("add", ifname=self.outer, kind="veth",
                         peer={"ifname": self.inner, "net_ns_fd": self.name})
                disable_ipv6(self.outer)
                ipr.link("set", index=ipr.link_lookup(ifname=self.outer)[0], state="up")
            disable_ipv6(self.inner, self.name)
            with NetNS(self.name) as ns:
                index = ns.link_lookup(ifname=self.inner)[0]
                ns.link("set", index=index, state="up")
                ns.addr("add", index=index, address=inner_ip, prefixlen=24)
                self.inner_mac = ns.get_links(index)[0].get_attr("IFLA_ADDRESS")
        except BaseException:
            self.close()
            raise

    def raw_socket(self):
        """An AF_PACKET socket bound to the inner end, created inside the namespace."""
        netns.pushns(self.name)
        try:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
            sock.bind((self.inner, 0x0003))
        finally:
            netns.popns()
        sock.settimeout(2.0)
        return sock

    def run(self, *command, **kwargs):
        """Run a command inside the namespace (tests only; the library never shells out)."""
        return subprocess.run(["ip", "netns", "exec", self.name, *command],
                              capture_output=True, text=True, **kwargs)

    def close(self):
        with IPRoute() as ipr:
            index = ipr.link_lookup(ifname=self.outer)
            if index:
                ipr.link("del", index=index[0])
        if self.name in netns.listnetns():
            netns.remove(self.name)


def link_exists(name):
    with IPRoute() as ipr:
        return bool(ipr.link_lookup(ifname=name))


def ping_pingd(machine, namespace, address):
    """Serve examples/pingd.py on the machine (core 0: this thread) while `ping -c 3 address`
    runs in the namespace; halts the machine.  Returns (echo replies sent, ping's result)."""
    import sys
    import threading
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))
    import pingd
    results = []
    ping = threading.Thread(target=lambda: results.append(subprocess.run(
        ["ip", "netns", "exec", namespace, "ping", "-c", "3", "-i", "0.2", "-W", "2", address],
        capture_output=True, text=True, timeout=30)))
    ping.start()
    try:
        replies = machine.run(pingd.serve, address, 0, 3, 20, lambda text: None)
    finally:
        ping.join(30)
        machine.halt()
    return replies, results[0] if results else None

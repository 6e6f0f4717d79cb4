"""The `wire` backend: an in-process link (native/net_wire.c).  No privileges, no syscalls.

``wire`` as a NIC spec is a loopback: what the app sends comes back to it.
``pybaremetal.wire(a, b)`` links machines a and b (a new NIC on each); ``pybaremetal.wire(a)``
links machine a to a :class:`WirePort` that Python code drives (a test harness, a simulated
peer).  A full queue makes the sender wait up to 50 ms for the receiver, then drop.
"""
from .._native import ffi, lib
from ..current import machine_of
from . import register
from ..errors import raise_recorded


def _new(mac_a, mac_b, loopback):
    from . import NetError
    ends = ffi.new("struct bm_nic *[2]")
    if lib.bm_net_wire_new(mac_a, mac_b, 1 if loopback else 0, ends, ends + 1) != 0:
        raise_recorded(NetError)
    return ends[0], (None if loopback else ends[1])


def open(machine, argument, mac, options, spec):
    """(Nic, C NIC) for the ``wire`` spec: a loopback."""
    from . import Nic, NetError, local_mac
    if argument or options:
        raise NetError(f"{spec}: `wire` takes only mac=; link machines with pybaremetal.wire(a, b)")
    mac = local_mac() if mac is None else mac
    end, _ = _new(mac, 0, True)
    return Nic(machine, "wire", "loopback", mac), end


class WirePort:
    """The harness end of a wire: ``send(frame)``, ``recv()``, ``stats``, ``mac``; ``nic`` is
    the machine's end.  Closed by ``close()`` or when garbage collected."""

    def __init__(self, end, mac, nic):
        self._end = ffi.gc(end, lib.bm_nic_close)
        self.mac = mac
        self.nic = nic
        self._buf = ffi.new("char[]", lib.BM_NET_BUFFER_SIZE)

    def send(self, frame):
        """Send one frame (14..1522 bytes) to the machine.  Raises NetError when dropped."""
        from . import NetError
        self._check()
        data = ffi.from_buffer("char[]", frame)
        if lib.bm_nic_send(self._end, data, len(data)) != 0:
            raise_recorded(NetError, "wire: ")

    def recv(self):
        """The next frame the machine sent, as bytes; b"" if none."""
        self._check()
        length = lib.bm_nic_recv(self._end, self._buf, len(self._buf))
        return ffi.buffer(self._buf, length)[:] if length else b""

    @property
    def stats(self):
        from . import STATS
        self._check()
        out = ffi.new("u64[6]")
        lib.bm_nic_stats(self._end, out)
        return dict(zip(STATS, out))

    def _check(self):
        from . import NetError
        if self._end is None:
            raise NetError("wire: this port is closed")

    def close(self):
        if self._end is not None:
            end, self._end = self._end, None
            ffi.gc(end, None)                    # detach the destructor, then close now
            lib.bm_nic_close(end)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _is_machine(thing):
    """True for a Machine: an object owning a C machine (C knows its owner)."""
    pointer = getattr(thing, "_c", None)
    return isinstance(pointer, ffi.CData) and machine_of(pointer) is thing


def connect(machine_a, machine_b, mac_a, mac_b):
    """pybaremetal.wire(): two machines' new NICs, or (machine_b None) a WirePort."""
    from . import Nic, _add, local_mac
    from ..errors import ArgumentError
    if not _is_machine(machine_a) or not (machine_b is None or _is_machine(machine_b)):
        raise ArgumentError("wire(a, b=None): a and b must be Machines")
    mac_a = local_mac() if mac_a is None else mac_a
    mac_b = local_mac() if mac_b is None else mac_b
    end_a, end_b = _new(mac_a, mac_b, False)
    if machine_b is None:
        port = WirePort(end_b, mac_b, None)
        port.nic = _add(machine_a, Nic(machine_a, "wire", "harness", mac_a), end_a)
        return port
    try:
        nic_a = _add(machine_a, Nic(machine_a, "wire", "wire", mac_a), end_a)
    except BaseException:
        lib.bm_nic_close(end_b)
        raise
    nic_b = _add(machine_b, Nic(machine_b, "wire", "wire", mac_b), end_b)
    return nic_a, nic_b


register("wire", __name__, "wire", "an in-process loopback; pybaremetal.wire(a, b) links machines")

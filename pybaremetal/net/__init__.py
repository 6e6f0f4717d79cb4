"""NICs: the Python face of b_net_tx / b_net_rx, the NIC specs, and wires.

A NIC is chosen by a spec string (``Machine(nics=[...])``, ``baremetal run --nic SPEC``);
interface ids follow the order:

- ``tap:NAME[,keep]``: a TAP device (created and brought up when absent; one created here
  vanishes with the process, even killed, unless ``keep``; an existing one, e.g. made with
  ``ip tuntap add dev NAME mode tap user $USER``, is attached and left in place);
  ``tap:@FD``: a TAP fd inherited from a privileged parent.
- ``packet:IFACE``: an AF_PACKET socket on an existing interface (one end of a veth pair, a
  physical NIC) with mmap'd TPACKET_V2 rings; ``,promisc`` turns promiscuous mode on.
- ``wire``: an in-process loopback (what is sent comes back); :func:`wire` links two machines
  or a machine and a Python harness.  Needs no privileges.
- ``socket:listen=HOST:PORT``, ``socket:connect=HOST:PORT``, ``socket:mcast=GROUP:PORT``:
  frames in UDP datagrams between processes or hosts (point-to-point, or a multicast hub that
  N machines share).  Needs no privileges; the grammar is in pybaremetal/net/socket.py.

Every spec takes ``,mac=02:00:00:00:00:01``: the MAC the app sees (NET_STATUS).  By default
it is the device's own (TAP, packet), a locally administered one (wire) or a random locally
administered one (socket).  It does not change the Linux device's address.

Every spec takes ``,pcap=FILE``: every frame the NIC sends or receives (b_net_tx / b_net_rx)
is written to FILE (created or truncated) in pcap format, timestamped (``tcpdump -r FILE``);
``Nic.pcap`` is the path, ``Nic.flush_pcap()`` writes what is buffered.  Without it a frame
costs one NULL check more.

The calls: ``b_net_tx(frame, iid=0)`` sends any buffer of 14..1522 bytes; ``b_net_rx(iid=0)``
returns a memoryview of the next frame (empty if none) inside the NIC's receive buffer in the
machine's memory (``BM_NET_BUFFERS + iid * 16 KiB``), valid until the next receive on that NIC.
CALLBACK_NETWORK / CALLBACK_TIMER / CALLBACK_KEYBOARD take a C function address or a Python
callable.
"""
import importlib
import os
import pkgutil
import sys
import threading
import traceback
from collections import namedtuple

from .. import abi
from .._native import ffi, lib
from ..current import current_machine
from ..errors import ArgumentError, BareMetalError, Reboot, Shutdown, raise_recorded
from ..system import converts

NET_BUFFERS = lib.BM_NET_BUFFERS           # receive buffer of NIC iid: NET_BUFFERS + iid * NET_BUFFER_SIZE
NET_BUFFER_SIZE = lib.BM_NET_BUFFER_SIZE
MAX_NICS = lib.BM_MAX_NICS
STATS = ("rx_packets", "rx_bytes", "rx_dropped", "tx_packets", "tx_bytes", "tx_dropped")


class NetError(BareMetalError):
    """A b_net_* call was refused: bad interface, frame length or a host error."""


# --- MACs -------------------------------------------------------------------------------------

def parse_mac(text):
    """48-bit number of "aa:bb:cc:dd:ee:ff" (first byte most significant, as NET_STATUS)."""
    parts = str(text).replace("-", ":").split(":")
    try:
        if len(parts) != 6 or any(not 1 <= len(p) <= 2 for p in parts):
            raise ValueError
        return int("".join(p.zfill(2) for p in parts), 16)
    except ValueError:
        raise ArgumentError(f"mac: cannot read {text!r} as a MAC (example: 02:00:00:00:00:01)") from None


def format_mac(value):
    """"aa:bb:cc:dd:ee:ff" of a 48-bit number."""
    return ":".join(f"{(value >> (40 - 8 * i)) & 0xFF:02x}" for i in range(6))


_next_mac = [0]
_mac_lock = threading.Lock()


def local_mac():
    """A fresh locally administered unicast MAC, 02:62:6d:xx:xx:xx, unique in this process."""
    with _mac_lock:
        _next_mac[0] += 1
        return (0x02626D << 24) | ((os.getpid() & 0xFF) << 16) | (_next_mac[0] & 0xFFFF)


# --- the backends: one module each in this package, each registering itself ------------------

Backend = namedtuple("Backend", "kind module syntax description")
_BACKENDS = {}                           # kind -> Backend


def register(kind, module, syntax, description):
    """Called by a backend module at import: ``kind`` (the spec's prefix) is opened by
    ``module``'s ``open(machine, argument, mac, options, spec) -> (Nic, C NIC)``; ``syntax`` and
    ``description`` are for help and error texts."""
    _BACKENDS[kind] = Backend(kind, module, syntax, description)


def backends():
    """Every NIC backend, by kind (imports every backend module of this package)."""
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f".{info.name}", __name__)
    return dict(_BACKENDS)


def describe():
    """"SYNTAX (description); ..." of every backend, for help and error texts."""
    return "; ".join(f"{b.syntax} ({b.description})" for b in backends().values())


# --- NICs -------------------------------------------------------------------------------------

class Nic:
    """One of a machine's NICs: ``iid``, ``kind``, ``name``, ``mac`` (48-bit int), ``stats``."""

    def __init__(self, machine, kind, name, mac, cleanup=None):
        self.machine = machine
        self.kind = kind
        self.name = name
        self.mac = mac
        self.iid = None
        self.pcap = None                         # the capture file's path (pcap= option)
        self._cleanup = cleanup

    @property
    def stats(self):
        """Counters: rx/tx packets and bytes, rx_dropped, tx_dropped (also after halt)."""
        out = ffi.new("u64[6]")
        if not lib.bm_net_stats(self.machine._c, self.iid, out):
            raise NetError(f"interface {self.iid} has no counters")
        return dict(zip(STATS, out))

    def flush_pcap(self):
        """Write the frames captured so far to the pcap file now (else: when its buffer fills,
        100 ms after the last write, and on halt).  Nothing without ``pcap=`` or after halt."""
        if self.pcap is not None and self.machine.running:
            pointer = lib.bm_net_nic(self.machine._c, self.iid)
            if pointer != ffi.NULL:
                lib.bm_nic_capture_flush(pointer)

    def close(self):
        """Run the backend's cleanup, if it left one; C closed the fd on halt."""
        cleanup, self._cleanup = self._cleanup, None
        if cleanup is not None:
            cleanup()

    def __repr__(self):
        return f"<Nic {self.iid} {self.kind}:{self.name} {format_mac(self.mac)}>"


def _add(machine, nic, pointer):
    """Give the C NIC ``pointer`` to the machine; sets and returns nic.iid."""
    iid = lib.bm_machine_add_nic(machine._c, pointer)
    if iid < 0:
        lib.bm_nic_close(pointer)
        nic.close()
        raise_recorded(NetError)
    nic.iid = iid
    machine.nics.append(nic)
    return nic


def parse_spec(spec):
    """("kind", "argument", {option: value}) of "kind[:argument][,key=value][,flag]"."""
    if not isinstance(spec, str) or not spec:
        raise ArgumentError(f"nic: expected a spec like {', '.join(repr(k) for k in backends())}, got {spec!r}")
    head, *rest = spec.split(",")
    kind, _, argument = head.partition(":")
    options = {}
    for item in rest:
        key, eq, value = item.partition("=")
        options[key.strip()] = value.strip() if eq else True
    return kind.strip(), argument.strip(), options


def open_spec(machine, spec):
    """Open the NIC ``spec`` names and add it to the machine; returns its Nic."""
    kind, argument, options = parse_spec(spec)
    known = backends()
    if kind not in known:
        raise ArgumentError(f"nic {spec!r}: unknown kind {kind!r}; use "
                            f"{', '.join(b.syntax for b in known.values())}")
    mac = options.pop("mac", None)
    mac = parse_mac(mac) if mac is not None else None
    pcap = options.pop("pcap", None)
    pcap_fd = _open_pcap(pcap, spec) if pcap is not None else None
    backend = importlib.import_module(known[kind].module)
    try:
        nic, pointer = backend.open(machine, argument, mac, options, spec)
    except BaseException:
        if pcap_fd is not None:
            os.close(pcap_fd)
        raise
    if pcap_fd is not None:
        if lib.bm_nic_capture(pointer, pcap_fd) != 0:     # C owns (and closed) the fd
            lib.bm_nic_close(pointer)
            nic.close()
            raise_recorded(NetError, f"{spec}: ")
        nic.pcap = pcap
    return _add(machine, nic, pointer)


def _open_pcap(path, spec):
    """The fd of the capture file ``path`` (created or truncated).  Raises NetError."""
    if path is True or not path:
        raise NetError(f"{spec}: pcap= needs a file name (pcap=capture.pcap)")
    try:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    except OSError as error:
        raise NetError(f"{spec}: pcap={path}: {error.strerror}") from None


def attach(machine, specs):
    """Open the NICs ``specs`` name and give them to the machine.  Returns the list of Nic
    (machine.nics)."""
    if isinstance(specs, str):
        specs = [specs]
    machine.nics = []
    machine._net_views = [None] * MAX_NICS
    for spec in specs:
        open_spec(machine, spec)
    return machine.nics


def detach(machine):
    """Run the NICs' cleanups (none left by the built-in kinds); C closed fds and sockets on halt."""
    for nic in getattr(machine, "nics", []):
        try:
            nic.close()
        except Exception as error:               # a device already gone: nothing to remove
            print(f"pybaremetal: removing {nic!r}: {error}", file=sys.stderr)


def wire(machine_a, machine_b=None, *, mac_a=None, mac_b=None):
    """Link two machines in this process: returns their new NICs ``(nic_a, nic_b)``.

    With one machine, link it to a Python harness: returns a :class:`~pybaremetal.net.wire.WirePort`
    (``send(frame)``, ``recv()``, ``stats``, ``nic``: the machine's new NIC)."""
    from .wire import connect
    return connect(machine_a, machine_b, mac_a, mac_b)


# --- the calls --------------------------------------------------------------------------------

_EMPTY = memoryview(b"")
_OUT = ffi.new("void **")          # b_net_rx's *mem, never read: the face slices the NIC's buffer
_FAILED = lib.BM_NET_FAILED
_rx, _tx, _from_buffer = lib.bm_net_rx_face, lib.bm_net_tx_face, ffi.from_buffer


def _buffer_view(machine, iid):
    """memoryview of NIC iid's receive buffer in the machine's memory (cached per machine)."""
    start = NET_BUFFERS + iid * NET_BUFFER_SIZE
    view = machine._net_views[iid] = memoryview(machine.memory[start:start + NET_BUFFER_SIZE])
    return view


def b_net_rx(iid=0):
    """The next frame on interface ``iid`` as a memoryview (empty if none); never blocks.

    The view points into the NIC's receive buffer in machine memory and is valid until the
    next receive on that NIC (copy it with bytes() to keep it).  Raises NetError for an
    interface that does not exist or whose device vanished."""
    try:
        length = _rx(_OUT, iid)
    except (TypeError, OverflowError):
        raise NetError(f"b_net_rx: iid must be an int from 0, got {iid!r}") from None
    if length == 0:
        return _EMPTY
    if length == _FAILED:
        raise_recorded(NetError, "b_net_rx: ")
    machine = current_machine()
    view = machine._net_views[iid] or _buffer_view(machine, iid)
    return view[:length]


def b_net_tx(frame, iid=0, nbytes=None):
    """Send ``frame`` (any buffer of 14..1522 bytes, or a machine address with ``nbytes``) on
    interface ``iid``.  Raises NetError when nothing was sent (bad length or iid, full ring
    after 50 ms, vanished device); the drop is counted."""
    try:
        if type(frame) is bytes and nbytes is None:
            failed = _tx(frame, len(frame), iid)
        else:
            pointer, length = _tx_argument(frame, nbytes)
            failed = _tx(pointer, length, iid)
    except (TypeError, OverflowError):
        if not isinstance(iid, int) or isinstance(iid, bool) or not 0 <= iid < 1 << 64:
            raise NetError(f"b_net_tx: iid must be an int from 0 to 2**64-1, got {iid!r}") from None
        raise ArgumentError(f"b_net_tx: nbytes must be an int, got {nbytes!r}") from None
    if failed:
        raise_recorded(NetError, "b_net_tx: ")


def _tx_argument(frame, nbytes):
    """(pointer, length) for b_net_tx's frame: a buffer, or a machine address with nbytes."""
    if isinstance(frame, int) and not isinstance(frame, bool):
        if nbytes is None:
            raise ArgumentError("b_net_tx: nbytes is required when frame is an address")
        current_machine().offset(frame, nbytes)
        return ffi.cast("void *", frame), nbytes
    try:
        pointer = _from_buffer("char[]", frame)
    except (TypeError, ValueError) as error:           # ValueError: a non-contiguous array
        raise ArgumentError(f"b_net_tx: expected a contiguous buffer, got {type(frame).__name__}"
                            f" ({error})") from None
    length = len(pointer) if nbytes is None else nbytes
    if not 0 <= length <= len(pointer):
        raise ArgumentError(f"b_net_tx: nbytes={nbytes} but the frame holds {len(pointer)} bytes")
    return pointer, length


# --- callbacks ----------------------------------------------------------------------------------

def _report_callback_error(exc_type, exc_value, tb):
    """onerror of Python callbacks: the service thread (core 0) carries on."""
    print("pybaremetal: a callback raised on core 0 (the service thread):", file=sys.stderr)
    traceback.print_exception(exc_type, exc_value, tb)
    return None


def _callback_converter(code):
    def convert(machine, var1, var2):
        """A Python callable becomes a C function run by the service thread."""
        if callable(var1) and not isinstance(var1, ffi.CData):
            python_fn = var1

            def run():
                try:
                    python_fn()
                except (Shutdown, Reboot):       # recorded in the machine's state by C
                    pass
            var1 = ffi.callback("void(void)", run, onerror=_report_callback_error)
        if isinstance(var1, ffi.CData):
            machine._keepalive.setdefault("callbacks", []).append(var1)   # a running one may finish
            var1 = int(ffi.cast("uintptr_t", var1))   # b_system then sets it: one call, one trace line
        return var1, var2
    return convert


for _code in (abi.CALLBACK_TIMER, abi.CALLBACK_NETWORK, abi.CALLBACK_KEYBOARD):
    converts(_code)(_callback_converter(_code))


def callback_counts(machine):
    """(timer ticks, network callbacks) the service thread has run so far."""
    return lib.bm_service_count(machine._c, 0), lib.bm_service_count(machine._c, 1)

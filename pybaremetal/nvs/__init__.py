"""Drives: the Python face of b_nvs_read / b_nvs_write and the drive backends.

A drive is a regular file (a disk image) or a block device (an NVMe namespace, a loop device),
opened with O_DIRECT where the filesystem allows it.  ``Machine(drives=[...])`` takes specs:
strings ``"PATH[,ro][,durable][,create=SIZE]"`` (what ``baremetal run --drive`` takes) or
:class:`Drive` objects; drive numbers follow the order.  Each backend is one module here
(``file``: files and block devices) with the same shape: open, hand the fd to C, describe.
The calls themselves are C (native/nvs.c); this module only converts arguments and raises.
"""
from dataclasses import dataclass
from typing import Optional, Union
import os

from .. import abi
from .._native import lib
from ..errors import AddressError, ArgumentError, BareMetalError, NoMachineError, recorded_error
from ..memory import as_pointer
from ..current import current_machine


class NvsError(BareMetalError):
    """A b_nvs_* call was refused: bad drive, range, buffer or a host I/O error.

    ``transferred`` is the number of sectors moved before the failure (0 when refused)."""

    def __init__(self, message, transferred=0):
        super().__init__(message)
        self.transferred = transferred


class NvsWarning(UserWarning):
    """A drive works, but not as asked (e.g. buffered I/O where O_DIRECT is refused)."""


@dataclass
class Drive:
    """What to attach: ``path`` (file or block device), ``read_only``, ``durable`` (every
    completed write on the medium when the call returns), ``create`` (a size: make the image
    file, or grow it to that size), ``direct`` (False: buffered I/O even where O_DIRECT works),
    ``queue_depth`` (requests one large call keeps in flight, 1..32; None: 8 with O_DIRECT),
    ``poll_us`` (how long a core polls for a request's completion before it sleeps, as
    upstream's drivers poll the device; 0 sleeps at once like a plain pread; None: 20000 with
    O_DIRECT, 0 buffered)."""
    path: Union[str, os.PathLike]
    read_only: bool = False
    durable: bool = False
    create: Optional[Union[int, str]] = None
    direct: bool = True
    queue_depth: Optional[int] = None
    poll_us: Optional[int] = None

    @classmethod
    def parse(cls, spec):
        """A Drive from ``"PATH[,ro][,durable][,create=SIZE]"``."""
        path, *options = spec.split(",")
        if not path:
            raise ArgumentError(f"drive {spec!r}: no path (write PATH[,ro][,durable][,create=SIZE])")
        drive = cls(path)
        for option in options:
            name, _, value = option.partition("=")
            if option in ("ro", "read-only"):
                drive.read_only = True
            elif option == "durable":
                drive.durable = True
            elif option == "buffered":
                drive.direct = False
            elif name == "create" and value:
                drive.create = value
            elif name == "queue" and value.isdigit():
                drive.queue_depth = int(value)
            elif name == "poll" and value.isdigit():
                drive.poll_us = int(value)
            else:
                raise ArgumentError(f"drive {spec!r}: unknown option {option!r} "
                                    f"(options: ro, durable, create=SIZE, buffered, queue=N, poll=US)")
        return drive


def _as_drive(spec):
    if isinstance(spec, Drive):
        return spec
    if isinstance(spec, str):
        return Drive.parse(spec)
    if isinstance(spec, os.PathLike):
        return Drive(spec)
    raise ArgumentError(f"drives: expected a 'PATH[,ro][,durable][,create=SIZE]' string or a "
                        f"Drive, got {spec!r}")


def attach(machine, specs):
    """Open the drives ``specs`` names and hand them to the machine's C core.

    Returns the list of attached drives (``machine.drives``).  Raises NvsError when a drive
    cannot be used (missing file, size not a multiple of 4096, ...); drives already opened
    stay with the machine, which closes them."""
    from . import file
    if isinstance(specs, (str, Drive, os.PathLike)):
        specs = [specs]                                # one drive given alone
    drives = [_as_drive(spec) for spec in (specs or ())]
    attached = []
    machine._drives = attached
    for number, drive in enumerate(drives):
        attached.append(file.open_drive(machine, drive, number))
    return attached


def detach(machine):
    """Mark the machine's drives halted (C flushed and closed them on halt, keeping their
    final counters, which stay readable)."""
    for drive in getattr(machine, "_drives", ()):
        drive._detach()


# --- the Python face ----------------------------------------------------------------------------

def _check_u64(call, name, value):
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 64:
        raise NvsError(f"{call}: {name} must be an int from 0 to 2**64-1, got {value!r}")


def _request(c_call, call, writable, mem, start, num, drive):
    machine = current_machine()
    _check_u64(call, "start", start)
    _check_u64(call, "num", num)
    _check_u64(call, "drive", drive)
    try:
        pointer, _keep = as_pointer(machine, mem, num * abi.SECTOR_SIZE, writable, f"{call} mem")
    except (ArgumentError, AddressError) as error:
        raise NvsError(str(error)) from None
    done = c_call(pointer, start, num, drive)
    if done < num or num == 0:
        code, message = recorded_error()
        if code:
            if code == lib.BM_ERR_NO_MACHINE:
                raise NoMachineError(message)
            raise NvsError(message, done)
    return done


def b_nvs_read(mem, start, num, drive=0):
    """Read ``num`` 4096-byte sectors from sector ``start`` of ``drive`` into ``mem``.

    ``mem`` is a writable buffer (bytearray, numpy array, memoryview) of at least num*4096
    bytes, or an int address inside the machine's memory.  Returns the sectors read (``num``;
    0 when ``num`` is 0).  Raises NvsError for a missing drive, a range past the end, a buffer
    too small or read-only, an address outside the machine, or a host I/O error (its
    ``transferred`` says how many sectors were read first)."""
    return _request(lib.b_nvs_read, "b_nvs_read", True, mem, start, num, drive)


def b_nvs_write(mem, start, num, drive=0):
    """Write ``num`` sectors from ``mem`` (any readable buffer, or a machine address) to sector
    ``start`` of ``drive``.  Returns the sectors written; on a durable drive they are on the
    medium.  Raises NvsError as :func:`b_nvs_read` does, and for a read-only drive."""
    return _request(lib.b_nvs_write, "b_nvs_write", False, mem, start, num, drive)

"""Flat memory: one anonymous mmap per machine, seen by Python as a numpy array.

The region is 2 MiB aligned in the process (so transparent huge pages can back it and 2 MiB
alignment holds for process addresses) and lazily committed: untouched pages cost nothing.
Byte ``p`` of the contract's physical map is ``memory[p]``, at process address ``base + p``.
"""
import mmap
import os
import re
from fractions import Fraction

import numpy as np

from . import abi
from ._native import ffi
from .errors import AddressError, ArgumentError, OutOfMemory

_MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000)   # Linux value; the constant is Python 3.12+
_UNITS = {"": 1 << 20, "B": 1, "K": 1 << 10, "KB": 1 << 10, "KIB": 1 << 10, "M": 1 << 20, "MB": 1 << 20,
          "MIB": 1 << 20, "G": 1 << 30, "GB": 1 << 30, "GIB": 1 << 30, "T": 1 << 40, "TB": 1 << 40,
          "TIB": 1 << 40}


def parse_size(size, what="size"):
    """Bytes in ``size``: an int (bytes), or a string like "512M", "2G", "1.5GiB", "4096B";
    a string without a unit means MiB ("64" is 64 MiB), as QEMU's -m and Solo5's --mem."""
    if isinstance(size, bool):
        raise ArgumentError(f"{what}: expected a size, got {size!r}")
    if isinstance(size, int):
        value = size
    elif isinstance(size, str):
        match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", size)
        unit = match.group(2).upper() if match else None
        if not match or unit not in _UNITS:
            raise ArgumentError(f"{what}: cannot read {size!r} as a size (examples: 512M, 2G, 4096B; "
                                f"no unit means MiB)")
        value = int(Fraction(match.group(1)) * _UNITS[unit])
    else:
        raise ArgumentError(f"{what}: expected an int or a string like '512M', got {type(size).__name__}")
    if value <= 0:
        raise ArgumentError(f"{what}: must be positive, got {size!r}")
    return value


def _human(nbytes):
    """``nbytes`` in the largest binary unit that keeps it readable: "100 TiB", "512 MiB"."""
    if nbytes >= 1 << 64:
        return "more than 16 EiB"
    for unit, shift in (("EiB", 60), ("PiB", 50), ("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if nbytes >= 1 << shift:
            return f"{nbytes / (1 << shift):g} {unit}"
    return f"{nbytes} bytes"


class FlatMemory:
    """The mapping behind a machine's memory.  ``array`` is the numpy view, ``base`` its address."""

    def __init__(self, size):
        self.size = size
        try:
            self._map = mmap.mmap(-1, size + abi.PAGE_SIZE,
                                  flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_NORESERVE,
                                  prot=mmap.PROT_READ | mmap.PROT_WRITE)
        except (OSError, OverflowError) as error:
            reason = error.strerror if isinstance(error, OSError) else "too large for this host"
            host = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
            raise OutOfMemory(f"memory: cannot map {_human(size)}: {reason}; ask for less "
                              f"(this host has {_human(host)} of RAM)") from None
        start = int(ffi.cast("uintptr_t", ffi.from_buffer(self._map)))
        self._offset = (-start) % abi.PAGE_SIZE
        self.base = start + self._offset
        if hasattr(mmap, "MADV_HUGEPAGE"):
            self._map.madvise(mmap.MADV_HUGEPAGE, self._offset, size)
        self.array = np.frombuffer(self._map, dtype=np.uint8, count=size, offset=self._offset)


def as_pointer(machine, mem, nbytes, writable, what):
    """A C pointer for a Python face's memory argument, and the object that keeps it alive.

    ``mem`` is an int process address inside ``machine``'s memory, or any buffer (bytes,
    bytearray, memoryview, numpy array) of at least ``nbytes`` bytes, writable if ``writable``.
    Raises AddressError / ArgumentError naming ``what`` otherwise."""
    if isinstance(mem, int) and not isinstance(mem, bool):
        machine.offset(mem, nbytes)          # raises AddressError outside the machine
        return ffi.cast("void *", mem), None
    try:
        buf = ffi.from_buffer("char[]", mem, require_writable=writable)
    except TypeError:
        need = "a writable buffer" if writable else "a buffer"
        raise ArgumentError(f"{what}: expected {need} or a machine address, got {type(mem).__name__}") from None
    except ValueError as error:                # a non-contiguous numpy array or memoryview
        raise ArgumentError(f"{what}: the buffer must be contiguous ({error}); "
                            "copy it first (numpy.ascontiguousarray)") from None
    except BufferError:
        raise ArgumentError(f"{what}: got a read-only buffer, but the call writes into it") from None
    if len(buf) < nbytes:
        raise ArgumentError(f"{what}: the buffer holds {len(buf)} bytes, the call needs {nbytes}")
    return buf, buf


def check_range(machine, address, nbytes):
    """Raise AddressError unless [address, address+nbytes) lies inside the machine's memory."""
    start = machine.base
    if not (start <= address and address + nbytes <= start + machine.memory_size):
        raise AddressError(f"address 0x{address:x} (+{nbytes} bytes) is outside the machine's memory "
                           f"(0x{start:x}..0x{start + machine.memory_size:x})")
    return address - start

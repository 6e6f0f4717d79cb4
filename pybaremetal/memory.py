"""Flat memory: one anonymous mmap per machine, seen by Python as a numpy array.

The region is 2 MiB aligned in the process (so transparent huge pages can back it and 2 MiB
alignment holds for process addresses) and lazily committed: untouched pages cost nothing.
Byte ``p`` of the contract's physical map is ``memory[p]``, at process address ``base + p``.
"""
import mmap
import re

import numpy as np

from . import abi
from ._native import ffi
from .errors import AddressError, ArgumentError

_MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000)   # Linux value; the constant is Python 3.12+
_UNITS = {"": 1, "B": 1, "K": 1 << 10, "KB": 1 << 10, "KIB": 1 << 10, "M": 1 << 20, "MB": 1 << 20,
          "MIB": 1 << 20, "G": 1 << 30, "GB": 1 << 30, "GIB": 1 << 30, "T": 1 << 40, "TB": 1 << 40,
          "TIB": 1 << 40}


def parse_size(size, what="size"):
    """Bytes in ``size``: an int, or a string like "512M", "2G", "4096", "1.5GiB"."""
    if isinstance(size, bool):
        raise ArgumentError(f"{what}: expected a size, got {size!r}")
    if isinstance(size, int):
        value = size
    elif isinstance(size, str):
        match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", size)
        unit = match.group(2).upper() if match else None
        if not match or unit not in _UNITS:
            raise ArgumentError(f"{what}: cannot read {size!r} as a size (examples: 4096, 512M, 2G)")
        value = int(float(match.group(1)) * _UNITS[unit])
    else:
        raise ArgumentError(f"{what}: expected an int or a string like '512M', got {type(size).__name__}")
    if value <= 0:
        raise ArgumentError(f"{what}: must be positive, got {size!r}")
    return value


class FlatMemory:
    """The mapping behind a machine's memory.  ``array`` is the numpy view, ``base`` its address."""

    def __init__(self, size):
        self.size = size
        self._map = mmap.mmap(-1, size + abi.PAGE_SIZE,
                              flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_NORESERVE,
                              prot=mmap.PROT_READ | mmap.PROT_WRITE)
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

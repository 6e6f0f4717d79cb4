"""Drives: the Python face of b_nvs_read / b_nvs_write and the drive backends."""
from ..errors import ArgumentError, BareMetalError


class NvsError(BareMetalError):
    """A b_nvs_* call was refused: bad drive, range, buffer or a host I/O error."""


def attach(machine, specs):
    """Open the drives ``specs`` names and hand them to the machine's C core."""
    if specs:
        raise ArgumentError("drives: not supported by this build yet")
    return []


def detach(machine):
    """Forget the machine's drives (C closed them on halt)."""

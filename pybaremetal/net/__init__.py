"""NICs: the Python face of b_net_tx / b_net_rx and the NIC backends."""
from ..errors import ArgumentError, BareMetalError


class NetError(BareMetalError):
    """A b_net_* call was refused: bad interface, frame length or a host error."""


def attach(machine, specs):
    """Open the NICs ``specs`` names and hand them to the machine's C core."""
    if specs:
        raise ArgumentError("nics: not supported by this build yet")
    return []


def detach(machine):
    """Remove what attach created (TAP devices, sockets)."""

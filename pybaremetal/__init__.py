"""pybaremetal: BareMetal (Return Infinity) programs hosted on Linux.

    import pybaremetal as bm

    def main():
        bm.b_output("Hello, world!\\n")
        return 0

    with bm.Machine(cores=2) as m:
        m.run(main)

The seven calls keep upstream's names and act on the calling thread's machine.
"""
from .abi import *  # noqa: F401,F403  (the function codes, upstream's spellings)
from .abi import FUNCTION_CODES, SECTOR_SIZE, PAGE_SIZE
from .errors import (AddressError, ArgumentError, BareMetalError, HostError, NoMachineError,
                     OutOfMemory, Reboot, Shutdown, StateError)
from .io import b_input, b_output
from .machine import Machine, current_machine
from .nvs import Drive, NvsError, NvsWarning, b_nvs_read, b_nvs_write
from .screen import screen
from .net import NetError, b_net_rx, b_net_tx, wire
from .smp import Fault, Lock, QueueFull
from .system import b_system
from . import bmfs

__version__ = "0.1.0"

"""The calling thread's machine (each core thread knows its machine)."""
import threading

from .errors import NoMachineError

local = threading.local()


def current_machine():
    """The machine the calling thread is a core of.  Raises NoMachineError if none."""
    machine = getattr(local, "machine", None)
    if machine is None:
        raise NoMachineError("no machine: call this from an app running on a Machine "
                             "(Machine.run, or inside `with Machine() as m:`)")
    return machine

"""The calling thread's machine, asked from C (one source of truth).

C knows which core the calling thread is and which machine that core belongs to (native/base.h:
worker cores, core 0 bound by ``Machine.boot``/``run``, the callback service thread).  Each C
machine keeps a handle to (a weak reference to) the Python :class:`~pybaremetal.machine.Machine` that owns it, so the
answer is the same on every core, in Python tasks and in cffi callbacks alike.
"""
from ._native import ffi, lib
from .errors import NoMachineError

_owner, _from_handle, _NULL = lib.bm_current_owner, ffi.from_handle, ffi.NULL


def current_machine():
    """The machine the calling thread is a core of.  Raises NoMachineError if none."""
    handle = _owner()
    machine = _from_handle(handle)() if handle != _NULL else None
    if machine is None:
        raise NoMachineError("no machine: call this from an app running on a Machine "
                             "(Machine.run, or inside `with Machine() as m:`)")
    return machine


def machine_of(pointer):
    """The Machine owning the C machine ``pointer``, or None (it is being torn down)."""
    handle = lib.bm_machine_owner(pointer)
    return None if handle == _NULL else _from_handle(handle)()

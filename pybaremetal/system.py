"""The Python face of b_system.

Arguments are plain ints (process addresses where the code takes an address).  Some codes
take a function: STDOUT_SET (and, in their subsystems, SMP_SET and the CALLBACK_* codes)
also accept a Python callable, turned into a C function pointer here and kept alive by the
machine.  A subsystem registers such a conversion with :func:`converts`.  SHUTDOWN and
REBOOT raise :class:`Shutdown` / :class:`Reboot` so that the app's run ends where it is.
"""
from . import abi
from ._native import ffi, lib
from .current import current_machine
from .errors import ArgumentError, Reboot, Shutdown, raise_recorded

_CONVERTERS = {}


def converts(code):
    """Register ``fn(machine, var1, var2) -> (var1, var2)`` to prepare code's arguments."""
    def register(fn):
        _CONVERTERS[code] = fn
        return fn
    return register


def _as_u64(value, name):
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            value = int(ffi.cast("uintptr_t", value))      # a cffi pointer or function
        except TypeError:
            raise ArgumentError(f"b_system: {name} must be an int, got {type(value).__name__}") from None
    if -(1 << 63) <= value < 0:
        value += 1 << 64                                    # two's complement, as C sees it
    if not 0 <= value < 1 << 64:
        raise ArgumentError(f"b_system: {name}={value} does not fit in 64 bits")
    return value


def b_system(function, var1=0, var2=0):
    """Call b_system(function, var1, var2) on the current machine; returns the u64 result.

    Raises NoMachineError outside a machine, ArgumentError/AddressError when the C layer
    refused the arguments (e.g. DUMP_MEM of unreadable memory), Shutdown/Reboot for those codes."""
    machine = current_machine()
    convert = _CONVERTERS.get(function)
    if convert is not None:
        var1, var2 = convert(machine, var1, var2)
    try:
        result = lib.b_system(function, var1, var2)
    except (TypeError, OverflowError):           # not plain u64s: convert, or say which is wrong
        result = lib.b_system(_as_u64(function, "function"), _as_u64(var1, "var1"), _as_u64(var2, "var2"))
    if result == 0:
        raise_recorded()
    if function == abi.SHUTDOWN:
        raise Shutdown()
    if function == abi.REBOOT:
        raise Reboot()
    return result


@converts(abi.STDOUT_SET)
def _stdout_set(machine, var1, var2):
    """A Python callable ``fn(data: bytes)`` becomes a C output function."""
    if callable(var1) and not isinstance(var1, ffi.CData):
        python_fn = var1

        def output(string, nbr):
            python_fn(bytes(ffi.buffer(string, nbr)))
        var1 = ffi.callback("void(*)(const char *, u64)", output)
    if isinstance(var1, ffi.CData):
        machine._keepalive["stdout"] = var1
    return var1, var2

"""The exceptions of the Python face.

Every argument error raises a subclass of :class:`BareMetalError` that says what was wrong.
The C layer returns upstream's values and records a reason (code + message) per thread;
:func:`raise_recorded` turns that record into the matching exception.
"""


class BareMetalError(Exception):
    """Base of every pybaremetal error."""


class NoMachineError(BareMetalError, RuntimeError):
    """A call was made from a thread that is not a core of a running machine."""


class ArgumentError(BareMetalError, ValueError):
    """A call got an argument it cannot take (size, alignment, unknown id, ...)."""


class AddressError(BareMetalError, ValueError):
    """An address or range lies outside the machine's memory (or readable memory)."""


class OutOfMemory(BareMetalError, MemoryError):
    """The machine's flat memory has no free run large enough."""


class StateError(BareMetalError, RuntimeError):
    """The call is not possible in the machine's current state."""


class HostError(BareMetalError, OSError):
    """The host refused an operation (the message carries errno's text)."""


class Shutdown(BaseException):
    """Raised by ``b_system(SHUTDOWN)`` in a Python app: the app's run ends (exit code 0).

    A BaseException, so that an app's ``except Exception`` does not swallow it."""


class Reboot(BaseException):
    """Raised by ``b_system(REBOOT)`` in a Python app: the machine resets and the app restarts."""


# enum bm_error_code in native/machine.h -> exception class
_BY_CODE = {
    1: NoMachineError,
    2: ArgumentError,
    3: AddressError,
    4: HostError,
    5: StateError,
    6: OutOfMemory,
}


def recorded_error():
    """The calling thread's recorded C error as ``(code, message)``; code 0 means none."""
    from ._native import ffi, lib
    code = lib.bm_error_code()
    return code, (ffi.string(lib.bm_error_message()).decode(errors="replace") if code else "")


def raise_recorded(cls=None, prefix=""):
    """Raise the calling thread's recorded C error, if there is one.

    ``cls`` is a subsystem's own class (e.g. NvsError) to raise instead of the generic one;
    a missing machine always raises NoMachineError."""
    code, message = recorded_error()
    if not code:
        return
    if cls is None or code == 1:
        cls = _BY_CODE.get(code, BareMetalError)
    raise cls(prefix + message)

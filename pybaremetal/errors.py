"""The exceptions of the Python face.

Every argument error raises a subclass of :class:`BareMetalError` that says what was wrong.
The C layer returns upstream's values and records a reason (code + message) per thread;
:func:`raise_recorded` turns that record into the matching exception.
"""
from ._native import ffi, lib


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


class AppCrashed(BareMetalError):
    """An app's run ended in a crash: a C fault (SIGSEGV, ... in main or in a task on a core,
    reported on stderr when it happened), a flat binary's CPU exception, or a run the CPU could
    not go on with.  The message says where; ``outcome`` is the C record (struct bm_outcome);
    ``exit_status`` is what `baremetal run` exits with: 128 + the signal number for a signal, as
    a shell reports a process killed by it, else 1."""

    def __init__(self, message, exit_status=1, outcome=None):
        super().__init__(message)
        self.exit_status = exit_status
        self.outcome = outcome


class Shutdown(BaseException):
    """Raised by ``b_system(SHUTDOWN)`` in a Python app: the app's run ends (exit code 0).

    A BaseException, so that an app's ``except Exception`` does not swallow it."""


class Reboot(BaseException):
    """Raised by ``b_system(REBOOT)`` in a Python app: the machine resets and the app restarts."""


# enum bm_error_code (native/base.h) -> exception class
_BY_CODE = {
    lib.BM_ERR_NO_MACHINE: NoMachineError,
    lib.BM_ERR_ARGUMENT: ArgumentError,
    lib.BM_ERR_RANGE: AddressError,
    lib.BM_ERR_IO: HostError,
    lib.BM_ERR_STATE: StateError,
    lib.BM_ERR_FULL: OutOfMemory,
}


def recorded_error():
    """The calling thread's recorded C error as ``(code, message)``; code 0 means none."""
    code = lib.bm_error_code()
    return code, (ffi.string(lib.bm_error_message()).decode(errors="replace") if code else "")


def raise_recorded(cls=None, prefix=""):
    """Raise the calling thread's recorded C error, if there is one.

    ``cls`` is a subsystem's own class (e.g. NvsError) to raise instead of the generic one;
    a missing machine always raises NoMachineError."""
    code, message = recorded_error()
    if not code:
        return
    if cls is None or code == lib.BM_ERR_NO_MACHINE:
        cls = _BY_CODE.get(code, BareMetalError)
    raise cls(prefix + message)

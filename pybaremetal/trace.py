"""The call trace: ``Machine(trace=...)`` and ``baremetal run --trace[=FILE]``.

Every call an app makes (a Python app, a C app, a flat binary) is written as one line by the C
core (native/trace.c): seconds since boot, the calling core, the call and its arguments, the
result, any error, the duration::

    0.000312232 core 0 b_output("hello\\n", 6) <11902 ns>
    0.000365872 core 1 b_system(TIMECOUNTER) = 366052 <231 ns>

Lines go to stderr or to a file (truncated, then appended to with one write per line, so
lines from several cores never mix), never through b_output.  Off by default: a call then
pays one predictable branch.
"""
import os

from ._native import lib
from .errors import ArgumentError, raise_recorded


def _open(trace):
    """``(fd, owned)`` for the trace= argument, None when tracing is off."""
    if trace is None or trace is False:
        return None
    if trace is True or trace == "stderr":
        return 2, False
    if trace == "stdout":
        return 1, False
    if isinstance(trace, (str, os.PathLike)):
        path = os.fspath(trace)
        if not path:
            raise ArgumentError("trace: empty path; give True (stderr) or a file path")
        try:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC,
                           0o644), True
        except OSError as error:
            raise ArgumentError(f"trace: cannot write {path!r}: {error.strerror}; give a "
                                "writable file path") from None
    if isinstance(trace, int) and not isinstance(trace, bool):
        return trace, False
    if hasattr(trace, "fileno"):
        return trace.fileno(), False
    raise ArgumentError(f"trace: expected True, 'stderr', a path, an fd or a file, got {trace!r}")


def attach(machine, trace):
    """Trace ``machine``'s calls to ``trace`` (see :class:`pybaremetal.Machine`); the C
    machine keeps its own duplicate of the descriptor."""
    opened = _open(trace)
    if opened is None:
        return
    fd, owned = opened
    try:
        if lib.bm_trace_attach(machine._c, fd) != 0:
            raise_recorded()
    finally:
        if owned:
            os.close(fd)


def lines(machine):
    """How many trace lines ``machine`` has written (0 when it is not traced)."""
    return lib.bm_trace_lines(machine._c)

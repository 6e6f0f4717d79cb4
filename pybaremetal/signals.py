"""Ending a run on SIGTERM, SIGINT, SIGHUP or a timeout, whatever code is running.

``baremetal run`` arms its machine (:func:`arm`) before the app starts and disarms it after the
halt.  While armed, a stop signal ends the run within 100 ms even while native code runs (a C
main or task spinning, a flat binary, a Python app inside a long DELAY): Python ends it the
ordinary way when it gets control (machine halted, drives flushed and closed, terminal
restored); if it has not within 50 ms, the C watchdog flushes the drives, restores the terminal
and ends the process itself.  Either way the exit status is 128 + the signal (SIGTERM 143,
SIGINT 130, SIGHUP 129), or 124 after ``--timeout``, as timeout(1).  How it works:
native/signals.c.

``BAREMETAL_STOP_GRACE_MS`` (environment) sets the grace other than 50 ms: the tests make it
long to show that code waiting in the runtime (DELAY, SMP_LOCK, wait) ends a run on its own.

Not covered: SIGKILL (nothing runs; the terminal is still restored by the guard process of
pybaremetal.io, and durable writes acknowledged before it are on the medium), and a Python
handler an app installs itself after arming (it replaces the C one: that signal then ends the
run only when Python gets control).
"""
import math
import os
import signal
import sys

from ._native import lib
from .errors import ArgumentError, raise_recorded

TIMEOUT_STATUS = 124                   # exit status after a timeout, as timeout(1)


def _terminate(signum, frame):
    """SIGTERM / SIGHUP end the run like an app's sys.exit: the machine halts (drives flushed)."""
    raise SystemExit(128 + signum)


def _timed_out(signum, frame):
    print("baremetal: timeout: the run did not end in time", file=sys.stderr)
    raise SystemExit(TIMEOUT_STATUS)


def check_timeout(timeout):
    """``timeout`` in seconds as a positive finite float (None: no timeout); ArgumentError."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or \
            not math.isfinite(timeout) or timeout <= 0:
        raise ArgumentError(f"timeout: expected a positive number of seconds, got {timeout!r}")
    return float(timeout)


def arm(machine, timeout=None):
    """End ``machine``'s run on SIGTERM / SIGINT / SIGHUP (and after ``timeout`` seconds) even
    while native code runs (see the module doc).  Call from the main thread before the app
    runs; Python handlers for SIGTERM and SIGHUP (SystemExit(128 + signal)) and, with a
    timeout, SIGALRM (SystemExit(124)) are set where none was.  Undo with :func:`disarm`."""
    timeout = check_timeout(timeout)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(signum) in (signal.SIG_DFL, None):
            signal.signal(signum, _terminate)
    if timeout is not None:
        signal.signal(signal.SIGALRM, _timed_out)
    grace = os.environ.get("BAREMETAL_STOP_GRACE_MS", "")
    grace_ms = int(grace) if grace.isdigit() else 0
    if lib.bm_signals_arm(machine._c, 0 if timeout is None else max(1, round(timeout * 1000)), grace_ms) != 0:
        raise_recorded()


def disarm(machine):
    """``machine``'s run has ended (call after the halt): forget it."""
    lib.bm_signals_disarm(machine._c)


FINISHING_MS = 2000                    # after a stop, the last PNG may take this long to write


def finishing():
    """After a stop signal or the timeout, Python has control again and writes the outputs the
    user asked for (``--screen-png``'s last frame): the C watchdog waits up to FINISHING_MS more
    instead of ending the process 50 ms after the signal.  Nothing when no stop is under way."""
    lib.bm_signals_finishing(FINISHING_MS)


def exit_status():
    """The exit status the stop signal asks for (128 + signal, 124 after the timeout), 0 if none."""
    return lib.bm_signals_exit_status()


def end_process(status):
    """End the process now with ``status`` (after a stop signal, the run halted): Python's
    output flushed, the interpreter's teardown skipped (as the signal's default action would),
    so that the process is gone within the 100 ms a stop signal allows."""
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:                 # None: the process started with it closed
                stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(status)


def raise_if_stopping(c_machine):
    """Raise SystemExit with the stop's exit status if the machine (its C struct) is stopping
    on a signal (a C main or a wait() in C returned because of it)."""
    if lib.bm_machine_state(c_machine) == lib.BM_STATE_STOPPING:
        raise SystemExit(exit_status() or 1)


STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)


_stopped_by = []                       # the stop signals read from the wakeup pipe
_wakeup = []                           # the read end of Python's signal wakeup pipe
_owner = []                            # the pid of the command that owns the stop signals


def _stop(signum, frame):
    """A Ray-driving command's stop: SIGINT as KeyboardInterrupt, the others as SystemExit.
    In a process forked from it (pyroute2 and Ray fork helpers), the signal's default action:
    a helper must not unwind into the parent's code."""
    if _owner and os.getpid() != _owner[0]:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise SystemExit(128 + signum)


def _install():
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _stop)
    if signal.getsignal(signal.SIGINT) in (signal.default_int_handler, signal.SIG_DFL, None):
        signal.signal(signal.SIGINT, signal.default_int_handler)


def own_stop_signals():
    """For commands that drive Ray (``baremetal cluster``, ``baremetal lab --cluster``) and run
    no machine here, called at their start: SIGTERM / SIGHUP end them with SystemExit(128 +
    signal) and SIGINT (unless handled otherwise) with KeyboardInterrupt, so that their
    ``finally`` stops the Ray processes they started.  The library calls
    :func:`reassert_stop_signals` after each ``ray.init``, because Ray's driver installs a C
    handler for SIGTERM that dumps a stack and aborts 3 s later, leaving its agents running.
    A program using the library without this call keeps its own (and Ray's) handlers.  Main
    thread only (elsewhere: nothing)."""
    import threading
    if threading.current_thread() is not threading.main_thread():
        return
    if not _wakeup:
        # every signal Python handles is also written here, whoever's handler runs (Ray
        # installs its own while it starts a node, and ends with sys.exit(1))
        read_end, write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
        _wakeup.append(read_end)
        _owner.append(os.getpid())
    _install()


def reassert_stop_signals():
    """After ``ray.init``: this command's stop handlers again, if it owns them (see above)."""
    import threading
    if _owner and os.getpid() == _owner[0] and threading.current_thread() is threading.main_thread():
        _install()


def stop_status():
    """128 + the first stop signal a Ray-driving command got since :func:`own_stop_signals`
    (Ray turns the SystemExit raised inside its waits into SystemExit(1), and its own handler
    exits with 1: the signal is kept here), 0 if none."""
    if _wakeup:
        try:
            _stopped_by.extend(n for n in os.read(_wakeup[0], 4096) if n in STOP_SIGNALS)
        except BlockingIOError:
            pass
    return 128 + _stopped_by[0] if _stopped_by else 0


class deferred_stop:
    """``with deferred_stop():`` in a command that owns the stop signals, one arriving inside
    is held until the block ends (then raised as above): the cleanup of Ray's processes is
    not cut short by a second SIGTERM.  Otherwise (a program using the library, another
    thread): no effect."""

    def __enter__(self):
        import threading
        self.pending = []
        self.active = bool(_owner) and os.getpid() == _owner[0] and \
            threading.current_thread() is threading.main_thread()
        if self.active:
            for signum in STOP_SIGNALS:
                signal.signal(signum, self._hold)
        return self

    def _hold(self, signum, frame):
        if os.getpid() != _owner[0]:                  # a forked helper: as _stop
            _stop(signum, frame)
            return
        self.pending.append(signum)

    def __exit__(self, kind, value, trace):
        if not self.active:
            return False
        _install()
        if self.pending and kind is None:
            _stop(self.pending[0], None)
        return False

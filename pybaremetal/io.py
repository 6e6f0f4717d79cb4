"""The console: where b_output writes and b_input reads, and the Python face of both calls.

Output goes to stdout by default, or to a capture buffer (a memfd, read back with
``machine.console.output()``), a file path, a file descriptor or a file object.  Input comes
from stdin by default, or from bytes, a path, a descriptor or a file object.  When input is a
terminal it is put in raw, non-echo mode (keys arrive one at a time, Ctrl-C still stops the
machine) for the machine's lifetime and restored on halt, on exceptions, at exit and on
SIGTERM/SIGHUP; from C by the fault handler and the signal watchdog (native/signals.c); and, when
the process ends without running any code (SIGKILL, os._exit, abort), by a guard: a small
process in its own session (so Ctrl-C does not reach it) that holds the read end of a pipe and
restores the terminal when the pipe reports the process gone without having restored it.
"""
import atexit
import fcntl
import os
import signal
import stat
import subprocess
import sys
import termios

from ._native import lib
from .current import current_machine
from .errors import ArgumentError, HostError, recorded_error
from .memory import as_pointer


def _open_output(console):
    """(fd, owned, kind) for the console= argument."""
    if console is None or console == "stdout":
        return 1, False, "stdout"
    if console == "stderr":
        return 2, False, "stderr"
    if console == "capture":
        fd = os.memfd_create("baremetal-console", os.MFD_CLOEXEC)
        # O_APPEND: a memfd has no atomic file position, so writes from several cores at once
        # would land on the same offset and overwrite each other
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_APPEND)
        return fd, True, "capture"
    if isinstance(console, (str, os.PathLike)):
        if not os.fspath(console):
            raise ArgumentError("console: empty path; give 'stdout', 'stderr' or a file path")
        try:
            return os.open(console, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644), True, "file"
        except OSError as error:
            raise ArgumentError(f"console: cannot write {os.fspath(console)!r}: {error.strerror}; "
                                "give a writable file path") from None
    if isinstance(console, int) and not isinstance(console, bool):
        return console, False, "fd"
    if hasattr(console, "fileno"):
        return console.fileno(), False, "fd"
    raise ArgumentError(f"console: expected 'stdout', 'stderr', 'capture', a path, an fd or a file, got {console!r}")


def _open_input(source, kind):
    """(fd, owned) for the input= argument; -1 means no input."""
    if source is None:
        if kind != "stdout":
            return -1, False                   # a captured/redirected machine reads nothing by default
        try:
            os.fstat(0)
        except OSError:
            return -1, False
        return 0, False
    if source is False:
        return -1, False
    if isinstance(source, (bytes, bytearray, memoryview)):
        fd = os.memfd_create("baremetal-input", os.MFD_CLOEXEC)
        os.write(fd, bytes(source))
        os.lseek(fd, 0, os.SEEK_SET)
        return fd, True
    if isinstance(source, (str, os.PathLike)):
        try:
            fd = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as error:
            raise ArgumentError(f"input: cannot read {os.fspath(source)!r}: {error.strerror}; "
                                "give a readable file") from None
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            os.close(fd)
            raise ArgumentError(f"input: {os.fspath(source)!r} is a directory; give a readable file")
        return fd, True
    if isinstance(source, int) and not isinstance(source, bool):
        return source, False
    if hasattr(source, "fileno"):
        return source.fileno(), False
    raise ArgumentError(f"input: expected bytes, a path, an fd or a file, got {source!r}")


_GUARD = """
import os, sys, termios
pipe, saved = int(sys.argv[1]), sys.argv[2].split(",")
while True:
    try:
        gone = not os.read(pipe, 1)
        break
    except InterruptedError:
        pass
    except OSError:
        gone = True
        break
if gone:
    try:
        termios.tcsetattr(0, termios.TCSANOW, [int(v) for v in saved[:6]] + [list(bytes.fromhex(saved[6]))])
    except termios.error:
        pass
"""


class _TerminalGuard:
    """The guard process of terminal ``fd`` (see the module doc): started before raw mode, told
    to leave quietly by :meth:`release` once the terminal is restored."""

    _leaving = []                              # released guards not reaped yet

    def __init__(self, fd):
        _TerminalGuard._leaving = [p for p in _TerminalGuard._leaving if p.poll() is None]
        attrs = termios.tcgetattr(fd)
        cc = bytes(c if isinstance(c, int) else c[0] for c in attrs[6])
        saved = ",".join([*(str(v) for v in attrs[:6]), cc.hex()])
        read_end, self._write_end = os.pipe()               # both close-on-exec
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _GUARD, str(read_end), saved], stdin=fd,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, pass_fds=(read_end,),
                start_new_session=True)
        except OSError:
            self._process = None                            # no guard: the other paths remain
        finally:
            os.close(read_end)

    def release(self):
        if self._write_end < 0:
            return
        try:
            os.write(self._write_end, b"x")                 # restored: leave without touching it
        except OSError:
            pass
        os.close(self._write_end)
        self._write_end = -1
        if self._process is not None and self._process.poll() is None:
            _TerminalGuard._leaving.append(self._process)  # leaving: reaped later, never waited for
        self._process = None


class _Terminal:
    """Raw, non-echo mode on a terminal fd, restored however the process ends."""

    _active = []                               # terminals in raw mode, for the signal handler
    _handlers_installed = False

    def __init__(self, fd):
        self.fd = fd
        self._guard = _TerminalGuard(fd)
        if lib.bm_terminal_raw(fd) != 0:            # lflag: keys one at a time, no echo
            self._guard.release()
            raise HostError(recorded_error()[1])
        _Terminal._active.append(self)
        _Terminal._install_handlers()

    def restore(self):
        if self in _Terminal._active:
            _Terminal._active.remove(self)
            lib.bm_terminal_restore(self.fd)
            self._guard.release()

    @classmethod
    def _restore_all(cls):
        for terminal in list(cls._active):
            terminal.restore()

    @classmethod
    def _install_handlers(cls):
        if cls._handlers_installed:
            return
        cls._handlers_installed = True
        atexit.register(cls._restore_all)
        for signum in (signal.SIGTERM, signal.SIGHUP):
            try:
                previous = signal.getsignal(signum)
            except ValueError:
                continue
            if previous not in (signal.SIG_DFL, None):
                continue

            def on_signal(number, frame, _signum=signum):
                cls._restore_all()
                signal.signal(_signum, signal.SIG_DFL)
                os.kill(os.getpid(), _signum)
            try:
                signal.signal(signum, on_signal)
            except ValueError:                 # not the main thread: atexit still restores
                pass


class Console:
    """A machine's console.  ``output()`` returns what was written, for 'capture' or a path."""

    def __init__(self, console=None, input=None):
        self.out_fd, self._own_out, self.kind = _open_output(console)
        self._path = os.fspath(console) if self.kind == "file" else None
        self.in_fd, self._own_in = _open_input(input, self.kind)
        self._terminal = None

    def start(self):
        """Raw mode on a terminal input (boot)."""
        if self.in_fd >= 0 and self._terminal is None and os.isatty(self.in_fd):
            self._terminal = _Terminal(self.in_fd)

    def stop(self):
        """Restore the terminal (halt; idempotent)."""
        if self._terminal is not None:
            self._terminal.restore()
            self._terminal = None

    def output(self):
        """Everything written so far, as bytes ('capture' and file consoles)."""
        if self.kind == "capture":
            return os.pread(self.out_fd, os.fstat(self.out_fd).st_size, 0)
        if self._path is not None:
            with open(self._path, "rb") as f:
                return f.read()
        raise ArgumentError(f"console output is not recorded for a {self.kind} console; use console='capture'")

    def close(self):
        self.stop()
        for fd, own in ((self.out_fd, self._own_out), (self.in_fd, self._own_in)):
            if own and fd >= 0:
                os.close(fd)
        self._own_out = self._own_in = False


def lost_output(machine):
    """``(bytes, errno)``: how much of b_output's output the console could not take (a full
    disk, /dev/full, a closed pipe) and the first failure's errno; ``(0, 0)`` when none."""
    from ._native import ffi
    err = ffi.new("int *")
    return lib.bm_console_lost(machine._c, err), err[0]


# --- the Python face ------------------------------------------------------------------------

def b_output(data, nbr=None):
    """Write ``nbr`` bytes of ``data`` (bytes, str as UTF-8, any buffer, or a machine address)
    to the current machine's output.  ``nbr`` defaults to the whole of ``data``.

    Raises NoMachineError outside a machine, ArgumentError for a bad ``nbr`` or type."""
    machine = current_machine()                # raises NoMachineError
    if type(data) is bytes:                    # the common case: cffi passes bytes as char * as is
        pointer = data
        size = len(data)
    elif isinstance(data, str):
        pointer = data.encode()
        size = len(pointer)
    elif isinstance(data, int) and not isinstance(data, bool):
        if nbr is None:
            raise ArgumentError("b_output: nbr is required when data is an address")
        pointer, _ = as_pointer(machine, data, nbr, False, "b_output")
        size = nbr
    else:
        pointer, _ = as_pointer(machine, data, 0, False, "b_output")
        size = len(pointer)
    if nbr is None:
        nbr = size
    elif not 0 <= nbr <= size:
        raise ArgumentError(f"b_output: nbr={nbr} but data holds {size} bytes")
    if machine._flush_python_stdout:
        sys.stdout.flush()
    lib.b_output(pointer, nbr)


def b_input():
    """The next byte of input as an int, 0 if none is waiting.  Never blocks."""
    current_machine()                          # raises NoMachineError
    return lib.b_input()

"""Cores and the work queue: the control side (the polling lives in native/smp.c).

``machine.smp`` gives work to the machine's cores, in both of BareMetal's models:

* the work queue (older BareMetal, the seed's model): ``enqueue(task, arg)`` adds a task that
  whichever core is free takes and runs to completion; ``wait()`` returns when the queue is
  empty and every other core is idle (the calling core runs queued tasks meanwhile);
* the per-core slots (the current kernel): ``set(task, core)`` gives one core one task;
  ``busy()`` says whether any other core still has work.

A task is a Python callable ``task(arg)``, a cffi C function pointer ``void(*)(u64)``, an int
address of such a function, or any object with an int ``address`` (``numba.cfunc``).  C tasks
never touch Python.  A Python task runs through one cffi callback that takes the GIL while it
runs; a core that takes a Python task also takes the Python tasks queued right behind it and
runs them under the same GIL hold.  An exception in a Python task is recorded in
``machine.faults`` (core id and traceback) and printed to stderr; the core goes back to idle.
A C task that faults (SIGSEGV, SIGFPE, ...) on a core is reported the same way ("core N:
SIGSEGV at address 0x...") and the core goes back to idle too (native/fault.c).

Who calls what: ``enqueue``, ``set``, ``busy``, ``reset`` and ``wait`` may be called from any
thread while the machine runs.  SHUTDOWN or REBOOT requested from a task on a core other than 0
sets the machine's state: the cores stop taking queued work, and core 0 hears of it at its next
``wait()``, which raises :class:`Shutdown` / :class:`Reboot` there so that ``Machine.run`` ends or
restarts the app.
"""
import collections
import functools
import itertools
import os
import signal
import sys
import threading
import traceback
import types
import warnings
import weakref

from . import abi, signals
from ._native import ffi, lib
from .current import current_machine, machine_of
from .errors import ArgumentError, BareMetalError, Reboot, Shutdown, StateError, raise_recorded
from .system import converts

PY_TASK = lib.bm_smp_py_task()                # the code address of every Python task
_enqueue, _enqueue_wait = lib.bm_smp_enqueue, lib.bm_smp_enqueue_wait
_NO_ARG = object()                             # slot tasks: Python callables take no argument


class QueueFull(BareMetalError):
    """The work queue holds ``machine.smp.queue_size`` tasks already (enqueue with
    ``block=True`` to wait for room instead)."""


FAULTS_KEPT = 1000                         # machine.faults keeps the last this many

Fault = collections.namedtuple("Fault", "core kind address task traceback")
Fault.__doc__ = """A task that failed on a core.

``kind`` is "exception" for a Python task (``traceback`` holds the formatted traceback) or the
signal's name ("SIGSEGV", ...) for a C task (``address`` is the faulting address, ``task`` the
task's code address)."""


def host_cpus():
    """How many CPUs this process may run on (as it was before any core was pinned)."""
    return lib.bm_smp_host_cpus() or len(os.sched_getaffinity(0))


_PYTHON_CALLABLES = (types.FunctionType, types.BuiltinFunctionType, types.MethodType,
                     functools.partial)


def _code_of(task):
    """(code address, python callable or None) for a task given to enqueue/set."""
    if type(task) in _PYTHON_CALLABLES:
        return PY_TASK, task
    if type(task) is int:
        if task <= 0 or task >= 1 << 64:
            raise ArgumentError(f"task address 0x{task:x} is not a valid code address")
        return task, None
    if isinstance(task, ffi.CData):
        if ffi.typeof(task).kind not in ("function", "pointer"):
            raise ArgumentError(f"task: a cffi {ffi.typeof(task).cname} is not a function pointer")
        return _code_of(int(ffi.cast("uintptr_t", task)))
    address = getattr(task, "address", None)
    if isinstance(address, int) and not isinstance(address, bool):
        return _code_of(address)                # numba.cfunc and friends
    if callable(task):
        return PY_TASK, task
    raise ArgumentError(f"task must be a callable, a cffi function pointer or a code address, "
                        f"not {type(task).__name__}")


class Smp:
    """``machine.smp``: the cores and the work queue of one machine (see the module doc)."""

    def __init__(self, machine, queue_size=4096, pin=True):
        if isinstance(queue_size, bool) or not isinstance(queue_size, int):
            raise ArgumentError(f"queue_size must be an int (a power of two), got {queue_size!r}")
        if not 0 <= queue_size <= 0xFFFFFFFF:
            raise ArgumentError(f"queue_size must be a power of two from 2 to {1 << 24}, not {queue_size}")
        if lib.bm_smp_configure(machine._c, queue_size, 1 if pin else 0) != 0:
            raise_recorded()
        self._machine = weakref.ref(machine)
        self._c = machine._c
        self.num_cores = machine.num_cores
        self.queue_size = queue_size
        self._pending = {}                     # handle -> (callable, arg): queued Python tasks
        self._handles = itertools.count(1)
        self._faults = collections.deque(maxlen=FAULTS_KEPT)
        self.fault_count = 0                   # every fault so far, including those no longer kept
        self._c_faults_seen = 0
        self._set_lock = threading.Lock()
        self._fault_buffer = ffi.new("struct bm_fault[]", 64)
        cpus = host_cpus()
        if machine.num_cores > cpus:
            warnings.warn(f"Machine(cores={machine.num_cores}) on {cpus} CPU(s): cores share CPUs "
                          f"(a task may wait for another core's task to be descheduled)",
                          RuntimeWarning, stacklevel=3)

    def _running(self):
        machine = self._machine()
        if machine is None or not machine.running:
            raise StateError("the machine is not running (boot it first)")
        return machine

    # --- the queue --------------------------------------------------------------------------

    def enqueue(self, task, arg=0, block=False):
        """Add ``task(arg)`` to the work queue; any free core runs it, to completion.

        ``arg`` is a u64 for C tasks and any object for Python tasks.  Raises QueueFull when the
        queue is full (``block=True`` waits for room instead; a core caller runs queued tasks
        meanwhile), StateError if the machine is not running, ArgumentError for a bad task."""
        if type(task) in _PYTHON_CALLABLES:           # the common case, kept short
            code, python = PY_TASK, task
        else:
            code, python = _code_of(task)
        if python is None:
            if type(arg) is not int or not 0 <= arg < 1 << 64:
                raise ArgumentError(f"arg of a C task must be an int in 0..2**64-1, got {arg!r}")
        else:
            handle = next(self._handles)
            self._pending[handle] = (python, arg)
            arg = handle
        if (_enqueue_wait if block else _enqueue)(self._c, code, arg):
            return
        if python is not None:
            self._pending.pop(arg, None)
        self._running()
        raise_recorded(QueueFull if lib.bm_error_code() == lib.BM_ERR_FULL else None)

    def wait(self):
        """Return when the queue is empty and every other core is idle.  A core of this machine
        calling it runs queued tasks meanwhile.  Raises Shutdown / Reboot if a core asked for
        that meanwhile (see the module doc)."""
        self._running()
        lib.bm_smp_wait(self._c)
        signals.raise_if_stopping(self._c)   # a stop signal ended the wait (SystemExit)
        state = lib.bm_machine_state(self._c)
        if state == lib.BM_STATE_SHUTDOWN:
            raise Shutdown()
        if state == lib.BM_STATE_REBOOT:
            raise Reboot()

    @property
    def queued(self):
        """Tasks in the queue that no core has taken yet (a snapshot)."""
        return lib.bm_smp_queued(self._c)

    # --- slots --------------------------------------------------------------------------------

    def set(self, task, core):
        """SMP_SET: give ``core`` the task to run (``task()`` for a Python callable; C code is
        called with no meaningful argument, as upstream's).  Returns the code address stored in
        the slot.  Raises ArgumentError (no such core, code not 16-byte aligned) or StateError
        (the core already has work, the machine is not running)."""
        if isinstance(core, bool) or not isinstance(core, int) or core < 0:
            raise ArgumentError(f"core must be a core id (int), got {core!r}")
        code, python = _code_of(task)
        arg = 0
        with self._set_lock:
            if python is not None:
                arg = next(self._handles)
                self._pending[arg] = (python, _NO_ARG)
            result = lib.bm_smp_set_arg(self._c, code, core, arg)
            if result == 0 and python is not None:
                self._pending.pop(arg, None)
        if result == 0:
            raise_recorded()
        return result

    def busy(self):
        """SMP_BUSY: True if a core other than the caller has work (a slot task, or a queue task
        it is running; tasks still waiting in the queue do not count)."""
        return bool(lib.bm_smp_busy(self._c))

    def reset(self):
        """RESET: forget every queued task and every other core's slot work.  Tasks already
        running finish (nothing preempts them) and their cores then go idle."""
        lib.bm_smp_reset(self._c)
        self._pending.clear()

    def cpu_of(self, core):
        """The host CPU ``core`` is pinned to, or None (not pinned, or no such core)."""
        cpu = lib.bm_smp_core_cpu(self._c, core)
        return None if cpu < 0 else cpu

    # --- faults -------------------------------------------------------------------------------

    @property
    def faults(self):
        """The last FAULTS_KEPT tasks that failed, oldest first: a list of :class:`Fault`
        (``fault_count`` counts them all)."""
        while True:
            count = lib.bm_smp_fault_count(self._c)
            first = max(self._c_faults_seen, count - 64)      # the C log keeps the last 64
            self.fault_count += first - self._c_faults_seen
            n = lib.bm_smp_faults(self._c, first, self._fault_buffer, 64)
            for i in range(n):
                f = self._fault_buffer[i]
                self._faults.append(Fault(f.core, signal_name(f.signal), f.address, f.code or None, None))
            self._c_faults_seen = first + n
            self.fault_count += n
            if n < 64:
                return list(self._faults)

    def _record_exception(self, core, task):
        text = traceback.format_exc()
        self._faults.append(Fault(core, "exception", None, task, text))
        self.fault_count += 1
        try:
            sys.stderr.write(f"core {core}: task {task!r} raised an exception (core back to idle)\n{text}")
            sys.stderr.flush()
        except Exception:
            pass

    def _forget(self):
        """Drop queued Python tasks (reboot, halt: the queue was emptied in C)."""
        self._pending.clear()

    # --- running Python tasks (called by the cores through cffi) ------------------------------

    def _run(self, core, handles, count):
        pending = self._pending
        for i in range(count):
            entry = pending.pop(handles[i], None)
            if entry is None:                    # abandoned by RESET
                continue
            fn, arg = entry
            try:
                fn() if arg is _NO_ARG else fn(arg)
            except (Shutdown, Reboot):
                pass                             # the state is set: see the module doc
            except BaseException:
                self._record_exception(core, fn)


def signal_name(number):
    """"SIGSEGV" for 11, as fault reports spell signals."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


@ffi.def_extern()
def bm_py_run(machine, core, handles, count):
    """The cores' way into Python: run ``count`` Python tasks by handle (GIL held)."""
    owner = machine_of(machine)
    if owner is not None:
        owner.smp._run(core, handles, count)


# --- SMP_SET through b_system -----------------------------------------------------------------

@converts(abi.SMP_SET)
def _smp_set(machine, var1, var2):
    """b_system(SMP_SET, task, core) with a Python callable or a numba cfunc: a Python callable
    goes through machine.smp.set (which stores it in the slot); others become an address."""
    if isinstance(var1, int) or isinstance(var1, ffi.CData):
        return var1, var2
    code, python = _code_of(var1)
    if python is None:
        return code, var2
    raise ArgumentError("b_system(SMP_SET, ...): give a Python callable to machine.smp.set(task, core); "
                        "b_system takes code addresses")


@converts(abi.RESET)
def _reset(machine, var1, var2):
    """b_system(RESET) from Python: queued Python tasks are forgotten with the rest."""
    machine.smp._forget()
    return var1, var2


# --- locks --------------------------------------------------------------------------------------

def _lock_word(machine, var1, var2):
    """b_system(SMP_LOCK / SMP_UNLOCK, address) from Python: the word must be inside the
    machine's memory and 2-byte aligned (AddressError / ArgumentError; nothing touched)."""
    if isinstance(var1, ffi.CData):
        var1 = int(ffi.cast("uintptr_t", var1))               # a pointer to the word
    if isinstance(var1, bool) or not isinstance(var1, int):
        raise ArgumentError(f"SMP_LOCK/SMP_UNLOCK: the lock word's address must be an int, got {var1!r}")
    machine.offset(var1, 2)                                    # AddressError outside memory
    if var1 % 2:
        raise ArgumentError(f"SMP_LOCK/SMP_UNLOCK: the lock word at 0x{var1:x} is not 2-byte aligned")
    return var1, var2


converts(abi.SMP_LOCK)(_lock_word)
converts(abi.SMP_UNLOCK)(_lock_word)


class Lock:
    """A spin lock over a 16-bit lock word, with SMP_LOCK / SMP_UNLOCK semantics (bit 0).

    ``Lock()`` owns a private word (on its own cache line); ``Lock(address)`` uses the word at a
    process address inside the current machine's memory (or ``machine``'s), so C code of the
    same app can take the same lock with ``b_system(SMP_LOCK, address, 0)``.  The wait spins in
    C without the GIL.  Usable as a context manager."""

    def __init__(self, address=None, machine=None):
        if address is None:
            self._word = ffi.new("u16[64]")                   # 128 bytes: a whole line inside
            start = int(ffi.cast("uintptr_t", self._word))
            self.address = (start + 63) & ~63
        else:
            if isinstance(address, bool) or not isinstance(address, int):
                raise ArgumentError(f"Lock: address must be an int, got {address!r}")
            if machine is None:
                machine = current_machine()
            machine.offset(address, 2)                         # AddressError outside memory
            if address % 2:
                raise ArgumentError(f"Lock: the lock word at 0x{address:x} is not 2-byte aligned")
            self.address = address
            self._word = None

    def acquire(self):
        if not lib.bm_smp_lock(self.address):
            raise_recorded()                   # StateError: the machine stopped meanwhile
        return True

    def release(self):
        lib.bm_smp_unlock(self.address)

    def locked(self):
        return bool(ffi.cast("u16 *", self.address)[0] & 1)

    __enter__ = acquire

    def __exit__(self, *exc):
        self.release()
        return False

    def __repr__(self):
        return f"<bm.Lock at 0x{self.address:x} {'locked' if self.locked() else 'unlocked'}>"

"""Machine: builds, boots, runs and halts one hosted BareMetal machine.

A Machine is an object, not a global: several can live in one process.  The calls act on the
*current* machine of the calling thread: core 0 (the BSP) is the thread that boots the machine
or calls :meth:`Machine.run`; other cores are threads the machine starts itself.
"""
import os
import threading
import warnings
import weakref

from . import abi, nvs, net, smp
from ._native import ffi, lib
from .errors import ArgumentError, OutOfMemory, Reboot, Shutdown, StateError, raise_recorded
from .io import Console
from .memory import FlatMemory, check_range, parse_size
from .screen import Screen, parse as screen_parse
from .trace import attach as trace_calls

from .current import current_machine  # noqa: F401 (re-exported)

_bindings = threading.local()             # per thread: stack of the C cores bm_bind replaced


def _cpu_mhz():
    """The CPU's speed in MHz from /proc/cpuinfo (0 if unknown); read once per process."""
    if _cpu_mhz.value is None:
        _cpu_mhz.value = 0
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.startswith("cpu MHz"):
                        _cpu_mhz.value = int(float(line.split(":")[1]))
                        break
        except (OSError, ValueError):
            pass
    return _cpu_mhz.value


_cpu_mhz.value = None


class Machine:
    """A hosted BareMetal machine.

    ``cores``: number of cores (None: one per CPU this process may run on).
    ``memory``: flat memory size, an int or a string like "256M" or "2G" (rounded up to 2 MiB).
    ``console``: 'stdout' (default), 'stderr', 'capture', a path, an fd or a file object.
    ``input``: what b_input reads: None (stdin for a stdout console), bytes, a path, an fd,
    a file object, or False for none.
    ``pin``: pin each core to its own CPU (core 0's previous affinity comes back at halt).
    ``queue_size``: capacity of the work queue (a power of two), see :class:`pybaremetal.smp.Smp`.
    ``drives``, ``nics``: device specs, see pybaremetal.nvs and pybaremetal.net.
    ``screen``: a frame buffer in flat memory: "WxH" or (width, height); None (default) or
    "none" for no screen (a Python app may still ask for one with ``bm.screen()``, except
    with "none").  ``machine.screen`` is the :class:`pybaremetal.screen.Screen`, or None.
    ``trace``: write one line per call the app makes (core, call, arguments, result,
    duration; see :mod:`pybaremetal.trace`): True for stderr, or a file path; None (default)
    for no trace.
    ``cpu``: how flat binaries execute: "auto", "kvm" or "emu" (pybaremetal.cpu); None (default):
    $BAREMETAL_CPU, else "auto".
    ``cmdline``: the kernel command line, a NUL-terminated string at physical 0x5A00.
    ``gdb``: a TCP port: a flat binary waits for gdb there (127.0.0.1; 0 picks a port, printed)
    and runs under its control (pybaremetal.cpu.gdb).  ``dumpcore``: a directory: a flat
    binary that faults writes an ELF core file there for gdb.
    """

    def __init__(self, cores=None, memory="256M", console=None, input=None, pin=True,
                 drives=(), nics=(), screen=None, queue_size=4096, trace=None, cpu=None,
                 cmdline=None, gdb=None, dumpcore=None):
        if cores is None:
            cores = smp.host_cpus()
        if isinstance(cores, bool) or not isinstance(cores, int) or not 1 <= cores <= 256:
            raise ArgumentError(f"cores must be an int from 1 to 256, got {cores!r}")
        size = parse_size(memory, "memory")
        size = -(-size // abi.PAGE_SIZE) * abi.PAGE_SIZE
        if size < 2 * abi.PAGE_SIZE:
            raise ArgumentError(f"memory must be at least 4 MiB (the low 2 MiB are the system area), got {memory!r}")
        from .cpu import CHOICES
        if cpu is not None and cpu not in CHOICES:
            raise ArgumentError(f"cpu must be one of {', '.join(CHOICES)}, got {cpu!r}")
        if cmdline is not None and (not isinstance(cmdline, str) or "\0" in cmdline
                                    or len(cmdline.encode()) >= 0x600):
            raise ArgumentError("cmdline must be a str without NUL of at most 1535 bytes")
        self.cpu, self.cmdline = cpu, cmdline
        if gdb is not None or dumpcore is not None:
            from .cpu import gdb as debugging
            gdb = None if gdb is None else debugging.check_port(gdb)
            dumpcore = None if dumpcore is None else debugging.check_core_dir(os.fspath(dumpcore))
        self.gdb, self.dumpcore = gdb, dumpcore
        self.num_cores = cores
        self.memory_size = size
        self.pin = pin
        self._flat = FlatMemory(size)
        self.memory = self._flat.array
        self.base = self._flat.base
        self.console = Console(console, input)
        self._flush_python_stdout = self.console.out_fd == 1
        self._keepalive = {}
        self._booted = False
        self._halted = False
        pointer = lib.bm_machine_new(ffi.cast("u8 *", self.base), size, cores,
                                     self.console.out_fd, self.console.in_fd)
        if pointer == ffi.NULL:
            self.console.close()
            raise_recorded()
        self._c = ffi.gc(pointer, lib.bm_machine_free)
        # C keeps a handle to (a weak reference to) this object: current_machine() on any core
        # finds it there.  Weak, so that the machine is still freed (and halted) when dropped.
        self._handle = ffi.new_handle(weakref.ref(self))
        lib.bm_machine_set_owner(self._c, self._handle)
        lib.bm_machine_set_cpu_mhz(self._c, _cpu_mhz())
        try:
            trace_calls(self, trace)
            self.smp = smp.Smp(self, queue_size, pin)
            self.drives = nvs.attach(self, drives)
            self.nics = net.attach(self, nics)
        except BaseException:
            self._release()
            raise
        self.drive_ids, self.nic_ids = {}, {}   # names from a machine file -> numbers
        self.screen_spec = screen              # None: no screen until bm.screen() asks for one
        self.screen = None
        try:
            size = screen_parse(screen)
            if size is not None:
                self.screen = Screen(self, *size)
        except BaseException:
            self._release()
            raise

    @classmethod
    def from_file(cls, path, **overrides):
        """The machine the TOML machine file at ``path`` describes (see
        :mod:`pybaremetal.config`); keyword arguments override its keys, and ``drives`` /
        ``nics`` given here come after the file's.  ``drive_ids`` / ``nic_ids`` map the
        file's device names to their numbers."""
        from .config import machine_from_file
        return machine_from_file(cls, path, overrides)

    # --- life -----------------------------------------------------------------------------

    def boot(self):
        """Start the machine; the calling thread becomes core 0.  Returns self."""
        if self._halted:
            raise StateError("this machine was halted; make a new Machine")
        if self._booted:
            return self
        if lib.bm_machine_boot(self._c) != 0:
            raise_recorded()
        self._write_cmdline()
        self._booted = True
        self.console.start()
        self._bind(0)
        return self

    def halt(self):
        """Stop the machine: cores stopped, drives flushed and closed, NICs closed (C does all
        of it in one call, bm_machine_halt), terminal restored.  Idempotent."""
        if self._halted:
            return
        self._halted = True
        try:
            self._release()
        finally:
            self.smp._forget()
            self._unbind_all()

    def _release(self):
        """Halt in C (one call: service thread, cores, drives, NICs, low window), then remove
        what Python made for the machine (TAP devices it created) and close the console."""
        try:
            lib.bm_machine_halt(self._c)
            net.detach(self)
            nvs.detach(self)
        finally:
            self.console.close()

    def __enter__(self):
        return self.boot()

    def __exit__(self, *exc):
        self.halt()
        return False

    def __del__(self):
        try:
            if self._booted and not self._halted:
                self.halt()
        except Exception:
            pass

    @property
    def running(self):
        return self._booted and not self._halted

    @property
    def faults(self):
        """The last 1000 tasks that failed on this machine's cores (Python exceptions, C
        faults), oldest first: a list of :class:`pybaremetal.smp.Fault`."""
        return self.smp.faults

    @property
    def fault_count(self):
        """How many tasks failed on this machine's cores, including those ``faults`` no
        longer keeps."""
        self.smp.faults                        # takes in the C faults recorded meanwhile
        return self.smp.fault_count

    # --- running apps ---------------------------------------------------------------------

    def run(self, main, *args, **kwargs):
        """Run ``main(*args, **kwargs)`` on core 0 (the calling thread) and return its result.

        b_system(SHUTDOWN) ends the run (returns None); b_system(REBOOT) resets the machine
        (other cores stopped, memory cleared, clock restarted) and calls main again."""
        self.boot()
        self._bind(0)
        try:
            while True:
                try:
                    return main(*args, **kwargs)
                except Shutdown:
                    return None
                except Reboot:
                    self.reboot()
        finally:
            self._unbind()

    def reboot(self):
        """Reset the machine as upstream's REBOOT (one C call, bm_machine_reboot): other cores
        stopped, memory zeroed, allocations forgotten (the screen keeps its buffer), clock
        restarted, callbacks and STDOUT_SET forgotten."""
        if not self.running:
            raise StateError("reboot: the machine is not running")
        if lib.bm_machine_reboot(self._c) != 0:
            raise_recorded()
        self.smp._forget()
        self._write_cmdline()

    def _write_cmdline(self):
        if self.cmdline:
            lib.bm_guest_set_cmdline(self._c, self.cmdline.encode())

    # --- the calling thread as a core ------------------------------------------------------

    def _bind(self, core_id):
        """Make the calling thread core ``core_id`` of this machine (nests)."""
        stack = getattr(_bindings, "stack", None)
        if stack is None:
            stack = _bindings.stack = []
        stack.append((self, lib.bm_bind(self._c, core_id)))

    def _unbind(self):
        stack = getattr(_bindings, "stack", None)
        if stack:
            _, previous = stack.pop()
            lib.bm_unbind(previous)

    def _unbind_all(self):
        stack = getattr(_bindings, "stack", None) or []
        while stack and stack[-1][0] is self:
            self._unbind()

    # --- memory -----------------------------------------------------------------------------

    def addr(self, physical):
        """The process address of the machine's physical address ``physical``."""
        if not 0 <= physical <= self.memory_size:
            raise ArgumentError(f"physical address 0x{physical:x} is beyond the machine's "
                                f"{self.memory_size >> 20} MiB")
        return self.base + physical

    def offset(self, address, nbytes=0):
        """The physical address (offset in memory) of process address ``address``.
        Raises AddressError if [address, address+nbytes) is not inside the machine."""
        return check_range(self, address, nbytes)

    def alloc(self, nbytes):
        """Allocate ``nbytes`` (rounded up to 2 MiB pages) of free memory.

        Returns ``(address, view)``: the process address and a numpy uint8 view of nbytes.
        Raises OutOfMemory when no run of free pages is large enough."""
        if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes <= 0:
            raise ArgumentError(f"alloc: nbytes must be a positive int, got {nbytes!r}")
        physical = lib.bm_mem_alloc(self._c, nbytes)
        if physical == 0:
            raise_recorded(OutOfMemory)
        return self.base + physical, self.memory[physical:physical + nbytes]

    def free(self, address):
        """Give back a region ``alloc`` returned.  Returns the bytes freed."""
        physical = self.offset(address)
        freed = lib.bm_mem_free(self._c, physical)
        if freed == 0:
            raise_recorded()
        return freed

    @property
    def free_memory(self):
        """Free memory in MiB, as FREE_MEMORY reports it."""
        return int(self.memory[abi.SYSVAR_FREE_MIB:abi.SYSVAR_FREE_MIB + 4].view("<u4")[0]) \
            if self._booted else None

    def __repr__(self):
        state = "running" if self.running else ("halted" if self._halted else "new")
        return f"<Machine {self.num_cores} cores, {self.memory_size >> 20} MiB, {state}>"

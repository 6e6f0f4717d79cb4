"""Flat binaries (.app): images built for the real kernel, run unmodified on a CPU backend
(pybaremetal.cpu: KVM, or the emulated CPU).  A NASM source (.asm) is assembled with
``nasm -f bin`` first, as for the real kernel.

The image is loaded at physical 0x200000, which the guest sees at 0xFFFF800000000000 (where
BareMetal apps are linked), and entered at its first byte on core 0.  While it runs, the pages
the image occupies, plus 2 MiB for its .bss, are reserved so FREE_MEMORY and machine.alloc see
them as used; the app's window [0xFFFF800000000000, + FREE_MEMORY MiB) is then free for its heap
(the cores' stacks are at the top of memory, outside it: native/guest.c).  When the app returns,
the run ends and run() returns the low 8 bits of RAX (C apps: main's return value through crt0).

The exit status of `baremetal run` (:func:`exit_status`): a flat binary that returns ends with
status 0 whatever RAX holds (upstream's apps return to the Monitor, which ignores RAX: euler1
leaves 208 there), unless asked with ``--exit-status rax`` (the low byte of RAX; the default for
C sources run with ``--flat``, whose crt0 returns main's value).
"""
import os
import shutil
import stat
import subprocess
import tempfile

from .. import cpu
from ..errors import ArgumentError, BareMetalError
from . import register

register(".app", __name__, "a flat binary built for BareMetal, run on --cpu (kvm or emu)")
register(".bin", __name__, "upstream's Monitor build (ORG 0x1E0000), run where the kernel loads it, on --cpu")
register(".asm", __name__, "a NASM source of a flat binary, assembled with nasm -f bin, run on --cpu")

APP_PHYSICAL = 0x200000
APP_VIRTUAL = cpu.APP_VIRTUAL
MONITOR_AREA = (0x1E0000, 0x200000)   # where the kernel loads its Monitor (ORG 0x1E0000)
HEAP_MARGIN = 2 << 20
MAX_MEMORY = 16 << 30                 # binaries run on machines of at most 16 GiB (native/guest.c)
READ_CHUNK = 16 << 20
# freestanding, no red zone (calls through the call table push below RSP), any address
FLAT_CFLAGS = ["-ffreestanding", "-fno-pic", "-mcmodel=large", "-mno-red-zone", "-fno-stack-protector",
               "-fno-asynchronous-unwind-tables", "-falign-functions=16", "-Wall", "-Wextra"]


class BuildError(BareMetalError):
    """Compiling or linking a flat binary failed (the compiler's messages were printed)."""


def build(sources, output, optimize="-O2", extra_flags=()):
    """Compile C ``sources`` into a flat binary ``output`` for the real kernel (and for
    ``baremetal run``): crt0 + the call-table libBareMetal + the app, linked at
    0xFFFF800000000000 by native/flat/app.ld.  With -g among ``extra_flags``, also NAME.elf:
    the same link as an ELF file with symbols, for gdb (``--gdb``).  Raises BuildError when
    gcc or ld fails."""
    for source in sources:
        if not os.path.exists(source):
            raise ArgumentError(f"{source}: no such file")
    from . import native_data
    from .c import include_dir
    flat = native_data("flat", "flat")
    with tempfile.TemporaryDirectory(prefix="baremetal-flat-") as work:
        objects = []
        inputs = [os.path.join(flat, "crt0.c"), os.path.join(flat, "libBareMetal.c"), *sources]
        for i, source in enumerate(inputs):
            obj = os.path.join(work, f"{i}.o")
            command = ["gcc", optimize, *FLAT_CFLAGS, *extra_flags, "-I", include_dir(), "-c", source, "-o", obj]
            if subprocess.run(command).returncode != 0:
                raise BuildError(f"compiling {source} failed")
            objects.append(obj)
        command = ["ld", "-nostdlib", "-T", os.path.join(flat, "app.ld"), "-o", output, *objects]
        if subprocess.run(command).returncode != 0:
            raise BuildError(f"linking {output} failed")
        if "-g" in extra_flags:            # symbols for gdb (--gdb): the same link as an ELF file
            symbols = os.path.splitext(output)[0] + ".elf"
            if subprocess.run(command[:-len(objects) - 2] + ["--oformat", "elf64-x86-64", "--no-warn-rwx-segments", "-o", symbols,
                                                             *objects]).returncode != 0:
                raise BuildError(f"linking {symbols} failed")
    return output


def assemble(source, output):
    """Assemble the NASM ``source`` into the flat binary ``output`` (``nasm -f bin``, what
    upstream uses for its apps).  Raises BuildError when nasm is missing or fails (nasm's
    messages were printed)."""
    if not os.path.exists(source):
        raise ArgumentError(f"{source}: no such file")
    if shutil.which("nasm") is None:
        raise BuildError(f"{source}: nasm is not installed (apt-get install nasm; `make` does it)")
    if subprocess.run(["nasm", "-f", "bin", source, "-o", output]).returncode != 0:
        raise BuildError(f"assembling {source} failed")
    return output


def check_load_at(load_at, size):
    """``load_at`` (None: the app address) as the entry address for an image of ``size``
    bytes; ArgumentError unless it is the app address or inside the Monitor's area
    0x1E0000..0x1FFFFF (the image ending below 0x200000)."""
    if load_at is None or load_at == APP_VIRTUAL:
        return None
    low, high = MONITOR_AREA
    if not low <= load_at < high:
        raise ArgumentError(f"--load-at 0x{load_at:X}: a binary runs at 0x{APP_VIRTUAL:X} (apps) or "
                            f"in 0x{low:X}..0x{high - 1:X} (the Monitor's place in the kernel's area)")
    if load_at + size > high:
        raise ArgumentError(f"--load-at 0x{load_at:X}: the image ({size} bytes) does not fit below 0x{high:X}")
    return load_at


def execute(machine, image, backend=None, load_at=None):
    """Load ``image`` at 0x200000 (or at physical ``load_at`` in the Monitor's area, see
    check_load_at: the app memory at 0x200000 stays reserved for the programs it loads), run it
    on core 0 (the calling thread) with the CPU ``backend`` (a pybaremetal.cpu module; default:
    the machine's ``cpu`` choice) and give its memory back.  Returns the app's RAX; raises
    Shutdown/Reboot for those calls, AppCrashed if it faults or no backend can run it,
    ArgumentError if it does not fit."""
    from .._native import lib
    from ..errors import raise_recorded
    if backend is None:
        backend, _ = cpu.choose(getattr(machine, "cpu", None))
    entry = check_load_at(load_at, len(image))
    if entry is not None:
        return _execute_at(machine, image, backend, entry)
    size = len(image) + HEAP_MARGIN
    if APP_PHYSICAL + size > machine.memory_size:
        raise ArgumentError(f"the app ({len(image)} bytes) does not fit in {machine.memory_size >> 20} MiB")
    if lib.bm_mem_reserve(machine._c, APP_PHYSICAL, size) == 0:
        raise_recorded()
    try:
        machine.memory[APP_PHYSICAL:APP_PHYSICAL + len(image)] = memoryview(image)
        return cpu.run(machine, backend)
    finally:
        machine.free(machine.addr(APP_PHYSICAL))


def _execute_at(machine, image, backend, entry):
    """execute() for an image entered at ``entry`` in the Monitor's area (identity-mapped)."""
    from .._native import lib
    from ..errors import raise_recorded
    if APP_PHYSICAL + HEAP_MARGIN > machine.memory_size:
        raise ArgumentError(f"the Monitor needs more than {machine.memory_size >> 20} MiB")
    if lib.bm_mem_reserve(machine._c, APP_PHYSICAL, HEAP_MARGIN) == 0:
        raise_recorded()
    before = bytes(machine.memory[entry:entry + len(image)])
    try:
        machine.memory[entry:entry + len(image)] = memoryview(image)
        return cpu.run(machine, backend, entry)
    finally:
        machine.memory[entry:entry + len(image)] = memoryview(before)
        machine.free(machine.addr(APP_PHYSICAL))


def exit_status(returned, policy="zero"):
    """The exit status of a run that returned ``returned`` (run()'s value; None after SHUTDOWN):
    policy "zero": 0; "rax": the low byte of RAX."""
    if policy not in ("zero", "rax"):
        raise ArgumentError(f"exit status policy {policy!r}: expected 'zero' or 'rax'")
    return (returned or 0) & 0xFF if policy == "rax" else 0


def read_image(path, limit):
    """The bytes of the binary at ``path``, at most ``limit`` of them; ArgumentError if it
    cannot be one: not a regular file (a directory, a FIFO or a device would block or never
    end), unreadable, empty, or larger than ``limit`` (found before reading it)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise ArgumentError(f"{path}: cannot read it: {e.strerror}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise ArgumentError(f"{path}: not a regular file, not a flat binary")
    with os.fdopen(fd, "rb") as f:
        if info.st_size > limit:
            raise ArgumentError(f"{path}: the app ({info.st_size} bytes) does not fit in {limit >> 20} MiB")
        chunks, total = [], 0
        try:
            while total <= limit:                # in pieces: never a buffer of `limit` bytes
                chunk = f.read(min(READ_CHUNK, limit + 1 - total))
                if not chunk:
                    break
                chunks.append(chunk)
                total += len(chunk)
        except OSError as e:
            raise ArgumentError(f"{path}: cannot read it: {e.strerror}") from None
        image = b"".join(chunks)
    if not image:
        raise ArgumentError(f"{path}: empty file, not a flat binary")
    if len(image) > limit:
        raise ArgumentError(f"{path}: the app does not fit in {limit >> 20} MiB")
    return image


def run(machine, path, argv, load_at=None):
    """Run the binary at ``path`` (.app or .bin, or .asm assembled first) on ``machine``,
    loaded at ``load_at`` (see check_load_at; None: a .bin at 0x1E0000, where the kernel
    loads its Monitor, the only .bin it loads; anything else at the app address); returns its
    exit code (RAX & 0xFF)."""
    if machine.memory_size > MAX_MEMORY:
        raise ArgumentError(f"binaries run on machines of at most 16 GiB, not {machine.memory_size >> 20} MiB")
    if path.lower().endswith(".asm"):
        with tempfile.TemporaryDirectory(prefix="baremetal-asm-") as work:
            image = read_image(assemble(path, os.path.join(work, "app.app")), machine.memory_size)
    else:
        image = read_image(path, machine.memory_size)
    backend, _ = cpu.choose(getattr(machine, "cpu", None))
    if load_at is None and path.lower().endswith(".bin"):
        load_at = MONITOR_AREA[0]
    check_load_at(load_at, len(image))
    return machine.run(lambda: execute(machine, image, backend, load_at) & 0xFF)

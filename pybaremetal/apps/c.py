"""C apps: sources that ``#include "libBareMetal.h"``, built as shared objects, run on core 0.

Building.  ``build()`` runs gcc as upstream builds apps (16-byte function alignment, so any
function can be handed to SMP_SET) plus -shared -fPIC, warnings on, libm and pthreads linked.
C++ sources (.cpp, .cc, .cxx) are built and linked with g++ ($CXX), so libstdc++ comes along.
The app's own functions and data bind first, as in the executable upstream links: with
-fno-semantic-interposition and -Wl,-Bsymbolic an app that defines rand() (raytrace) calls its
own rand, not libc's, and calls between its functions are direct.  The include path holds
libBareMetal.h, and a directory below it, so that ``#include "../libBareMetal.h"`` from an app
in a subdirectory (upstream's tree: src/libBareMetal.h, src/NAME/NAME.c) finds it too.
gcc's messages go straight to the terminal; a failure raises :class:`CompileError`.
``cached_build()`` (what ``baremetal run app.c`` uses) keeps built objects under the cache
directory, keyed by a hash of the sources, the flags, libBareMetal.h and the compiler; the
local headers gcc reports (-MMD) are hashed too and checked on every hit.  The cache is made
0700, and a cache directory or entry that belongs to another user or that group or others may
write is refused (UntrustedCache), as ssh refuses such a ~/.ssh: the key is predictable, so
anyone who can write there could plant a shared object the caller would load.

How an app's calls reach the runtime (one implementation per call).  The runtime's C core is
the cffi extension ``pybaremetal._native``.  Python loads extensions RTLD_LOCAL, so their
symbols are invisible to libraries loaded later.  An app is linked with b_output, b_system etc.
left undefined; before the first app is loaded, :func:`_export_runtime` re-opens the extension
with RTLD_NOLOAD | RTLD_GLOBAL: the same, already loaded file (nothing is loaded twice) is
promoted to the global scope.  The app is then opened RTLD_NOW | RTLD_LOCAL, so the dynamic
linker binds its b_* calls to the extension's own functions at load time (a call to a symbol
that exists nowhere fails the load, with the linker's message), and the app's own symbols
(its main, its globals) stay private to it.  Chosen over a separate libbaremetal.so that both
the extension and apps link to because it keeps one file and one copy of each function in the
process with no install-path or rpath bookkeeping; and over DT_NEEDED on the extension because
the extension's file name depends on the Python version and the install.

Running.  ``main`` is called through the C core's bm_capp_run_main (native/capps.c) on the calling
thread, bound as core 0, with the GIL released: SHUTDOWN and REBOOT unwind back to it (REBOOT
closes the app and opens it again, so its globals start fresh, as a reboot reloads an app), and
so does exit(status) (apps are linked with --wrap=exit), which ends the run like a return.
``int main(void)`` and ``int main(int argc, char **argv)`` both work (argv[0] is the app's path).

Crashes.  main runs under the cores' fault recovery (native/capps.c, fault.c): a fault in main
or in a task on another core is reported on stderr when it happens ("core N: SIGSEGV at
address 0x..."); a task's core goes back to idle, as upstream's exception handler leaves it.
Either way the run then ends with :class:`AppCrashed` (at once for main, when main returns for
a task): the machine is halted the ordinary way (drives flushed, terminal restored) and
`baremetal run` exits with 128 + the signal number.

stdout.  printf and b_output share fd 1 when the console is stdout: C stdio is flushed before
each b_output (bm_console_set_flush_stdio) and after main returns, so lines come out in the
order the app wrote them.  printf always writes to the process's stdout; b_output goes to the
machine's console (which may be a file or a capture).

The low window.  Upstream apps read the InfoMap and the kernel's variables by absolute address
(0x5012, 0x5100, 0x110104, ...).  Before main runs, the machine claims the process's low
window (native/lowmap.c): its system area appears at its own physical addresses 0x1000..
0x1FFFFF.  One machine per process owns it: the first machine that runs a C app, until that
machine halts.  When the window cannot be had (vm.mmap_min_addr above 0x1000, or another
machine owns it), one line on stderr says what will not work and how to enable it.
"""
import ctypes
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile

from .. import _native
from .._native import ffi, lib
from ..errors import AppCrashed, ArgumentError, BareMetalError, recorded_error  # noqa: F401
from . import finish, register

register(".c", __name__, "a C source including libBareMetal.h, built and cached")
register(".so", __name__, "a C app built with `baremetal cc`")
for _suffix in (".cpp", ".cc", ".cxx"):
    register(_suffix, __name__, "a C++ source including libBareMetal.h, built with g++ and cached")

DEFAULT_SCREEN = "1024x768"              # C apps get a screen unless --screen none
WARNINGS = ("-Wall", "-Wextra")
# as upstream builds apps (16-byte aligned functions), as a shared object of the hosted runtime;
# exit() goes to the runtime's __wrap_exit (native/capps.c): it ends the run, not the process
BASE_FLAGS = ("-shared", "-fPIC", "-falign-functions=16", "-pthread", "-g", "-Wl,--wrap=exit",
              "-fno-semantic-interposition", "-Wl,-Bsymbolic")      # the app's own symbols first
CXX_SUFFIXES = (".cpp", ".cc", ".cxx", ".c++", ".C")
SOURCE_SUFFIXES = (".c",) + CXX_SUFFIXES
UPPER_HALF = 0xFFFF800000000000          # where flat binaries live; no process can map it
LIBS = ("-lm",)


class CompileError(BareMetalError):
    """gcc failed (its messages were printed as gcc printed them)."""


class UntrustedCache(BareMetalError):
    """The build cache, or an entry in it, belongs to another user or may be written by
    group or others: a planted shared object would run as the caller, so it is not used."""


# --- building -----------------------------------------------------------------------------

def include_dir():
    """The directory holding libBareMetal.h: the source checkout's native/, else the installed
    package's include/."""
    from . import native_data
    return native_data("include", "")


def is_cxx(sources):
    """True if any of ``sources`` is C++."""
    return any(os.fspath(s).endswith(CXX_SUFFIXES) for s in sources)


def compiler(cxx=False):
    """The compiler driver: $CC or gcc; for C++ $CXX or g++."""
    name = os.environ.get("CXX", "g++") if cxx else os.environ.get("CC", "gcc")
    path = shutil.which(name)
    if path is None:
        what, package, var = ("C++", "g++", "CXX") if cxx else ("C", "gcc", "CC")
        raise CompileError(f"no {what} compiler: '{name}' is not on PATH (install {package}, or set {var})")
    return path


def include_flags():
    """-I for libBareMetal.h's directory, and for a directory below it, so that
    ``../libBareMetal.h`` resolves there too (native/flat in a checkout; include/src, which
    setup.py installs, in a package)."""
    top = include_dir()
    below = sorted(e.path for e in os.scandir(top) if e.is_dir() and not e.name.startswith(("_", ".")))
    return ["-I", top] + (["-I", below[0]] if below else [])


def gcc_command(sources, output, optimize="2", extra=()):
    """The gcc (g++ for C++) command line that builds ``sources`` into the app ``output``."""
    return [compiler(is_cxx(sources)), *BASE_FLAGS, f"-O{optimize}", *WARNINGS, *include_flags(),
            *extra, "-o", output, *sources, *LIBS]


def _check_sources(sources):
    if not sources:
        raise ArgumentError("no C sources given")
    for source in sources:
        if not os.path.isfile(source):
            raise ArgumentError(f"{source}: no such file")


def build(sources, output, optimize="2", extra=(), depfile=None):
    """Compile and link ``sources`` into the shared object ``output``.

    gcc's messages go to stderr as gcc prints them.  Raises CompileError when it fails."""
    _check_sources(sources)
    command = gcc_command(sources, output, optimize, extra)
    if depfile is not None:
        command[1:1] = ["-MMD", "-MF", depfile]
    if subprocess.run(command).returncode != 0:
        raise CompileError(f"compiling {' '.join(sources)} failed (gcc's messages are above)")
    return output


def cache_dir():
    """Where ``baremetal run app.c`` keeps built apps: $BAREMETAL_CACHE, else
    $XDG_CACHE_HOME/pybaremetal/capps, else ~/.cache/pybaremetal/capps."""
    if os.environ.get("BAREMETAL_CACHE"):
        return os.environ["BAREMETAL_CACHE"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "pybaremetal", "capps")


def _check_trusted(path):
    """UntrustedCache unless ``path`` (a cache directory or a file in it) belongs to the
    calling user, is no symbolic link, and cannot be written by group or others (what ssh
    asks of ~/.ssh).  A missing path is fine: it is made when needed."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    fix = "remove it, or set BAREMETAL_CACHE to a directory of your own"
    if stat.S_ISLNK(st.st_mode):
        raise UntrustedCache(f"the C-app build cache {path} is a symbolic link, not trusted; {fix}")
    if st.st_uid != os.geteuid():
        raise UntrustedCache(f"the C-app build cache {path} belongs to uid {st.st_uid}, not you "
                             f"(uid {os.geteuid()}), not trusted; {fix}")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UntrustedCache(f"the C-app build cache {path} may be written by group or others "
                             f"(mode {stat.S_IMODE(st.st_mode):04o}), not trusted; {fix} "
                             f"(or chmod go-w {path})")


def _trusted_entry(directory):
    """Check the cache, the entry ``directory`` and the files it holds (UntrustedCache)."""
    _check_trusted(os.path.dirname(directory))
    _check_trusted(directory)
    if os.path.isdir(directory) and not os.path.islink(directory):
        for name in os.listdir(directory):
            _check_trusted(os.path.join(directory, name))


def _digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _compiler_identity(path):
    version = subprocess.run([path, "-dumpfullversion", "-dumpversion"], capture_output=True, text=True)
    return f"{path} {version.stdout.strip()}"


def cache_key(sources, optimize="2", extra=()):
    """The hash naming a build: sources (names and contents), flags, libBareMetal.h, compiler."""
    h = hashlib.sha256()
    for part in (_compiler_identity(compiler(is_cxx(sources))), *BASE_FLAGS, optimize, *WARNINGS, *extra, *LIBS,
                 _digest(os.path.join(include_dir(), "libBareMetal.h"))):
        h.update(part.encode() + b"\0")
    for source in sources:
        h.update(os.path.abspath(source).encode() + b"\0" + _digest(source).encode() + b"\0")
    return h.hexdigest()[:32]


def _dependencies(depfile, sources):
    """Files gcc read besides the sources (local headers), from its -MMD output."""
    with open(depfile) as f:
        text = f.read().replace("\\\n", " ")
    names = text.split(":", 1)[1].split() if ":" in text else []
    skip = {os.path.abspath(s) for s in sources} | {os.path.join(include_dir(), "libBareMetal.h")}
    return sorted({os.path.abspath(n) for n in names} - skip)


def _cache_hit(directory):
    """True if the build in ``directory`` is complete and every header it read is unchanged."""
    try:
        with open(os.path.join(directory, "deps.json")) as f:
            deps = json.load(f)
        return os.path.isfile(os.path.join(directory, "app.so")) and all(
            os.path.isfile(path) and _digest(path) == digest for path, digest in deps.items())
    except (OSError, ValueError):
        return False


def cached_build(sources, optimize="2", extra=()):
    """The built app for ``sources``: from the cache when nothing changed, else built now.
    Returns the path of the shared object.  Raises CompileError."""
    _check_sources(sources)
    directory = os.path.join(cache_dir(), cache_key(sources, optimize, extra))
    _trusted_entry(directory)
    if _cache_hit(directory):
        return os.path.join(directory, "app.so")
    os.makedirs(cache_dir(), mode=0o700, exist_ok=True)
    _check_trusted(cache_dir())
    work = tempfile.mkdtemp(prefix=".build-", dir=cache_dir())
    try:
        build(sources, os.path.join(work, "app.so"), optimize, extra, depfile=os.path.join(work, "app.d"))
        deps = {path: _digest(path) for path in _dependencies(os.path.join(work, "app.d"), sources)}
        with open(os.path.join(work, "deps.json"), "w") as f:
            json.dump(deps, f)
        shutil.rmtree(directory, ignore_errors=True)     # a stale build (a header changed)
        try:
            os.rename(work, directory)
        except OSError:                                  # another process finished first
            if not _cache_hit(directory):
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return os.path.join(directory, "app.so")


# --- loading and running ------------------------------------------------------------------

_runtime_exported = False


def _export_runtime():
    """Promote the already loaded C core to the global symbol scope (see the module notes)."""
    global _runtime_exported
    if not _runtime_exported:
        ctypes.CDLL(_native.__file__, mode=os.RTLD_NOW | os.RTLD_GLOBAL | os.RTLD_NOLOAD)
        _runtime_exported = True


class App:
    """A loaded C app: ``main`` is its main as a cffi function pointer."""

    def __init__(self, path):
        _export_runtime()
        try:
            self._dll = ctypes.CDLL(os.path.abspath(path), mode=os.RTLD_NOW | os.RTLD_LOCAL)
        except OSError as error:
            raise ArgumentError(f"cannot load the app: {error}") from None
        try:
            address = ctypes.cast(self._dll.main, ctypes.c_void_p).value
        except AttributeError:
            self.close()
            raise ArgumentError(f"{path}: the app has no main()") from None
        self.main = ffi.cast("int (*)(int, char **)", address)

    def close(self):
        """dlclose it (only once nothing runs its code: a reload then starts with fresh globals)."""
        if self._dll is not None:
            import _ctypes
            _ctypes.dlclose(self._dll._handle)
            self._dll = None


def _claim_low_window(machine):
    """Map the machine's system area at its physical addresses; one line on stderr if not."""
    if not lib.bm_lowmap_claim(machine._c):
        _, reason = recorded_error()
        print(f"baremetal: note: no low window: {reason}", file=sys.stderr)


_libc = ctypes.CDLL(None)


def _flush_c_stdio():
    _libc.fflush(None)


def run(machine, path, argv):
    """Run the C app at ``path`` (.c: built through the cache; .so: as is) on ``machine``.

    argv[0] is ``path``; returns main's return value (None after SHUTDOWN).  REBOOT reloads
    the app and runs main again."""
    app_path = cached_build([path]) if path.endswith(SOURCE_SUFFIXES) else path
    args = [ffi.new("char[]", os.fsencode(a)) for a in [path, *argv]]
    c_argv = ffi.new("char *[]", args + [ffi.NULL])
    outcome = ffi.new("struct bm_outcome *")
    loaded = []

    def once():
        while loaded:                      # after a reboot: cores are stopped, reload the app
            loaded.pop().close()
        loaded.append(App(app_path))
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            lib.bm_capp_run_main(machine._c, loaded[-1].main, len(args), c_argv, outcome)
        finally:
            _flush_c_stdio()
        try:
            return finish(outcome)
        except AppCrashed as crash:
            raise _upper_half_hint(crash, path) from None

    _claim_low_window(machine)             # before boot: boot writes the system area into it
    machine.boot()
    lib.bm_console_set_flush_stdio(machine._c, 1)
    return machine.run(once)


def _upper_half_hint(crash, path):
    """``crash``, saying in the same line what to do when a C source touched BareMetal's
    upper-half app addresses (0xFFFF800000000000 and up), which no process can map."""
    outcome = crash.outcome
    if (outcome is None or outcome.how != lib.BM_END_SIGNAL or outcome.address < UPPER_HALF
            or not path.endswith(SOURCE_SUFFIXES)):
        return crash
    return AppCrashed(f"{crash}; it uses BareMetal's upper-half app addresses, which a process "
                      f"cannot have: run it as a flat binary with `baremetal run {path} --flat`",
                      crash.exit_status, outcome)


def run_flat(machine, path, argv, exit_status=None):
    """`baremetal run app.c --flat`: build the C source as a flat binary for the real kernel
    (:func:`pybaremetal.apps.binary.build`) and run that on the machine's CPU backend, as an
    app that needs BareMetal's own addresses (0xFFFF800000000000 and up) must run.  The exit
    status is main's return value (its crt0 returns it in RAX), unless ``exit_status`` is
    "zero"."""
    from . import binary
    if not path.endswith(".c"):
        raise ArgumentError(f"{path}: --flat builds C sources (.c) as flat binaries")
    with tempfile.TemporaryDirectory(prefix="baremetal-flat-") as work:
        image = os.path.join(work, os.path.splitext(os.path.basename(path))[0] + ".app")
        binary.build([path], image)
        return binary.exit_status(binary.run(machine, image, argv), exit_status or "rax")

"""The emulated CPU backend: native/cpu_emu.c drives unicorn 2 through its C API.  This module
only finds the engine's library in the ``unicorn`` package and hands its path to C (loaded once
per process); no Python runs per instruction or per call."""
import glob
import os

from .._native import lib
from ..errors import recorded_error

NAME = "emu"
_loaded = None                             # (ok, why) once tried


def library_path():
    """The path of libunicorn.so.2 inside the installed unicorn package, or None."""
    try:
        import unicorn
    except ImportError:
        return None
    found = sorted(glob.glob(os.path.join(os.path.dirname(unicorn.__file__), "lib", "libunicorn.so*")))
    return found[0] if found else None


def status():
    """(True, why) once unicorn 2's library is loaded into the C core, else (False, why not)."""
    global _loaded
    if _loaded is None:
        path = library_path()
        if path is None:
            _loaded = (False, "the emulated CPU needs the unicorn package (pip install 'unicorn>=2')")
        elif lib.bm_emu_load(path.encode()) != 0:
            _loaded = (False, recorded_error()[1])
        else:
            import unicorn
            _loaded = (True, f"unicorn {unicorn.__version__} emulates the CPU")
    return _loaded


def available():
    """True if this backend can run binaries here (status() says why or why not)."""
    return status()[0]


def ops():
    return lib.bm_cpu_emu_ops()

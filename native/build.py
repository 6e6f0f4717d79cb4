"""The cffi builder for pybaremetal's C core (API mode).

setup.py runs it (``cffi_modules``).  It compiles every ``native/*.c`` into the extension
``pybaremetal._native``, includes every ``native/*.h`` in the generated module, and declares
to Python what the ``native/*.cdef`` files list (``machine.cdef`` first, then the others in name
order): adding a subsystem is adding its ``.c``, ``.h`` and ``.cdef`` files, nothing here.
"""
import os
import pathlib

import cffi

NATIVE = pathlib.Path(__file__).resolve().parent
ROOT = NATIVE.parent


def cdef_text():
    """The declarations Python sees: machine.cdef, then every other .cdef file."""
    files = sorted(NATIVE.glob("*.cdef"), key=lambda p: (p.name != "machine.cdef", p.name))
    return "\n".join(p.read_text() for p in files)


def headers():
    """#include lines for every header of the core, so each cdef'd function is declared."""
    return "".join(f'#include "{p.name}"\n' for p in sorted(NATIVE.glob("*.h")))


def sources():
    """Every C file of the core, relative to the project root (as setuptools wants)."""
    return [os.path.relpath(p, ROOT) for p in sorted(NATIVE.glob("*.c"))]


ffibuilder = cffi.FFI()
ffibuilder.cdef(cdef_text())
ffibuilder.set_source(
    "pybaremetal._native",
    headers(),
    sources=sources(),
    include_dirs=[os.path.relpath(NATIVE, ROOT)],
    extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter",
                        "-pthread", "-falign-functions=16",
                        "-Werror=implicit-function-declaration"],
    extra_link_args=["-pthread"],
)

if __name__ == "__main__":
    os.chdir(ROOT)
    ffibuilder.compile(verbose=True)

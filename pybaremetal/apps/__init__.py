"""App loaders, one per kind of app.  :func:`loader_for` picks one by the file's name."""
import os

from ..errors import ArgumentError

# suffix -> module of this package that runs that kind of app
KINDS = {
    ".py": ("python", "a Python module with a main() function"),
    ".app": ("binary", "a flat binary built for BareMetal, run under KVM"),
    ".asm": ("binary", "a NASM source of a flat binary, assembled with nasm -f bin, run under KVM"),
    ".c": ("c", "a C source including libBareMetal.h, built and cached"),
    ".cpp": ("c", "a C++ source including libBareMetal.h, built with g++ and cached"),
    ".cc": ("c", "a C++ source including libBareMetal.h, built with g++ and cached"),
    ".cxx": ("c", "a C++ source including libBareMetal.h, built with g++ and cached"),
    ".so": ("c", "a C app built with `baremetal cc`"),
}


def loader_for(path):
    """The loader module for the app at ``path``; ArgumentError naming the supported kinds."""
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in KINDS:
        known = ", ".join(f"{s} ({desc})" for s, (_, desc) in KINDS.items())
        raise ArgumentError(f"{path}: unknown kind of app '{suffix or '(no suffix)'}'; supported: {known}")
    if not os.path.exists(path):
        raise ArgumentError(f"{path}: no such file")
    import importlib
    return importlib.import_module(f".{KINDS[suffix][0]}", __name__)

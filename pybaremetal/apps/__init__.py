"""App loaders, one per kind of app.  :func:`loader_for` picks one by the file's name."""
import importlib.resources
import os

from ..errors import ArgumentError, BareMetalError

# suffix -> module of this package that runs that kind of app
KINDS = {
    ".py": ("python", "a Python module with a main() function"),
    ".app": ("binary", "a flat binary built for BareMetal, run under KVM"),
    ".asm": ("binary", "a NASM source of a flat binary, assembled with nasm -f bin, run under KVM"),
    ".c": ("c", "a C source including libBareMetal.h, built and cached"),
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


def native_data(installed, in_checkout):
    """The directory of native files app builds need (libBareMetal.h, the flat-binary crt0 and
    linker script): in a source checkout, its native/``in_checkout`` (so edits there count);
    in an installed package, the package data pybaremetal/``installed`` (importlib.resources;
    setup.py copies them there)."""
    package = importlib.resources.files("pybaremetal")
    checkout = os.path.dirname(os.fspath(package))
    if os.path.isfile(os.path.join(checkout, "native", "build.py")):
        return os.path.normpath(os.path.join(checkout, "native", in_checkout))
    directory = package / installed
    if not directory.is_dir():
        raise BareMetalError(f"pybaremetal's {installed}/ files are not installed with it "
                             f"({os.fspath(package)}); reinstall the package")
    return os.fspath(directory)

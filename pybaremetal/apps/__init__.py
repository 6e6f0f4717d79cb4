"""App kinds: one module of this package per kind of app, each registering itself.

The contract of an app kind (``python``, ``c``, ``binary``; a new kind is one new module here):

- At import, the module calls :func:`register` once per file suffix it runs, with a one-line
  description: the CLI's help and its "unknown kind" error are built from these.
- It provides ``run(machine, path, argv)``: run the app at ``path`` on ``machine`` (not yet
  booted; ``run`` boots it, through ``machine.run``, with the calling thread as core 0), its
  arguments ``argv`` (a list of str, without the app's name).  It returns what the app's main
  returned (an int is the exit code, None means 0) after main returned or called SHUTDOWN;
  REBOOT restarts the app inside ``machine.run``.  It raises a BareMetalError subclass for bad
  input (missing file, build failure) and :class:`~pybaremetal.errors.AppCrashed` for a crash.
  The caller halts the machine.
- Every run ends in one struct bm_outcome (native/machine.h): C fills it for a C main and a flat
  binary, :func:`python_main` for a Python main.  The kind hands it to :func:`finish`, the one
  function that turns an outcome into a return value, Shutdown/Reboot, an exit or an
  AppCrashed.
- It may set ``DEFAULT_SCREEN`` ("WxH"): the screen its apps get when --screen is not given.
"""
import importlib
import importlib.resources
import os
import pkgutil
from collections import namedtuple

from .._native import ffi, lib
from ..errors import AppCrashed, ArgumentError, BareMetalError, Reboot, Shutdown

Kind = namedtuple("Kind", "suffix module description")
_KINDS = {}                              # suffix -> Kind


def register(suffix, module, description):
    """Make ``module`` (its __name__) the runner of files ending in ``suffix``."""
    _KINDS[suffix.lower()] = Kind(suffix.lower(), module, description)


def kinds():
    """Every registered kind, in module name then registration order (imports every kind)."""
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f".{info.name}", __name__)
    return list(_KINDS.values())


def describe():
    """"SUFFIX (description), ..." of every kind, for help and error texts."""
    return ", ".join(f"{k.suffix} ({k.description})" for k in kinds())


def loader_for(path):
    """The module that runs the app at ``path``; ArgumentError naming the supported kinds."""
    suffix = os.path.splitext(path)[1].lower()
    known = {k.suffix: k for k in kinds()}
    if suffix not in known:
        raise ArgumentError(f"{path}: unknown kind of app '{suffix or '(no suffix)'}'; "
                            f"supported: {describe()}")
    if not os.path.exists(path):
        raise ArgumentError(f"{path}: no such file")
    if os.path.isdir(path):
        raise ArgumentError(f"{path}: a directory, not an app")
    return importlib.import_module(known[suffix].module)


# --- the run's outcome ---------------------------------------------------------------------

def _signal_name(number):
    from ..smp import signal_name
    return signal_name(number)


def finish(outcome):
    """Turn a run's struct bm_outcome into its result: the value main returned (a signed int),
    or Shutdown / Reboot raised, SystemExit(128 + signal) for a run a host signal ended, or
    AppCrashed saying where the app crashed."""
    how = outcome.how
    if how == lib.BM_END_RETURNED:
        return int(ffi.cast("int64_t", outcome.value))
    if how == lib.BM_END_SHUTDOWN:
        raise Shutdown()
    if how == lib.BM_END_REBOOT:
        raise Reboot()
    if how == lib.BM_END_TERMINATED:
        raise SystemExit(128 + outcome.signal)
    message = ffi.string(outcome.message).decode(errors="replace")
    if how == lib.BM_END_SIGNAL:
        where = "in main" if outcome.code == 0 else "in a task"
        at = f" at address 0x{outcome.address:x}" if outcome.address else ""
        raise AppCrashed(f"the app crashed {where} on core {outcome.core}: "
                         f"{_signal_name(outcome.signal)}{at}; machine halted, drives flushed",
                         128 + outcome.signal, outcome)
    raise AppCrashed(message or "the app crashed", 1, outcome)


def python_main(main):
    """Run a Python app's ``main()`` and end as every app does: its end recorded in a struct
    bm_outcome (returned, SHUTDOWN, REBOOT), then :func:`finish`.  A main returning something
    other than an int or None gets it back as is (sys.exit's rules: the CLI prints it)."""
    outcome = ffi.new("struct bm_outcome *")
    try:
        value = main()
    except Shutdown:
        lib.bm_outcome_set(outcome, lib.BM_END_SHUTDOWN, 0, ffi.NULL)
    except Reboot:
        lib.bm_outcome_set(outcome, lib.BM_END_REBOOT, 0, ffi.NULL)
    else:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            return value
        lib.bm_outcome_set(outcome, lib.BM_END_RETURNED, 0, ffi.NULL)
        outcome.value = (value or 0) & ((1 << 64) - 1)
    return finish(outcome)


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

"""How flat binaries execute: one module per CPU backend, each a thin face over one C file
(native/cpu_<name>.c, a ``struct bm_cpu_ops`` for native/guest.c, the binary ABI front end).

- ``kvm``: hardware virtualization (/dev/kvm); native speed where KVM runs ring 0 in hardware.
- ``emu``: an emulated x86-64 CPU (unicorn 2); runs everywhere, with or without /dev/kvm.

``auto`` picks kvm only where it runs ring 0 natively (the CPU shows VMX or SVM), else emu.
Under PVM (KVM inside a guest without VMX/SVM) KVM emulates every ring-0 instruction in
software, about 1.6 us each, and fails on SSE and x87: emu is far faster there.

Adding a backend: native/cpu_<name>.c (+ .h, .cdef) and a module here with ``NAME``,
``status()`` -> (bool, why), ``available()`` and ``ops()``; list it in BACKENDS.
The environment variable BAREMETAL_CPU gives the choice when none is made (Machine(cpu=None),
no --cpu).
"""
import os

from .._native import ffi, lib
from ..errors import AppCrashed, ArgumentError
from . import emu, kvm

BACKENDS = {"kvm": kvm, "emu": emu}
CHOICES = ("auto", *BACKENDS)
APP_VIRTUAL = 0xFFFF800000000000          # where apps are entered (native/guest.h BM_APP_VIRTUAL)


def choose(name=None):
    """The backend module for ``name`` ('auto', 'kvm', 'emu'; None: $BAREMETAL_CPU, else
    'auto') and a sentence saying why.  Raises ArgumentError for an unknown name, AppCrashed
    when the backend cannot run here."""
    if name is None:
        name = os.environ.get("BAREMETAL_CPU") or "auto"
    if name not in CHOICES:
        raise ArgumentError(f"unknown CPU backend {name!r} (choose from {', '.join(CHOICES)})")
    if name != "auto":
        ok, why = BACKENDS[name].status()
        if not ok:
            raise AppCrashed(f"--cpu {name}: {why}")
        return BACKENDS[name], f"{name} (asked for): {why}"
    kvm_ok, kvm_why = kvm.status()
    if kvm_ok and kvm.native_ring0():
        return kvm, f"kvm (auto): {kvm_why}; the CPU has VMX/SVM, so ring 0 runs in hardware"
    emu_ok, emu_why = emu.status()
    if emu_ok:
        reason = ("/dev/kvm is here but the CPU shows no VMX/SVM (PVM or similar: ring 0 would be "
                  "emulated by KVM, slowly and without SSE)" if kvm_ok else kvm_why)
        return emu, f"emu (auto): {reason}; {emu_why}"
    if kvm_ok:
        return kvm, f"kvm (auto): {kvm_why}; the emulated CPU is missing ({emu_why})"
    raise AppCrashed(f"no CPU backend can run flat binaries here: {kvm_why}; {emu_why}")


def run(machine, backend, entry=None):
    """Run the image loaded at 0xFFFF800000000000 (or at guest address ``entry``: upstream's
    Monitor at 0x1E0000) on core 0 (the calling thread) with the ``backend`` module; under gdb if the machine has ``gdb`` (a port), writing a core file on a
    fault if it has ``dumpcore`` (a directory).  Returns the app's RAX; raises Shutdown/Reboot for those calls and
    AppCrashed (saying where) when it faults."""
    from ..apps import finish
    outcome = ffi.new("struct bm_outcome *")
    port, core_dir = getattr(machine, "gdb", None), getattr(machine, "dumpcore", None)
    if port is None and core_dir is None and entry is None:
        lib.bm_guest_run_app(machine._c, backend.ops(), outcome)
        return finish(outcome) & ((1 << 64) - 1)
    from . import gdb                      # --gdb / --dumpcore (cpu/gdb.py, native/gdbstub.c)
    stub = gdb.wait_for_gdb(port) if port is not None else ffi.NULL
    core_path = ffi.new("char[256]")
    try:
        lib.bm_guest_run_entry(machine._c, backend.ops(), APP_VIRTUAL if entry is None else entry, stub,
                               core_dir.encode() if core_dir else ffi.NULL, core_path, outcome)
    finally:
        lib.bm_gdb_close(stub)
    try:
        return finish(outcome) & ((1 << 64) - 1)
    except AppCrashed as crash:
        if core_path[0] == b"\0":
            raise
        raise AppCrashed(f"{crash}; core file: {ffi.string(core_path).decode()}", crash.exit_status,
                         crash.outcome) from None

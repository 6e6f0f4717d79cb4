"""Flat binaries under KVM: the vCPU loop lives in native/cpu_kvm.c (no Python in the hot
path); this module checks availability and turns the outcome into Python terms."""
import os

from .._native import ffi, lib
from ..apps import finish
from ..errors import AppCrashed  # noqa: F401 (the one AppCrashed: a binary faulted or KVM refused)


def available():
    """True if /dev/kvm is there and usable."""
    return os.path.exists("/dev/kvm") and bool(lib.bm_kvm_available())


def run(machine, stack_top):
    """Run the image loaded at 0xFFFF800000000000 on core 0 (the calling thread).

    Returns the app's RAX when it returns; raises Shutdown/Reboot for those calls and
    AppCrashed (saying where) when it faults."""
    if not available():
        raise AppCrashed("flat binaries need KVM: /dev/kvm is missing or not usable here "
                         "(load the kvm module, or give this user access to /dev/kvm)")
    outcome = ffi.new("struct bm_outcome *")
    lib.bm_kvm_run_app(machine._c, stack_top, outcome)
    return finish(outcome) & ((1 << 64) - 1)

"""The KVM CPU backend: native/cpu_kvm.c (vCPUs over the machine's own memory)."""
import os

from .._native import lib

NAME = "kvm"


def status():
    """(True, why) if /dev/kvm is there and usable, else (False, why not)."""
    if not os.path.exists("/dev/kvm"):
        return False, "/dev/kvm is missing"
    if not lib.bm_kvm_available():
        return False, "/dev/kvm is not usable by this user (or not KVM API 12)"
    return True, "/dev/kvm is usable"


def native_ring0():
    """True if the CPU shows VMX or SVM, i.e. KVM runs a ring-0 guest in hardware (under PVM,
    a KVM without them, ring 0 is emulated instruction by instruction)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = line.split(":", 1)[1].split()
                    return "vmx" in flags or "svm" in flags
    except OSError:
        pass
    return False


def available():
    """True if this backend can run binaries here (status() says why or why not)."""
    return status()[0]


def ops():
    return lib.bm_cpu_kvm_ops()


from ..errors import AppCrashed  # noqa: E402,F401 (kvm.AppCrashed, as before the backends split)

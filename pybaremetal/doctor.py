"""`baremetal doctor`: what this host offers pybaremetal, what follows from it, and the fix for
each thing that is missing.

Every check reads the host as it is (files under /proc and /sys, the devices, the tools on
PATH, this process's capabilities); nothing is changed.  A check returns a :class:`Finding`:
``ok`` (True, False, or None for "works, with a limit"), a one-line ``detail`` and, when not
ok, the ``fix``.  :func:`report` runs them all; the command prints it and always exits 0.

Which CPU backend ``--cpu auto`` picks for flat binaries follows from the KVM finding:
``kvm`` only where KVM runs the guest's ring 0 in hardware (VMX or SVM), ``emu`` otherwise
(no /dev/kvm, or PVM, whose ring 0 is KVM's instruction emulator: slow, no SSE or x87).
"""
import collections
import importlib.util
import os
import shutil
import subprocess
import sys

from .errors import BareMetalError

Finding = collections.namedtuple("Finding", "name ok detail fix")

CAP_NET_ADMIN, CAP_NET_RAW, CAP_SYS_RAWIO = 12, 13, 17
LOW_WINDOW = 0x1000                      # C apps map the system area from here (native/lowmap.c)
AIO_EVENTS_WANTED = 1024                 # a handful of drives at queue depth 8, with room to spare


def _read(path, default=None):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return default


def cpu_flags(cpuinfo=None):
    """The CPU's feature flags (the first processor's "flags" line of /proc/cpuinfo)."""
    text = _read("/proc/cpuinfo", "") if cpuinfo is None else cpuinfo
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def capabilities():
    """This process's effective capabilities as a bit mask (/proc/self/status CapEff)."""
    for line in _read("/proc/self/status", "").splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def has_capability(bit, mask=None):
    return bool((capabilities() if mask is None else mask) >> bit & 1)


# --- KVM and the CPU backend ---------------------------------------------------------------

def kvm_kind(device_exists, usable, flags, modules, cmdline):
    """``(kind, auto, why)`` from the host facts: ``kind`` is "none", "no access",
    "hardware" (ring 0 in VMX/SVM) or "pvm" (ring 0 emulated); ``auto`` the CPU backend
    ``--cpu auto`` picks ("kvm" or "emu"); ``why`` says so in words."""
    if not device_exists:
        return "none", "emu", "no /dev/kvm"
    if not usable:
        return "no access", "emu", "/dev/kvm is there but this user cannot open it"
    pvm = "kvm_pvm" in modules or "nested_pvm=1" in cmdline.split()
    hardware = bool(flags & {"vmx", "svm"}) and bool(modules & {"kvm_intel", "kvm_amd"})
    if hardware and not pvm:
        which = "VMX" if "vmx" in flags else "SVM"
        return "hardware", "kvm", f"KVM runs ring 0 in hardware ({which})"
    signs = [s for s, present in (("kvm_pvm loaded", "kvm_pvm" in modules),
                                  ("nested_pvm=1", "nested_pvm=1" in cmdline.split()),
                                  ("no vmx/svm CPU flag", not flags & {"vmx", "svm"})) if present]
    return "pvm", "emu", (f"KVM is PVM or emulates ring 0 ({', '.join(signs)}): its instruction "
                          "emulator runs a ring-0 guest slowly and without SSE or x87")


def check_kvm():
    from .cpu import kvm
    exists = os.path.exists("/dev/kvm")
    usable = exists and kvm.available()
    modules = set(os.listdir("/sys/module")) if os.path.isdir("/sys/module") else set()
    kind, auto, why = kvm_kind(exists, usable, cpu_flags(), modules, _read("/proc/cmdline", ""))
    try:                                   # the runtime's own choice, where it can make one
        from .cpu import choose
        auto = choose("auto")[0].NAME
    except BareMetalError:
        pass
    detail = f"{why}; --cpu auto picks {auto}"
    if kind == "hardware":
        return Finding("KVM", True, detail, None)
    if kind == "none":
        fix = ("flat binaries run on the emulated CPU (--cpu emu); for native speed use a host "
               "with VMX/SVM and `modprobe kvm_intel` (or kvm_amd), or enable nested virtualisation")
    elif kind == "no access":
        fix = "`sudo usermod -aG kvm $USER` (then log in again), or run as root"
    else:
        fix = ("flat binaries run on the emulated CPU (--cpu emu); for native speed use a host "
               "whose KVM has VMX/SVM (bare metal, or a VM with nested virtualisation)")
    return Finding("KVM", None if kind == "pvm" else False, detail, fix)


# --- tools -----------------------------------------------------------------------------------

def _version_of(path, *args):
    try:
        done = subprocess.run([path, *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = (done.stdout or done.stderr).strip().splitlines()
    return lines[0] if lines else ""


def check_gcc():
    name = os.environ.get("CC", "gcc")
    path = shutil.which(name)
    if path is None:
        return Finding("gcc", False, f"'{name}' is not on PATH: C apps (.c) cannot be built",
                       "apt-get install gcc libc6-dev (or set CC to your compiler)")
    if shutil.which("ld") is None:
        return Finding("gcc", False, f"{path} found, but not ld: flat C builds (cc -o x.app) fail",
                       "apt-get install binutils")
    return Finding("gcc", True, f"{path}: {_version_of(path, '--version')}", None)


def check_nasm():
    path = shutil.which("nasm")
    if path is None:
        return Finding("nasm", False, "not on PATH: .asm apps cannot be assembled", "apt-get install nasm")
    return Finding("nasm", True, f"{path}: {_version_of(path, '-v')}", None)


# --- kernel settings ---------------------------------------------------------------------------

def check_mmap_min_addr():
    value = _read("/proc/sys/vm/mmap_min_addr")
    if value is None:
        return Finding("vm.mmap_min_addr", None, "cannot be read: the low window of C apps may fail",
                       "check /proc/sys/vm/mmap_min_addr")
    if int(value) <= LOW_WINDOW:
        return Finding("vm.mmap_min_addr", True,
                       f"{value}: C apps see the system area at its own addresses (*(u16 *)0x5012)", None)
    if has_capability(CAP_SYS_RAWIO):
        return Finding("vm.mmap_min_addr", True,
                       f"{value}, but this process has CAP_SYS_RAWIO: the low window works", None)
    return Finding("vm.mmap_min_addr", False,
                   f"{value}: C apps cannot read the InfoMap by absolute address (0x5012, ...)",
                   "sudo sysctl vm.mmap_min_addr=4096")


def check_tun():
    if not os.path.exists("/dev/net/tun"):
        return Finding("/dev/net/tun", False, "missing: tap: NICs are not possible",
                       "sudo modprobe tun (or give the container --device /dev/net/tun)")
    if not os.access("/dev/net/tun", os.R_OK | os.W_OK):
        return Finding("/dev/net/tun", False, "not readable and writable by this user: tap: NICs fail",
                       "run as root, or use a TAP made for you with a tap:@FD from a privileged parent")
    return Finding("/dev/net/tun", True, "present: tap: NICs are possible", None)


def check_net_capabilities():
    mask = capabilities()
    admin, raw = has_capability(CAP_NET_ADMIN, mask), has_capability(CAP_NET_RAW, mask)
    if admin and raw:
        return Finding("NIC privileges", True,
                       "CAP_NET_ADMIN and CAP_NET_RAW: --nic tap:NAME creates TAPs, --nic packet:IFACE opens AF_PACKET", None)
    missing = [n for n, have in (("CAP_NET_ADMIN", admin), ("CAP_NET_RAW", raw)) if not have]
    return Finding("NIC privileges", None,
                   f"no {' and '.join(missing)}: wire NICs work; "
                   + ("tap: only on a TAP made for you; " if not admin else "")
                   + ("packet: is refused" if not raw else ""),
                   "`sudo ip tuntap add dev tap0 mode tap user $USER` then --nic tap:tap0; "
                   "for packet: run as root or `sudo setcap cap_net_raw+ep` on the Python binary")


def check_huge_pages():
    thp = _read("/sys/kernel/mm/transparent_hugepage/enabled")
    if thp is None:
        return Finding("huge pages", None, "no transparent huge pages in this kernel: flat memory "
                       "uses 4 KiB pages (more TLB misses)", "a kernel with CONFIG_TRANSPARENT_HUGEPAGE")
    mode = thp[thp.index("[") + 1:thp.index("]")] if "[" in thp else thp
    if mode == "never":
        return Finding("huge pages", None, "transparent huge pages are off: flat memory uses 4 KiB pages",
                       "echo madvise | sudo tee /sys/kernel/mm/transparent_hugepage/enabled")
    return Finding("huge pages", True, f"transparent huge pages: {mode} (flat memory asks for them "
                   "with MADV_HUGEPAGE)", None)


def check_aio():
    limit, used = _read("/proc/sys/fs/aio-max-nr"), _read("/proc/sys/fs/aio-nr")
    if limit is None or used is None:
        return Finding("AIO", None, "the AIO limits cannot be read: drives may fall back to one "
                       "request at a time", "check /proc/sys/fs/aio-max-nr")
    free = int(limit) - int(used)
    if free < AIO_EVENTS_WANTED:
        return Finding("AIO", False, f"{free} of {limit} AIO events free: drives opening an AIO "
                       "context may fail", "sudo sysctl fs.aio-max-nr=1048576")
    return Finding("AIO", True, f"{free} of {limit} AIO events free (fs.aio-max-nr): large "
                   "b_nvs_* requests are split into requests kept in flight together", None)


# --- optional Python parts -------------------------------------------------------------------

OPTIONAL = (("pygame", "window", "--window (a live screen)"),
            ("numba", "numba", "numba.cfunc tasks"))


def check_optional():
    missing = [(module, extra, what) for module, extra, what in OPTIONAL
               if importlib.util.find_spec(module) is None]
    if not missing:
        return Finding("optional parts", True, ", ".join(m for m, _, _ in OPTIONAL) + " installed", None)
    return Finding("optional parts", None,
                   "; ".join(f"{module} missing: no {what}" for module, _, what in missing),
                   "pip install " + " ".join(f"'pybaremetal[{extra}]'" for _, extra, _ in missing))


CHECKS = (check_kvm, check_gcc, check_nasm, check_mmap_min_addr, check_tun, check_net_capabilities,
          check_huge_pages, check_aio, check_optional)


def report():
    """Every check's Finding, in order."""
    return [check() for check in CHECKS]


MARKS = {True: "ok", None: "note", False: "MISSING"}


def main(out=None):
    """Print the report (the `baremetal doctor` command); returns 0."""
    from .cli import _version
    out = out or sys.stdout
    print(f"pybaremetal {_version()} on Linux {os.uname().release}, {os.cpu_count()} CPUs, "
          f"Python {sys.version.split()[0]}", file=out)
    findings = report()
    width = max(len(f.name) for f in findings)
    for finding in findings:
        print(f"{MARKS[finding.ok]:>7}  {finding.name:<{width}}  {finding.detail}", file=out)
        if finding.fix:
            print(f"{'':>7}  {'':<{width}}  fix: {finding.fix}", file=out)
    return 0

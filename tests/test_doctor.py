"""`baremetal doctor`: every check reports this host as it is, with a fix for what is missing."""
import os
import shutil
import subprocess
import sys

import pytest

from pybaremetal import doctor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = ["KVM", "gcc", "nasm", "vm.mmap_min_addr", "/dev/net/tun", "NIC privileges", "huge pages",
         "AIO", "optional parts"]


def doctor_output(env=None, prefix=()):
    done = subprocess.run([*prefix, sys.executable, "-m", "pybaremetal", "doctor"], capture_output=True,
                          text=True, cwd=ROOT, timeout=60, env=env)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    return done.stdout


def line_of(output, name):
    return next(line for line in output.splitlines() if line[9:].startswith(name + " "))


@pytest.mark.parametrize("facts, kind, auto", [
    ((False, False, set(), set(), ""), "none", "emu"),
    ((True, False, {"vmx"}, {"kvm", "kvm_intel"}, ""), "no access", "emu"),
    ((True, True, {"vmx"}, {"kvm", "kvm_intel"}, "quiet"), "hardware", "kvm"),
    ((True, True, {"svm"}, {"kvm", "kvm_amd"}, ""), "hardware", "kvm"),
    ((True, True, set(), {"kvm", "kvm_pvm"}, "quiet nested_pvm=1"), "pvm", "emu"),
    ((True, True, {"vmx"}, {"kvm", "kvm_pvm"}, ""), "pvm", "emu"),
])
def test_the_cpu_backend_auto_picks_follows_from_the_kvm_facts(facts, kind, auto):
    assert doctor.kvm_kind(*facts)[:2] == (kind, auto)


def test_doctor_reports_every_check_as_the_host_is():
    output = doctor_output()
    assert output.startswith("pybaremetal ")
    for name in NAMES:
        line_of(output, name)
    kvm = line_of(output, "KVM")
    if not os.path.exists("/dev/kvm"):
        assert "no /dev/kvm; --cpu auto picks emu" in kvm
    assert ("--cpu auto picks kvm" in kvm) == ({"vmx", "svm"} & doctor.cpu_flags() != set()
                                               and not os.path.isdir("/sys/module/kvm_pvm"))
    assert line_of(output, "gcc").startswith("     ok") == (shutil.which("gcc") is not None)
    with open("/proc/sys/vm/mmap_min_addr") as f:
        assert f"vm.mmap_min_addr  {f.read().strip()}: " in line_of(output, "vm.mmap_min_addr")


def test_missing_tools_come_with_their_fix(tmp_path):
    output = doctor_output(env=dict(os.environ, PATH=str(tmp_path)))
    lines = output.splitlines()
    for name, fix in (("gcc", "fix: apt-get install gcc libc6-dev"), ("nasm", "fix: apt-get install nasm")):
        at = lines.index(line_of(output, name))
        assert lines[at].startswith("MISSING") and lines[at + 1].strip().startswith(fix)


def test_without_capabilities_the_nic_privileges_are_missing_with_the_fix():
    from unprivileged import DROP_ALL_CAPABILITIES
    output = doctor_output(prefix=DROP_ALL_CAPABILITIES if os.geteuid() == 0 else ())
    line = line_of(output, "NIC privileges")
    assert "no CAP_NET_ADMIN and CAP_NET_RAW" in line and "wire NICs work" in line
    assert "ip tuntap add dev tap0 mode tap user $USER" in output

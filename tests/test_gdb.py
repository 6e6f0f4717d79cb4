"""Debugging: gdb against flat binaries (--gdb: native/gdbstub.c on each CPU backend), core
files of crashed binaries (--dumpcore: native/coredump.c), and the gdb recipe for C apps.
gdb itself runs in batch mode; nothing here depends on timing (the Ctrl-C test sends the
interrupt byte after 'c' has been sent, and the stub reads it whenever it comes)."""
import os
import re
import shutil
import socket
import subprocess
import sys

import pytest

from pybaremetal import cli, cpu
from pybaremetal.apps import binary

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
APP = 0xFFFF800000000000
pytestmark = pytest.mark.skipif(shutil.which("gdb") is None, reason="gdb is not installed (make installs it)")

HEADER = """BITS 64
DEFAULT REL
ORG 0xFFFF800000000000
b_output equ 0x100018
"""
# rax = 12 at `second` (APP + 0x10), which prints "hi\n" and returns 9
HELLO = HEADER + """
start:
	mov rax, 5
	mov rbx, 7
	add rax, rbx
	align 16
second:
	lea rsi, [msg]
	mov ecx, 3
	call [abs b_output]
	mov eax, 9
	ret
msg: db "hi", 10
"""
# counts in rax until it equals `limit` (APP + 0x18; 0: practically forever), returns 3
LOOP = HEADER + """
	xor eax, eax
spin:
	inc rax
	cmp rax, [limit]
	jne spin
	mov eax, 3
	ret
	align 8
limit: dq 0
"""
# a page fault at APP + 0xf, with rbx = 0x1234
CRASH = HEADER + """
	mov rbx, 0x1234
	mov rcx, 0x7000000000
	mov rax, [rcx]
	ret
"""
C_APP = r"""#include "libBareMetal.h"

static volatile u64 counter;

__attribute__((noinline)) u64 add_up(u64 n)
{
	u64 total = 0;
	for (u64 i = 1; i <= n; i++)
		total += i;
	counter = total;
	return total;
}

int main(void)
{
	u64 t = add_up(10);
	b_output("sum done\n", 9);
	return (int)(t & 0x7F);
}
"""


@pytest.fixture(params=["emu", "kvm"])
def backend(request):
    ok, why = cpu.BACKENDS[request.param].status()
    if not ok:
        pytest.skip(why)
    return request.param


def assemble(tmp_path, source, name):
    path = tmp_path / f"{name}.asm"
    path.write_text(source)
    return binary.assemble(str(path), str(tmp_path / f"{name}.app"))


def baremetal(app, backend, *options):
    return [sys.executable, "-m", "pybaremetal", "run", app, "--cpu", backend, "--memory", "16M",
            "--cores", "1", "--exit-status", "rax", *options]


def under_gdb(app, backend, gdb_commands, symbols=None, options=()):
    """Run ``app`` with --gdb 0 and gdb (batch) with ``gdb_commands`` against it; returns
    (gdb's output, the run's exit code, stdout, stderr)."""
    run = subprocess.Popen(baremetal(app, backend, "--gdb", "0", *options), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        line = run.stderr.readline()
        found = re.search(r"127\.0\.0\.1:(\d+)", line)
        assert found, line + run.stderr.read()
        command = ["gdb", "-batch", "-nx", *([symbols] if symbols else []),
                   "-ex", f"target remote :{found.group(1)}"]
        for c in gdb_commands:
            command += ["-ex", c]
        session = subprocess.run(command, capture_output=True, text=True, timeout=60)
        out, err = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    return session.stdout + session.stderr, run.returncode, out, line + err


def value(output, name):
    """The value gdb printed for ``print NAME`` lines like '$3 = 55'."""
    found = re.findall(rf"^\${name} = (.*)$", output, re.M)
    assert found, output
    return found[0]


@pytest.fixture(scope="module")
def sum_app(tmp_path_factory):
    """The C app built with -g: (sum.app, sum.elf)."""
    work = tmp_path_factory.mktemp("sum")
    source = work / "sum.c"
    source.write_text(C_APP)
    app = binary.build([str(source)], str(work / "sum.app"), "-O1", ["-g"])
    return app, str(work / "sum.elf")


def test_gdb_session_on_a_c_binary(sum_app, backend):
    app, symbols = sum_app
    assert os.path.exists(symbols)
    plain = subprocess.run(baremetal(app, backend), capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert (plain.returncode, plain.stdout) == (55, "sum done\n"), plain.stderr
    output, code, out, err = under_gdb(app, backend, [
        "break add_up", "continue", "print $rdi", "print n", "bt", "stepi", "print $pc",
        "finish", "print counter", "print $fs_base", "print $eflags", "continue"], symbols)
    assert "Breakpoint 1, add_up (n=n@entry=10) at " in output, output
    assert value(output, "1") == "10" and value(output, "2") == "10"
    assert re.search(r"#1 .* in main \(\) at .*sum\.c:\d+", output), output
    assert "<add_up+" in value(output, "3")
    assert "Value returned is $4 = 55" in output and value(output, "5") == "55"
    assert value(output, "6") == "0" and re.fullmatch(r"\[ (\w+ )*\]", value(output, "7"))
    assert "exited with code 067" in output, output
    assert (code, out) == (plain.returncode, plain.stdout), err


def test_gdb_registers_memory_and_steps_on_nasm(tmp_path, backend):
    app = assemble(tmp_path, HELLO, "hello")
    output, code, out, err = under_gdb(app, backend, [
        f"break *{APP + 0x10:#x}", "continue", "print $rax", "print $rbx", "x/3xb $pc",
        "stepi", "print/x $rip", "x/s $rsi", "set {char}$rsi = 'H'",
        "info breakpoints", "continue"])
    assert f"Breakpoint 1, {APP + 0x10:#x} in ?? ()" in output, output
    assert value(output, "1") == "12" and value(output, "2") == "7"
    assert f"{APP + 0x10:#x}:\t0x48\t0x8d\t0x35" in output            # lea rsi, [rel msg]
    assert value(output, "3") == f"{APP + 0x17:#x}"
    assert '"hi\\n"' in output
    assert "exited with code 011" in output, output
    assert (code, out) == (9, "Hi\n"), err


class Remote:
    """gdb's side of the remote protocol, by hand (for the Ctrl-C byte, which gdb in batch
    mode cannot send at a chosen moment)."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)

    def send(self, data):
        self.sock.sendall(b"$%s#%02x" % (data, sum(data) & 0xFF))
        assert self.sock.recv(1) == b"+"

    def receive(self):
        data = b""
        while not data.endswith(b"#"):
            data += self.sock.recv(1)
        self.sock.recv(2)
        self.sock.sendall(b"+")
        return data[data.index(b"$") + 1:-1]

    def ask(self, data):
        self.send(data)
        return self.receive()


def test_ctrl_c_stops_a_running_binary(tmp_path, backend):
    app = assemble(tmp_path, LOOP, "loop")
    run = subprocess.Popen(baremetal(app, backend, "--gdb", "0"), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        port = int(re.search(r":(\d+) ", run.stderr.readline()).group(1))
        gdb = Remote(port)
        assert gdb.ask(b"?") == b"T05thread:1;"
        assert gdb.ask(b"p10") == (APP).to_bytes(8, "little").hex().encode()   # rip
        gdb.send(b"c")
        gdb.sock.sendall(b"\x03")                      # Ctrl-C
        assert gdb.receive() == b"T02thread:1;"        # SIGINT
        rax = int.from_bytes(bytes.fromhex(gdb.ask(b"p0").decode()), "little")
        rip = int.from_bytes(bytes.fromhex(gdb.ask(b"p10").decode()), "little")
        assert APP <= rip < APP + 0xe                  # somewhere in the loop (maybe its start)
        limit = (rax + 5).to_bytes(8, "little").hex().encode()
        assert gdb.ask(b"M%x,8:%s" % (APP + 0x18, limit)) == b"OK"
        assert gdb.ask(b"m%x,8" % (APP + 0x18)) == limit
        assert gdb.ask(b"m7000000000,8") == b"E0e"     # not mapped by the page tables
        gdb.send(b"c")
        assert gdb.receive() == b"W03"
        out, err = run.communicate(timeout=60)
        assert run.returncode == 3, err
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()


def test_core_file_of_a_crash_opens_in_gdb(tmp_path, backend):
    app = assemble(tmp_path, CRASH, "crash")
    cores = tmp_path / "cores"
    cores.mkdir()
    run = subprocess.run(baremetal(app, backend, "--dumpcore", str(cores)), capture_output=True,
                         text=True, cwd=ROOT, timeout=60)
    assert run.returncode == 1
    assert f"#PF page fault at rip {APP + 0xf:#x} touching 0x7000000000" in run.stderr
    core = re.search(r"core file: (\S+)", run.stderr).group(1)
    assert os.path.dirname(core) == str(cores) and os.listdir(cores) == [os.path.basename(core)]
    session = subprocess.run(["gdb", "-batch", "-nx", "-c", core, "-ex", "print/x $pc", "-ex",
                              "print/x $rbx", "-ex", "x/3xb $pc", "-ex", "x/gx $rsp"],
                             capture_output=True, text=True, timeout=60)
    output = session.stdout + session.stderr
    assert "Program terminated with signal SIGSEGV" in output, output
    assert value(output, "1") == f"{APP + 0xf:#x}" and value(output, "2") == "0x1234"
    assert f"{APP + 0xf:#x}:\t0x48\t0x8b\t0x01" in output             # mov rax, [rcx]
    assert re.search(r":\t0x0000000000100180", output), output        # the exit stub: the return address


def test_a_fault_under_gdb_stops_at_the_faulting_instruction(tmp_path):
    if not cpu.BACKENDS["emu"].status()[0]:
        pytest.skip("the emulated CPU is not available")
    app = assemble(tmp_path, CRASH, "crash")
    output, code, out, err = under_gdb(app, "emu", ["continue", "print/x $pc", "continue"])
    assert "Program received signal SIGSEGV" in output, output
    assert value(output, "1") == f"{APP + 0xf:#x}"
    assert "Program terminated with signal SIGSEGV" in output
    assert code == 1 and "#PF page fault" in err


def test_detach_lets_the_binary_run_to_its_end(tmp_path):
    if not cpu.BACKENDS["emu"].status()[0]:
        pytest.skip("the emulated CPU is not available")
    app = assemble(tmp_path, HELLO, "hello")
    output, code, out, err = under_gdb(app, "emu", [f"break *{APP + 0x10:#x}", "continue", "detach"])
    assert "Breakpoint 1," in output and "detached" in output, output
    assert (code, out) == (9, "hi\n"), err


def test_gdb_recipe_for_c_apps(tmp_path):
    """The README's recipe: a C app is native code of the baremetal process itself."""
    source = tmp_path / "recipe.c"
    source.write_text(C_APP)
    session = subprocess.run(
        ["gdb", "-batch", "-nx", "-ex", "set breakpoint pending on", "-ex", "break add_up", "-ex", "run",
         "-ex", "print n", "-ex", "finish", "-ex", "continue", "--args", sys.executable, "-m",
         "pybaremetal", "run", str(source), "--cores", "1", "--memory", "16M"],
        capture_output=True, text=True, timeout=120, cwd=ROOT)
    output = session.stdout + session.stderr
    assert re.search(r"Breakpoint 1, add_up \(n=(n@entry=)?10\) at .*recipe\.c", output), output
    assert "Value returned is $2 = 55" in output
    assert "sum done" in output and "exited with code 067" in output, output


def test_bad_debugging_options_are_one_line(tmp_path, capsys):
    app = assemble(tmp_path, HELLO, "hello")
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        for options, message in [
                ([app, "--gdb", "port"], "is not a TCP port"),
                ([app, "--gdb", "70000"], "is not a TCP port"),
                ([app, "--dumpcore", str(tmp_path / "none")], "is not a directory"),
                ([os.path.join(ROOT, "examples", "hello.py"), "--gdb", "0"], "are for flat binaries"),
                ([app, "--gdb", str(taken.getsockname()[1])], "cannot listen there")]:
            assert cli.main(["run", *options, "--memory", "16M", "--cores", "1"]) == 2
            err = capsys.readouterr().err
            assert message in err and len(err.strip().splitlines()) == 1, err
    finally:
        taken.close()

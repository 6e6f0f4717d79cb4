"""Flat binaries (.app) on every CPU backend (the emulated CPU, and KVM where it is usable):
assembled with nasm or built from C for the real kernel."""
import os
import shutil
import subprocess
import sys
import time

import pytest

import pybaremetal as bm
from pybaremetal import cpu
from pybaremetal.apps import binary
from pybaremetal.cpu import kvm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def use_backend(name, request, monkeypatch):
    """Make BAREMETAL_CPU select backend ``name`` for this test (Machine() and the CLI), or
    skip the test saying why the backend cannot run it here."""
    ok, why = cpu.BACKENDS[name].status()
    if not ok:
        pytest.skip(why)
    if name == "kvm" and request.node.get_closest_marker("fpu") and not kvm.native_ring0():
        pytest.skip("KVM here emulates ring 0 (no VMX/SVM, e.g. PVM) and fails on SSE/x87")
    monkeypatch.setenv("BAREMETAL_CPU", name)
    return name


@pytest.fixture(autouse=True, params=["emu", "kvm"])
def backend(request, monkeypatch):
    """Every test runs on each CPU backend (skipped where that backend cannot run it)."""
    return use_backend(request.param, request, monkeypatch)

HEADER = """BITS 64
DEFAULT REL
ORG 0xFFFF800000000000
b_input equ 0x100010
b_output equ 0x100018
b_system equ 0x100040
"""


def assemble(tmp_path, body, name="app"):
    assert shutil.which("nasm"), "nasm is installed by `make` (Makefile DEBIAN_PACKAGES)"
    source, image = tmp_path / f"{name}.asm", tmp_path / f"{name}.app"
    source.write_text(HEADER + body)
    subprocess.run(["nasm", "-f", "bin", str(source), "-o", str(image)], check=True)
    return str(image)


def run_image(path, **kwargs):
    kwargs.setdefault("memory", "16M")
    with bm.Machine(cores=1, console="capture", **kwargs) as m:
        code = binary.run(m, path, [])
        return code, m.console.output()


def test_hello_example_assembled_with_nasm(tmp_path):
    image = tmp_path / "hello.app"
    subprocess.run(["nasm", "-f", "bin", os.path.join(ROOT, "examples", "hello.asm"), "-o", str(image)], check=True)
    done = subprocess.run([sys.executable, "-m", "pybaremetal", "run", str(image), "--cores", "2", "--no-pin"],
                          capture_output=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"Hello, world!\ncores: 2\n"


def cli(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "pybaremetal", *args], capture_output=True,
                          timeout=60, **kwargs)


def test_run_assembles_an_asm_source_itself_and_leaves_nothing_behind(tmp_path):
    source = tmp_path / "hello.asm"
    shutil.copy(os.path.join(ROOT, "examples", "hello.asm"), source)
    done = cli("run", str(source), "--cores", "2", "--no-pin", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"Hello, world!\ncores: 2\n"
    assert sorted(os.listdir(tmp_path)) == ["hello.asm"]


def test_an_asm_source_that_does_not_assemble_is_a_clear_error(tmp_path):
    source = tmp_path / "bad.asm"
    source.write_text("BITS 64\n\tmov rax, [\n")
    done = cli("run", str(source))
    assert done.returncode == 2
    assert b"bad.asm:2: error" in done.stderr                    # nasm's own message
    assert b"baremetal: error: assembling " in done.stderr and b"bad.asm failed" in done.stderr
    with bm.Machine(cores=1, memory="8M", console="capture") as m:
        with pytest.raises(binary.BuildError, match="assembling"):
            binary.run(m, str(source), [])
        with pytest.raises(bm.ArgumentError, match="no such file"):
            binary.run(m, str(tmp_path / "missing.asm"), [])


def test_cc_with_an_app_output_builds_a_flat_binary_that_runs(tmp_path):
    source = tmp_path / "exit.c"
    source.write_text('#include "libBareMetal.h"\n'
                      'int main(void) { b_output("flat\\n", 5); return 42; }\n')
    done = cli("cc", str(source), "-o", str(tmp_path / "exit.app"), "-O3")
    assert done.returncode == 0, done.stderr
    with open(tmp_path / "exit.app", "rb") as f:
        assert f.read(4) != b"\x7fELF"                          # a flat image, not an ELF file
    done = cli("run", str(tmp_path / "exit.app"), "--cores", "1", "--exit-status", "rax")
    assert (done.returncode, done.stdout) == (42, b"flat\n"), done.stderr
    (tmp_path / "bad.c").write_text("int main(void) { return nope; }\n")
    done = cli("cc", str(tmp_path / "bad.c"), "-o", str(tmp_path / "bad.app"))
    assert done.returncode == 2 and b"compiling" in done.stderr
    assert not (tmp_path / "bad.app").exists()


def test_registers_other_than_results_are_preserved_across_calls(tmp_path):
    image = assemble(tmp_path, """
    mov rbx, 0x1111
    mov rbp, 0x2222
    mov r8, 0x3333
    mov r15, 0x4444
    mov rdi, 0x5555
    mov rdx, 0x6666
    lea rsi, [msg]
    mov rcx, 3
    call [abs b_output]
    cmp rbx, 0x1111
    jne bad
    cmp rbp, 0x2222
    jne bad
    cmp r8, 0x3333
    jne bad
    cmp r15, 0x4444
    jne bad
    cmp rdi, 0x5555
    jne bad
    cmp rdx, 0x6666
    jne bad
    lea rax, [msg]
    cmp rsi, rax
    jne bad
    mov eax, 0
    ret
bad:
    mov eax, 9
    ret
msg: db 'ok', 10
""")
    assert run_image(image) == (0, b"ok\n")


def test_b_system_and_b_input_through_the_call_table(tmp_path):
    image = assemble(tmp_path, """
    mov rcx, 0x11            ; SMP_NUMCORES
    call [abs b_system]
    mov rbx, rax
    call [abs b_input]       ; AL = first key
    add al, bl               ; 'a' + cores
    mov [key], al
    lea rsi, [key]
    mov rcx, 1
    call [abs b_output]
    mov rcx, 0x71            ; DUMP_RAX
    mov rax, 0xABCDEF
    call [abs b_system]
    mov rcx, 0x70            ; DUMP_MEM of the app's own bytes, at its own address
    lea rax, [key]
    mov rdx, 1
    call [abs b_system]
    mov eax, 3
    ret
key: db 0
""")
    code, out = run_image(image, input=b"a")
    assert code == 3
    assert out.startswith(b"b0000000000ABCDEF0xFFFF8000000000")     # the guest's address
    assert out.endswith(b"\n 62\n")


def test_c_app_built_for_the_real_kernel_reads_the_infomap_and_returns_its_exit_code(tmp_path):
    source = tmp_path / "app.c"
    source.write_text(r"""
#include "libBareMetal.h"
static const char *digits[] = {"0", "1", "2", "3", "4"};
static int zeroed[1000];
int main(void) {
    u16 cores = *(volatile u16 *)0x5012;        /* InfoMap: cores active */
    u32 ram = *(volatile u32 *)0x5020;          /* InfoMap: RAM in MiB */
    for (int i = 0; i < 1000; i++)
        if (zeroed[i]) return 99;
    b_output("cores=", 6);
    b_output(digits[cores], 1);
    b_output("\n", 1);
    return (int)(ram + b_system(FREE_MEMORY, 0, 0) % 7);
}
""")
    image = binary.build([str(source)], str(tmp_path / "app.app"))
    with bm.Machine(cores=2, memory="32M", console="capture", pin=False) as m:
        code = binary.run(m, image, [])
        out = m.console.output()
    assert out == b"cores=2\n"
    # RAM 32 MiB; free: 30 minus the image's 4 MiB (+.bss) and 2 MiB of stacks at the top
    assert code == 32 + 24 % 7


def test_compile_errors_raise_build_error(tmp_path):
    source = tmp_path / "bad.c"
    source.write_text("int main(void) { return undefined_thing; }\n")
    with pytest.raises(binary.BuildError, match="compiling"):
        binary.build([str(source)], str(tmp_path / "bad.app"))


def test_shutdown_from_a_binary_ends_the_run(tmp_path):
    image = assemble(tmp_path, """
    lea rsi, [msg]
    mov rcx, 4
    call [abs b_output]
    mov rcx, 0x7F            ; SHUTDOWN
    call [abs b_system]
    lea rsi, [msg]
    mov rcx, 4
    call [abs b_output]
    ret
msg: db 'bye', 10
""")
    assert run_image(image) == (None, b"bye\n")


@pytest.mark.parametrize("body, what", [("ud2\n", "crashed"),
                                        ("mov rax, [abs 0x7F000000]\nret\n", "crashed"),
                                        ("mov al, 1\nout 0x80, al\nret\n", "I/O port 0x80")])
def test_a_crashing_binary_reports_where_and_the_machine_survives(tmp_path, body, what, backend):
    image = assemble(tmp_path, body)
    with bm.Machine(cores=1, memory="16M", console="capture") as m:
        with pytest.raises(kvm.AppCrashed, match=what):
            binary.run(m, image, [])
        assert m.run(lambda: bm.b_system(bm.SMP_NUMCORES)) == 1


def test_bad_pointers_from_a_binary_touch_nothing(tmp_path):
    image = assemble(tmp_path, """
    mov rsi, 0x7FFFFFFF0000  ; outside the machine
    mov rcx, 16
    call [abs b_output]
    lea rsi, [msg]
    mov rcx, 0xFFFFFFFFFF    ; runs past the end of memory
    call [abs b_output]
    mov rcx, 0x70            ; DUMP_MEM of memory that is not there
    mov rax, 0x7FFFFFFF0000
    mov rdx, 64
    call [abs b_system]
    ret
msg: db 'x'
""")
    code, out = run_image(image)
    assert out == b""


def test_cli_reports_a_crash_with_exit_code_1(tmp_path):
    image = assemble(tmp_path, "ud2\n")
    done = subprocess.run([sys.executable, "-m", "pybaremetal", "run", image], capture_output=True,
                          cwd=ROOT, timeout=60)
    assert done.returncode == 1
    assert b"crashed" in done.stderr and b"#UD invalid opcode at rip 0xffff800000000000" in done.stderr


def test_empty_and_oversized_images_are_refused(tmp_path):
    empty = tmp_path / "empty.app"
    empty.write_bytes(b"")
    with bm.Machine(cores=1, memory="8M", console="capture") as m:
        with pytest.raises(bm.ArgumentError, match="empty"):
            binary.run(m, str(empty), [])
    big = tmp_path / "big.app"
    big.write_bytes(b"\x90" * (7 << 20))
    with bm.Machine(cores=1, memory="8M", console="capture") as m:
        with pytest.raises(bm.ArgumentError, match="does not fit"):
            binary.run(m, str(big), [])



SMP = """
b_system_call equ 0x100040
    lea rax, [worker]           ; SMP_SET(worker, core) for each other core
    mov rbx, 1
next_core:
    mov rdx, rbx
    mov rcx, 0x12
    lea rax, [worker]
    call [abs b_system_call]
    inc rbx
    movzx r8, word [abs 0x5012]
    cmp rbx, r8
    jb next_core
waiting:
    mov rcx, 0x16               ; SMP_BUSY
    call [abs b_system_call]
    test rax, rax
    jnz waiting
    mov rax, [counter]
    mov rcx, 0x71               ; DUMP_RAX
    call [abs b_system_call]
    xor eax, eax
    ret
align 16
worker:
    mov rcx, 0x10               ; SMP_ID
    call [abs b_system_call]
    mov r12, rax
    mov rcx, 0x13               ; SMP_GET: our slot shows our code
    call [abs b_system_call]
    and rax, -16
    lea r13, [worker]
    cmp rax, r13
    jne .bad
    mov r14, 10000
.again:
    lea rax, [spinlock]
    mov rcx, 0x14               ; SMP_LOCK
    call [abs b_system_call]
    mov rax, [counter]
    inc rax
    mov [counter], rax
    lea rax, [spinlock]
    mov rcx, 0x15               ; SMP_UNLOCK
    call [abs b_system_call]
    dec r14
    jnz .again
    ret
.bad:
    mov qword [counter], -1
    ret
align 8
counter: dq 0
spinlock: dw 0
"""


def test_smp_set_runs_guest_code_on_every_core_under_smp_lock(tmp_path):
    image = assemble(tmp_path, SMP)
    with bm.Machine(cores=4, memory="32M", console="capture", pin=False) as m:
        assert binary.run(m, image, []) == 0
        out = m.console.output()
    assert out == b"%016X" % 30000            # 3 cores x 10,000 increments, none lost


def test_smp_set_refuses_unaligned_code_and_missing_cores(tmp_path):
    image = assemble(tmp_path, """
    lea rax, [worker + 1]       ; not 16-byte aligned
    mov rdx, 1
    mov rcx, 0x12
    call [abs b_system]
    mov rbx, rax
    lea rax, [worker]
    mov rdx, 9                  ; no such core
    mov rcx, 0x12
    call [abs b_system]
    or rax, rbx
    ret                         ; exit code 0 only if both returned 0
align 16
worker:
    ret
""")
    with bm.Machine(cores=2, memory="16M", console="capture", pin=False) as m:
        assert binary.run(m, image, []) == 0


def test_a_crash_on_another_core_is_reported_and_core_0_goes_on(tmp_path, capfd):
    image = assemble(tmp_path, """
    lea rax, [worker]
    mov rdx, 1
    mov rcx, 0x12
    call [abs b_system]
waiting:
    mov rcx, 0x16
    call [abs b_system]
    test rax, rax
    jnz waiting
    mov eax, 5
    ret
align 16
worker:
    ud2
""")
    with bm.Machine(cores=2, memory="16M", console="capture", pin=False) as m:
        assert binary.run(m, image, []) == 5
    assert "core 1: the app crashed on core 1" in capfd.readouterr().err


def test_the_run_ends_even_if_another_core_never_returns(tmp_path):
    image = assemble(tmp_path, """
    lea rax, [spin]
    mov rdx, 1
    mov rcx, 0x12
    call [abs b_system]
    mov rcx, 0x72               ; DELAY 2 ms: let core 1 get going
    mov rax, 2000
    call [abs b_system]
    mov eax, 7
    ret
align 16
spin:
    jmp spin
""")
    with bm.Machine(cores=2, memory="16M", console="capture", pin=False) as m:
        assert binary.run(m, image, []) == 7
        assert m.run(lambda: bm.b_system(bm.SMP_BUSY)) == 0    # core 1 is idle again


def on_other_cores(label):
    """Assembly: SMP_SET(label, core) for every core but 0 (the InfoMap's core count at 0x5012)."""
    return f"""
    mov rbx, 1
.next_core:
    mov rdx, rbx
    lea rax, [{label}]
    mov rcx, 0x12
    call [abs b_system]
    inc rbx
    movzx r8, word [abs 0x5012]
    cmp rbx, r8
    jb .next_core
"""


# what the other cores are doing when core 0's app returns: all of it must end with the run
WORKERS = {
    "spinning": """
align 16
worker:
    jmp worker
""",
    "waiting for a lock core 0 holds": """
align 16
worker:
    lea rax, [the_lock]
    mov rcx, 0x14               ; SMP_LOCK: never theirs
    call [abs b_system]
    ret
""",
    "in a 60 s DELAY": """
align 16
worker:
    mov rax, 60000000
    mov rcx, 0x72
    call [abs b_system]
    ret
""",
}


@pytest.mark.filterwarnings("ignore:Machine\\(cores=3\\) on 2 CPU")
@pytest.mark.parametrize("delay_us", [0, 2000])
@pytest.mark.parametrize("doing", list(WORKERS))
def test_the_run_ends_at_once_whatever_the_other_cores_are_doing(tmp_path, doing, delay_us):
    image = assemble(tmp_path, """
    lea rax, [the_lock]
    mov rcx, 0x14               ; SMP_LOCK: core 0 takes the lock and keeps it
    call [abs b_system]
""" + on_other_cores("worker") + f"""
    mov rax, {delay_us}         ; DELAY: 0 returns while the others start, 2 ms once they run
    mov rcx, 0x72
    call [abs b_system]
    mov eax, 7
    ret
""" + WORKERS[doing] + """
align 8
the_lock: dw 0
""")
    with bm.Machine(cores=3, memory="16M", console="capture", pin=False) as m:
        for _ in range(5):                  # the same cores, one run after another
            started = time.monotonic()
            assert binary.run(m, image, []) == 7
            assert time.monotonic() - started < 5
        assert m.run(lambda: bm.b_system(bm.SMP_BUSY)) == 0    # every core is idle again


def test_shutdown_from_another_core_stops_core_0_spinning_in_guest_code(tmp_path):
    image = assemble(tmp_path, """
    lea rax, [stopper]
    mov rdx, 1
    mov rcx, 0x12
    call [abs b_system]
spin:
    jmp spin                    ; no call: only a kick gets core 0 out
align 16
stopper:
    mov rax, 2000               ; DELAY 2 ms: core 0 is spinning by then
    mov rcx, 0x72
    call [abs b_system]
    mov rcx, 0x7F               ; SHUTDOWN
    call [abs b_system]
    ret
""")
    with bm.Machine(cores=2, memory="16M", console="capture", pin=False) as m:
        assert binary.run(m, image, []) is None

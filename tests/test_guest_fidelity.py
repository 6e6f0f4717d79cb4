"""Flat binaries see the real kernel's behaviour where the CPU is involved: b_input sets ZF from
AL, a guest `hlt` waits for the next interrupt (a key, a timer tick, a frame, the machine
stopping), CPUID's brand string is the host's, and a Monitor-style binary built with
ORG 0x1E0000 runs where the kernel loads its Monitor (--load-at 0x1E0000)."""
import os
import shutil
import subprocess
import sys
import time

import pytest

import pybaremetal as bm
from pybaremetal import cpu
from pybaremetal.apps import binary

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CALLS = """BITS 64
DEFAULT REL
b_input equ 0x100010
b_output equ 0x100018
b_system equ 0x100040
"""


@pytest.fixture(params=["emu", "kvm"])
def backend(request, monkeypatch):
    """The test runs on each CPU backend (skipped where that backend cannot run it)."""
    ok, why = cpu.BACKENDS[request.param].status()
    if not ok:
        pytest.skip(why)
    monkeypatch.setenv("BAREMETAL_CPU", request.param)
    return request.param


def assemble(tmp_path, body, org="0xFFFF800000000000", suffix=".app"):
    assert shutil.which("nasm"), "nasm is installed by `make` (Makefile DEBIAN_PACKAGES)"
    source, image = tmp_path / "prog.asm", tmp_path / f"prog{suffix}"
    source.write_text(CALLS + f"ORG {org}\n" + body)
    subprocess.run(["nasm", "-f", "bin", str(source), "-o", str(image)], check=True)
    return str(image)


def run_image(path, **kwargs):
    with bm.Machine(cores=1, memory="16M", console="capture", **kwargs) as m:
        code = binary.run(m, path, [])
        return code, m.console.output()


def test_b_input_sets_zf_from_al_as_the_kernel_does(tmp_path, backend):
    image = assemble(tmp_path, """
    xor ecx, ecx                   ; ZF=1 going in: a key must clear it
    call [abs b_input]
    setz [zf_key]
    mov [key], al
    or ecx, 1                      ; ZF=0 going in: no key must set it
    call [abs b_input]
    setz [zf_none]
    add byte [zf_key], '0'
    add byte [zf_none], '0'
    lea rsi, [key]
    mov rcx, 3
    call [abs b_output]
    mov eax, 7
    ret
key: db 0
zf_key: db 0
zf_none: db 0
""")
    assert run_image(image, input=b"x") == (7, b"x01")


WAIT_FOR_KEYS = """
    lea rsi, [prompt]
    mov rcx, 2
    call [abs b_output]
.wait:
    inc qword [wakeups]
    hlt                            ; until the next interrupt
    call [abs b_input]
    jz .wait                       ; no key: ZF (test al, al)
    mov [key], al
    cmp al, 0x1C                   ; Enter, as upstream's kernel hands it over
    jne .echo
    mov byte [key], '!'
.echo:
    mov rax, [wakeups]             ; 'w': few wakeups (waited), 's': spun
    cmp rax, 50
    mov byte [how], 'w'
    jb .show
    mov byte [how], 's'
.show:
    mov qword [wakeups], 0
    lea rsi, [key]
    mov rcx, 2
    call [abs b_output]
    cmp byte [key], 'q'
    jne .wait
    xor eax, eax
    ret                            ; to the exit stub: the run ends
prompt: db "> "
key: db 0
how: db 0
align 8
wakeups: dq 0
"""


def test_hlt_waits_for_the_next_key_and_returning_still_ends_the_run(tmp_path, backend):
    image = assemble(tmp_path, WAIT_FOR_KEYS)
    app = subprocess.Popen([sys.executable, "-m", "pybaremetal", "run", image, "--no-pin"],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    try:
        assert app.stdout.read(2) == b"> "
        time.sleep(0.2)                # the binary sits in hlt: spinning would count thousands
        app.stdin.write(b"a\n")
        app.stdin.flush()
        assert app.stdout.read(4) == b"aw!w"
        time.sleep(0.2)
        app.stdin.write(b"q")
        app.stdin.flush()
        out, err = app.communicate(timeout=30)
    finally:
        app.kill()
    assert (out, app.returncode) == (b"qw", 0), err


def test_hlt_with_no_input_left_and_nothing_to_wake_it_shuts_the_machine_down(tmp_path, backend):
    image = assemble(tmp_path, """
    hlt                            ; no input, no callback: nothing will ever come
    ud2
""")
    done = subprocess.run([sys.executable, "-m", "pybaremetal", "run", image, "--no-pin"],
                          stdin=subprocess.DEVNULL, capture_output=True, cwd=ROOT, timeout=30)
    assert (done.returncode, done.stdout, done.stderr) == (0, b"", b"")
    assert run_image(image) == (None, b"")           # Python: SHUTDOWN ends the run


def test_timer_ticks_wake_a_halted_core(tmp_path, backend):
    image = assemble(tmp_path, """
    mov rcx, 0x60
    lea rax, [on_tick]
    call [abs b_system]            ; CALLBACK_TIMER(on_tick)
.wait:
    inc qword [wakeups]
    hlt
    cmp qword [ticks], 3
    jb .wait
    mov rcx, 0x60
    xor eax, eax
    call [abs b_system]            ; CALLBACK_TIMER(0)
    mov rax, [wakeups]
    ret
align 16
on_tick:
    inc qword [ticks]
    ret
align 8
ticks: dq 0
wakeups: dq 0
""")
    code, out = run_image(image)                     # no input at all: only ticks wake it
    assert out == b""
    assert 1 <= code < 50                            # woken by ticks (3 or more), not spinning


def host_brand(tmp_path):
    """The host CPU's brand string, read with the cpuid instruction by a small C program."""
    source = tmp_path / "brand.c"
    source.write_text("""#include <cpuid.h>
#include <stdio.h>
int main(void) {
    unsigned r[12] = {0}, a, b, c, d;
    if (__get_cpuid(0x80000000u, &a, &b, &c, &d) && a >= 0x80000004u)
        for (int i = 0; i < 3; i++)
            __get_cpuid(0x80000002u + i, &r[4 * i], &r[4 * i + 1], &r[4 * i + 2], &r[4 * i + 3]);
    fwrite(r, 1, 48, stdout);
    return 0;
}
""")
    subprocess.run(["gcc", "-o", str(tmp_path / "brand"), str(source)], check=True)
    return subprocess.run([str(tmp_path / "brand")], capture_output=True, check=True).stdout


def test_cpuid_reports_the_host_cpus_brand_string(tmp_path, backend):
    expected = host_brand(tmp_path)
    if expected == bytes(48):
        pytest.skip("the host CPU has no brand string")
    image = assemble(tmp_path, """
    lea rdi, [brand]
    mov esi, 0x80000002
.leaf:
    mov eax, esi
    cpuid
    mov [rdi], eax
    mov [rdi + 4], ebx
    mov [rdi + 8], ecx
    mov [rdi + 12], edx
    add rdi, 16
    inc esi
    cmp esi, 0x80000005
    jb .leaf
    mov eax, 0x80000000            ; the extended leaves reach the brand string
    cpuid
    mov [top], eax
    lea rsi, [brand]
    mov rcx, 52
    call [abs b_output]
    ret
brand: times 48 db 0
top: dd 0
""")
    code, out = run_image(image)
    assert out[:48] == expected
    assert int.from_bytes(out[48:], "little") >= 0x80000004


MONITOR_LIKE = """
start:
    mov rdi, 0xFFFF800000000000    ; a `ret` where programs go, as upstream's Monitor does
    mov byte [rdi], 0xC3
prompt:
    lea rsi, [newprompt]
    mov rcx, 3
    call [abs b_output]
    xor ebx, ebx                   ; the line's length
.key:
    hlt                            ; halt until an interrupt
    call [abs b_input]
    jz .key
    cmp al, 0x1C                   ; Enter
    je .line
    cmp bl, 15
    jae .key
    lea rdi, [line]
    mov [rdi + rbx], al
    inc ebx
    mov [echo], al
    lea rsi, [echo]
    mov rcx, 1
    call [abs b_output]
    jmp .key
.line:
    cmp ebx, 3
    jne .unknown
    cmp word [line], 've'
    jne .exec
    cmp byte [line + 2], 'r'
    jne .unknown
    lea rsi, [version]
    mov rcx, 5
    call [abs b_output]
    jmp prompt
.exec:
    cmp word [line], 'ru'
    jne .off
    cmp byte [line + 2], 'n'
    jne .unknown
    mov rax, 0xFFFF800000000000
    call rax                       ; the program area is there, reserved for it
    lea rsi, [ran]
    mov rcx, 5
    call [abs b_output]
    jmp prompt
.off:
    cmp word [line], 'of'
    jne .unknown
    cmp byte [line + 2], 'f'
    jne .unknown
    mov rcx, 0x7F
    call [abs b_system]            ; SHUTDOWN
.unknown:
    lea rsi, [unknown]
    mov rcx, 3
    call [abs b_output]
    jmp prompt
newprompt: db 13, 10, '>'
version: db 13, 10, '1.0'
ran: db 13, 10, 'ran'
unknown: db 13, 10, '?'
echo: db 0
line: times 16 db 0
"""


def test_a_monitor_built_for_0x1E0000_runs_there_reading_keys_after_hlt(tmp_path, backend):
    image = assemble(tmp_path, MONITOR_LIKE, org="0x1E0000", suffix=".bin")
    done = subprocess.run([sys.executable, "-m", "pybaremetal", "run", image, "--load-at", "0x1E0000",
                           "--no-pin"], input=b"ver\nrun\r\nxyz\noff\nver\n", capture_output=True,
                          cwd=ROOT, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"\r\n>ver\r\n1.0\r\n>run\r\nran\r\n>xyz\r\n?\r\n>off"
    ended = subprocess.run([sys.executable, "-m", "pybaremetal", "run", image, "--no-pin"],
                           input=b"ver\n", capture_output=True, cwd=ROOT, timeout=30)   # .bin: 0x1E0000
    assert (ended.returncode, ended.stdout) == (0, b"\r\n>ver\r\n1.0\r\n>")   # input ended: off


@pytest.mark.parametrize("args, message", [
    (["--load-at", "0x100000"], "--load-at 0x100000: a binary runs at 0xFFFF800000000000"),
    (["--load-at", "0x1FF000"], "does not fit below 0x200000"),
])
def test_bad_load_addresses_are_one_clear_line(tmp_path, args, message):
    image = assemble(tmp_path, "times 0x2000 nop\nret\n", org="0x1E0000", suffix=".bin")
    done = subprocess.run([sys.executable, "-m", "pybaremetal", "run", image, *args], capture_output=True,
                          cwd=ROOT, timeout=30)
    assert done.returncode == 2
    assert message in done.stderr.decode() and len(done.stderr.decode().strip().splitlines()) == 1


@pytest.mark.filterwarnings("ignore:Machine\\(cores=")
def test_hlt_on_another_core_waits_without_stopping_the_machine(tmp_path, backend):
    image = assemble(tmp_path, """
    mov rcx, 0x12
    lea rax, [worker]
    mov edx, 1
    call [abs b_system]            ; SMP_SET(worker, core 1)
.spin:
    cmp byte [started], 0
    je .spin
    mov rcx, 0x72
    mov eax, 20000
    call [abs b_system]            ; DELAY 20 ms while core 1 sits in hlt
    mov eax, 42
    ret                            ; the run ends; core 1 is stopped in its hlt
align 16
worker:
    mov byte [started], 1
.idle:
    hlt                            ; no input, no callback: waits, the machine goes on
    jmp .idle
started: db 0
""")
    with bm.Machine(cores=2, memory="16M", console="capture", pin=False) as m:
        assert binary.run(m, image, []) == 42


def test_code_rewritten_after_running_runs_as_rewritten(tmp_path, backend):
    """Self-modifying code: a routine written, run, rewritten after other stores have evicted
    its page from the emulated TLB (a store to the page's other half first), and a fresh page
    written as data through the identity-mapped alias, then run, then rewritten through that
    alias: each run sees the latest bytes (the emulated CPU's TLB keeps pages holding code
    checked)."""
    image = assemble(tmp_path, """
    lea rbx, [routine]
    mov byte [rbx], 0xB8           ; mov eax, 1 / ret
    mov dword [rbx + 1], 1
    mov byte [rbx + 5], 0xC3
    call rbx
    add al, '0'
    mov [result], al
    mov rcx, 1024                  ; a store on each of 1024 other pages
    lea rdi, [routine + 0x10000]
.sweep:
    mov byte [rdi], 1
    add rdi, 4096
    dec rcx
    jnz .sweep
    mov byte [rbx + 0x800], 1      ; the page again, away from the code
    mov dword [rbx + 1], 2
    call rbx
    add al, '0'
    mov [result + 1], al
    lea rbx, [fresh]               ; its identity-mapped alias: physical 0x200000 + offset
    mov rsi, rbx
    mov rax, 0xFFFF800000000000 - 0x200000
    sub rsi, rax
    mov byte [rsi + 0x800], 1      ; a data page seen through the alias first
    mov byte [rbx], 0xB8
    mov dword [rbx + 1], 3
    mov byte [rbx + 5], 0xC3
    call rbx
    add al, '0'
    mov [result + 2], al
    mov dword [rsi + 1], 4         ; rewritten through the alias
    call rbx
    add al, '0'
    mov [result + 3], al
    lea rsi, [result]
    mov rcx, 4
    call [abs b_output]
    xor eax, eax
    ret
result: times 4 db 0
align 4096
routine: times 4096 db 0
fresh: times 4096 db 0
""")
    code, out = run_image(image)
    assert (code, out) == (0, b"1234")

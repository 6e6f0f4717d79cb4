"""What real flat binaries need from the machine, on every CPU backend: SSE and x87, TLS through
FS_BASE, a heap over the whole app window, guest callbacks, the command line, a screen, faults
named by vector, host dispatch state out of the guest's reach, exact lock-prefixed counting
across cores, and a machine stopped from outside."""
import subprocess
import sys
import threading
import time

import pytest

import pybaremetal as bm
from pybaremetal import cpu
from pybaremetal.apps import binary
from pybaremetal._native import lib
from test_binary import ROOT, assemble, use_backend


@pytest.fixture(autouse=True, params=["emu", "kvm"])
def backend(request, monkeypatch):
    return use_backend(request.param, request, monkeypatch)


def run(image, **kwargs):
    kwargs.setdefault("memory", "16M")
    kwargs.setdefault("cores", 1)
    with bm.Machine(console="capture", pin=False, **kwargs) as m:
        code = binary.run(m, image, [])
        return code, m.console.output()


def crash(image, **kwargs):
    with bm.Machine(cores=1, memory="16M", console="capture", pin=False, **kwargs) as m:
        with pytest.raises(cpu.AppCrashed) as info:
            binary.run(m, image, [])
        return str(info.value)


@pytest.mark.fpu
def test_sse_and_x87_arithmetic(tmp_path):
    image = assemble(tmp_path, """
    movsd xmm0, [two]
    sqrtsd xmm0, xmm0
    mulsd xmm0, [thousand]
    cvttsd2si rax, xmm0            ; 1414
    mov rcx, 0x71
    call [abs b_system]            ; DUMP_RAX
    fld qword [two]
    fsqrt
    fmul qword [thousand]
    fistp qword [result]           ; 1414 (round to nearest)
    mov rax, [result]
    mov rcx, 0x71
    call [abs b_system]
    pxor xmm1, xmm1
    movdqu xmm2, [ones]
    paddd xmm1, xmm2
    paddd xmm1, xmm2
    movd eax, xmm1                  ; 2
    ret
align 16
two: dq 2.0
thousand: dq 1000.0
ones: dd 1, 1, 1, 1
result: dq 0
""")
    assert run(image) == (2, b"%016X%016X" % (1414, 1414))


@pytest.mark.fpu
def test_tls_through_wrmsr_fs_base_and_fs_loads(tmp_path):
    image = assemble(tmp_path, """
    lea rax, [block]
    mov rdx, rax
    shr rdx, 32
    mov ecx, 0xC0000100            ; IA32_FS_BASE
    wrmsr
    mov rax, [fs:8]                ; block[1]
    mov rcx, 0x71
    call [abs b_system]
    mov ecx, 0xC0000100
    rdmsr
    shl rdx, 32
    or rax, rdx
    lea rbx, [block]
    sub rax, rbx                   ; 0 when rdmsr read back what wrmsr wrote
    cli
    sti
    pause
    rdtsc
    push rbx
    xor eax, eax
    cpuid
    pop rbx
    mov eax, 0
    ret
align 8
block: dq 0x1111, 0xC0FFEE
""")
    assert run(image) == (0, b"%016X" % 0xC0FFEE)


@pytest.mark.fpu                                     # gcc -O2 vectorizes the loops (SSE)
def test_the_app_window_is_free_for_a_heap_while_calls_are_made(tmp_path):
    source = tmp_path / "heap.c"
    source.write_text(r"""
#include "libBareMetal.h"
extern char __bss_end[];
int main(void) {
    u64 window = 0xFFFF800000000000ull + (b_system(FREE_MEMORY, 0, 0) << 20);
    u64 *start = (u64 *)(((u64)__bss_end + 4095) & ~4095ull), *end = (u64 *)window;
    for (u64 *p = start; p < end; p++) {
        *p = (u64)p ^ 0x5A5A5A5A5A5A5A5Aull;
        if (((u64)p & 0xFFFFF) == 0)
            b_system(TIMECOUNTER, 0, 0);     /* a call (and its stack) every MiB */
    }
    for (u64 *p = start; p < end; p++)
        if (*p != ((u64)p ^ 0x5A5A5A5A5A5A5A5Aull))
            return 1;
    b_output("heap ok\n", 8);
    return 0;
}
""")
    image = binary.build([str(source)], str(tmp_path / "heap.app"))
    assert run(image, memory="24M", cores=2) == (0, b"heap ok\n")


TIMER_SWITCH = """
    mov rcx, 0x60
    lea rax, [on_tick]
    call [abs b_system]            ; CALLBACK_TIMER(on_tick)
    lea rax, [stack_b_top - 8]
    lea rbx, [thread_b]
    mov [rax], rbx
    mov [saved_b], rax
thread_a:
    inc qword [count_a]
    cmp byte [flag], 0
    je thread_a
    call switch
    cmp qword [switches], 6
    jb thread_a
    mov rcx, 0x60
    xor eax, eax
    call [abs b_system]            ; CALLBACK_TIMER(0)
    cmp qword [count_b], 0
    je .fail
    mov eax, [switches]
    ret
.fail:
    mov eax, 99
    ret
thread_b:
    inc qword [count_b]
    cmp byte [flag], 0
    je thread_b
    call switch
    jmp thread_b
switch:                            ; the cooperative switch the tick asked for
    mov byte [flag], 0
    inc qword [switches]
    mov rax, [saved_b]
    mov [saved_b], rsp
    mov rsp, rax
    ret
align 16
on_tick:                           ; runs on the service thread's own CPU
    mov byte [flag], 1
    ret
align 8
flag: dq 0
switches: dq 0
count_a: dq 0
count_b: dq 0
saved_b: dq 0
stack_b: times 512 dq 0
stack_b_top:
"""


def test_a_timer_callback_preempts_a_spinning_loop(tmp_path):
    image = assemble(tmp_path, TIMER_SWITCH)
    assert run(image, cores=2) == (6, b"")


def test_a_network_callback_runs_guest_code_per_frame(tmp_path):
    image = assemble(tmp_path, """
    mov rcx, 0x61
    lea rax, [on_frame]
    call [abs b_system]            ; CALLBACK_NETWORK(on_frame)
    lea rsi, [frame]
    mov rcx, 20
    xor edx, edx
    call [abs 0x100020]            ; b_net_tx: the wire brings it back
    mov rcx, 0                     ; TIMECOUNTER
    call [abs b_system]
    mov r12, rax
.wait:
    cmp qword [got], 0
    jne .done
    mov rcx, 0
    call [abs b_system]
    sub rax, r12
    mov rbx, 5000000000            ; 5 s: the callback never came
    cmp rax, rbx
    jb .wait
.done:
    mov rcx, 0x61
    xor eax, eax
    call [abs b_system]
    mov rax, [got]
    ret
align 16
on_frame:
    xor edx, edx
    call [abs 0x100028]            ; b_net_rx: RCX = length
    mov [got], rcx
    ret
align 8
got: dq 0
frame: db 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 2, 0, 0, 0, 0, 1, 0xab, 0xba, 'B', 'a', 'r', 'e', 'M', 'e'
""")
    assert run(image, cores=2, nics=["wire"], input=False) == (20, b"")


def test_a_keyboard_callback_runs_guest_code_per_key(tmp_path):
    image = assemble(tmp_path, """
    mov rcx, 0x62
    lea rax, [on_key]
    call [abs b_system]            ; CALLBACK_KEYBOARD(on_key)
    mov rcx, 0                     ; TIMECOUNTER
    call [abs b_system]
    mov r12, rax
.wait:
    cmp qword [got], 3
    je .done
    mov rcx, 0
    call [abs b_system]
    sub rax, r12
    mov rbx, 5000000000            ; 5 s: the callbacks never came
    cmp rax, rbx
    jb .wait
.done:
    mov rcx, 0x62
    xor eax, eax
    call [abs b_system]
    mov rax, [sum]
    sub rax, 300                   ; an exit status is a byte
    ret
align 16
on_key:
    call [abs 0x100010]            ; b_input: AL = the key
    movzx eax, al
    add [sum], rax
    inc qword [got]
    ret
align 8
got: dq 0
sum: dq 0
""")
    assert run(image, input=b"xyz") == (sum(b"xyz") - 300, b"")


CMDLINE = """
    mov rsi, 0x5A00
    xor ecx, ecx
.len:
    cmp byte [rsi + rcx], 0
    je .print
    inc rcx
    jmp .len
.print:
    call [abs b_output]
    xor eax, eax
    ret
"""


def test_cmdline_is_read_back_at_0x5a00(tmp_path):
    image = assemble(tmp_path, CMDLINE)
    text = "ip=10.0.0.2::10.0.0.1:255.255.255.0::eth0:off"
    done = subprocess.run([sys.executable, "-m", "pybaremetal", "run", image, "--cores", "1", "--no-pin",
                           "--cmdline", text], capture_output=True, cwd=ROOT, timeout=60)
    assert (done.returncode, done.stdout) == (0, text.encode()), done.stderr
    assert run(image, cmdline="console=ttyS0") == (0, b"console=ttyS0")
    assert run(image) == (0, b"")
    with pytest.raises(bm.ArgumentError, match="cmdline"):
        bm.Machine(cmdline="x" * 2000)


def test_a_binary_draws_on_a_screen(tmp_path, backend):
    image = assemble(tmp_path, """
    mov rcx, 0x20
    call [abs b_system]            ; SCREEN_LFB_GET
    mov rdi, rax
    mov rcx, 0x21
    call [abs b_system]
    mov rbx, rax
    mov rcx, 0x22
    call [abs b_system]
    imul rbx, rax                  ; pixels
    mov rax, [0x5080]              ; the InfoMap says the same address
    cmp rax, rdi
    jne .bad
    mov eax, 0x00336699
.fill:
    mov [rdi], eax
    add rdi, 4
    dec rbx
    jnz .fill
    xor eax, eax
    ret
.bad:
    mov eax, 1
    ret
""")
    with bm.Machine(cores=1, memory="16M", console="capture", pin=False, screen="64x32") as m:
        assert binary.run(m, image, []) == 0
        assert (m.screen.pixels == 0x336699).all()
    if backend == "kvm" and not cpu.kvm.native_ring0():
        return                                      # 786,432 pixels at ~1.6 us an instruction
    png = tmp_path / "shot.png"
    done = subprocess.run([sys.executable, "-m", "pybaremetal", "run", image, "--cores", "1", "--no-pin",
                           "--screen", "1024x768", "--screen-png", str(png)], capture_output=True, cwd=ROOT,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert png.stat().st_size > 0


@pytest.mark.parametrize("body, expected", [
    ("ud2\n", "#UD invalid opcode at rip 0xffff800000000000"),
    ("xor ecx, ecx\ndiv rcx\n", "#DE divide error at rip 0xffff800000000002"),
    ("mov rax, [abs 0x7F000000]\nret\n", "#PF page fault at rip 0xffff800000000000 touching 0x7f000000"),
    ("mov rax, 0x8000000000000000\nmov rax, [rax]\n", "#GP general protection at rip 0xffff80000000000a"),
    ("syscall\nret\n", "#UD invalid opcode at rip 0xffff800000000000"),    # EFER.SCE is clear
])
def test_faults_are_named_by_vector_core_rip_and_bytes(tmp_path, body, expected):
    message = crash(assemble(tmp_path, body))
    assert "core 0" in message and expected in message, message
    assert "[" in message and "no code there" not in message


def test_avx_on_the_emulated_cpu_is_a_clear_ud(tmp_path, request, monkeypatch):
    use_backend("emu", request, monkeypatch)          # the emulated CPU's own limit
    message = crash(assemble(tmp_path, "vaddps ymm0, ymm1, ymm2\nret\n"))
    assert "#UD invalid opcode at rip 0xffff800000000000" in message
    assert "AVX not supported by the emulated CPU" in message


ESCAPE = """
    mov rcx, 0x12
    lea rax, [worker]
    mov rdx, 1
    call [abs b_system]            ; SMP_SET(worker, 1)
.wait_started:
    cmp byte [started], 0
    je .wait_started
    mov rax, [0x1FF808]            ; core 1's slot word: what does the guest see?
    and rax, ~0xF
    lea rbx, [worker]
    cmp rax, rbx
    jne .leak
    mov rax, 0x414141414140 | 3    ; the attack: a host address of our choosing, present+active
    mov [0x1FF808], rax
    mov [0x1FF810], rax
    mov byte [release], 1
.wait_idle:
    mov rcx, 0x16
    call [abs b_system]            ; SMP_BUSY
    test rax, rax
    jnz .wait_idle
    mov rcx, 0x72
    mov rax, 20000
    call [abs b_system]            ; DELAY 20 ms: a worker that trusted the word would be gone
    mov byte [started], 0
    mov rcx, 0x12
    lea rax, [worker]
    mov rdx, 1
    call [abs b_system]            ; core 1 still takes honest work
    mov byte [release], 1
.wait_again:
    cmp byte [started], 0
    je .wait_again
    lea rsi, [ok]
    mov rcx, 3
    call [abs b_output]
    xor eax, eax
    ret
.leak:
    mov eax, 1
    ret
align 16
worker:
    mov byte [started], 1
.spin:
    cmp byte [release], 0
    je .spin
    mov byte [release], 0
    ret
started: db 0
release: db 0
ok: db 'ok', 10
"""


def test_the_slot_table_cannot_make_the_host_call_a_guest_chosen_address(tmp_path):
    image = assemble(tmp_path, ESCAPE)
    done = subprocess.run([sys.executable, "-m", "pybaremetal", "run", image, "--cores", "3", "--no-pin"],
                          capture_output=True, cwd=ROOT, timeout=60)
    assert (done.returncode, done.stdout) == (0, b"ok\n"), done.stderr


SMP_COUNT = """
    mov rcx, 0x11
    call [abs b_system]            ; SMP_NUMCORES
    mov r12, rax
    mov r13, 1
.start:
    cmp r13, r12
    jae .own
    mov rcx, 0x12
    lea rax, [count]
    mov rdx, r13
    call [abs b_system]            ; SMP_SET(count, core)
    inc r13
    jmp .start
.own:
    call count
.wait:
    mov rcx, 0x16
    call [abs b_system]            ; SMP_BUSY
    test rax, rax
    jnz .wait
    mov rax, [locked]
    mov rcx, 0x71
    call [abs b_system]
    mov rax, [atomic]
    mov rcx, 0x71
    call [abs b_system]
    xor eax, eax
    ret
align 16
count:
    mov rcx, ITERATIONS
.again:
    lock bts qword [lock_word], 0  ; a guest spin lock
    jc .again
    mov rax, [locked]              ; a plain increment under it
    inc rax
    mov [locked], rax
    lock btr qword [lock_word], 0
    lock inc qword [atomic]        ; and a locked one outside it
    mov rax, 1
    xchg [xchg_word], rax
    dec rcx
    jnz .again
    ret
align 8
lock_word: dq 0
locked: dq 0
atomic: dq 0
xchg_word: dq 0
"""


def test_lock_prefixed_instructions_count_exactly_across_cores(tmp_path, backend):
    iterations = 100000 if backend == "emu" or cpu.kvm.native_ring0() else 2000
    image = assemble(tmp_path, SMP_COUNT.replace("ITERATIONS", str(iterations)))
    cores = 3
    code, out = run(image, cores=cores, memory="32M")
    assert (code, out) == (0, b"%016X%016X" % (cores * iterations, cores * iterations))


def test_a_spinning_binary_stops_within_100_ms_when_the_machine_is_stopped(tmp_path):
    image = assemble(tmp_path, """
    mov rcx, 0x12
    lea rax, [spin]
    mov rdx, 1
    call [abs b_system]            ; core 1 spins too
spin:
    jmp spin
""")
    with bm.Machine(cores=2, memory="16M", console="capture", pin=False) as m:
        stopped = []

        def stop():
            time.sleep(0.3)
            stopped.append(time.monotonic())
            lib.bm_guest_shutdown(m._c)

        threading.Thread(target=stop).start()
        assert binary.run(m, image, []) is None         # as SHUTDOWN: the run ends, exit 0
        assert time.monotonic() - stopped[0] < 0.1


def test_stdout_set_sends_b_output_to_a_guest_function(tmp_path):
    image = assemble(tmp_path, """
    mov rcx, 0x53
    call [abs b_system]            ; STDOUT_GET: the default
    mov r12, rax
    mov rcx, 0x52
    lea rax, [upper]
    call [abs b_system]            ; STDOUT_SET(upper)
    lea rsi, [msg]
    mov rcx, 3
    call [abs b_output]            ; -> upper(msg, 3)
    mov rcx, 0x52
    mov rax, r12
    call [abs b_system]            ; back to the default
    lea rsi, [msg]
    mov rcx, 3
    call [abs b_output]
    xor eax, eax
    ret
align 16
upper:                             ; RSI, RCX as b_output got them
    lea rdi, [buffer]
    xor edx, edx
.copy:
    mov al, [rsi + rdx]
    sub al, 32
    mov [rdi + rdx], al
    inc rdx
    cmp rdx, rcx
    jb .copy
    mov rsi, rdi
    call r12                       ; the default output, through the call table's stub
    ret
msg: db 'abc'
buffer: db 0, 0, 0
""")
    assert run(image) == (0, b"ABCabc")


FUZZ = r'''
import random, sys, threading
import pybaremetal as bm
from pybaremetal import cpu
from pybaremetal.apps import binary
from pybaremetal._native import lib

seed_image = open(sys.argv[1], "rb").read()
rng = random.Random(20261130)
outcomes = {}
machine = None
count = int(sys.argv[2])
for i in range(count):
    if i % 2:
        image = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 512)))
    else:
        image = bytearray(seed_image)
        for _ in range(rng.randrange(1, 8)):
            image[rng.randrange(len(image))] = rng.randrange(256)
        image = bytes(image)
    if machine is None:
        machine = bm.Machine(cores=2, memory="16M", console="capture", input=False, pin=False).boot()
    timer = threading.Timer(0.1, lib.bm_guest_shutdown, (machine._c,))
    timer.start()
    try:
        binary.execute(machine, image)
        outcome = "returned"
    except cpu.AppCrashed:
        outcome = "crashed"
    except bm.Reboot:
        outcome = "rebooted"
        machine.reboot()
    except bm.Shutdown:
        outcome = "stopped"
    timer.cancel()
    timer.join()
    if outcome == "stopped" or lib.bm_machine_state(machine._c) != 1:
        machine.halt()
        machine = None
    outcomes[outcome] = outcomes.get(outcome, 0) + 1
if machine is not None:
    machine.halt()
print(sum(outcomes.values()), sorted(outcomes.items()))
'''


def test_fuzzed_binaries_never_crash_or_hang_the_host(tmp_path, backend):
    # where KVM emulates ring 0 (PVM) every instruction is slow: fewer binaries, same checks
    count = 200 if backend == "emu" or cpu.kvm.native_ring0() else 20
    seed = assemble(tmp_path, SMP_COUNT.replace("ITERATIONS", "1000"))
    script = tmp_path / "fuzz.py"
    script.write_text(FUZZ)
    done = subprocess.run([sys.executable, str(script), seed, str(count)], capture_output=True, cwd=ROOT, timeout=120,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith(f"{count} ".encode()), done.stdout

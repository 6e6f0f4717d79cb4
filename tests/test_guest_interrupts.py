"""A CALLBACK_TIMER tick interrupts a binary's code on core 0 as the kernel's timer interrupt
does: the callback is entered as if the interrupted instruction had called it (return address
on the interrupted code's own stack, registers as the code left them), only while interrupts
are enabled (IF).  User-level thread libraries (BareMetal-AppPort's pthreads) switch stacks in
that callback to preempt threads that never make a call."""
import pytest

import pybaremetal as bm
from pybaremetal.apps import binary
from test_guest_fidelity import assemble, backend  # noqa: F401 (fixture)


def run_image(path, cores):
    with bm.Machine(cores=cores, memory="16M", console="capture") as m:
        return binary.run(m, path, []), m.console.output()

# Two threads, switched by the tick only: neither loop makes a call.  The tick handler saves
# what it uses, swaps stacks and returns into the other thread.  Exit status 0 = all good;
# otherwise which check failed.
PREEMPT = """
    cli                            ; IF clear: no tick may come in
    mov rcx, 0x60
    lea rax, [on_tick]
    call [abs b_system]            ; CALLBACK_TIMER(on_tick)
    xor ecx, ecx
    call [abs b_system]            ; TIMECOUNTER (ns)
    lea r12, [rax + 30000000]
.masked:
    xor ecx, ecx
    call [abs b_system]
    cmp rax, r12
    jb .masked                     ; 30 ms with interrupts disabled
    mov rax, [ticks]
    mov [ticks_masked], rax
    lea rax, [stack_b_top - 48]    ; thread B's stack: as if on_tick had suspended it
    mov [other_rsp], rax
    lea rbx, [thread_b]
    mov [stack_b_top - 8], rbx     ; on_tick's ret goes to thread_b
    mov qword [stack_b_top - 16], 0x202
    rdtsc
    shl rdx, 32
    or rax, rdx
    mov rdi, 30000000000
    add rdi, rax                   ; give up ~10 s of TSC later (no tick ever switched)
    mov rbx, 0x1111111111111111
    mov rsi, 0x2222222222222222
    mov r8, rsp
    sti
thread_a:                          ; no calls in here: only a tick can switch
    inc qword [count_a]
    cmp rbx, [a_rbx]
    jne .bad_regs
    cmp rsi, [a_rsi]
    jne .bad_regs
    cmp r8, rsp
    jne .bad_regs
    rdtsc
    shl rdx, 32
    or rax, rdx
    cmp rax, rdi
    ja .stuck
    cmp qword [count_b], 0
    je thread_a
    cmp qword [switches], 6
    jb thread_a
    mov rcx, 0x60
    xor eax, eax
    call [abs b_system]            ; CALLBACK_TIMER(0)
    xor eax, eax
    cmp qword [ticks_masked], 0
    je .masked_ok
    mov eax, 2
.masked_ok:
    cmp qword [bad_core], 0
    je .core_ok
    mov eax, 3
.core_ok:
    cmp qword [bad_return], 0
    je .done
    mov eax, 4
.done:
    ret
.bad_regs:
    mov eax, 1
    ret
.stuck:
    mov eax, 5
    ret
thread_b:
    mov rbx, 0x3333333333333333
    mov rdx, 0x4444444444444444
.loop:
    inc qword [count_b]
    cmp rbx, [b_rbx]
    jne .bad
    cmp rdx, [b_rdx]
    je .loop
.bad:
    mov qword [bad_return], 1
    jmp .bad
align 16
on_tick:                           ; entered as if the interrupted code called it
    pushfq
    push rax
    push rbx
    push rcx
    push rdx
    inc qword [ticks]
    mov rax, [rsp + 40]            ; the return address: app code, never a kernel stub
    mov rbx, 0xFFFF800000000000
    cmp rax, rbx
    jae .in_app
    mov qword [bad_return], 1
.in_app:
    mov rcx, 0x10
    call [abs b_system]            ; SMP_ID: the tick runs on core 0
    test rax, rax
    jz .on_core0
    mov qword [bad_core], 1
.on_core0:
    cmp qword [other_rsp], 0
    je .no_switch
    inc qword [switches]
    mov rax, [other_rsp]
    mov [other_rsp], rsp
    mov rsp, rax
.no_switch:
    pop rdx
    pop rcx
    pop rbx
    pop rax
    popfq
    ret
align 8
a_rbx: dq 0x1111111111111111
a_rsi: dq 0x2222222222222222
b_rbx: dq 0x3333333333333333
b_rdx: dq 0x4444444444444444
ticks: dq 0
ticks_masked: dq 0
switches: dq 0
count_a: dq 0
count_b: dq 0
other_rsp: dq 0
bad_core: dq 0
bad_return: dq 0
stack_b: times 512 dq 0
stack_b_top:
"""


@pytest.mark.parametrize("cores", [1, 2])
def test_a_timer_tick_interrupts_core_0s_code_like_the_kernels_timer_interrupt(tmp_path, backend, cores):
    image = assemble(tmp_path, PREEMPT)
    assert run_image(image, cores) == (0, b"")

"""The CPU backends for flat binaries against the same C code as a native Linux program.

One C source, four kernels (an integer loop, a floating-point loop, a sieve, calls through the
call table), built twice: a flat binary (``baremetal cc -o x.app``, run with ``--cpu emu``, and
``--cpu kvm`` where KVM runs ring 0 in hardware) and an ordinary Linux program (gcc -O2).  Each
times its kernel itself (TIMECOUNTER in the binary, CLOCK_MONOTONIC natively) and prints
nanoseconds per iteration, so process start and machine boot are outside the figures.  The
iteration count comes from the command line (--cmdline for the binary).
"""
import os
import subprocess
import sys

import pytest

from pybaremetal import cpu
from pybaremetal.apps import binary

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SOURCE = r"""
#ifdef FLAT
#include "libBareMetal.h"
typedef unsigned long long ull;
static ull now_ns(void) { return b_system(TIMECOUNTER, 0, 0); }
static const char *arguments(void) { return (const char *)0x5A00; }
static void say(const char *s, int n) { b_output(s, n); }
#else
#include <stdio.h>
#include <time.h>
#include <unistd.h>
typedef unsigned long long ull;
static ull now_ns(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec * 1000000000ull + t.tv_nsec; }
static const char *argument;
static const char *arguments(void) { return argument; }
static void say(const char *s, int n) { if (write(1, s, n) < 0) {} }
#endif

static ull parse(const char *s, int *kernel)
{
    *kernel = *s++ - '0';
    ull n = 0;
    while (*s == ' ') s++;
    while (*s >= '0' && *s <= '9') n = n * 10 + (ull)(*s++ - '0');
    return n;
}

static void number(ull v)
{
    char digits[24];
    int i = 24;
    do { digits[--i] = (char)('0' + v % 10); v /= 10; } while (v);
    say(digits + i, 24 - i);
}

static unsigned char sieve[1 << 24];

static ull integer_loop(ull n)
{
    ull x = 88172645463325252ull, sum = 0;
    for (ull i = 0; i < n; i++) {          /* xorshift64 */
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        sum += x & 0xFF;
    }
    return sum;
}

static ull fp_loop(ull n)
{
    double s = 0.0, x = 1.0;
    for (ull i = 1; i <= n; i++) {
        s += 1.0 / (x * x);
        x += 1.0;
    }
    return (ull)(s * 1e9);
}

static ull sieve_loop(ull n)
{
    if (n > sizeof sieve) n = sizeof sieve;
    for (ull i = 0; i < n; i++) sieve[i] = 1;
    for (ull i = 2; i * i < n; i++)
        if (sieve[i])
            for (ull j = i * i; j < n; j += i) sieve[j] = 0;
    ull count = 0;
    for (ull i = 2; i < n; i++) count += sieve[i];
    return count;
}

static ull calls_loop(ull n)
{
    ull sum = 0;
    for (ull i = 0; i < n; i++) sum += now_ns() != 0;
    return sum;
}

#ifdef FLAT
int main(void)
#else
int main(int argc, char **argv)
#endif
{
#ifndef FLAT
    argument = argc > 1 ? argv[1] : "0 0";
#endif
    int kernel;
    ull n = parse(arguments(), &kernel), result = 0;
    ull start = now_ns();
    switch (kernel) {
    case 0: result = integer_loop(n); break;
    case 1: result = fp_loop(n); break;
    case 2: result = sieve_loop(n); break;
    case 3: result = calls_loop(n); break;
    }
    ull elapsed = now_ns() - start;
    number(elapsed);
    say(" ", 1);
    number(result);
    say("\n", 1);
    return 0;
}
"""

KERNELS = [  # (kernel, name, iterations on emu/native, iterations on KVM that emulates ring 0, target)
    (0, "integer loop (xorshift64)", 20_000_000, 100_000, "ratio <= 3"),
    (1, "floating-point loop (sum 1/x^2)", 10_000_000, None, "ratio <= 10"),
    (2, "memory-heavy loop (sieve of 4 M)", 1 << 22, None, "ratio <= 10"),
]


@pytest.fixture(scope="module")
def programs(tmp_path_factory):
    work = tmp_path_factory.mktemp("cpu")
    source = work / "kernels.c"
    source.write_text(SOURCE)
    flat = binary.build([str(source)], str(work / "kernels.app"), extra_flags=["-DFLAT"])
    native = str(work / "kernels")
    subprocess.run(["gcc", "-O2", str(source), "-o", native], check=True)
    return flat, native


def run_flat(flat, backend, kernel, n):
    done = subprocess.run([sys.executable, "-m", "pybaremetal", "run", flat, "--cpu", backend, "--cores", "1",
                           "--memory", "64M", "--cmdline", f"{kernel} {n}"], capture_output=True, cwd=ROOT,
                          timeout=600, check=True)
    elapsed, result = map(int, done.stdout.split())
    return elapsed, result


def run_native(native, kernel, n):
    done = subprocess.run([native, f"{kernel} {n}"], capture_output=True, timeout=600, check=True)
    elapsed, result = map(int, done.stdout.split())
    return elapsed, result


def best(runs):
    """The fastest of the runs (elapsed, result); every run must agree on the result."""
    assert len({result for _, result in runs}) == 1
    return min(runs)


@pytest.mark.parametrize("kernel, name, n, n_emulated_ring0, target", KERNELS)
def test_kernel_on_each_backend_against_native(programs, record, kernel, name, n, n_emulated_ring0, target):
    flat, native = programs
    if not cpu.emu.available():
        pytest.skip("the emulated CPU is not installed")
    ours = run_flat(flat, "emu", kernel, n)
    peer = best([run_native(native, kernel, n) for _ in range(3)])
    assert ours[1] == peer[1], (ours, peer)            # the same computation
    record(f"{name}, emu", ours[0] / n, peer[0] / n, unit="ns/iteration", peer_name="native Linux program",
           target=target)
    if cpu.kvm.available():
        if cpu.kvm.native_ring0():
            kvm = run_flat(flat, "kvm", kernel, n)
            record(f"{name}, kvm", kvm[0] / n, peer[0] / n, unit="ns/iteration", peer_name="native Linux program",
                   target="ratio <= 1.2")
        elif n_emulated_ring0:                         # PVM: ring 0 emulated by KVM; no SSE
            kvm = run_flat(flat, "kvm", kernel, n_emulated_ring0)
            record(f"{name}, kvm (ring 0 emulated here)", kvm[0] / n_emulated_ring0, peer[0] / n,
                   unit="ns/iteration", peer_name="native Linux program",
                   note="no VMX/SVM: KVM emulates every ring-0 instruction")


def test_calls_per_second_on_the_emulated_cpu(programs, record):
    flat, native = programs
    if not cpu.emu.available():
        pytest.skip("the emulated CPU is not installed")
    n = 500_000
    ours = run_flat(flat, "emu", 3, n)
    peer = best([run_native(native, 3, n) for _ in range(3)])
    record("b_system(TIMECOUNTER) from a binary, emu", n / ours[0] * 1e9, n / peer[0] * 1e9, unit="calls/s",
           peer_name="clock_gettime loop, native", target="ours >= 1000000")


# The floor: the FP loop and the sieve as gcc -O2 emitted them in the flat binary (the same
# instructions), run by unicorn alone from Python: no page tables, no hooks, no runtime.
FLOOR_LOOPS = """BITS 64
ORG 0x10000
fp:                             ; rbx = n
    mov rdx, one
    mov eax, 1
    pxor xmm1, xmm1
    movsd xmm0, [rdx]
    movapd xmm2, xmm0
.loop:
    movapd xmm4, xmm0
    movapd xmm3, xmm2
    add rax, 1
    mulsd xmm4, xmm0
    addsd xmm0, xmm2
    divsd xmm3, xmm4
    addsd xmm1, xmm3
    cmp rbx, rax
    jae .loop
    hlt
sieve:                          ; rbx = n; the count in r13
    mov ecx, 0x1000000
    cmp rbx, rcx
    cmovbe rcx, rbx
    mov rsi, 0x1000000
    xor eax, eax
.init:
    mov byte [rsi+rax], 1
    add rax, 1
    cmp rax, rcx
    jb .init
    mov eax, 4
    mov edx, 2
    jmp .test
.next:
    add rdx, 1
    mov rax, rdx
    imul rax, rdx
    cmp rax, rcx
    jae .count
.test:
    cmp byte [rsi+rdx], 0
    je .next
    cmp rax, rcx
    jae .next
.strike:
    mov byte [rsi+rax], 0
    add rax, rdx
    cmp rax, rcx
    jb .strike
    jmp .next
.count:
    xor r13d, r13d
    mov eax, 2
.sum:
    movzx edx, byte [rsi+rax]
    add rax, 1
    add r13, rdx
    cmp rax, rcx
    jb .sum
    hlt
align 8
one: dq 1.0
"""


def bare_unicorn(code, label_offset, n):
    """ns the loop at `label_offset` took for n iterations in a fresh unicorn, and its integer result"""
    import time
    import unicorn
    from unicorn import x86_const as x86
    uc = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_64)
    uc.mem_map(0, 0x2000000)
    uc.mem_write(0x10000, code)
    uc.reg_write(x86.UC_X86_REG_CR4, uc.reg_read(x86.UC_X86_REG_CR4) | 0x600)   # OSFXSR: SSE
    uc.reg_write(x86.UC_X86_REG_RBX, n)
    uc.reg_write(x86.UC_X86_REG_RSP, 0x8000)
    hlt = 0x10000 + code.index(b"\xf4", label_offset)
    start = time.perf_counter_ns()
    uc.emu_start(0x10000 + label_offset, hlt)
    return time.perf_counter_ns() - start, uc.reg_read(x86.UC_X86_REG_R13)


@pytest.mark.parametrize("kernel, name, n", [(1, "floating-point loop", 10_000_000), (2, "sieve of 4 M", 1 << 22)])
def test_emu_against_bare_unicorn_running_the_same_instructions(programs, record, tmp_path, kernel, name, n):
    flat, _ = programs
    if not cpu.emu.available():
        pytest.skip("the emulated CPU is not installed")
    source, image = tmp_path / "loops.asm", tmp_path / "loops.bin"
    source.write_text(FLOOR_LOOPS)
    subprocess.run(["nasm", "-f", "bin", str(source), "-o", str(image)], check=True)
    code = image.read_bytes()
    offset = 0 if kernel == 1 else code.index(bytes.fromhex("b900000001"))   # sieve: mov ecx, 0x1000000
    ours = run_flat(flat, "emu", kernel, n)
    peer = min(bare_unicorn(code, offset, n) for _ in range(2))
    if kernel == 2:
        assert ours[1] == peer[1], (ours, peer)        # the same count of primes
    record(f"{name}, emu vs bare unicorn (same instructions, no runtime)", ours[0] / n, peer[0] / n,
           unit="ns/iteration", peer_name="unicorn alone from Python",
           note="the engine's floor: TCG runs SSE arithmetic through softfloat helpers")

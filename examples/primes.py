"""Count the primes below N on every core through the work queue, with tasks compiled to C.

    baremetal run examples/primes.py --cores 2 -- 5000000

Each task counts the primes in one chunk of 10,000 numbers (trial division by the primes up
to sqrt(N)) and adds its count to a shared total.  The tasks are C (built here with cffi), so
the cores run them without Python.  Prints the count, the time on all cores, the time on core 0
alone, and the speedup.
"""
import importlib.util
import os
import sys
import tempfile
import time

import cffi

import pybaremetal as bm

CHUNK = 10_000

SOURCE = r"""
#include <stdatomic.h>
typedef unsigned long long u64;
static u64 limit;
static unsigned base[8192];
static int num_base;
static _Atomic u64 found;

void primes_setup(u64 n)
{
    limit = n;
    num_base = 0;
    for (unsigned p = 2; (u64)p * p < n && num_base < 8192; p++) {
        int prime = 1;
        for (int i = 0; i < num_base && base[i] * base[i] <= p; i++)
            if (p % base[i] == 0) { prime = 0; break; }
        if (prime)
            base[num_base++] = p;
    }
    atomic_store(&found, 0);
}

u64 primes_found(void) { return atomic_load(&found); }

/* the task: count the primes in chunk k, add them to the total */
void primes_task(u64 k)
{
    u64 lo = k * CHUNK, hi = lo + CHUNK, count = 0;
    if (hi > limit)
        hi = limit;
    for (u64 n = lo < 2 ? 2 : lo; n < hi; n++) {
        int prime = 1;
        for (int i = 0; i < num_base && (u64)base[i] * base[i] <= n; i++)
            if (n % base[i] == 0) { prime = 0; break; }
        count += prime;
    }
    atomic_fetch_add(&found, count);
}

void (*const primes_task_address)(u64) = primes_task;   /* the real address, for the queue */
"""

CDEF = """
typedef unsigned long long u64;
void primes_setup(u64 n);
u64 primes_found(void);
void primes_task(u64 k);
void (*const primes_task_address)(u64);
"""


def build():
    """Compile the tasks with cffi into a temporary directory and import them."""
    ffi = cffi.FFI()
    ffi.cdef(CDEF)
    ffi.set_source("_primes_tasks", SOURCE.replace("CHUNK", str(CHUNK)),
                   extra_compile_args=["-O2", "-std=gnu11"])
    directory = tempfile.mkdtemp(prefix="primes-")
    path = ffi.compile(tmpdir=directory)
    spec = importlib.util.spec_from_file_location("_primes_tasks", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ffi, module.lib


def main():
    limit = int(sys.argv[1]) if len(sys.argv) > 1 else 5_000_000
    ffi, lib = build()
    machine = bm.current_machine()
    cores = bm.b_system(bm.SMP_NUMCORES)
    task = lib.primes_task_address
    chunks = -(-limit // CHUNK)

    lib.primes_setup(limit)
    start = time.perf_counter()
    for k in range(chunks):
        lib.primes_task(k)                    # core 0 alone
    one_core = time.perf_counter() - start
    alone = lib.primes_found()

    lib.primes_setup(limit)
    start = time.perf_counter()
    for k in range(chunks):
        machine.smp.enqueue(task, k, block=True)
    machine.smp.wait()                        # core 0 runs tasks too while it waits
    all_cores = time.perf_counter() - start
    count = lib.primes_found()

    if count != alone:
        bm.b_output(f"error: {count} primes on {cores} cores but {alone} on one\n")
        return 1
    bm.b_output(f"{count} primes below {limit:,}\n"
                f"{cores} cores: {all_cores:.3f} s   1 core: {one_core:.3f} s   "
                f"speedup {one_core / all_cores:.2f}x\n")
    return 0

"""Tasks written in Python and compiled with numba: primes below N on every core.

    pip install 'pybaremetal[numba]'
    baremetal run examples/numba_tasks.py --cores 2 -- 2000000

A numba.cfunc with the signature void(uint64*) is a C function: the cores call it through
the work queue like any C task, without the GIL.  Each task gets the address of its three
u64 words in the machine's flat memory: [first number, end, count found].
"""
import sys
import time

import numpy as np

import pybaremetal as bm

CHUNK = 10_000


def build():
    import numba
    from numba import types

    @numba.cfunc(types.void(types.CPointer(types.uint64)), nopython=True)
    def count_primes(words):
        job = numba.carray(words, 3)
        count = 0
        for n in range(max(job[0], 2), job[1]):
            prime = 1
            d = 2
            while d * d <= n:
                if n % d == 0:
                    prime = 0
                    break
                d += 1
            count += prime
        job[2] = count
    return count_primes


def main():
    try:
        task = build()
    except ImportError:
        bm.b_output("numba is not installed: pip install 'pybaremetal[numba]'\n")
        return 1
    limit = int(sys.argv[1]) if len(sys.argv) > 1 else 2_000_000
    machine = bm.current_machine()
    chunks = -(-limit // CHUNK)
    address, view = machine.alloc(chunks * 24)
    jobs = view[:chunks * 24].view(np.uint64).reshape(chunks, 3)
    jobs[:, 0] = np.arange(chunks, dtype=np.uint64) * CHUNK
    jobs[:, 1] = np.minimum(jobs[:, 0] + CHUNK, limit)
    jobs[:, 2] = 0
    start = time.perf_counter()
    for k in range(chunks):
        machine.smp.enqueue(task, address + 24 * k, block=True)
    machine.smp.wait()
    elapsed = time.perf_counter() - start
    bm.b_output(f"{int(jobs[:, 2].sum())} primes below {limit:,} on "
                f"{bm.b_system(bm.SMP_NUMCORES)} cores in {elapsed:.3f} s (numba cfunc tasks)\n")
    return 0

"""Every core says hello, one at a time, under SMP_LOCK; the BSP waits on SMP_BUSY.

    baremetal run examples/smp.py --cores 4

The same program as upstream's smp example: core 0 gives each other core the `hello` code with
SMP_SET (machine.smp.set for a Python function), says hello itself, then waits until no other
core is busy.  The lock word lives in the machine's flat memory, like an app global.
"""
import pybaremetal as bm

LOCK_WORD = None                       # process address of the 16-bit lock word


def hello():
    core = bm.b_system(bm.SMP_ID)
    bm.b_system(bm.SMP_LOCK, LOCK_WORD)
    bm.b_output(f"Hello from core {core}\n")
    bm.b_system(bm.SMP_UNLOCK, LOCK_WORD)


def main():
    global LOCK_WORD
    machine = bm.current_machine()
    LOCK_WORD, _ = machine.alloc(4096)
    for core in range(1, bm.b_system(bm.SMP_NUMCORES)):
        machine.smp.set(hello, core)
    hello()
    while bm.b_system(bm.SMP_BUSY):
        pass
    return 0

"""The C tasks of tests/test_smp.py: smp_helpers.c built once per session with gcc, loaded with
cffi (ABI mode, so function pointers are the functions' real addresses)."""
import os
import subprocess

import cffi
import numpy as np

from pybaremetal import abi
from pybaremetal._native import ffi as native_ffi, lib as native_lib

HERE = os.path.dirname(os.path.abspath(__file__))

CDEF = """
typedef unsigned long long u64; typedef unsigned int u32; typedef unsigned short u16;
void helpers_init(void *system, void *enqueue, void *dequeue, void *run, u32 *seen_array);
void noop(u64); void mark(u64); void count_locked(u64); void produce(u64); void chain(u64);
void record_id(u64); void probe(void); void crash(u64); void divide(u64); void shutdown(u64);
extern u64 counter; extern u16 lock_word; extern u64 ids[256];
extern volatile u64 probe_slot, probe_id, probe_started, probe_release;
void net_helpers_init(void *rx, void *tx); void net_read_one(void); void net_echo_once(void);
extern volatile u64 net_calls, net_frames, net_empty, net_arrivals, net_seen[64]; u64 net_burst(void *send, void *nic, u64 n);
"""


class Helpers:
    """The loaded library: ``lib`` (functions and globals), ``addr(name)``, ``reset(machine)``."""

    def __init__(self, directory):
        so = os.path.join(directory, "smp_helpers.so")
        subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-falign-functions=16", "-o", so,
                        os.path.join(HERE, "smp_helpers.c")], check=True)
        self.ffi = cffi.FFI()
        self.ffi.cdef(CDEF)
        self.lib = self.ffi.dlopen(so)
        self.seen = np.zeros(1 << 20, dtype=np.uint32)

    def addr(self, name):
        """The code address of task ``name``."""
        return int(self.ffi.cast("uintptr_t", getattr(self.lib, name)))

    def reset(self, machine):
        """Point the helpers at ``machine``'s calls (read from its call table) and zero state."""
        b_system = int(machine.memory[abi.CALL_TABLE + 48:abi.CALL_TABLE + 56].view("<u8")[0])
        calls = [b_system] + [int(native_ffi.cast("uintptr_t", native_ffi.addressof(native_lib, name)))
                              for name in ("b_smp_enqueue", "b_smp_dequeue", "b_smp_run")]
        self.seen[:] = 0
        self.lib.helpers_init(*[self.ffi.cast("void *", c) for c in calls],
                              self.ffi.cast("u32 *", self.seen.ctypes.data))
        return self

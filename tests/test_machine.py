import os

import numpy as np
import pytest

import pybaremetal as bm

from conftest import errors_on_another_thread, run_captured


def u16(m, p):
    return int(m.memory[p:p + 2].view("<u2")[0])


def u32(m, p):
    return int(m.memory[p:p + 4].view("<u4")[0])


def u64(m, p):
    return int(m.memory[p:p + 8].view("<u8")[0])


def test_default_cores_is_one_per_allowed_cpu():
    m = bm.Machine(console="capture", memory="8M")
    assert m.num_cores == len(os.sched_getaffinity(0))
    m.halt()


@pytest.mark.parametrize("size, expected", [("512M", 512 << 20), ("2G", 2 << 30), (8 << 20, 8 << 20),
                                            ("5M", 6 << 20), ("4MiB", 4 << 20)])
def test_memory_sizes_are_parsed_and_rounded_to_2mib(size, expected):
    m = bm.Machine(cores=1, memory=size, console="capture")
    assert m.memory_size == expected
    assert m.memory.dtype == np.uint8 and m.memory.size == expected
    m.halt()


@pytest.mark.parametrize("size", ["lots", "-5M", "2M", 0, 1.5, "12Q"])
def test_bad_memory_size_is_refused_clearly(size):
    with pytest.raises(bm.ArgumentError, match="memory"):
        bm.Machine(cores=1, memory=size, console="capture")


@pytest.mark.parametrize("cores", [0, 257, "2", True])
def test_bad_core_count_is_refused(cores):
    with pytest.raises(bm.ArgumentError, match="cores"):
        bm.Machine(cores=cores, memory="8M", console="capture")


def test_memory_is_2mib_aligned_and_seen_by_c_at_the_same_address(machine):
    assert machine.base % (2 << 20) == 0
    assert machine.memory.ctypes.data == machine.base
    assert machine.addr(0x5000) == machine.base + 0x5000
    assert machine.offset(machine.base + 0x1234) == 0x1234


def test_offset_outside_the_machine_raises(machine):
    with pytest.raises(bm.AddressError):
        machine.offset(machine.base - 1)
    with pytest.raises(bm.AddressError):
        machine.offset(machine.base + machine.memory_size - 4, 8)


def test_memory_is_committed_lazily():
    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    before = rss()
    m = bm.Machine(cores=1, memory="1G", console="capture")
    m.boot()
    grown = rss() - before
    m.halt()
    assert grown < 16 << 20, f"a 1 GiB machine committed {grown >> 20} MiB at boot"


def test_infomap_matches_the_machine():
    m = bm.Machine(cores=3, memory="64M", console="capture", pin=False)
    m.boot()
    try:
        assert u32(m, bm.INFOMAP_BSP_ID) == 0
        assert u16(m, bm.INFOMAP_CORES_ACTIVE) == 3
        assert u16(m, bm.INFOMAP_CORES_FOUND) == 3
        assert u32(m, bm.INFOMAP_RAM_MIB) == 64
        assert [u32(m, bm.INFOMAP_APIC_IDS + 4 * i) for i in range(3)] == [0, 1, 2]
        assert u32(m, bm.SYSVAR_FREE_MIB) == 62
        assert u64(m, bm.INFOMAP_LFB_BASE) == 0          # no screen asked for
        mhz = u16(m, bm.INFOMAP_CPU_MHZ)
        assert mhz == 0 or 100 <= mhz <= 10000
    finally:
        m.halt()


def test_call_table_holds_the_calls_in_upstream_order(machine):
    import ctypes
    import pybaremetal._native as native
    core = ctypes.CDLL(native.__file__)                  # the same loaded object: dlsym gives the symbols
    for i, name in enumerate(bm.abi.CALLS):
        expected = ctypes.cast(core[name], ctypes.c_void_p).value
        assert u64(machine, bm.CALL_TABLE + 8 * i) == expected, name


def test_free_memory_goes_down_after_alloc_and_back_after_free():
    def main():
        m = bm.current_machine()
        start = bm.b_system(bm.FREE_MEMORY)
        address, view = m.alloc(3 << 20)                 # rounds up to two 2 MiB pages
        after = bm.b_system(bm.FREE_MEMORY)
        assert address % (2 << 20) == 0 and view.size == 3 << 20
        view[:] = 7                                      # the view is the machine's memory
        assert m.memory[m.offset(address)] == 7
        m.free(address)
        return start, after, bm.b_system(bm.FREE_MEMORY), u32(m, bm.SYSVAR_FREE_MIB)
    (start, after, back, word), _ = run_captured(main)
    assert (start, after, back, word) == (14, 10, 14, 14)


def test_alloc_beyond_memory_raises_and_leaves_free_memory_alone(machine):
    with pytest.raises(bm.OutOfMemory, match="free"):
        machine.alloc(64 << 20)
    address, _ = machine.alloc(14 << 20)                 # everything there is
    with pytest.raises(bm.OutOfMemory):
        machine.alloc(1)
    machine.free(address)
    assert machine.free_memory == 14


def test_free_of_something_not_allocated_raises(machine):
    address, _ = machine.alloc(1)
    with pytest.raises(bm.ArgumentError):
        machine.free(address + 4096)
    with pytest.raises(bm.AddressError):
        machine.free(12345)
    machine.free(address)
    with pytest.raises(bm.ArgumentError):
        machine.free(address)                            # twice


def test_halt_is_idempotent_and_a_halted_machine_cannot_boot_again():
    m = bm.Machine(cores=1, memory="8M", console="capture")
    m.boot()
    m.halt()
    m.halt()
    with pytest.raises(bm.StateError):
        m.boot()


def test_calls_without_a_machine_raise_a_clear_error():
    with pytest.raises(bm.NoMachineError, match="no machine"):
        bm.b_output("x")
    with pytest.raises(bm.NoMachineError):
        bm.b_system(bm.SMP_ID)
    with pytest.raises(bm.NoMachineError):
        bm.current_machine()


def test_a_thread_that_is_not_a_core_gets_no_machine(machine):
    errors = errors_on_another_thread(lambda: bm.b_system(bm.TIMECOUNTER), bm.NoMachineError)
    assert len(errors) == 1


def test_two_machines_in_one_process_do_not_see_each_others_memory_or_console():
    a = bm.Machine(cores=1, memory="8M", console="capture")
    b = bm.Machine(cores=1, memory="8M", console="capture")

    def app(tag):
        m = bm.current_machine()
        address, view = m.alloc(16)
        view[:4] = list(tag.encode())
        bm.b_output(f"I am {tag}\n")
        return address, bm.b_system(bm.SMP_NUMCORES)
    with a, b:
        address_a, _ = a.run(app, "aaaa")
        address_b, _ = b.run(app, "bbbb")
        assert bytes(a.memory[a.offset(address_a):][:4]) == b"aaaa"
        assert bytes(b.memory[b.offset(address_b):][:4]) == b"bbbb"
        assert a.console.output() == b"I am aaaa\n"
        assert b.console.output() == b"I am bbbb\n"
        assert address_a != address_b


def test_run_nests_so_the_outer_machine_is_current_again_afterwards():
    outer = bm.Machine(cores=1, memory="8M", console="capture")
    inner = bm.Machine(cores=1, memory="8M", console="capture")

    def outer_main():
        inner.run(lambda: bm.b_output("inner"))
        bm.b_output("outer")
        return bm.current_machine() is outer
    with outer, inner:
        assert outer.run(outer_main)
        assert inner.console.output() == b"inner" and outer.console.output() == b"outer"


def test_shutdown_ends_the_run_where_it_is():
    def main():
        bm.b_output("before")
        bm.b_system(bm.SHUTDOWN)
        bm.b_output("after")
    result, out = run_captured(main)
    assert result is None and out == b"before"


def test_reboot_clears_memory_restarts_the_clock_and_runs_the_app_again():
    seen = []

    def main():
        m = bm.current_machine()
        seen.append((int(m.memory[(4 << 20) + 5]), u32(m, bm.SYSVAR_FREE_MIB), bm.b_system(bm.FREE_MEMORY)))
        if len(seen) == 1:
            m.alloc(4 << 20)
            m.memory[(4 << 20) + 5] = 99
            bm.b_system(bm.DELAY, 20000)
            bm.b_system(bm.REBOOT)
        return bm.b_system(bm.TIMECOUNTER)
    ticks, _ = run_captured(main)
    assert seen == [(0, 14, 14), (0, 14, 14)]
    assert ticks < 20_000_000          # the clock restarted at the reboot (20 ms were spent before)


def test_app_exception_propagates_and_the_machine_can_still_halt():
    m = bm.Machine(cores=1, memory="8M", console="capture")

    def main():
        raise ValueError("app bug")
    with pytest.raises(ValueError, match="app bug"):
        m.run(main)
    m.halt()
    assert not m.running
    with pytest.raises(bm.NoMachineError):
        bm.current_machine()


def test_reboot_forgets_stdout_set_and_callbacks():
    got, runs = [], []

    def main():
        runs.append((bm.b_system(bm.STDOUT_GET),))
        bm.b_output(f"run {len(runs)}\n")
        if len(runs) == 1:
            bm.b_system(bm.STDOUT_SET, got.append)
            bm.b_output("redirected\n")
            bm.b_system(bm.REBOOT)
    _, out = run_captured(main)
    assert got == [b"redirected\n"]
    assert out == b"run 1\nrun 2\n"
    assert runs[0][0] == runs[1][0]             # the default output function again

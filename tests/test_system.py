import time

import pytest

import pybaremetal as bm

from conftest import run_captured


def test_timecounter_counts_nanoseconds_since_boot():
    def main():
        first = bm.b_system(bm.TIMECOUNTER)
        t0 = time.monotonic_ns()
        bm.b_system(bm.DELAY, 3000)               # 3 ms
        elapsed = time.monotonic_ns() - t0
        return first, bm.b_system(bm.TIMECOUNTER) - first, elapsed
    (first, delta, elapsed), _ = run_captured(main)
    assert 0 < first
    assert 3_000_000 <= delta                     # DELAY waited at least what it was asked
    assert delta <= elapsed + 1_000_000           # and the counter is in ns, not some other tick


def test_short_delay_busy_waits_at_least_that_long():
    def main():
        start = bm.b_system(bm.TIMECOUNTER)
        bm.b_system(bm.DELAY, 50)
        return bm.b_system(bm.TIMECOUNTER) - start
    waited, _ = run_captured(main)
    assert waited >= 50_000


def test_free_memory_numcores_and_smp_id():
    def main():
        return bm.b_system(bm.FREE_MEMORY), bm.b_system(bm.SMP_NUMCORES), bm.b_system(bm.SMP_ID)
    assert run_captured(main, memory="256M", cores=2, pin=False)[0] == (254, 2, 0)


def test_tsc_moves_forward():
    def main():
        return [bm.b_system(bm.TSC) for _ in range(3)]
    a, b, c = run_captured(main)[0]
    assert a < b < c


def test_dump_rax_prints_16_upper_case_hex_digits():
    _, out = run_captured(lambda: bm.b_system(bm.DUMP_RAX, 0xDEADBEEF0042))
    assert out == b"0000DEADBEEF0042"


def test_dump_mem_prints_address_then_16_bytes_per_line():
    def main():
        m = bm.current_machine()
        address, view = m.alloc(20)
        view[:20] = [b & 0xFF for b in range(0xF0, 0xF0 + 20)]
        bm.b_system(bm.DUMP_MEM, address, 20)
        return address
    address, out = run_captured(main)
    lines = out.decode().split("\n")
    assert lines[0] == f"0x{address:016X}"
    assert lines[1] == " " + " ".join(f"{b:02X}" for b in range(0xF0, 0x100))
    assert lines[2] == " 00 01 02 03"
    assert lines[3] == "" and len(lines) == 4


@pytest.mark.parametrize("address", [0x200000, 0x200010, 0xFFFF_FFFF_FFFF_0000])
def test_dump_mem_of_unreadable_memory_fails_cleanly_and_prints_nothing(address):
    def main():
        with pytest.raises(bm.AddressError, match="not readable"):
            bm.b_system(bm.DUMP_MEM, address, 64)
        return "alive"
    result, out = run_captured(main)
    assert result == "alive" and out == b""


def test_dump_mem_below_2_mib_shows_the_system_area_as_on_the_kernel():
    _, out = run_captured(lambda: bm.b_system(bm.DUMP_MEM, 0x5012, 2), cores=2, pin=False)
    assert out.decode().splitlines() == ["0x0000000000005012", " 02 00"]


def test_dump_mem_of_a_range_running_off_the_end_of_memory_prints_nothing():
    def main():
        m = bm.current_machine()
        with pytest.raises(bm.AddressError):
            bm.b_system(bm.DUMP_MEM, m.base + m.memory_size - 8, 1 << 30)
    assert run_captured(main)[1] == b""


@pytest.mark.parametrize("code", [0x03, 0x0F, 0x17, 0x40, 0x7C, 0x80, 0xFF, 0x1234, 2**63])
def test_unknown_codes_return_zero(code):
    assert run_captured(lambda: bm.b_system(code, 5, 6))[0] == 0


def test_bus_read_and_absent_devices_report_nothing():
    def main():
        return (bm.b_system(bm.BUS_READ, 0, 0), bm.b_system(bm.NET_STATUS, 0, 0),
                bm.b_system(bm.SCREEN_LFB_GET), bm.b_system(bm.SCREEN_X_GET))
    assert run_captured(main)[0] == (0, 0, 0, 0)


def test_bad_argument_types_raise():
    def main():
        with pytest.raises(bm.ArgumentError):
            bm.b_system(bm.DELAY, "soon")
        with pytest.raises(bm.ArgumentError):
            bm.b_system(bm.DUMP_RAX, 1 << 64)
    run_captured(main)


def test_negative_values_pass_as_twos_complement():
    _, out = run_captured(lambda: bm.b_system(bm.DUMP_RAX, -1))
    assert out == b"FFFFFFFFFFFFFFFF"

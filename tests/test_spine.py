"""The C core's spine: C owns the machine's life, knows the current machine on every core, and
the network callback runs once per frame."""
import threading
import time

import pytest

import pybaremetal as bm
from pybaremetal._native import ffi, lib
from pybaremetal.net import callback_counts

from conftest import until
from smp_helpers import Helpers


@pytest.fixture(scope="module")
def helpers(tmp_path_factory):
    return Helpers(str(tmp_path_factory.mktemp("spine")))


def frame(n):
    return b"\xff" * 6 + b"\x02" * 6 + b"\xab\xba" + n.to_bytes(4, "little") * 12


def address(name):
    return int(ffi.cast("uintptr_t", ffi.addressof(lib, name)))


# --- the machine's life ---------------------------------------------------------------------

def test_drive_counters_are_readable_and_right_after_halt(tmp_path):
    m = bm.Machine(cores=1, memory="16M", console="capture", input=False,
                   drives=[f"{tmp_path}/d.img,create=1M"])
    with m:
        data = bytearray(4096 * 2)
        for sector in range(5):
            bm.b_nvs_write(data, 2 * sector, 2)
        bm.b_nvs_read(data, 0, 1)
    drive = m.drives[0]
    stats = drive.stats()
    assert (stats["writes"], stats["sectors_written"], stats["reads"], stats["sectors_read"]) == (5, 10, 1, 1)
    assert drive.writes == 5 and drive.sectors == 256
    with pytest.raises(bm.NvsError, match="halted"):
        drive.flush()


def test_halt_is_one_c_call_that_stops_everything(tmp_path):
    m = bm.Machine(cores=2, memory="16M", console="capture", input=False, nics=["wire"],
                   drives=[f"{tmp_path}/d.img,create=1M"])
    m.boot()
    lib.bm_machine_halt(m._c)                         # C alone: service thread, cores, devices
    assert lib.bm_machine_state(m._c) == lib.BM_STATE_HALTED
    assert m.nics[0].stats["tx_packets"] == 0        # counters survive in C
    assert m.drives[0].stats()["writes"] == 0
    m.halt()                                          # the Python side: idempotent


def test_reboot_is_one_c_call_and_keeps_the_screen(tmp_path):
    with bm.Machine(cores=2, memory="16M", console="capture", input=False, screen="64x32") as m:
        physical = m.screen.physical
        m.memory[physical] = 7
        address, _ = m.alloc(1)
        bm.b_system(bm.CALLBACK_TIMER, lambda: None)
        m.reboot()
        assert m.memory[physical] == 0                               # memory zeroed
        assert bm.b_system(bm.SCREEN_LFB_GET) == m.base + physical    # the screen kept its pages
        assert m.alloc(1)[0] == address                               # allocations forgotten
        assert lib.bm_machine_state(m._c) == lib.BM_STATE_RUNNING


# --- one current machine ----------------------------------------------------------------------

def every_call(machine, core, results):
    """Call every bm.b_* function and record (core, what SMP_ID said, errors)."""
    errors = []
    try:
        assert bm.current_machine() is machine
        bm.b_output(b"")
        bm.b_input()
        bm.b_net_tx(frame(core), 0)
        bm.b_net_rx(0)
        buffer = bytearray(4096)
        bm.b_nvs_write(buffer, core, 1)
        bm.b_nvs_read(buffer, core, 1)
        seen = bm.b_system(bm.SMP_ID)
    except BaseException as error:                 # noqa: B902 (recorded for the assertion)
        errors.append(repr(error))
        seen = None
    results.append((core, seen, errors))


def test_a_python_task_on_every_core_can_call_every_b_function(tmp_path):
    cores = 3
    with bm.Machine(cores=cores, memory="16M", console="capture", input=False, pin=False,
                    nics=["wire"], drives=[f"{tmp_path}/d.img,create=1M"]) as m:
        results = []
        every_call(m, 0, results)                      # core 0: the caller
        for core in range(1, cores):
            m.smp.set(lambda core=core: every_call(m, core, results), core)
        m.smp.wait()
        until(lambda: len(results) == cores, "every core's task")
        assert sorted(results) == [(core, core, []) for core in range(cores)]


def test_a_cffi_callback_task_on_every_core_can_call_every_b_function(tmp_path):
    cores = 3
    with bm.Machine(cores=cores, memory="16M", console="capture", input=False, pin=False,
                    nics=["wire"], drives=[f"{tmp_path}/d.img,create=1M"]) as m:
        results = []
        together = threading.Barrier(cores, timeout=20)   # each copy holds a core until all run

        def task(arg):
            together.wait()
            every_call(m, bm.b_system(bm.SMP_ID), results)
        callback = ffi.callback("void(*)(u64)", task)     # C code: the cores call it natively
        for _ in range(cores):
            m.smp.enqueue(callback, 0)
        m.smp.wait()                                       # core 0 takes one copy meanwhile
        assert sorted(results) == [(core, core, []) for core in range(cores)]


def test_a_callback_on_the_service_thread_finds_its_machine():
    with bm.Machine(cores=2, memory="16M", console="capture", input=False, nics=["wire"]) as m:
        seen = []
        bm.b_system(bm.CALLBACK_TIMER, lambda: seen.append(bm.current_machine()))
        until(lambda: seen, "a timer tick")
        bm.b_system(bm.CALLBACK_TIMER, 0)
        assert seen[0] is m


def test_a_thread_that_is_not_a_core_has_no_machine():
    with bm.Machine(cores=1, memory="16M", console="capture", input=False):
        errors = []
        thread = threading.Thread(target=lambda: errors.append(
            pytest.raises(bm.NoMachineError, bm.current_machine)))
        thread.start()
        thread.join()
        assert errors


# --- the network callback: once per frame ---------------------------------------------------------

def test_network_callback_runs_once_per_frame_while_armed_and_disarmed(helpers):
    with bm.Machine(cores=1, memory="16M", console="capture", input=False) as m:
        port = bm.wire(m)
        callback = helpers.addr("net_read_one")
        send = ffi.cast("void *", address("bm_nic_send"))
        for _ in range(50):
            helpers.lib.net_helpers_init(ffi.cast("void *", address("b_net_rx")),
                                         ffi.cast("void *", address("b_net_tx")))
            calls_before = callback_counts(m)[1]
            sent = []

            def burst():                           # 10,000 frames from C, without the GIL
                sent.append(helpers.lib.net_burst(send, ffi.cast("void *", port._end), 10000))
            sender = threading.Thread(target=burst)
            sender.start()
            while sender.is_alive():               # arm and disarm while the frames arrive
                lib.b_system(bm.CALLBACK_NETWORK, callback, 0)
                lib.b_system(bm.CALLBACK_NETWORK, 0, 0)
            sender.join()
            lib.b_system(bm.CALLBACK_NETWORK, callback, 0)
            until(lambda: helpers.lib.net_frames == sent[0], "every frame's callback")
            lib.b_system(bm.CALLBACK_NETWORK, 0, 0)
            assert helpers.lib.net_empty == 0                      # no call without a frame
            assert helpers.lib.net_calls == sent[0] == callback_counts(m)[1] - calls_before


def test_a_frame_offered_and_left_unread_is_not_offered_again_before_the_next_arrival(helpers):
    """At most one call per arrival: the frame the callback sent itself arrives while the
    service thread is offering frames; once left unread, it is offered again only when another
    frame arrives (each call records how many frames had arrived: strictly more each time)."""
    for _ in range(50):
        with bm.Machine(cores=1, memory="16M", console="capture", input=False, nics=["wire"]) as m:
            h = helpers.lib
            h.net_helpers_init(ffi.cast("void *", address("b_net_rx")), ffi.cast("void *", address("b_net_tx")))
            bm.b_system(bm.CALLBACK_NETWORK, helpers.addr("net_echo_once"))
            h.net_arrivals = 1
            bm.b_net_tx(frame(1))                  # call 1 reads it and sends frame 2 to itself
            until(lambda: h.net_calls >= 2, "the callback for frame 2")
            for n in range(3, 40):                 # more arrivals: one more call each, at most
                if h.net_calls >= 4:
                    break
                calls = h.net_calls
                h.net_arrivals += 1
                bm.b_net_tx(frame(n))
                deadline = time.monotonic() + 0.2  # pacing, not an assertion
                while h.net_calls == calls and time.monotonic() < deadline:
                    time.sleep(0.001)
            bm.b_system(bm.CALLBACK_NETWORK, 0)
            calls = h.net_calls
            seen = [h.net_seen[i] for i in range(calls)]
            assert calls >= 4 and calls == callback_counts(m)[1]
            assert all(a < b for a, b in zip(seen, seen[1:])), seen


# --- the current API's codes -------------------------------------------------------------------

def test_wallclock_timer_set_and_sleep():
    with bm.Machine(cores=2, memory="16M", console="capture", input=False, pin=False) as m:
        assert abs(bm.b_system(bm.WALLCLOCK) - time.time()) <= 2
        assert bm.b_system(bm.TIMER_SET, 1) == 10_000            # the shortest period
        assert bm.b_system(bm.TIMER_SET, 0) == 1_000_000         # the default
        assert bm.b_system(bm.TIMER_SET, 5_000_000) == 5_000_000
        ticks = []
        bm.b_system(bm.CALLBACK_TIMER, lambda: ticks.append(1))
        until(lambda: len(ticks) >= 3, "timer ticks at the new period")
        bm.b_system(bm.CALLBACK_TIMER, 0)
        assert bm.b_system(bm.SLEEP, 1000) == 1000
        m.smp.set(lambda: bm.b_system(bm.SLEEP, 3600 * 10**9), 1)  # ends early at halt
        until(m.smp.busy, "the sleeping task")
    assert not m.running                                            # halt did not wait an hour

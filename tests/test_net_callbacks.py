"""CALLBACK_NETWORK, CALLBACK_TIMER and CALLBACK_KEYBOARD run on the machine's service thread
(core 0)."""
import os
import threading
import time

import pybaremetal as bm
from pybaremetal.net import callback_counts


def frame(n):
    return b"\xff" * 6 + b"\x02" * 6 + b"\xab\xba" + n.to_bytes(4, "little") * 12


def wait_until(condition, limit=5.0):
    """Poll until condition() holds or limit seconds pass (not a timing assertion)."""
    end = time.monotonic() + limit
    while not condition() and time.monotonic() < end:
        time.sleep(0.005)
    return condition()


def test_network_callback_fires_once_per_frame_and_clearing_stops_it():
    with bm.Machine(cores=1, memory="16M", console="capture", input=False) as m:
        port = bm.wire(m)
        got, cores = [], set()

        def on_frame():
            cores.add(bm.b_system(bm.SMP_ID))
            got.append(bytes(bm.b_net_rx(port.nic.iid)))
        bm.b_system(bm.CALLBACK_NETWORK, on_frame)
        for n in range(50):
            port.send(frame(n))
        assert wait_until(lambda: len(got) == 50)
        assert got == [frame(n) for n in range(50)]
        assert cores == {0}
        assert callback_counts(m)[1] == 50
        bm.b_system(bm.CALLBACK_NETWORK, 0)
        port.send(frame(99))
        time.sleep(0.1)
        assert len(got) == 50 and callback_counts(m)[1] == 50
        assert bytes(bm.b_net_rx(port.nic.iid)) == frame(99)     # the frame waits for a poll


def test_frames_waiting_before_the_callback_is_set_are_delivered():
    with bm.Machine(cores=1, memory="16M", console="capture", input=False, nics=["wire"]):
        for n in range(3):
            bm.b_net_tx(frame(n))
        got = []
        bm.b_system(bm.CALLBACK_NETWORK, lambda: got.append(bytes(bm.b_net_rx(0))))
        assert wait_until(lambda: len(got) == 3)
        assert got == [frame(n) for n in range(3)]


def test_a_callback_that_reads_nothing_is_not_called_in_a_loop():
    with bm.Machine(cores=1, memory="16M", console="capture", input=False, nics=["wire"]):
        calls = []
        bm.b_system(bm.CALLBACK_NETWORK, lambda: calls.append(1))
        bm.b_net_tx(frame(1))
        assert wait_until(lambda: len(calls) >= 1)
        time.sleep(0.1)
        assert len(calls) == 1                          # called again only on the next arrival
        bm.b_net_tx(frame(2))
        assert wait_until(lambda: len(calls) == 2)


def test_timer_callback_ticks_until_cleared():
    with bm.Machine(cores=1, memory="16M", console="capture", input=False):
        ticks = []
        bm.b_system(bm.CALLBACK_TIMER, lambda: ticks.append(bm.b_system(bm.SMP_ID)))
        assert wait_until(lambda: len(ticks) >= 20)
        bm.b_system(bm.CALLBACK_TIMER, 0)
        time.sleep(0.05)                                # a tick in flight may still land
        settled = len(ticks)
        time.sleep(0.1)
        assert len(ticks) == settled
        assert set(ticks) == {0}


def test_a_raising_callback_is_reported_and_the_machine_carries_on(capfd):
    with bm.Machine(cores=1, memory="16M", console="capture", input=False, nics=["wire"]):
        seen = []

        def bad():
            seen.append(bytes(bm.b_net_rx(0)))
            raise RuntimeError("boom")
        bm.b_system(bm.CALLBACK_NETWORK, bad)
        bm.b_net_tx(frame(1))
        bm.b_net_tx(frame(2))
        assert wait_until(lambda: len(seen) == 2)
    assert "boom" in capfd.readouterr().err


def test_halting_stops_the_service_thread():
    before = threading.active_count()
    m = bm.Machine(cores=1, memory="16M", console="capture", input=False)
    m.boot()
    m.halt()
    assert threading.active_count() == before


def test_keyboard_callback_runs_per_key_and_an_unread_key_waits_for_the_next_arrival():
    read_end, write_end = os.pipe()
    try:
        with bm.Machine(cores=1, memory="16M", console="capture", input=read_end):
            keys, calls = [], []

            def on_key():
                calls.append(1)
                if len(calls) != 2:                     # the 2nd call leaves its key unread
                    keys.append(bm.b_input())
            bm.b_system(bm.CALLBACK_KEYBOARD, on_key)
            os.write(write_end, b"a")
            assert wait_until(lambda: keys == [ord("a")])
            os.write(write_end, b"b")
            assert wait_until(lambda: len(calls) == 2)
            time.sleep(0.1)
            assert len(calls) == 2 and keys == [ord("a")]   # not called again for the same key
            os.write(write_end, b"c")                   # the next arrival: "b", then "c"
            assert wait_until(lambda: keys == [ord("a"), ord("b"), ord("c")])
            bm.b_system(bm.CALLBACK_KEYBOARD, 0)
            os.write(write_end, b"d")
            time.sleep(0.1)
            assert keys == [ord("a"), ord("b"), ord("c")] and bm.b_input() == ord("d")
    finally:
        os.close(read_end)
        os.close(write_end)

import os
import termios
import threading

import numpy as np
import pytest

import pybaremetal as bm

from conftest import run_captured


def test_b_output_writes_exactly_nbr_bytes_nul_bytes_included():
    data = bytes(range(256)) + b"\x00\x00end"
    _, out = run_captured(lambda: bm.b_output(data))
    assert out == data


def test_b_output_takes_str_as_utf8_buffers_and_a_prefix():
    def main():
        bm.b_output("héllo ")
        bm.b_output(bytearray(b"abcdef"), 3)
        bm.b_output(memoryview(b"xyz")[1:])
        bm.b_output(np.frombuffer(b"NP", dtype=np.uint8))
    _, out = run_captured(main)
    assert out == "héllo ".encode() + b"abcyzNP"


def test_b_output_from_a_machine_address():
    def main():
        m = bm.current_machine()
        address, view = m.alloc(10)
        view[:5] = list(b"flat!")
        bm.b_output(address, 5)
    _, out = run_captured(main)
    assert out == b"flat!"


@pytest.mark.parametrize("data, nbr, error", [
    (b"abc", 4, bm.ArgumentError), (b"abc", -1, bm.ArgumentError), (12345, 4, bm.AddressError),
    (3.5, None, bm.ArgumentError), (0, None, bm.ArgumentError)])
def test_b_output_refuses_bad_arguments_and_writes_nothing(data, nbr, error):
    def main():
        with pytest.raises(error):
            bm.b_output(data, nbr)
    _, out = run_captured(main)
    assert out == b""


def test_console_to_a_file(tmp_path):
    path = tmp_path / "console.txt"
    with bm.Machine(cores=1, memory="8M", console=str(path)) as m:
        m.run(lambda: bm.b_output("to a file\n"))
    assert path.read_bytes() == b"to a file\n"


def test_stdout_set_redirects_to_a_python_function_and_zero_restores():
    got = []

    def main():
        default = bm.b_system(bm.STDOUT_GET)
        bm.b_system(bm.STDOUT_SET, got.append)
        bm.b_output(b"redirected\x00!")
        bm.b_system(bm.DUMP_RAX, 0xAB)
        redirected = bm.b_system(bm.STDOUT_GET)
        bm.b_system(bm.STDOUT_SET, 0)
        bm.b_output("back")
        return default, redirected, bm.b_system(bm.STDOUT_GET)
    (default, redirected, restored), out = run_captured(main)
    assert got == [b"redirected\x00!", b"00000000000000AB"]
    assert out == b"back"
    assert default == restored != redirected


def test_stdout_set_to_a_c_function_address():
    from pybaremetal._native import ffi
    got = []
    callback = ffi.callback("void(*)(const char *, unsigned long long)",
                            lambda s, n: got.append(ffi.buffer(s, n)[:]))

    def main():
        bm.b_system(bm.STDOUT_SET, int(ffi.cast("uintptr_t", callback)))
        bm.b_output("via C pointer")
        return bm.b_system(bm.STDOUT_GET)
    current, _ = run_captured(main)
    assert got == [b"via C pointer"]
    assert current == int(ffi.cast("uintptr_t", callback))


def test_b_input_reads_bytes_in_order_then_zero_at_end_of_input():
    def main():
        return [bm.b_input() for _ in range(6)]
    keys, _ = run_captured(main, input=b"ab\x7fz")
    assert keys == [ord("a"), ord("b"), 0x0E, ord("z"), 0, 0]       # Backspace as upstream: 0x0E


def test_b_input_gives_enter_and_backspace_upstreams_key_values():
    keys, _ = run_captured(lambda: list(iter(bm.b_input, 0)), input=b"a\rb\r\nc\nd\x7f\x08")
    assert keys == [ord("a"), 0x1C, ord("b"), 0x1C, ord("c"), 0x1C, ord("d"), 0x0E, 0x08]


def test_b_input_from_a_pipe_never_blocks():
    read_end, write_end = os.pipe()
    m = bm.Machine(cores=1, memory="8M", console="capture", input=read_end)

    def main():
        first = bm.b_input()                     # nothing written yet: 0 at once
        os.write(write_end, b"hi")
        keys = [bm.b_input(), bm.b_input(), bm.b_input()]
        os.close(write_end)
        return first, keys, bm.b_input()
    with m:
        first, keys, after_close = m.run(main)
    os.close(read_end)
    assert first == 0 and keys == [ord("h"), ord("i"), 0] and after_close == 0


def test_b_input_without_input_is_zero():
    keys, _ = run_captured(lambda: [bm.b_input() for _ in range(3)], input=False)
    assert keys == [0, 0, 0]


def test_a_terminal_is_raw_while_running_and_restored_on_halt():
    controller, terminal = os.openpty()
    before = termios.tcgetattr(terminal)
    m = bm.Machine(cores=1, memory="8M", console="capture", input=terminal)

    def main():
        lflag = termios.tcgetattr(terminal)[3]
        os.write(controller, b"k")               # no Enter needed: not canonical
        key = 0
        for _ in range(1000):
            key = bm.b_input()
            if key:
                break
            bm.b_system(bm.DELAY, 1000)
        return lflag, key
    with m:
        lflag, key = m.run(main)
    assert not lflag & termios.ICANON and not lflag & termios.ECHO
    assert key == ord("k")
    assert termios.tcgetattr(terminal) == before
    os.close(controller)
    os.close(terminal)


def test_terminal_is_restored_after_an_app_exception():
    controller, terminal = os.openpty()
    before = termios.tcgetattr(terminal)
    m = bm.Machine(cores=1, memory="8M", console="capture", input=terminal)

    def main():
        raise RuntimeError("boom")
    with pytest.raises(RuntimeError):
        with m:
            m.run(main)
    assert termios.tcgetattr(terminal) == before
    os.close(controller)
    os.close(terminal)


def test_concurrent_b_output_from_threads_bound_as_core_loses_nothing():
    m = bm.Machine(cores=1, memory="8M", console="capture")
    m.boot()

    def writer(tag):
        m._bind(0)
        for _ in range(200):
            bm.b_output(tag * 8)
        m._unbind()
    threads = [threading.Thread(target=writer, args=(t,)) for t in (b"a", b"b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out = m.console.output()
    m.halt()
    assert len(out) == 3200 and out.count(b"a") == 1600

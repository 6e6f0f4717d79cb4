"""b_output of 64-byte messages to /dev/null: C face vs write(2), Python face vs
sys.stdout.buffer.write + flush; b_system(TIMECOUNTER) vs clock_gettime."""
import ctypes
import io
import os
import time

import pybaremetal as bm

MESSAGE = b"x" * 63 + b"\n"
CALLS = 200_000


def _best_ns_per_call(loop, rounds=7):
    return min(loop() for _ in range(rounds)) / CALLS


def test_b_output_c_face(benchmark, record, c_peer):
    loops = c_peer("io_loops")
    for name in ("loop_b_output", "loop_write", "loop_timecounter", "loop_clock_gettime"):
        getattr(loops, name).restype = ctypes.c_uint64
    devnull = os.open(os.devnull, os.O_WRONLY)
    with bm.Machine(cores=1, memory="8M", console=devnull, input=False):
        msg = ctypes.c_char_p(MESSAGE)
        benchmark.pedantic(loops.loop_b_output, args=(msg, 64, CALLS), rounds=5)
        ours = _best_ns_per_call(lambda: loops.loop_b_output(msg, 64, CALLS))
        peer = _best_ns_per_call(lambda: loops.loop_write(devnull, msg, 64, CALLS))
        tc = _best_ns_per_call(lambda: loops.loop_timecounter(CALLS))
        cg = _best_ns_per_call(lambda: loops.loop_clock_gettime(CALLS))
    os.close(devnull)
    record("b_output 64 B to /dev/null, C face", ours, peer, unit="ns/call", peer_name="write(2) loop",
           target="ratio <= 1.2")
    record("b_system(TIMECOUNTER), C face", tc, cg, unit="ns/call", peer_name="clock_gettime",
           target="ratio <= 1.2")


def test_b_output_python_face(benchmark, record):
    devnull = os.open(os.devnull, os.O_WRONLY)
    writer = io.BufferedWriter(io.FileIO(os.devnull, "w"))

    def ours():
        output = bm.b_output
        start = time.perf_counter_ns()
        for _ in range(CALLS):
            output(MESSAGE)
        return time.perf_counter_ns() - start

    def peer():
        write, flush = writer.write, writer.flush
        start = time.perf_counter_ns()
        for _ in range(CALLS):
            write(MESSAGE)
            flush()
        return time.perf_counter_ns() - start
    with bm.Machine(cores=1, memory="8M", console=devnull, input=False):
        benchmark.pedantic(ours, rounds=3)
        ours_ns = _best_ns_per_call(ours, 5)
        peer_ns = _best_ns_per_call(peer, 5)
    writer.close()
    os.close(devnull)
    record("b_output 64 B to /dev/null, Python face", ours_ns, peer_ns, unit="ns/call",
           peer_name="sys.stdout.buffer.write+flush", target=None)

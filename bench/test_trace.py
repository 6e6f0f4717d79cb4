"""The call trace's cost: b_system(TIMECOUNTER) from a hosted C app (bench/peers/trace_loop.c)
with the trace off, and on to /dev/null, in the same run.  Off, a call pays one predictable
branch on the machine's trace pointer (native/trace.h): too little to measure apart from the
call, so the off figure is compared with clock_gettime in the same app, as bench/test_capps.py
does; on, each call also formats a line and makes one write(2)."""
import os
import re
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
LOOP = os.path.join("bench", "peers", "trace_loop.c")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("trace-bench-cache"))


def _run(cache, *options, calls):
    done = subprocess.run([sys.executable, "-m", "pybaremetal", "run", LOOP, "--cores", "1",
                           "--console", os.devnull, *options, "--", str(calls)],
                          capture_output=True, cwd=ROOT, timeout=300,
                          env=dict(os.environ, BAREMETAL_CACHE=cache))
    assert done.returncode == 0, done.stderr.decode()[-500:]
    return {name: float(value) for name, value in re.findall(r"(\w+) ([0-9.]+)", done.stdout.decode())}


def test_timecounter_calls_per_second_trace_off_and_on(benchmark, record, cache):
    off = benchmark.pedantic(lambda: _run(cache, calls=200000), rounds=1)
    on = _run(cache, f"--trace={os.devnull}", calls=20000)
    for _ in range(2):                             # interleaved, best of three
        more_off, more_on = _run(cache, calls=200000), _run(cache, f"--trace={os.devnull}", calls=20000)
        off = {k: min(v, more_off[k]) for k, v in off.items()}
        on = {k: min(v, more_on[k]) for k, v in on.items()}
    record("b_system(TIMECOUNTER) from C, trace off", off["timecounter"], off["clock_gettime"],
           unit="ns/call", peer_name="clock_gettime in the same app", target="ratio <= 1.2",
           note="off: one predictable branch per call on the machine's trace pointer")
    record("b_system(TIMECOUNTER) from C, trace on to /dev/null", 1e9 / on["timecounter"],
           1e9 / off["timecounter"], unit="calls/s", peer_name="trace off, same build",
           note="on: one formatted line and one write(2) per call")

"""Boot: Machine(cores=2, memory="256M").boot() + halt(), and the process's RSS after boot."""
import os
import subprocess
import sys

import pybaremetal as bm


def test_boot_and_halt(benchmark, record):
    devnull = os.open(os.devnull, os.O_WRONLY)

    def cycle():
        machine = bm.Machine(cores=2, memory="256M", console=devnull, input=False)
        machine.boot()
        machine.halt()
    benchmark.pedantic(cycle, rounds=300, warmup_rounds=20)
    os.close(devnull)
    record("boot + halt, 2 cores, 256 MiB (median)", benchmark.stats.stats.median * 1e6, unit="us",
           target="ours <= 1000", note="imports excluded; BareMetal itself: ~700 us on Firecracker")


RSS_PROBE = """
import os, sys
{setup}
with open("/proc/self/status") as f:
    print([int(l.split()[1]) for l in f if l.startswith("VmRSS")][0] // 1024)
"""


def _rss_mib(setup):
    done = subprocess.run([sys.executable, "-c", RSS_PROBE.format(setup=setup)], capture_output=True,
                          text=True, check=True)
    return int(done.stdout)


def test_rss_after_boot(record):
    ours = _rss_mib("import pybaremetal as bm\nm = bm.Machine(cores=2, memory='256M', input=False)\nm.boot()")
    peer = _rss_mib("import numpy, cffi")
    record("process RSS after boot, 256 MiB untouched", ours, peer, unit="MiB",
           peer_name="python + numpy + cffi alone", target="ours <= 32")

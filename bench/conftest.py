"""Benchmark reporting shared by every bench/test_*.py.

A benchmark measures ours and the peer a user would otherwise pick *in the same run*, then
calls the ``record`` fixture once per measure:

    record("b_output 64 B, C face", ours=ns_ours, peer=ns_write, unit="ns/call",
           peer_name="write(2) loop", target="ratio <= 1.2")

``ratio`` is ours / peer.  ``target`` is a condition on ``ratio`` or ``ours`` ("ratio >= 0.9",
"ours <= 1000"), or None for figures reported without a target.  Targets never fail a run
(unit tests never assert on time); the table at the end says which were met.  The rows are
saved to bench/results/summary.json and printed as one table (measure, ours, peer, ratio,
target, met?).
"""
import ctypes
import datetime
import json
import operator
import os
import platform
import re
import subprocess

import cffi
import pytest

RESULTS = os.path.join(os.path.dirname(__file__), "results")
ROWS = []
_OPS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt}


def _met(target, ours, ratio):
    if not target:
        return None
    match = re.fullmatch(r"\s*(ratio|ours)\s*(<=|>=|<|>)\s*([0-9.eE+-]+)\s*", target)
    if not match:
        raise ValueError(f"target {target!r}: write it as 'ratio >= 0.9' or 'ours <= 1000'")
    value = ratio if match.group(1) == "ratio" else ours
    return None if value is None else bool(_OPS[match.group(2)](value, float(match.group(3))))


@pytest.fixture
def record(request):
    def record(measure, ours, peer=None, *, unit, peer_name="", target=None, note=""):
        ratio = (ours / peer) if (peer not in (None, 0) and ours is not None) else None
        row = {"measure": measure, "ours": ours, "peer": peer, "peer_name": peer_name,
               "unit": unit, "ratio": ratio, "target": target or "", "met": _met(target, ours, ratio),
               "note": note, "test": request.node.nodeid}
        ROWS.append(row)
        return row
    return record


def _fmt(value):
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


FULL = []                               # set at collection: this session runs every bench


def pytest_collection_finish(session):
    """A session that runs only part of the bench (one module, -k, -m) must not replace the
    full run's summary.json: it writes summary-partial.json instead."""
    here = os.path.dirname(os.path.abspath(__file__))
    every = {name for name in os.listdir(here) if name.startswith("test_") and name.endswith(".py")}
    collected = {os.path.basename(str(item.path)) for item in session.items}
    option = session.config.option
    FULL.append(collected == every and not getattr(option, "keyword", "") and
                not getattr(option, "markexpr", "") and not getattr(option, "lf", False))


def pytest_terminal_summary(terminalreporter):
    if not ROWS:
        return
    os.makedirs(RESULTS, exist_ok=True)
    summary = {"when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                           "python": platform.python_version()},
               "rows": ROWS}
    name = "summary.json" if FULL and FULL[0] else "summary-partial.json"
    with open(os.path.join(RESULTS, name), "w") as f:
        json.dump(summary, f, indent=1)
    from rich.console import Console
    from rich.table import Table
    table = Table(title="pybaremetal benchmarks (ratio = ours / peer, same run)")
    for column in ("measure", "ours", "peer", "ratio", "target", "met?"):
        table.add_column(column, justify="left" if column in ("measure", "target") else "right")
    for row in ROWS:
        peer = f"{_fmt(row['peer'])} ({row['peer_name']})" if row["peer"] is not None else "-"
        met = {True: "[green]yes[/]", False: "[red]no[/]", None: ""}[row["met"]]
        table.add_row(row["measure"], f"{_fmt(row['ours'])} {row['unit']}", peer, _fmt(row["ratio"]),
                      row["target"], met)
    Console(width=160).print(table)
    terminalreporter.write_line(f"saved to {os.path.join(RESULTS, name)}")


NATIVE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "native")


@pytest.fixture(scope="session")
def c_peer(tmp_path_factory):
    """Compile bench/peers/NAME.c (with native/ on the include path) into a shared object and
    load it with ctypes.  The runtime's own extension is made global first, so a peer that
    calls b_output & co. reaches the one implementation of each call."""
    import ctypes
    import subprocess

    import pybaremetal._native as native
    ctypes.CDLL(native.__file__, mode=os.RTLD_NOW | os.RTLD_GLOBAL | os.RTLD_NOLOAD)
    built = {}

    def c_peer(name, flags=("-O2",)):
        if name not in built:
            source = os.path.join(os.path.dirname(__file__), "peers", name + ".c")
            target = str(tmp_path_factory.mktemp("peers") / (name + ".so"))
            subprocess.run(["gcc", "-shared", "-fPIC", "-pthread", *flags, "-I", NATIVE, source,
                            "-o", target], check=True)
            built[name] = ctypes.CDLL(target)
        return built[name]
    return c_peer


# --- the C peers ---------------------------------------------------------------------------

CDEF = """
typedef unsigned long long u64;
typedef u64 (*enqueue_fn)(void *, u64);
typedef void (*wait_fn)(void);
void empty_task(u64); void stamp_task(u64); void primes_task(u64);
u64 produce(enqueue_fn enqueue, wait_fn wait, void *task, u64 n);
double latency_ours(enqueue_fn enqueue, u64 *out, u64 *put, u64 n, u64 gap_ns);
void primes_setup(u64 limit, u64 chunk);
u64 primes_result(void);
u64 primes_pthreads(int threads, const int *cpus);
u64 vyukov_ring(u64 n, u64 capacity, int cpu0, int cpu1);
u64 mutex_queue(u64 n, u64 capacity, int cpu0, int cpu1);
double ping_pong(u64 rounds, int two_lines, int cpu0, int cpu1);
void condvar_wakeup(u64 *out, u64 n, u64 gap_ns, int cpu0, int cpu1);
void ring_latency(u64 *out, u64 *put, u64 n, u64 gap_ns, int cpu0, int cpu1);
void stamp_one_way(u64 *out, u64 n, u64 gap_ns, int cpu0, int cpu1);
"""


@pytest.fixture(scope="session")
def peers(tmp_path_factory):
    """bench/peers/smp_peers.c built with gcc and loaded (cffi), with our b_smp_enqueue /
    b_smp_wait as C function pointers: the C peers of bench/test_smp.py and test_lab.py."""
    so = str(tmp_path_factory.mktemp("smp_peers") / "smp_peers.so")
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-pthread", "-falign-functions=16", "-o", so,
                    os.path.join(os.path.dirname(__file__), "peers", "smp_peers.c")], check=True)
    ffi = cffi.FFI()
    ffi.cdef(CDEF)
    lib = ffi.dlopen(so)
    import pybaremetal._native as native
    core = ctypes.CDLL(native.__file__)          # the C core's own symbols: real addresses

    def call(name, ctype):
        return ffi.cast(ctype, ctypes.cast(getattr(core, name), ctypes.c_void_p).value)

    class Peers:
        """The peers library, plus our b_smp_enqueue / b_smp_wait as C function pointers."""
        enqueue = call("b_smp_enqueue", "enqueue_fn")
        wait = call("b_smp_wait", "wait_fn")

        def __getattr__(self, name):
            return getattr(lib, name)
    Peers.ffi = ffi
    return Peers()

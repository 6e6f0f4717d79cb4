"""Cores and the work queue against their peers, measured in the same run.

1. dispatch: 1,000,000 empty C tasks through the queue of a 2-core machine (core 0 produces in
   C, core 1 runs them, core 0 helps with the tail in b_smp_wait) vs a bare C Vyukov ring moving
   1,000,000 items between two threads, a C mutex+condvar queue, ThreadPoolExecutor and
   multiprocessing.Pool with no-op tasks.
2. latency: enqueue on core 0 -> start on core 1, with core 1 polling (vs cache-line ping-pong)
   and with core 1 asleep on its futex (vs a pthread condvar wake-up).
3. Python-callable tasks vs ThreadPoolExecutor and queue.Queue + a consumer thread.
4. primes below 5,000,000 in C tasks: 2 cores vs 1 core, and vs plain pthreads.

The C peers are bench/peers/smp_peers.c, built by the ``peers`` fixture (conftest.py).  Peer threads are pinned to the
same CPUs as our cores 0 and 1.
"""
import multiprocessing
import os
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

import pybaremetal as bm

HERE = os.path.dirname(os.path.abspath(__file__))
CPUS = sorted(os.sched_getaffinity(0))
CPU0, CPU1 = CPUS[0], CPUS[1 % len(CPUS)]

def best_of(runs, fn):
    return min(fn() for _ in range(runs))


def noop(arg=None):
    return None


# --- 1. dispatch ----------------------------------------------------------------------------

def test_dispatch_of_empty_c_tasks(benchmark, record, peers):
    n = 1_000_000
    with bm.Machine(cores=2, memory="8M", console="capture") as m:
        peers.produce(peers.enqueue, peers.wait, peers.empty_task, 100_000)          # warm up
        times = []
        benchmark.pedantic(lambda: times.append(peers.produce(peers.enqueue, peers.wait,
                                                               peers.empty_task, n)),
                           rounds=3, iterations=1)
        assert not m.faults
    ours = min(times) / n
    ring = best_of(3, lambda: peers.vyukov_ring(n, 4096, CPU0, CPU1)) / n
    mutex = peers.mutex_queue(n // 4, 4096, CPU0, CPU1) / (n // 4)
    record("dispatch: empty C task through the queue, 2 cores", ours, ring, unit="ns/task",
           peer_name="bare C Vyukov ring, 2 threads", target="ratio <= 2")
    record("dispatch: vs a C mutex+condvar queue", ours, mutex, unit="ns/task",
           peer_name="mutex+condvar queue, 2 threads")

    def executor_rate(count=20_000):
        with ThreadPoolExecutor(max_workers=2) as pool:
            start = time.perf_counter()
            for _ in range(count):
                pool.submit(noop)
        return count / (time.perf_counter() - start)
    tpe = max(executor_rate() for _ in range(2))
    record("dispatch: empty C tasks/s vs ThreadPoolExecutor no-op tasks/s", 1e9 / ours, tpe,
           unit="tasks/s", peer_name="ThreadPoolExecutor(2)", target="ratio >= 100")
    with multiprocessing.get_context("fork").Pool(2) as pool:
        pool.apply(noop)
        count = 5_000
        start = time.perf_counter()
        for result in [pool.apply_async(noop) for _ in range(count)]:
            result.get()
        mp_rate = count / (time.perf_counter() - start)
    record("dispatch: empty C tasks/s vs multiprocessing.Pool", 1e9 / ours, mp_rate,
           unit="tasks/s", peer_name="multiprocessing.Pool(2), 5,000 tasks")


# --- 2. latency -------------------------------------------------------------------------------

def _u64_ptr(peers, array):
    return peers.ffi.cast("u64 *", array.ctypes.data)


def _latency(peers, samples, gap_ns):
    """(median, p99, median enqueue call, ticks per ns) of enqueue on core 0 -> start on core 1."""
    out, put = np.zeros(samples, dtype=np.uint64), np.zeros(samples, dtype=np.uint64)
    with bm.Machine(cores=2, memory="8M", console="capture") as m:
        ticks_per_ns = peers.latency_ours(peers.enqueue, _u64_ptr(peers, out), _u64_ptr(peers, put), samples, gap_ns)
        assert not m.faults
    ns = out / ticks_per_ns
    return float(np.median(ns)), float(np.percentile(ns, 99)), float(np.median(put)) / ticks_per_ns, ticks_per_ns


def test_latency_to_a_polling_core(benchmark, record, peers):
    result = []
    benchmark.pedantic(lambda: result.append(_latency(peers, 20_000, 2_000)), rounds=1, iterations=1)
    median, p99, put, ticks_per_ns = result[0]
    one_way = best_of(3, lambda: peers.ping_pong(200_000, 0, CPU0, CPU1))
    two_lines = best_of(3, lambda: peers.ping_pong(200_000, 1, CPU0, CPU1))
    ring, ring_put = np.zeros(20_000, dtype=np.uint64), np.zeros(20_000, dtype=np.uint64)
    peers.ring_latency(_u64_ptr(peers, ring), _u64_ptr(peers, ring_put), len(ring), 2_000, CPU0, CPU1)
    ring, ring_put = ring / ticks_per_ns, ring_put / ticks_per_ns
    line = np.zeros(20_000, dtype=np.uint64)
    peers.stamp_one_way(_u64_ptr(peers, line), len(line), 2_000, CPU0, CPU1)
    line = line / ticks_per_ns
    record("latency: enqueue on core 0 -> start on core 1 (polling), median", median, one_way,
           unit="ns", peer_name="cache-line ping-pong one way")
    record("latency: polling core, median, vs a ping-pong with one line each way", median, two_lines,
           unit="ns", peer_name="two-line ping-pong one way (producer -> poller shape)")
    record("latency: polling core, median, vs the bare ring measured the same way", median,
           float(np.median(ring)), unit="ns", peer_name="bare C Vyukov ring put -> take")
    record("latency: polling core, median, vs one cache line stamped the same way", median,
           float(np.median(line)), unit="ns", peer_name="store -> remote poll after a 2 us gap",
           target="ratio <= 1.25")
    record("latency: polling core, p99", p99, float(np.percentile(ring, 99)), unit="ns",
           peer_name="bare C Vyukov ring p99")
    record("enqueue call on core 0 while core 1 polls, median", put, float(np.median(ring_put)),
           unit="ns", peer_name="bare C Vyukov ring put")


def test_latency_to_a_sleeping_core(benchmark, record, peers):
    samples, gap = 300, 2_000_000                  # 2 ms apart: past the 100 us polling budget
    result = []
    benchmark.pedantic(lambda: result.append(_latency(peers, samples, gap)), rounds=1, iterations=1)
    median, p99, _, _ = result[0]
    out = np.zeros(samples, dtype=np.uint64)
    peers.condvar_wakeup(_u64_ptr(peers, out), samples, gap, CPU0, CPU1)
    record("latency: enqueue -> start on a sleeping core (futex), median", median,
           float(np.median(out)), unit="ns", peer_name="pthread condvar wake-up")
    record("latency: sleeping core, p99", p99, float(np.percentile(out, 99)), unit="ns",
           peer_name="pthread condvar wake-up p99")


# --- 3. Python tasks ----------------------------------------------------------------------------

def test_python_callable_tasks(benchmark, record):
    n = 100_000

    def ours():
        with bm.Machine(cores=2, memory="8M", console="capture") as m:
            enqueue = m.smp.enqueue
            start = time.perf_counter()
            for i in range(n):
                enqueue(noop, i, block=True)
            m.smp.wait()
            elapsed = time.perf_counter() - start
            assert not m.faults
        return n / elapsed
    rates = []
    benchmark.pedantic(lambda: rates.append(ours()), rounds=3, iterations=1)

    def executor():
        count = n // 5
        with ThreadPoolExecutor(max_workers=2) as pool:
            start = time.perf_counter()
            for i in range(count):
                pool.submit(noop, i)
        return count / (time.perf_counter() - start)

    def queue_thread():
        q = queue.Queue()

        def consumer():
            while True:
                fn, arg = q.get()
                if fn is None:
                    return
                fn(arg)
        thread = threading.Thread(target=consumer)
        thread.start()
        start = time.perf_counter()
        for i in range(n):
            q.put((noop, i))
        q.put((None, None))
        thread.join()
        return n / (time.perf_counter() - start)
    tpe = max(executor() for _ in range(3))
    qt = max(queue_thread() for _ in range(3))
    record("Python-callable tasks/s vs ThreadPoolExecutor", max(rates), tpe, unit="tasks/s",
           peer_name="ThreadPoolExecutor(2)", target="ratio >= 3")
    record("Python-callable tasks/s vs queue.Queue + a thread", max(rates), qt, unit="tasks/s",
           peer_name="queue.Queue + consumer thread", target="ratio >= 1")


# --- 4. compute ---------------------------------------------------------------------------------

def test_primes_below_5_million(benchmark, record, peers):
    limit, chunk = 5_000_000, 10_000
    chunks = limit // chunk

    def ours(cores):
        peers.primes_setup(limit, chunk)
        with bm.Machine(cores=cores, memory="8M", console="capture") as m:
            ns = peers.produce(peers.enqueue, peers.wait, peers.primes_task, chunks)
            assert not m.faults
        assert peers.primes_result() == 348_513
        return ns / 1e9
    one = best_of(2, lambda: ours(1))
    times = []
    benchmark.pedantic(lambda: times.append(ours(2)), rounds=3, iterations=1)
    two = min(times)
    cpus = peers.ffi.new("int[]", [CPU0, CPU1])

    def pthreads():
        peers.primes_setup(limit, chunk)
        ns = peers.primes_pthreads(2, cpus)
        assert peers.primes_result() == 348_513
        return ns / 1e9
    plain = best_of(3, pthreads)
    record("primes < 5M, C tasks: 2-core speedup over 1 core", one / two, None, unit="x",
           target="ours >= 1.9", note=f"1 core {one:.3f} s, 2 cores {two:.3f} s")
    record("primes < 5M, C tasks on 2 cores vs plain pthreads", two, plain, unit="s",
           peer_name="2 pinned pthreads, same chunks", target="ratio <= 1.03")

"""Real runs: a schedule served by a policy on a machine's pinned cores (native/lab.c), or by
the pthread-pool peer on the same CPUs.  Results come back as TSC stamps per request,
converted here to µs after the run's time 0."""
import resource
import time

import numpy as np

from .._native import ffi, lib
from ..errors import ArgumentError, raise_recorded

#: policies that run for real (enum bm_lab_policy); the model each is compared with
POLICIES = {"c-fcfs": 0, "d-fcfs": 1, "steal": 2, "pthread": 3, "executor": None}
MODEL_OF = {"c-fcfs": "c-fcfs", "d-fcfs": "d-fcfs", "steal": "steal", "pthread": "c-fcfs",
            "executor": "c-fcfs"}
MODES = {"published": 0, "generator": 1}


def tsc_hz():
    """TSC ticks per second (measured once per process)."""
    return lib.bm_lab_tsc_hz()


def cache_line_ns(cpu0, cpu1, samples=2000, gap_us=2.0):
    """The floor of a hand-off between two CPUs, now: one cache line stored on ``cpu0`` and
    polled on ``cpu1``, ``samples`` times ``gap_us`` apart; the median in ns (same TSC stamps
    as the lab's).  On a VM it moves from minute to minute: measure it next to what it bounds."""
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ArgumentError(f"samples must be an int >= 1, got {samples!r}")
    out = np.zeros(samples, dtype=np.uint64)
    if lib.bm_lab_line_ticks(int(cpu0), int(cpu1), samples, int(gap_us * tsc_hz() / 1e6), _u64(out)) != 0:
        raise_recorded()
    return float(np.median(out)) * 1e9 / tsc_hz()


def workers_of(cores, mode):
    """How many cores serve: all of them published by time, all but the generator's else."""
    return cores - (mode == "generator")


class Stamps:
    """Per-request results of one real run, µs after time 0: ``arrival``, ``publish``,
    ``start``, ``end``; ``core`` (int); ``late`` (count); ``cpu_s`` (process CPU time);
    ``cpu_share``: cpu_s over the run's wall time times its threads, the share of the CPUs the
    run's threads got (all of them spin: below 1, other processes took CPU time from them);
    ``stalls``: the host's stalls the machine's cores saw (:class:`Stalls`, None if not recorded)."""

    stalls = None


def _u64(array):
    return ffi.cast("u64 *", array.ctypes.data)


STALL_ROOM = 1 << 16                 # stalls kept per core and run


def run(policy, arrival_us, task, args=None, target=None, *, machine=None, cpus=None,
        mode="published", late_us=1.0, stall_us=1.0):
    """Serve requests due at ``arrival_us`` with ``task`` under ``policy``.

    c-fcfs, d-fcfs, steal run on ``machine``'s cores (the caller must be its core 0, e.g. the
    thread that booted it); pthread runs threads pinned to ``cpus``.  ``args``: each request's
    task argument (default: its index); ``target``: its worker (d-fcfs, steal).  On a
    machine, each core records the host's stalls longer than ``stall_us`` (0: none) in its
    idle turns and in spins that overran (``stamps.stalls``, :class:`Stalls`, per worker).
    Returns :class:`Stamps`."""
    if policy not in POLICIES:
        raise ArgumentError(f"no real policy {policy!r} (known: {', '.join(POLICIES)})")
    if mode not in MODES:
        raise ArgumentError(f"arrivals mode must be published or generator, got {mode!r}")
    if policy == "executor":
        return run_executor(arrival_us, task, args, threads=len(cpus) if cpus else 1, late_us=late_us)
    hz = tsc_hz()
    arrival = np.ascontiguousarray(np.round(np.asarray(arrival_us) * hz / 1e6), dtype=np.uint64)
    count = len(arrival)
    args = np.arange(count, dtype=np.uint64) if args is None else np.ascontiguousarray(args, dtype=np.uint64)
    publish, start, end = (np.zeros(count, dtype=np.uint64) for _ in range(3))
    core = np.zeros(count, dtype=np.uint32)
    keep = []
    r = ffi.new("struct bm_lab_run *")
    r.policy, r.mode, r.count = POLICIES[policy], MODES[mode], count
    r.arrival, r.arg = _u64(arrival), _u64(args)
    if target is not None:
        target = np.ascontiguousarray(target, dtype=np.uint32)
        r.target = ffi.cast("const u32 *", target.ctypes.data)
    elif policy in ("d-fcfs", "steal"):
        raise ArgumentError(f"{policy} needs each request's worker (target)")
    r.code = task.address
    r.late_ticks = int(late_us * hz / 1e6)
    r.publish, r.start, r.end = _u64(publish), _u64(start), _u64(end)
    r.core = ffi.cast("u32 *", core.ctypes.data)
    before, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    if policy == "pthread":
        cpus = list(cpus) if cpus is not None else [-1]
        cpu_array = ffi.new("int[]", cpus)
        keep.append(cpu_array)
        r.cpus, r.threads = cpu_array, len(cpus)
        threads = len(cpus)
        status = lib.bm_lab_pool_run(r)
    else:
        if machine is None:
            raise ArgumentError(f"{policy} runs on a machine's cores: give machine=")
        threads = machine.num_cores
        if stall_us:
            # filled, not only allocated: their pages are faulted in now, not in the run
            stall_start = np.full(threads * STALL_ROOM, 0, dtype=np.uint64)
            stall_length = np.full(threads * STALL_ROOM, 0, dtype=np.uint64)
            stall_count = np.zeros(threads, dtype=np.uint64)
            r.stall_ticks, r.stall_cap = max(1, int(stall_us * hz / 1e6)), STALL_ROOM
            r.stall_start, r.stall_length = _u64(stall_start), _u64(stall_length)
            r.stall_count = _u64(stall_count)
        status = lib.bm_lab_run(machine._c, r)
    after, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - wall
    if status != 0:
        raise_recorded()
    stamps = Stamps()
    scale = 1e6 / hz
    stamps.arrival = arrival * scale
    stamps.publish, stamps.start, stamps.end = publish * scale, start * scale, end * scale
    stamps.core = core
    stamps.late = int(r.late)
    stamps.cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    stamps.mode = mode
    stamps.cpu_share = stamps.cpu_s / (wall * threads) if wall > 0 else None
    stamps.stalls = None
    if policy != "pthread" and stall_us:
        first = threads - workers_of(threads, mode)              # the generator records none
        cores = range(first, threads)
        stamps.stalls = Stalls([stall_start[c * STALL_ROOM:c * STALL_ROOM + int(stall_count[c])] * scale
                                for c in cores],
                               [stall_length[c * STALL_ROOM:c * STALL_ROOM + int(stall_count[c])] * scale
                                for c in cores],
                               max(float(stamps.end.max()), 1.0) / 1e6, stall_us)
    return stamps


def run_executor(arrival_us, task, args=None, *, threads=1, late_us=1.0):
    """The Python peer: the calling thread submits each request to a ThreadPoolExecutor of
    ``threads`` workers at its time (sleeping until then, so the workers get the GIL), the
    workers run the Python task.  Only for Python tasks (``task.python``); stamps as run()."""
    import threading
    from concurrent.futures import ThreadPoolExecutor
    if not task.python:
        raise ArgumentError("the executor peer runs Python tasks only (give a Python callable)")
    function = task._keep[1]
    arrival = np.asarray(arrival_us, dtype=np.float64)
    count = len(arrival)
    args = list(range(count)) if args is None else [int(a) for a in args]
    publish, start, end = (np.zeros(count) for _ in range(3))
    core = np.zeros(count, dtype=np.uint32)
    names = {}
    clock = time.perf_counter_ns

    def serve(i, base):
        start[i] = (clock() - base) / 1e3
        function(args[i])
        end[i] = (clock() - base) / 1e3
        core[i] = names.setdefault(threading.get_ident(), len(names))

    before = resource.getrusage(resource.RUSAGE_SELF)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        base = clock() + 2_000_000
        for i in range(count):
            wait = (arrival[i] - (clock() - base) / 1e3) / 1e6
            if wait > 0:
                time.sleep(wait)
            publish[i] = (clock() - base) / 1e3
            pool.submit(serve, i, base)
    after = resource.getrusage(resource.RUSAGE_SELF)
    stamps = Stamps()
    stamps.arrival, stamps.publish, stamps.start, stamps.end, stamps.core = arrival, publish, start, end, core
    stamps.late = int(np.sum(publish - arrival > late_us))
    stamps.cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    stamps.mode = "generator"
    wall = (end.max() + 2000) / 1e6 if count else 0
    stamps.cpu_share = stamps.cpu_s / (wall * (threads + 1)) if wall > 0 else None
    return stamps


class Stalls:
    """The host's stalls the cores of a run saw (gaps in their idle turns, spins that overran
    their deadline): ``start_us`` and ``length_us`` (one array per worker, µs after time 0),
    over ``seconds`` (the run's span)."""

    def __init__(self, start_us, length_us, seconds, threshold_us):
        self.start_us, self.length_us = start_us, length_us
        self.seconds, self.threshold_us = seconds, threshold_us

    def lost_share(self, core):
        """The share of the run's time worker ``core`` lost to stalls."""
        return float(self.length_us[core].sum()) / (self.seconds * 1e6)

    def summary(self):
        """JSON-ready: per worker the stalls per second, the share of time lost, the p50 / p99 /
        max stall in µs."""
        rows = []
        for c, lengths in enumerate(self.length_us):
            rows.append({"worker": c, "stalls_per_s": round(len(lengths) / self.seconds, 1),
                         "lost_share": round(self.lost_share(c), 5),
                         "p50_us": round(float(np.percentile(lengths, 50)), 3) if len(lengths) else 0.0,
                         "p99_us": round(float(np.percentile(lengths, 99)), 3) if len(lengths) else 0.0,
                         "max_us": round(float(lengths.max()), 3) if len(lengths) else 0.0})
        return {"seconds": self.seconds, "threshold_us": self.threshold_us, "cores": rows}

    def tiled(self, core, span_us, offset_us=0.0):
        """Worker ``core``'s stalls repeated every ``seconds`` to cover [0, span_us), starting
        ``offset_us`` into the run: (start, end) arrays in µs, sorted and disjoint (what
        :func:`pybaremetal.lab.model.simulate` takes as one server's stalls)."""
        period = self.seconds * 1e6
        start, length = self.start_us[core], self.length_us[core]
        if len(start) == 0:
            return np.zeros(0), np.zeros(0)
        shifted = (start - offset_us) % period
        order = np.argsort(shifted)
        start, length = shifted[order], length[order]
        repeats = int(np.ceil(span_us / period)) + 1
        starts = np.concatenate([start + k * period for k in range(repeats)])
        ends = np.concatenate([start + length + k * period for k in range(repeats)])
        keep = starts < span_us
        starts, ends = starts[keep], ends[keep]
        # tiling and the offset may make neighbours overlap: merge them
        if len(ends):
            ends = np.maximum.accumulate(ends)
            first = np.flatnonzero(np.concatenate([[True], starts[1:] > ends[:-1]]))
            starts, ends = starts[first], np.maximum.reduceat(ends, first)
        return starts, ends


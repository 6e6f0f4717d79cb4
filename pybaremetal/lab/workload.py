"""What the lab's requests are: service-time distributions, the open-loop schedule, the task.

A distribution is a name (``fixed``, ``exp``, ``bimodal-1``, ``bimodal-2``, ``shinjuku``) or a
mix the user writes as ``P:US+P:US...`` (probability : microseconds).  The named shapes follow
ZygOS §2 with mean S̄ = ``mean_us``: bimodal-1 is 90% 0.5·S̄ / 10% 5.5·S̄, bimodal-2 is
99.9% 0.5·S̄ / 0.1% 500.5·S̄; ``shinjuku`` is Shinjuku's 99.5% 0.5 µs / 0.5% 500 µs and a mix
is the user's own, both with the mean they imply (``mean_us`` is not used).

A schedule is seeded and precomputed: Poisson (or fixed-rate) arrivals at the rate that makes
``load`` of ``workers`` cores busy, each request's service time, and the worker whose queue it
joins (d-FCFS, steal: uniform at random, as IX's NIC hashing spreads flows).  The arrivals are
one draw of unit inter-arrival gaps scaled by 1/rate, so every load of a sweep (and the model
of each) sees the same randomness, which keeps latency against load smooth.

A task is the built-in TSC spin (``spin``: it runs for the request's service time), a C
function ``void f(u64 arg)`` in a ``.c`` (built with gcc) or ``.so`` file (``FILE:SYMBOL``), a
numba cfunc or any object with an ``.address``, a raw code address, or a Python callable
(``f(arg)``, or ``FILE.py:FUNCTION``).  Tasks other than spin get the request's index as ``arg`` and take the time they
take: their service-time distribution is measured first (``calibrate``) and the model uses it.
"""
import ctypes
import os

import numpy as np

from ..errors import ArgumentError

NAMED = {
    "fixed": ((1.0,), (1.0,)),
    "exp": None,
    "bimodal-1": ((0.9, 0.1), (0.5, 5.5)),
    "bimodal-2": ((0.999, 0.001), (0.5, 500.5)),
}
ABSOLUTE = {"shinjuku": ((0.995, 0.005), (0.5, 500.0))}
DISTRIBUTIONS = tuple(NAMED) + tuple(ABSOLUTE)


class Distribution:
    """A service-time distribution: ``name``, ``mean_us``, ``sample(rng, n)`` in µs."""

    def __init__(self, spec, mean_us=10.0):
        if not isinstance(mean_us, (int, float)) or not mean_us > 0:
            raise ArgumentError(f"the mean service time must be > 0 µs, got {mean_us!r}")
        self.name = spec
        self.empirical = None
        if spec in NAMED:
            self.mean_us = float(mean_us)
            shape = NAMED[spec]
            self.probabilities, self.values = (None, None) if shape is None else \
                (np.array(shape[0]), np.array(shape[1]) * self.mean_us)
        elif spec in ABSOLUTE or ":" in spec:
            probabilities, values = ABSOLUTE[spec] if spec in ABSOLUTE else _parse_mix(spec)
            self.probabilities, self.values = np.array(probabilities), np.array(values, dtype=float)
            self.mean_us = float(self.probabilities @ self.values)
        else:
            raise ArgumentError(f"unknown distribution {spec!r} (known: {', '.join(DISTRIBUTIONS)}, "
                                f"or a mix P:US+P:US...)")

    @classmethod
    def measured(cls, name, samples_us):
        """The distribution of a task's measured service times (resampled)."""
        self = cls.__new__(cls)
        self.name = name
        self.empirical = np.asarray(samples_us, dtype=float)
        self.mean_us = float(self.empirical.mean())
        self.probabilities = self.values = None
        return self

    def sample(self, rng, n):
        """n service times in µs."""
        if self.empirical is not None:
            return rng.choice(self.empirical, n)
        if self.values is None:
            return rng.exponential(self.mean_us, n)
        return self.values[rng.choice(len(self.values), n, p=self.probabilities)]


def _parse_mix(spec):
    probabilities, values = [], []
    for part in spec.split("+"):
        try:
            p, us = part.split(":")
            probabilities.append(float(p))
            values.append(float(us))
        except ValueError:
            raise ArgumentError(f"distribution {spec!r}: write a mix as P:US+P:US...") from None
    if any(p < 0 for p in probabilities) or any(not v > 0 for v in values) or \
            abs(sum(probabilities) - 1) > 1e-6:
        raise ArgumentError(f"distribution {spec!r}: probabilities must be >= 0 and add up to 1, "
                            f"times > 0")
    return probabilities, values


class Draw:
    """One seeded draw of a run's randomness, reused for every load: unit gaps, service
    times (µs) and queue targets for ``count`` requests."""

    def __init__(self, distribution, count, workers, seed=1, arrivals="poisson"):
        if arrivals not in ("poisson", "fixed"):
            raise ArgumentError(f"arrivals must be poisson or fixed, got {arrivals!r}")
        rng = np.random.default_rng(seed)
        self.count = count
        self.gaps = rng.exponential(1.0, count) if arrivals == "poisson" else np.ones(count)
        self.service_us = distribution.sample(rng, count)
        self.target = rng.integers(0, workers, count, dtype=np.uint32)
        self.mean_us = distribution.mean_us

    def arrivals_us(self, load, workers, count=None):
        """Arrival times (µs) of the first ``count`` requests at ``load`` of ``workers`` cores."""
        check_load(load)
        rate = load * workers / self.mean_us                  # requests per µs
        return np.cumsum(self.gaps[:count]) / rate


def check_load(load):
    if not isinstance(load, (int, float)) or not 0 < load <= 1:
        raise ArgumentError(f"load {load!r} is outside (0, 1] (a load is the fraction of the "
                            f"workers' capacity the arrivals ask for)")


# --- tasks --------------------------------------------------------------------------------

class Task:
    """A task's code address (``void f(u64)``) and what the lab knows about it.  ``spin``: the
    built-in TSC spin, whose argument is the service time in ticks."""

    def __init__(self, address, name, spin=False, keep=None, python=False):
        self.address, self.name, self.spin, self._keep, self.python = address, name, spin, keep, python


def spin_task():
    from .._native import lib
    return Task(int(lib.bm_lab_spin_code()), "spin", spin=True)


def spin_ticks(service_us):
    """The spin task's arguments for service times in µs: TSC ticks, less the cost of a call of
    an empty spin as the cores stamp it (measured once), so a request stamped start..end takes
    its service time."""
    from .._native import lib
    if spin_ticks.overhead is None:
        zero = np.zeros(1000, dtype=np.uint64)
        spin_ticks.overhead = float(np.median(time_ticks(int(lib.bm_lab_spin_code()), zero)))
    ticks = np.asarray(service_us, dtype=np.float64) * lib.bm_lab_tsc_hz() / 1e6 - spin_ticks.overhead
    return np.maximum(np.round(ticks), 0).astype(np.uint64)


spin_ticks.overhead = None


def time_ticks(address, args):
    """TSC ticks each call code(args[i]) takes, one after the other on the calling thread."""
    from .._native import ffi, lib
    args = np.ascontiguousarray(args, dtype=np.uint64)
    ticks = np.zeros(len(args), dtype=np.uint64)
    lib.bm_lab_time_task(address, ffi.cast("u64 *", args.ctypes.data), len(args),
                         ffi.cast("u64 *", ticks.ctypes.data))
    return ticks


def resolve_task(task):
    """A :class:`Task` from what the user gave: None (spin), "FILE.c:SYMBOL", "FILE.so:SYMBOL",
    an int address, an object with ``.address`` (numba cfunc), or a Python callable."""
    if task is None or isinstance(task, Task):
        return task or spin_task()
    if isinstance(task, str):
        return _file_task(task)
    if isinstance(task, int) and not isinstance(task, bool):
        if task == 0:
            raise ArgumentError("the task's code address is 0")
        return Task(task, hex(task))
    if hasattr(task, "address") and isinstance(task.address, int):
        return Task(task.address, getattr(task, "__name__", "cfunc"), keep=task)
    if callable(task):
        from .._native import ffi
        def call(arg):                               # a C task returns nothing
            task(arg)
        callback = ffi.callback("void(u64)", call)
        return Task(int(ffi.cast("uintptr_t", callback)), getattr(task, "__name__", "python"),
                    keep=(callback, task), python=True)
    raise ArgumentError(f"a task is FILE.c:SYMBOL, FILE.so:SYMBOL, a code address, a numba "
                        f"cfunc or a Python callable, not {type(task).__name__}")


def _file_task(spec):
    path, sep, symbol = spec.rpartition(":")
    if not sep or not path or not symbol:
        raise ArgumentError(f"task {spec!r}: write it as FILE.c:SYMBOL or FILE.so:SYMBOL")
    if not os.path.isfile(path):
        raise ArgumentError(f"task {spec!r}: no file {path}")
    if path.endswith(".py"):
        return resolve_task(_python_function(path, symbol, spec))
    from ..apps import c
    if path.endswith(".c"):
        library = c.cached_build([path])
    elif path.endswith(".so"):
        library = path
    else:
        raise ArgumentError(f"task {spec!r}: the file must be a .c or .py source or a .so")
    c._export_runtime()
    try:
        dll = ctypes.CDLL(os.path.abspath(library), mode=os.RTLD_NOW | os.RTLD_LOCAL)
    except OSError as error:
        raise ArgumentError(f"task {spec!r}: cannot load it: {error}") from None
    try:
        address = ctypes.cast(getattr(dll, symbol), ctypes.c_void_p).value
    except AttributeError:
        raise ArgumentError(f"task {spec!r}: {path} has no function {symbol!r}") from None
    return Task(address, f"{os.path.basename(path)}:{symbol}", keep=dll)


def _python_function(path, name, spec):
    import runpy
    namespace = runpy.run_path(path, run_name="__lab_task__")
    function = namespace.get(name)
    if not callable(function):
        raise ArgumentError(f"task {spec!r}: {path} has no function {name!r}")
    return function


def calibrate(task, count=2000):
    """Service times (µs) of ``count`` calls of ``task`` (arguments 0..count-1), one after the
    other on the calling thread, after 100 warm-up calls."""
    from .._native import lib
    args = np.arange(count, dtype=np.uint64)
    time_ticks(task.address, args[:100])
    return time_ticks(task.address, args) / lib.bm_lab_tsc_hz() * 1e6

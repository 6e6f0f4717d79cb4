"""The model: a discrete-event simulator (native/lab_sim.c) of the same arrivals and service
times as the real runs, for c-FCFS, d-FCFS, work stealing, processor sharing and ideal
preemption, plus the closed forms the tests check it against (M/M/1, M/D/1)."""
import decimal
import math

import numpy as np

from ..errors import ArgumentError, raise_recorded

#: simulator policy codes (enum bm_sim_policy)
POLICIES = {"c-fcfs": 0, "d-fcfs": 1, "steal": 2, "ps": 3, "preempt": 4}


def simulate(policy, servers, arrival_us, service_us, target=None, quantum_us=None, stalls=None,
             deadline=True):
    """Latency (finish - arrival, µs) of each request under the ideal ``policy`` with
    ``servers`` servers.  ``target``: each request's queue (d-FCFS, steal); ``quantum_us``:
    the preemption time slice (preempt).  ``stalls`` (c-FCFS and d-FCFS): for each server,
    (start, end) arrays of the times its CPU is taken away (sorted, disjoint); ``deadline``:
    tasks spin to a deadline (a stall only matters if it covers the deadline), else a stall
    inside a task delays its end by its length."""
    from .._native import ffi, lib
    if policy not in POLICIES:
        raise ArgumentError(f"the model has no policy {policy!r} (known: {', '.join(POLICIES)})")
    arrival = np.ascontiguousarray(arrival_us, dtype=np.float64)
    service = np.ascontiguousarray(service_us, dtype=np.float64)
    if arrival.shape != service.shape:
        raise ArgumentError("simulate: arrivals and service times differ in length")
    finish = np.empty_like(arrival)
    targets = ffi.NULL
    if policy in ("d-fcfs", "steal"):
        if target is None:
            raise ArgumentError(f"simulate: {policy} needs each request's queue (target)")
        target = np.ascontiguousarray(target, dtype=np.uint32)
        targets = ffi.cast("const u32 *", target.ctypes.data)
    if stalls is not None:
        return _simulate_stalled(policy, servers, arrival, service, target, stalls, deadline)
    quantum = float(quantum_us) if quantum_us is not None else 0.0
    if lib.bm_lab_simulate(POLICIES[policy], servers, len(arrival),
                           ffi.cast("const double *", arrival.ctypes.data),
                           ffi.cast("const double *", service.ctypes.data), targets, quantum,
                           ffi.cast("double *", finish.ctypes.data)) != 0:
        raise_recorded()
    return finish - arrival


def _simulate_stalled(policy, servers, arrival, service, target, stalls, deadline):
    from .._native import ffi, lib
    if policy not in ("c-fcfs", "d-fcfs"):
        raise ArgumentError(f"the model has stalls for c-fcfs and d-fcfs only, not {policy!r}")
    if len(stalls) != servers:
        raise ArgumentError(f"simulate: stalls for {len(stalls)} servers, expected {servers}")
    starts = np.ascontiguousarray(np.concatenate([np.asarray(s, dtype=np.float64) for s, _ in stalls]
                                                 + [np.zeros(0)]))
    ends = np.ascontiguousarray(np.concatenate([np.asarray(e, dtype=np.float64) for _, e in stalls]
                                               + [np.zeros(0)]))
    first = np.ascontiguousarray(np.concatenate([[0], np.cumsum([len(s) for s, _ in stalls])]),
                                 dtype=np.uint64)
    targets = ffi.NULL
    if target is not None:
        target = np.ascontiguousarray(target, dtype=np.uint32)
        targets = ffi.cast("const u32 *", target.ctypes.data)
    finish = np.empty_like(arrival)
    if lib.bm_lab_simulate_stalled(POLICIES[policy], servers, len(arrival),
                                   ffi.cast("const double *", arrival.ctypes.data),
                                   ffi.cast("const double *", service.ctypes.data), targets,
                                   ffi.cast("const double *", starts.ctypes.data),
                                   ffi.cast("const double *", ends.ctypes.data),
                                   ffi.cast("const u64 *", first.ctypes.data), int(bool(deadline)),
                                   ffi.cast("double *", finish.ctypes.data)) != 0:
        raise_recorded()
    return finish - arrival


# --- closed forms (mean service 1) ------------------------------------------------------------

def mm1_sojourn_quantile(load, q):
    """M/M/1 (FCFS, mean service 1): the q-quantile of the time in system, Exp(1 - load)."""
    return -math.log(1 - q) / (1 - load)


def md1_sojourn_cdf(load, t):
    """M/D/1 (FCFS, service 1): P(time in system <= t), from Erlang's waiting-time formula
    P(W <= x) = (1 - load) sum_{k=0}^{floor(x)} (load (k - x))^k / k! e^{-load (k - x)}.
    The sum alternates and its terms grow like e^{load x}: it is summed in decimal arithmetic
    with digits to spare."""
    x = t - 1.0
    if x < 0:
        return 0.0
    with decimal.localcontext() as context:
        context.prec = 50 + int(load * x / 2.3)
        rho, x = decimal.Decimal(load), decimal.Decimal(x)
        total, factorial = decimal.Decimal(0), decimal.Decimal(1)
        for k in range(int(math.floor(x)) + 1):
            if k:
                factorial *= k
            u = rho * (k - x)
            total += (u ** k if k else 1) / factorial * (-u).exp()
        return float((1 - rho) * total)


def md1_sojourn_quantile(load, q):
    """M/D/1 (service 1): the q-quantile of the time in system (bisection on the CDF)."""
    lo, hi = 1.0, 2.0
    while md1_sojourn_cdf(load, hi) < q:
        hi *= 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if md1_sojourn_cdf(load, mid) < q else (lo, mid)
    return (lo + hi) / 2


def dfcfs_exp_max_load(slo_factor=10.0, q=0.99):
    """d-FCFS, exponential service: each queue is M/M/1, so the q-quantile meets slo_factor·S̄
    up to load 1 - ln(1/(1-q)) / slo_factor (0.54 for p99 at 10·S̄)."""
    return 1 + math.log(1 - q) / slo_factor

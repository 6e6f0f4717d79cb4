"""Sweeps: latency against load for each policy and distribution, real and model, and the
highest load meeting the SLO (p99 <= 10·S̄ by default), as one JSON-ready dict."""
import contextlib
import os
import platform

import numpy as np

from ..errors import ArgumentError
from . import model, real, stats
from .workload import Distribution, Draw, calibrate, check_load, resolve_task, spin_ticks

DEFAULT_LOADS = tuple(round(0.05 * i, 2) for i in range(1, 21))
#: the model policies that also run on the stalls a real run saw (the host's model)
HOST_MODELS = ("c-fcfs", "d-fcfs")
MODEL_ONLY = ("ps", "preempt")
POLICIES = tuple(real.POLICIES) + MODEL_ONLY


def parse_list(value, what):
    """'a,b' or ['a', 'b'] -> ['a', 'b'] (empty items dropped)."""
    items = value.split(",") if isinstance(value, str) else list(value)
    items = [item.strip() for item in items if item and item.strip()]
    if not items:
        raise ArgumentError(f"no {what} given")
    return items


def parse_loads(value):
    """'0.1,0.5,0.9', 'START:STOP:STEP' or a list of floats -> sorted loads in (0, 1]."""
    if isinstance(value, str):
        try:
            if value.count(":") == 2:
                start, stop, step = (float(x) for x in value.split(":"))
                if not step > 0:
                    raise ValueError
                loads = [round(x, 6) for x in np.arange(start, stop + step / 2, step)]
            else:
                loads = [float(x) for x in value.split(",") if x.strip()]
        except ValueError:
            raise ArgumentError(f"loads {value!r}: write L1,L2,... or START:STOP:STEP") from None
    else:
        loads = list(value)
    if not loads:
        raise ArgumentError("no loads given")
    for load in loads:
        check_load(load)
    return sorted(loads)


def _check(name, value, ok, what):
    if not ok(value):
        raise ArgumentError(f"{name} must be {what}, got {value!r}")


class _Progress:
    """A rich progress bar on stderr, refreshed between runs only (a refresh thread would take
    CPU from the cores being measured); a no-op when off."""

    def __init__(self, enabled, total):
        self.bar = None
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
            self.bar = Progress(TextColumn("{task.description:<34}"), BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), console=Console(stderr=True), auto_refresh=False)
            self.task = self.bar.add_task("lab", total=total)

    def __enter__(self):
        if self.bar:
            self.bar.start()
            # rich hides the cursor while a bar shows: shown again at once, so that a run
            # ended by a signal (no Python code runs then) leaves the terminal as it was
            self.bar.console.show_cursor(True)
        return self

    def __exit__(self, *exc):
        if self.bar:
            self.bar.stop()

    def step(self, description):
        if self.bar:
            self.bar.update(self.task, advance=1, description=description)
            self.bar.refresh()


def _max_load(meets_at, loads_met, steps):
    """The highest load meeting the SLO: from the sweep's points (load -> met), the first
    failing load and the last met load below it bound a bisection of ``steps`` runs."""
    lo, hi = 0.0, None
    for load, met in sorted(loads_met):
        if not met:
            hi = load
            break
        lo = load
    if hi is None:
        return lo
    for _ in range(steps):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if meets_at(mid) else (lo, mid)
    return lo


def sweep(policies=("c-fcfs", "d-fcfs", "steal"), dists=("exp",), mean_us=10.0, cores=None,
          loads=DEFAULT_LOADS, *, mode="published", model_only=False, samples=1_000_000,
          duration_s=1.0, model_samples=1_000_000, warmup=0.1, slo_factor=10.0,
          slo_percentile=99.0, slo_metric="latency", bisect=4, model_bisect=10, seed=1, task=None, quantum_us=None,
          late_us=1.0, arrivals="poisson", histograms=False, progress=False, stop_after=2):
    """Measure (and model) latency against load; returns the results dict (see the README's
    lab section): ``summary`` has one row per policy and distribution with ``max_load_at_slo``
    (real; absent with model_only or for model-only policies), ``model_max_load_at_slo``, and
    the sweeps (``sweep``: real points, ``model_sweep``: model points).

    policies: c-fcfs, d-fcfs, steal, pthread, executor (real, each compared with its model:
    the pool's and the executor's is c-fcfs; executor: Python tasks only) and ps, preempt
    (model only).  dists: names or P:US+P:US mixes.  cores: the
    machine's cores (default: one per CPU).  mode: published (every core serves and publishes
    due requests) or generator (core 0 sends, the others serve).  samples / duration_s: a real
    point runs min(samples, duration_s of arrivals) requests; model_samples per model point.
    warmup: the fraction of each run's first requests left out.  The SLO: the slo_percentile of
    latency at most slo_factor·S̄ (slo_metric "latency"), or of slowdown (latency over the
    request's own service time) at most slo_factor (slo_metric "slowdown").  bisect / model_bisect: runs that refine each max load.
    task: None (spin), "FILE.c:SYMBOL", ".so:SYMBOL", a code address, a numba cfunc or a
    Python callable or "FILE.py:FUNCTION" (then the task's measured service times replace
    dists).  quantum_us: the
    preempt model's slice (default S̄/2).  late_us: a request published later than this after
    its time counts as a late send.  arrivals: poisson or fixed.  stop_after: a real sweep
    stops after this many loads in a row miss the SLO (the loads above would too; 0: never)."""
    policies = parse_list(policies, "policies")
    for policy in policies:
        if policy not in POLICIES:
            raise ArgumentError(f"unknown policy {policy!r} (known: {', '.join(POLICIES)})")
    loads = parse_loads(loads)
    cores = len(os.sched_getaffinity(0)) if cores is None else cores
    _check("cores", cores, lambda v: isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 256, "1..256")
    if mode not in real.MODES:
        raise ArgumentError(f"arrivals mode must be published or generator, got {mode!r}")
    if mode == "generator" and cores < 2:
        raise ArgumentError("a generator needs 2 cores or more (one sends, the others serve)")
    _check("samples", samples, lambda v: isinstance(v, int) and v >= 100, "an int >= 100")
    _check("model samples", model_samples, lambda v: isinstance(v, int) and v >= 100, "an int >= 100")
    _check("duration", duration_s, lambda v: isinstance(v, (int, float)) and v > 0, "> 0 s")
    _check("warmup", warmup, lambda v: isinstance(v, (int, float)) and 0 <= v < 0.9, "in [0, 0.9)")
    _check("the SLO factor", slo_factor, lambda v: isinstance(v, (int, float)) and v > 0, "> 0")
    _check("the SLO metric", slo_metric, lambda v: v in ("latency", "slowdown"), "latency or slowdown")
    _check("the SLO percentile", slo_percentile, lambda v: isinstance(v, (int, float)) and 0 < v < 100, "in (0, 100)")
    _check("late_us", late_us, lambda v: isinstance(v, (int, float)) and v >= 0, ">= 0")
    _check("bisect", bisect, lambda v: isinstance(v, int) and v >= 0, "an int >= 0")
    _check("stop_after", stop_after, lambda v: isinstance(v, int) and v >= 0, "an int >= 0")
    task = resolve_task(task)
    if "executor" in policies and not task.python:
        raise ArgumentError("the executor peer runs Python tasks only: give a Python callable "
                            "(or --task FILE.py:FUNCTION)")
    if task.spin:
        dists = [Distribution(name, mean_us) for name in parse_list(dists, "distributions")]
    else:
        dists = [Distribution.measured(f"task:{task.name}", calibrate(task))]
    workers = real.workers_of(cores, mode)
    run_real = [p for p in policies if p in real.POLICIES] if not model_only else []
    model_policies = list(dict.fromkeys([real.MODEL_OF.get(p, p) for p in policies]))
    total = len(dists) * (len(model_policies) * (len(loads) + model_bisect) +
                          sum(len(loads) + _runs_of_bisection(p, task, bisect) for p in run_real))
    result = {"tool": "baremetal lab", "version": 1, "arrivals": mode,
              "arrivals_note": ("published by time: every core publishes the requests whose time "
                                "has passed, then serves" if mode == "published" else
                                "generator: core 0 sends each request at its time, the others serve"),
              "arrival_process": arrivals, "cores": cores, "workers": workers,
              "slo": {"percentile": slo_percentile, "factor": slo_factor, "metric": slo_metric},
              "host": {"cpus": len(os.sched_getaffinity(0)), "platform": platform.platform(),
                       "tsc_hz": real.tsc_hz()},
              "settings": {"stop_after": stop_after, "samples": samples, "duration_s": duration_s, "model_samples": model_samples,
                           "warmup": warmup, "bisect": bisect, "model_bisect": model_bisect,
                           "seed": seed, "late_us": late_us, "task": task.name,
                           "loads": loads},
              "summary": []}
    with _Progress(progress, total) as bar, contextlib.ExitStack() as stack:
        machine = probe = None
        if run_real:
            from ..machine import Machine
            queue = 1 << max(12, min(24, int(samples - 1).bit_length()))
            machine = stack.enter_context(Machine(cores=cores, memory="8M", console="capture",
                                                  queue_size=queue))
            # the floor between the CPUs of the first and last core (they idle between runs)
            probe = _pair_of(_core_cpus(machine, cores))
            if probe:
                result["host"]["cache_line_ns"] = {"cpus": probe, "before": real.cache_line_ns(*probe)}
        for dist in dists:
            quantum = quantum_us if quantum_us is not None else dist.mean_us / 2
            slo = dict(mean_us=dist.mean_us, slo_factor=slo_factor, slo_percentile=slo_percentile,
                       slo_metric=slo_metric)
            models = {p: _model_sweep(p, dist, workers, loads, model_samples, warmup, seed, quantum,
                                      arrivals, model_bisect, slo, histograms, bar)
                      for p in model_policies}
            for policy in policies:
                model_points, model_max = models[real.MODEL_OF.get(policy, policy)]
                row = {"policy": policy, "dist": dist.name, "mean_us": dist.mean_us, "cores": cores,
                       "workers": workers, "mode": mode, "model_policy": real.MODEL_OF.get(policy, policy),
                       "model_max_load_at_slo": model_max}
                if policy in run_real:
                    points, max_load, host_max = _real_sweep(policy, dist, task, machine, cores, workers,
                                                             mode, loads, samples, duration_s, warmup, seed,
                                                             late_us, arrivals, bisect, slo, histograms, bar,
                                                             stop_after)
                    row["max_load_at_slo"] = max_load
                    row["fraction_of_model"] = max_load / model_max if model_max else None
                    if host_max is not None:
                        row["host_model_max_load_at_slo"] = host_max
                        row["fraction_of_host_model"] = max_load / host_max if host_max else None
                    row["overhead_us"] = points[0]["overhead_us"]
                    row["median_overhead_us"] = points[0]["median_overhead_us"]
                    if "host_overhead_us" in points[0]:
                        row["host_overhead_us"] = points[0]["host_overhead_us"]
                    row["min_cpu_share"] = min(p["cpu_share"] for p in points)
                    busiest = max(points, key=lambda p: p["dispatch_gaps"])
                    row["dispatch_gap_ns"] = busiest["dispatch_gap_ns"]
                    row["sweep"] = points
                row["model_sweep"] = model_points
                result["summary"].append(row)
        if machine is not None and machine.faults:
            raise ArgumentError(f"the task faulted: {machine.faults[0]}")
        if probe:
            result["host"]["cache_line_ns"]["after"] = real.cache_line_ns(*probe)
    return result


def _model_sweep(policy, dist, workers, loads, n, warmup, seed, quantum, arrivals, steps, slo,
                 histograms, bar):
    draw = Draw(dist, n, workers, seed, arrivals)
    skip = int(n * warmup)

    def latency(load):
        arrival = draw.arrivals_us(load, workers)
        return model.simulate(policy, workers, arrival, draw.service_us, draw.target, quantum), arrival

    points, met = [], []
    for load in loads:
        lat, arrival = latency(load)
        duration = float(np.max(arrival + lat) - arrival[skip])
        points.append(stats.point(load, lat[skip:], draw.service_us[skip:], dist.mean_us,
                                  duration_us=duration, keep_histogram=histograms))
        met.append((load, stats.meets(lat[skip:], draw.service_us[skip:], **slo)))
        bar.step(f"model {policy} {dist.name} {load:.2f}")

    def meets_at(load):
        bar.step(f"model {policy} {dist.name} max load")
        return stats.meets(latency(load)[0][skip:], draw.service_us[skip:], **slo)
    return points, round(_max_load(meets_at, met, steps), 4)


def _real_sweep(policy, dist, task, machine, cores, workers, mode, loads, samples, duration_s,
                warmup, seed, late_us, arrivals, steps, slo, histograms, bar, stop_after):
    draw = Draw(dist, samples, workers, seed + 1, arrivals)
    args = spin_ticks(draw.service_us) if task.spin else None
    cpus = _core_cpus(machine, cores)

    model_policy = real.MODEL_OF[policy]
    on_host = model_policy in HOST_MODELS and policy in ("c-fcfs", "d-fcfs")

    def count_at(load):
        return int(min(samples, max(2000, duration_s * 1e6 * load * workers / dist.mean_us)))

    def measure(load):
        """One run at ``load``: its stamps, the warm-up count, the arrivals, each request's own
        service time (the spin's asked time; a task of the user's: as measured)."""
        count = count_at(load)
        arrival = draw.arrivals_us(load, workers, count)
        stamps = real.run(policy, arrival, task, None if args is None else args[:count],
                          draw.target[:count], machine=machine, cpus=cpus, mode=mode, late_us=late_us)
        own = draw.service_us[:count] if task.spin else np.maximum(stamps.end - stamps.start, 1e-3)
        return stamps, int(count * warmup), arrival, own

    def on_stalls(load, arrival, own, stalls):
        """Latencies of the zero-overhead policy on servers that stall as ``stalls`` did."""
        span = float(arrival[-1]) + 100 * dist.mean_us
        return model.simulate(model_policy, workers, arrival, own, draw.target[:len(arrival)],
                              stalls=[stalls.tiled(w, span) for w in range(workers)],
                              deadline=task.spin)

    def judge(load, stamps, skip, arrival, own):
        """(real meets the SLO, the model on this host meets it on this run's stalls or None,
        that model's steady latencies or None) for one run."""
        ok = stats.meets((stamps.end - stamps.arrival)[skip:], own[skip:], **slo)
        if not (on_host and stamps.stalls is not None):
            return ok, None, None
        hosted = on_stalls(load, arrival, own, stamps.stalls)[skip:]
        return ok, stats.meets(hosted, own[skip:], **slo), hosted

    # load -> (real meets the SLO, the model on this host meets it on the same run's stalls):
    # both bisections take their answers from here, so that they share runs where they agree
    evaluated = {}
    points, met = [], []
    pair = _pair_of(cpus)
    for load in loads:
        line_before = real.cache_line_ns(*pair) if pair else None
        stamps, skip, arrival, own = measure(load)
        lat = (stamps.end - stamps.arrival)[skip:]
        modelled = model.simulate(model_policy, workers, arrival, own,
                                  draw.target[:len(arrival)])[skip:]
        row = stats.point(load, lat, own[skip:], dist.mean_us,
                          duration_us=float(stamps.end[skip:].max() - stamps.arrival[skip]),
                          late=stamps.late, requests=len(arrival), cpu_s=stamps.cpu_s,
                          keep_histogram=histograms)
        row["model_p99"] = float(np.percentile(modelled, 99))
        row["overhead_us"] = float(lat.mean() - modelled.mean())
        row["median_overhead_us"] = float(np.median(lat - modelled))
        ok, host_ok, hosted = judge(load, stamps, skip, arrival, own)
        if hosted is not None:
            row["host_model_p99"] = float(np.percentile(hosted, 99))
            row["host_overhead_us"] = float(lat.mean() - hosted.mean())
            row["stalls"] = stamps.stalls.summary()
        row["cpu_share"] = stamps.cpu_share
        if pair:                                # the floor just before and after this run
            around = [line_before, real.cache_line_ns(*pair)]
            row["cache_line_ns"], row["cache_line_ns_around"] = sum(around) / 2, around
        gaps = stats.dispatch_gaps_ns(stamps.publish, stamps.start, stamps.end, stamps.core)
        row["dispatch_gaps"] = int(len(gaps))
        row["dispatch_gap_ns"] = float(np.median(gaps)) if len(gaps) else None
        row["publish_delay_p99"] = float(np.percentile((stamps.publish - stamps.arrival)[skip:], 99))
        points.append(row)
        met.append((load, ok))
        evaluated[load] = (ok, host_ok)
        bar.step(f"real {policy} {dist.name} {load:.2f}")
        if stop_after and len(met) >= stop_after and not any(m for _, m in met[-stop_after:]):
            for _ in loads[len(points):]:
                bar.step(f"real {policy} {dist.name} (past the SLO)")
            break

    def evaluate(load):
        """(real meets, host model meets) at ``load``: one run, both judged on it."""
        if load not in evaluated:
            evaluated[load] = judge(load, *measure(load))[:2]
            bar.step(f"real {policy} {dist.name} max load")
        return evaluated[load]
    max_load = round(_max_load(lambda load: evaluate(load)[0], met, steps), 4)
    host_max = None
    if on_host and task.spin and all(evaluated[load][1] is not None for load, _ in met):
        host_met = [(load, evaluated[load][1]) for load, _ in met]
        for load in loads[len(points):]:        # the real sweep stopped early: the model goes on
            if all(m for _, m in host_met):
                host_met.append((load, evaluate(load)[1]))
        host_max = round(_max_load(lambda load: evaluate(load)[1], host_met, steps), 4)
    # the progress bar counted a host model's bisection as runs of its own: what it did not need
    for _ in range(len(loads) + _runs_of_bisection(policy, task, steps) - len(evaluated) -
                   (len(loads) - len(points))):
        bar.step(f"real {policy} {dist.name} max load")
    return points, max_load, host_max


def _runs_of_bisection(policy, task, steps):
    """Runs the bisections of a real policy may take: twice ``steps`` where the model on this
    host bisects too (the two share the runs where they agree)."""
    return steps * (2 if policy in HOST_MODELS and task.spin else 1)


def _pair_of(cpus):
    """The CPUs of the first and last core if the machine pinned them apart, else None."""
    return [cpus[0], cpus[-1]] if len(cpus) > 1 and min(cpus) >= 0 and cpus[0] != cpus[-1] else None


def _core_cpus(machine, cores):
    from .._native import lib
    return [lib.bm_smp_core_cpu(machine._c, i) for i in range(cores)]

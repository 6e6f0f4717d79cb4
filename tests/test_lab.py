"""The scheduling lab (pybaremetal.lab, `baremetal lab`): the model against closed forms, the
schedule's statistics, late sends, every policy serving every request once, the spin task's
calibration, the command line and its errors.  No assertion here is about speed."""
import ctypes
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

import pybaremetal as bm
from pybaremetal.errors import ArgumentError
from pybaremetal.lab import model, real, stats, sweep
from pybaremetal.lab.workload import Distribution, Draw, resolve_task, spin_task, spin_ticks, time_ticks

HERE = os.path.dirname(os.path.abspath(__file__))
pytest.importorskip("hdrh")


def steady(latency, warmup=0.1):
    return latency[int(len(latency) * warmup):]


# --- the model against closed forms -----------------------------------------------------------

@pytest.mark.parametrize("load", [0.5, 0.8])
def test_model_mm1_percentiles_match_the_closed_form(load):
    draw = Draw(Distribution("exp", 1.0), 1_000_000, 1, seed=11)
    latency = steady(model.simulate("c-fcfs", 1, draw.arrivals_us(load, 1), draw.service_us))
    for q in (0.5, 0.99):
        expected = model.mm1_sojourn_quantile(load, q)
        assert np.quantile(latency, q) == pytest.approx(expected, rel=0.04)


@pytest.mark.parametrize("load", [0.5, 0.8])
def test_model_md1_percentiles_match_the_closed_form(load):
    draw = Draw(Distribution("fixed", 1.0), 1_000_000, 1, seed=12)
    latency = steady(model.simulate("c-fcfs", 1, draw.arrivals_us(load, 1), draw.service_us))
    for q in (0.9, 0.99, 0.999):
        assert np.quantile(latency, q) == pytest.approx(model.md1_sojourn_quantile(load, q), rel=0.04)


def test_model_mm2_mean_wait_matches_erlang_c():
    load, servers = 0.7, 2
    draw = Draw(Distribution("exp", 1.0), 1_000_000, servers, seed=13)
    latency = steady(model.simulate("c-fcfs", servers, draw.arrivals_us(load, servers), draw.service_us))
    a = load * servers                                             # offered traffic, Erlangs
    top = a ** servers / math.factorial(servers) / (1 - load)
    erlang_c = top / (sum(a ** k / math.factorial(k) for k in range(servers)) + top)
    assert latency.mean() == pytest.approx(1 + erlang_c / (servers * (1 - load)), rel=0.03)


@pytest.mark.parametrize("dist", ["exp", "bimodal-1"])
def test_model_processor_sharing_mean_is_insensitive_to_the_distribution(dist):
    load = 0.6
    draw = Draw(Distribution(dist, 1.0), 500_000, 1, seed=14)
    latency = steady(model.simulate("ps", 1, draw.arrivals_us(load, 1), draw.service_us))
    assert latency.mean() == pytest.approx(1 / (1 - load), rel=0.03)    # M/G/1-PS: S̄ / (1 - ρ)
    fine = steady(model.simulate("preempt", 1, draw.arrivals_us(load, 1), draw.service_us,
                                 quantum_us=0.02))
    assert fine.mean() == pytest.approx(1 / (1 - load), rel=0.03)      # a tiny quantum is PS


def test_model_steal_never_idles_a_server_while_work_waits():
    draw = Draw(Distribution("exp", 1.0), 200_000, 4, seed=15)
    arrival = draw.arrivals_us(0.8, 4)
    one = model.simulate("steal", 1, arrival, draw.service_us, np.zeros(len(arrival), np.uint32))
    assert np.allclose(one, model.simulate("c-fcfs", 1, arrival, draw.service_us))
    steal = model.simulate("steal", 4, arrival, draw.service_us, draw.target)
    dfcfs = model.simulate("d-fcfs", 4, arrival, draw.service_us, draw.target)
    cfcfs = model.simulate("c-fcfs", 4, arrival, draw.service_us)
    assert steal.mean() == pytest.approx(cfcfs.mean(), rel=0.02)        # same busy periods
    assert steal.mean() < 0.7 * dfcfs.mean()
    assert np.all(steal >= draw.service_us - 1e-9)


def test_model_dfcfs_exponential_meets_the_slo_up_to_054():
    result = sweep(["d-fcfs"], ["exp"], 10.0, 2, [0.5, 0.6], model_only=True,
                   model_samples=1_000_000, model_bisect=10)
    row, = result["summary"]
    assert "max_load_at_slo" not in row
    assert model.dfcfs_exp_max_load() == pytest.approx(0.5395, abs=1e-4)
    assert row["model_max_load_at_slo"] == pytest.approx(model.dfcfs_exp_max_load(), abs=0.01)


def test_model_rejects_bad_input():
    with pytest.raises(ArgumentError, match="policy"):
        model.simulate("lifo", 1, [1.0], [1.0])
    with pytest.raises(ArgumentError, match="targets queue"):
        model.simulate("d-fcfs", 2, [1.0], [1.0], [5])
    with pytest.raises(ArgumentError, match="quantum"):
        model.simulate("preempt", 1, [1.0], [1.0], quantum_us=0)


# --- the model on a host that stalls -----------------------------------------------------------

@pytest.mark.parametrize("policy", ["c-fcfs", "d-fcfs"])
def test_model_without_stalls_is_the_ideal_model(policy):
    draw = Draw(Distribution("bimodal-1", 1.0), 20_000, 3, seed=5)
    arrival = draw.arrivals_us(0.8, 3)
    ideal = model.simulate(policy, 3, arrival, draw.service_us, draw.target)
    none = [(np.zeros(0), np.zeros(0))] * 3
    assert np.array_equal(model.simulate(policy, 3, arrival, draw.service_us, draw.target, stalls=none), ideal)


def test_model_stall_covering_a_spin_deadline_ends_it_at_the_stall_end():
    stall = [(np.array([3.0]), np.array([20.0]))]               # the CPU is gone from 3 to 20
    spin = model.simulate("c-fcfs", 1, [0.0, 5.0], [10.0, 10.0], stalls=stall, deadline=True)
    assert list(spin) == [20.0, 25.0]                           # ends at 20; next runs 20..30
    work = model.simulate("c-fcfs", 1, [0.0, 5.0], [10.0, 10.0], stalls=stall, deadline=False)
    assert list(work) == [27.0, 32.0]                           # 3 done, 17 lost, 7 more; 27..37
    inside = model.simulate("c-fcfs", 1, [0.0], [10.0], stalls=[(np.array([2.0]), np.array([4.0]))])
    assert list(inside) == [10.0]                               # a spin's deadline is not moved


def test_model_c_fcfs_starts_a_request_on_the_server_not_stalled():
    stalls = [(np.array([0.0]), np.array([50.0])), (np.zeros(0), np.zeros(0))]
    latency = model.simulate("c-fcfs", 2, [0.0, 1.0, 60.0], [10.0, 10.0, 10.0], stalls=stalls)
    assert list(latency) == [10.0, 19.0, 10.0]                  # server 1, server 1 again, either
    with pytest.raises(ArgumentError, match="c-fcfs and d-fcfs only"):
        model.simulate("steal", 2, [0.0], [1.0], [0], stalls=stalls)
    with pytest.raises(ArgumentError, match="stalls for 2 servers, expected 3"):
        model.simulate("c-fcfs", 3, [0.0], [1.0], stalls=stalls)


def test_stalls_repeat_over_a_longer_schedule_without_overlaps():
    trace = real.Stalls([np.array([10.0, 990.0])], [np.array([5.0, 25.0])], 0.001, 1.0)   # a 1 ms run
    start, end = trace.tiled(0, 2500.0)          # the last stall runs into the next period's first
    assert list(start) == [10.0, 990.0, 1990.0] and list(end) == [15.0, 1015.0, 2015.0]
    assert trace.summary()["cores"][0]["lost_share"] == 0.03


def test_a_run_records_the_stalls_a_competing_process_causes():
    """A busy process on core 0's CPU takes it for scheduler slices: core 0 records them."""
    count = 20_000
    arrival = np.arange(count) * 20.0                           # 0.4 s of light load
    args = spin_ticks(np.full(count, 2.0))
    with bm.Machine(cores=1, memory="8M", console="capture", queue_size=1 << 15) as m:
        cpu = bm._native.lib.bm_smp_core_cpu(m._c, 0)
        hog = subprocess.Popen(["taskset", "-c", str(cpu), sys.executable, "-c",
                                "import time\nprint('on', flush=True)\nend = time.time() + 5\n"
                                "while time.time() < end: pass"], stdout=subprocess.PIPE, text=True)
        try:
            assert hog.stdout.readline() == "on\n"        # spinning before the run starts
            stamps = real.run("c-fcfs", arrival, spin_task(), args, machine=m, mode="published")
        finally:
            hog.kill()
            hog.wait()
            hog.stdout.close()
    stalls = stamps.stalls
    assert len(stalls.start_us) == 1 and len(stalls.start_us[0]) > 0
    # the hog took the CPU in scheduler slices (ms), a share of the run's time
    assert stalls.lost_share(0) > 0.1 and stalls.length_us[0].max() > 500
    assert np.all(np.diff(stalls.start_us[0]) > 0) and np.all(stalls.length_us[0] > 1.0)


# --- the schedule ----------------------------------------------------------------------------

def test_schedule_has_the_asked_rate_and_exponential_gaps():
    draw = Draw(Distribution("exp", 10.0), 200_000, 2, seed=21)
    arrival = draw.arrivals_us(0.6, 2)                         # 0.12 requests per µs
    assert len(arrival) / arrival[-1] == pytest.approx(0.12, rel=0.01)
    gaps = np.sort(np.diff(arrival)) * 0.12                     # Exp(1) if Poisson
    empirical = np.arange(1, len(gaps) + 1) / len(gaps)
    assert np.max(np.abs(empirical - (1 - np.exp(-gaps)))) < 1.63 / math.sqrt(len(gaps))   # KS, 1%
    assert np.bincount(draw.target).min() > 0.49 * len(arrival)
    fixed = Draw(Distribution("fixed", 10.0), 1000, 1, seed=21, arrivals="fixed").arrivals_us(0.5, 1)
    assert np.allclose(np.diff(fixed), 20.0)


@pytest.mark.parametrize("name,big,fraction", [("bimodal-1", 55.0, 0.1), ("bimodal-2", 5005.0, 0.001),
                                               ("shinjuku", 500.0, 0.005)])
def test_bimodal_service_times_have_the_published_mix(name, big, fraction):
    dist = Distribution(name, 10.0)
    service = dist.sample(np.random.default_rng(3), 1_000_000)
    assert np.mean(service == big) == pytest.approx(fraction, rel=0.1)
    assert set(np.unique(service)) == set(dist.values)
    assert Distribution("0.25:4+0.75:8").mean_us == pytest.approx(7.0)


# --- real runs --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mark_task():
    task = resolve_task(os.path.join(HERE, "lab_tasks.c") + ":mark")
    served = (ctypes.c_uint32 * (1 << 16)).in_dll(task._keep, "served")
    return task, np.ctypeslib.as_array(served)


def test_late_sends_are_counted_under_an_overloaded_consumer():
    count = 1500
    arrival = np.arange(count) * 2.0                            # one request every 2 µs
    args = spin_ticks(np.full(count, 20.0))                     # each takes 20 µs: 10x overload
    with bm.Machine(cores=2, memory="8M", console="capture", queue_size=16) as m:
        stamps = real.run("c-fcfs", arrival, spin_task(), args, machine=m, mode="generator", late_us=5.0)
    delay = stamps.publish - stamps.arrival
    assert stamps.late > 0.8 * count                            # the full queue held the sender
    assert abs(stamps.late - int(np.sum(delay > 5.0))) <= 2     # the count is what the stamps say
    assert np.all(stamps.core == 1)                             # core 0 only sent


@pytest.mark.parametrize("mode", ["published", "generator"])
@pytest.mark.parametrize("policy", ["c-fcfs", "d-fcfs", "steal", "pthread"])
def test_each_policy_serves_every_request_once(mark_task, policy, mode):
    task, served = mark_task
    served[:] = 0
    count = 20_000
    cores = 2
    workers = real.workers_of(cores, mode)
    draw = Draw(Distribution("exp", 2.0), count, workers, seed=31)
    arrival = draw.arrivals_us(0.5, workers)
    with bm.Machine(cores=cores, memory="8M", console="capture", queue_size=1 << 15) as m:
        cpus = [bm._native.lib.bm_smp_core_cpu(m._c, i) for i in range(cores)]
        stamps = real.run(policy, arrival, task, None, draw.target, machine=m, cpus=cpus, mode=mode)
        assert not m.faults
    assert np.all(served[:count] == 1)
    # publish and start may be stamped on two CPUs, whose TSCs a VM may skew a little
    skew = 0.5
    assert np.all(stamps.publish >= stamps.arrival - 1e-3)
    assert np.all(stamps.start >= stamps.publish - skew) and np.all(stamps.end >= stamps.start)
    first = 1 if mode == "generator" else 0
    assert set(np.unique(stamps.core)) <= set(range(first, cores))
    if policy == "d-fcfs":                                      # each request on its own worker
        assert np.all(stamps.core == draw.target + first)


def test_a_python_callable_task_runs_on_the_cores():
    seen = []
    with bm.Machine(cores=2, memory="8M", console="capture") as m:
        real.run("c-fcfs", np.arange(200) * 5.0, resolve_task(seen.append), machine=m)
    assert sorted(seen) == list(range(200))


def test_spin_task_takes_its_service_time_within_2_percent():
    from pybaremetal._native import ffi, lib
    hz = real.tsc_hz()
    for us in (1.0, 10.0, 100.0):
        ticks = time_ticks(lib.bm_lab_spin_code(), spin_ticks(np.full(2000, us)))
        assert np.median(ticks) / hz * 1e6 == pytest.approx(us, rel=0.02)
    # the TSC rate the lab converts with, against CLOCK_MONOTONIC over 0.2 s: each end is the
    # TSC read between two clock reads, the closest-bracketed of 20 (a preemption in between
    # would only widen a bracket)
    import time

    def paired():
        best = None
        for _ in range(20):
            before = time.monotonic_ns()
            ticks = int(ffi.cast("u64", lib.bm_lab_tsc()))
            after = time.monotonic_ns()
            if best is None or after - before < best[0]:
                best = (after - before, (before + after) / 2, ticks)
        return best[1:]
    ns0, tsc0 = paired()
    time.sleep(0.2)
    ns1, tsc1 = paired()
    assert (tsc1 - tsc0) / ((ns1 - ns0) / 1e9) == pytest.approx(hz, rel=0.02)


# --- the command line ------------------------------------------------------------------------

def test_cli_short_sweep_writes_json_csv_and_plots(tmp_path):
    from pybaremetal.cli import main
    out = tmp_path / "out.json"
    assert main(["lab", "--cores", "2", "--dist", "exp", "--mean-us", "10", "--policies",
                 "c-fcfs,d-fcfs,steal,pthread,ps", "--loads", "0.3,0.7", "--samples", "1000",
                 "--model-samples", "20000", "--bisect", "1", "--model-bisect", "3",
                 "--json", str(out), "--csv", str(tmp_path / "out.csv"), "--png", str(tmp_path / "png"),
                 "--quiet"]) == 0
    result = json.loads(out.read_text())
    assert result["arrivals"] == "published" and result["workers"] == 2
    rows = {row["policy"]: row for row in result["summary"]}
    assert list(rows) == ["c-fcfs", "d-fcfs", "steal", "pthread", "ps"]
    for name, row in rows.items():
        assert {"policy", "dist", "mean_us", "cores", "model_max_load_at_slo"} <= set(row)
        assert row["dist"] == "exp" and row["mean_us"] == 10.0 and row["cores"] == 2
        assert ("max_load_at_slo" in row) == (name != "ps")
        for point in row.get("sweep", []) + row["model_sweep"]:
            assert {"load", "p50", "p99", "p99.9", "slowdown", "throughput", "late_sends"} <= set(point)
            assert point["p50"] <= point["p99"] <= point["p99.9"]
        if name != "ps":
            assert [p["load"] for p in row["sweep"]] == [0.3, 0.7]
            assert all(p["late_sends"] >= 0 and p["throughput"] > 0 for p in row["sweep"])
    assert rows["pthread"]["model_policy"] == "c-fcfs"
    for name in ("c-fcfs", "d-fcfs"):                           # and the model on this host
        row = rows[name]
        assert 0 <= row["host_model_max_load_at_slo"] <= 1   # 0 when the host stalls too much
        assert all("host_model_p99" in p and "stalls" in p for p in row["sweep"])
    assert "host_model_max_load_at_slo" not in rows["steal"]
    lines = (tmp_path / "out.csv").read_text().splitlines()
    assert lines[0].startswith("policy,dist,kind") and len(lines) == 1 + 4 * 2 * 2 + 2
    assert sorted(os.listdir(tmp_path / "png")) == sorted(
        ["latency-exp.png"] + [f"cdf-exp-{p}.png" for p in rows])


def test_cli_model_only_has_no_real_max_load(tmp_path):
    from pybaremetal.cli import main
    out = tmp_path / "m.json"
    assert main(["lab", "--model-only", "--loads", "0.5", "--model-samples", "20000",
                 "--model-bisect", "2", "--json", str(out), "--quiet"]) == 0
    for row in json.loads(out.read_text())["summary"]:
        assert "max_load_at_slo" not in row and "sweep" not in row and row["model_sweep"]


@pytest.mark.parametrize("args,message", [
    (["--loads", "0.5,1.2"], "load 1.2 is outside (0, 1]"),
    (["--dist", "weibull"], "unknown distribution 'weibull'"),
    (["--task", os.path.join(HERE, "lab_tasks.c") + ":nosuch"], "has no function 'nosuch'"),
    (["--policies", "c-fcfs,fifo"], "unknown policy 'fifo'"),
])
def test_cli_bad_input_is_one_line_and_exit_2(args, message):
    done = subprocess.run([sys.executable, "-m", "pybaremetal", "lab", "--model-only", "--quiet", *args],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_histogram_percentiles_match_recorded_values():
    from hdrh.histogram import HdrHistogram
    values = np.random.default_rng(5).exponential(10.0, 50_000)
    ours = stats.histogram(values)
    reference = HdrHistogram(1, ours.highest_trackable_value, 3)
    for ns in np.maximum(np.round(values * 1000), 1).astype(np.int64).tolist():
        reference.record_value(ns)
    for q in (1, 50, 99, 99.9, 100):
        assert ours.get_value_at_percentile(q) == reference.get_value_at_percentile(q)
    assert ours.get_total_count() == reference.get_total_count() == len(values)


def test_python_task_on_our_cores_and_on_the_executor_peer(tmp_path):
    calls = []

    def handle(index):
        calls.append(index)
        return sum(range(100))
    result = sweep(["c-fcfs", "executor"], None, 10.0, 2, [0.2], task=handle, duration_s=0.02,
                   samples=500, bisect=0, model_samples=2000, model_bisect=0)
    rows = {row["policy"]: row for row in result["summary"]}
    assert rows["executor"]["model_policy"] == "c-fcfs" and rows["c-fcfs"]["dist"] == "task:handle"
    for row in rows.values():
        point, = row["sweep"]
        assert point["scheduled"] == 500 and point["requests"] == 450      # 10% warm-up left out
    scheduled = sum(row["sweep"][0]["scheduled"] for row in rows.values())
    assert len(calls) == 2100 + scheduled                       # calibration, then every request once
    with pytest.raises(ArgumentError, match="Python tasks only"):
        sweep(["executor"], ["exp"], 10.0, 2, [0.5], model_only=True)
    script = tmp_path / "task.py"
    script.write_text("def work(i):\n    return i * 2\n")
    assert resolve_task(f"{script}:work").python
    with pytest.raises(ArgumentError, match="has no function 'nope'"):
        resolve_task(f"{script}:nope")


@pytest.mark.parametrize("crash_core", [0, 1])
def test_a_task_that_faults_ends_the_run_with_an_error_not_a_hang(crash_core):
    task = resolve_task(os.path.join(HERE, "lab_tasks.c") + ":crash_on")
    target = np.full(50, 1 - crash_core, dtype=np.uint32)
    target[7] = crash_core
    with bm.Machine(cores=2, memory="8M", console="capture") as m:
        with pytest.raises(bm.errors.StateError, match="a task faulted"):
            real.run("d-fcfs", np.arange(50) * 20.0, task, None, target, machine=m)
        assert m.faults and m.faults[0].core == crash_core
        real.run("d-fcfs", np.arange(5) * 20.0, task, None, target[:5], machine=m)   # lives on


def test_a_slowdown_slo_separates_preemption_from_run_to_completion():
    # Shinjuku's point, bimodal-2 at p99.9: behind a 500.5·S̄ request, short ones wait 1000 times
    # their own length under c-FCFS at almost any load; processor sharing keeps slowdown low
    result = sweep(["c-fcfs", "ps"], ["bimodal-2"], 10.0, 2, [0.05, 0.5], model_only=True,
                   model_samples=400_000, model_bisect=6, slo_percentile=99.9, slo_metric="slowdown")
    rows = {row["policy"]: row for row in result["summary"]}
    assert rows["c-fcfs"]["model_max_load_at_slo"] < 0.05
    assert rows["ps"]["model_max_load_at_slo"] >= 0.5
    assert result["slo"] == {"percentile": 99.9, "factor": 10.0, "metric": "slowdown"}


def test_dispatch_gaps_are_between_back_to_back_tasks_on_one_core():
    publish = np.array([0.0, 1.0, 50.0, 0.5, 2.0])
    start = np.array([1.0, 11.2, 60.0, 1.0, 21.5])
    end = np.array([11.0, 21.0, 70.0, 21.0, 31.0])
    core = np.array([0, 0, 0, 1, 1])
    # core 0: 0 -> 1 back to back (gap 0.2 µs), 1 -> 2 not (2 came after 1 ended);
    # core 1: 3 -> 4 back to back (gap 0.5 µs)
    assert np.allclose(np.sort(stats.dispatch_gaps_ns(publish, start, end, core)), [200.0, 500.0])


def test_real_and_host_model_bisections_share_their_runs(monkeypatch):
    """The model on this host is judged on the stalls of the very run the real policy is
    judged on: the two bisections share a run wherever their answers agree, so they take
    len(loads) + bisect runs when they end at the same load, and more (at most 2 x bisect)
    only when they part."""
    runs = []
    real_run = real.run

    def counted(*args, **kwargs):
        runs.append(args[0])
        return real_run(*args, **kwargs)
    monkeypatch.setattr(real, "run", counted)
    loads, bisect = [0.2, 0.95], 3
    result = sweep(["c-fcfs"], ["exp"], 10.0, 2, loads, samples=3000, duration_s=0.05, bisect=bisect,
                   model_samples=5000, model_bisect=3, stop_after=0)
    (row,) = result["summary"]
    if row["host_model_max_load_at_slo"] == row["max_load_at_slo"]:
        assert len(runs) == len(loads) + bisect
    else:
        assert len(loads) + bisect < len(runs) <= len(loads) + 2 * bisect
    probe = result["host"]["cache_line_ns"]                   # the floor, next to the runs
    assert probe["before"] > 0 and probe["after"] > 0 and len(probe["cpus"]) == 2
    assert all(point["cache_line_ns"] > 0 for point in row["sweep"])


def test_cache_line_probe_measures_and_rejects_bad_counts():
    assert real.cache_line_ns(0, 1, samples=100) > 0
    with pytest.raises(ArgumentError, match="samples must be an int >= 1"):
        real.cache_line_ns(0, 1, samples=0)

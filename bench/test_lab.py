"""The scheduling lab's targets (issue 18), measured with `pybaremetal.lab.sweep` itself.

On this machine's cores (2 here), S̄ = 10 µs, exponential and bimodal-1 service, Poisson
arrivals published by time (every core publishes what is due, then serves):
 - real c-FCFS (BareMetal's work queue) max load at SLO (p99 <= 10·S̄) as a fraction of the
   zero-overhead model's c-FCFS max load with the same number of workers: target >= 0.9
   (ZygOS's real system reached 0.75 at 10 µs);
 - dispatch overhead per task: real minus model latency on the same schedule at load 0.1 (the
   median over requests), as a share of S̄: target <= 1%; against its floor, one cache line
   stored on one core and polled on the other, measured just before and after the run: the
   path writes three lines the other idle core polls, so the proposed target is 1.25 x three
   (the polling-latency precedent's allowance), ratio <= 3.75; and the policy's own cost per
   task measured where other processes hardly disturb it, the median gap between back-to-back tasks on a core (the next
   one already waiting: the take, the stamps, publishing what became due);
 - the same fractions for d-FCFS, work stealing and the pthread-pool peer (reported);
 - the host's share: a VM's vCPUs stall (interrupts, the hypervisor, other guests): each core
   records the gaps in its clock reads while idle and spins that overran, and the same
   zero-overhead policy run on those stalls is what any scheduler could reach here; real /
   that model is the fraction our dispatch costs (c-FCFS and d-FCFS, whose models take stalls).
   Both are judged on the same runs (see the README); proposed target >= 0.9 for c-FCFS.
Other processes on a shared machine take CPU time from the cores being measured: a real
figure is what this run saw, the model is what the same schedule would give with none.
"""
import os

import pytest

from pybaremetal.lab import sweep

pytest.importorskip("hdrh")

LOADS = [0.1, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9]
# every CPU of the process, read at collection: later, a machine another bench module keeps
# booted pins this thread to one CPU, and the default (the calling thread's CPUs) would be 1
CPUS = sorted(os.sched_getaffinity(0))
CORES = len(CPUS)
POLICIES = ["c-fcfs", "d-fcfs", "steal", "pthread"]


@pytest.fixture(scope="module")
def results():
    return {}


@pytest.mark.parametrize("dist", ["exp", "bimodal-1"])
def test_max_load_at_slo_real_vs_model(benchmark, record, results, dist):
    out = []
    benchmark.pedantic(lambda: out.append(sweep(POLICIES, [dist], 10.0, CORES, LOADS, duration_s=0.5,
                                                samples=500_000, bisect=4, model_bisect=10)),
                       rounds=1, iterations=1)
    result = out[0]
    rows = {row["policy"]: row for row in result["summary"]}
    workers = result["workers"]
    for policy in POLICIES:
        row = rows[policy]
        record(f"lab {dist} S̄=10 µs: {policy} max load at SLO, real / model ({workers} workers, "
               f"arrivals {result['arrivals']}; the cores got >= {row['min_cpu_share']:.0%} of their CPUs)",
               row["max_load_at_slo"], row["model_max_load_at_slo"],
               unit="load", peer_name=f"model {row['model_policy']}",
               target="ratio >= 0.9" if policy == "c-fcfs" else None)
    for policy in ("c-fcfs", "d-fcfs"):
        row = rows[policy]
        lost = max(w["lost_share"] for p in row["sweep"] for w in p["stalls"]["cores"])
        record(f"lab {dist} S̄=10 µs: {policy} max load at SLO, real / the same policy with zero "
               f"overhead on the stalls this run's cores saw (the host took up to {lost:.1%} of a core)",
               row["max_load_at_slo"], row["host_model_max_load_at_slo"], unit="load",
               peer_name=f"model {policy} on this host",
               target="ratio >= 0.9" if policy == "c-fcfs" else None,
               note="proposed target: the zero-overhead model cannot be reached on a host that stalls")
    c_fcfs = rows["c-fcfs"]
    low = c_fcfs["sweep"][0]
    record(f"lab {dist}: c-FCFS dispatch overhead per task at load {low['load']}, median over requests "
           f"of real - model latency (same schedule; a host stall hits few requests)",
           100 * low["median_overhead_us"] / c_fcfs["mean_us"], None, unit="% of S̄",
           target="ours <= 1")
    record(f"lab {dist}: c-FCFS dispatch overhead per task at load {low['load']}, median (as above) vs "
           f"the floor: one cache line stored on one core and polled on the other, the mean of one "
           f"just before and one just after that run ({low['cache_line_ns_around'][0]:.0f} and "
           f"{low['cache_line_ns_around'][1]:.0f} ns)",
           1000 * low["median_overhead_us"], low["cache_line_ns"], unit="ns",
           peer_name="store -> remote poll, same TSC stamps",
           target="ratio <= 3.75",
           note="proposed target, 1.25 x the design's floor of three one-line hand-offs: the publisher's "
                "claim, the enqueue and the dequeue each write a line the other idle core is polling "
                "(every core publishes what is due; BareMetal's one queue, polled by every idle core)")
    record(f"lab {dist}: c-FCFS dispatch overhead per task at load {low['load']}, real - model on this "
           f"host's stalls, mean", 100 * low["host_overhead_us"] / c_fcfs["mean_us"], None,
           unit="% of S̄", target="ours <= 1")
    record(f"lab {dist}: c-FCFS dispatch overhead per task at load {low['load']} (real - model mean "
           f"latency, same schedule; CPU share {low['cpu_share']:.0%})", 100 * low["overhead_us"] / c_fcfs["mean_us"], None,
           unit="% of S̄", target="ours <= 1")
    for policy in POLICIES:
        record(f"lab {dist}: {policy} dispatch gap between back-to-back tasks on a core, median "
               f"(the policy's own cost per task)", rows[policy]["dispatch_gap_ns"] / 1000 * 100 / 10.0, None,
               unit="% of S̄", target="ours <= 1" if policy == "c-fcfs" else None)
    for policy in ("d-fcfs", "steal", "pthread"):
        point = rows[policy]["sweep"][0]
        record(f"lab {dist}: {policy} overhead per task at load {point['load']}",
               100 * point["overhead_us"] / c_fcfs["mean_us"], None, unit="% of S̄")

"""`baremetal lab`: the scheduling lab's command line (pybaremetal/cli.py adds the subcommand
with add_parser and calls run)."""
import argparse
import sys

from ..errors import ArgumentError

DESCRIPTION = """\
Measure run-to-completion scheduling on this machine's cores and compare it with the ideal
model: open-loop Poisson arrivals from a seeded schedule, latency from each request's
scheduled time, p99 against load per policy, and the highest load meeting the SLO
(p99 <= 10·S̄).  Real policies: c-fcfs (BareMetal's work queue), d-fcfs (per-core queues,
random dispatch), steal (per-core queues, idle cores steal), pthread (a pthread pool with a
mutex+condvar queue, the peer), executor (Python tasks only: a ThreadPoolExecutor fed by
the main thread); model-only: ps (processor sharing), preempt (one queue,
zero-cost preemption every --quantum-us).  Distributions (mean --mean-us): fixed, exp,
bimodal-1 (90% 0.5·S̄, 10% 5.5·S̄), bimodal-2 (99.9% 0.5·S̄, 0.1% 500.5·S̄), shinjuku (99.5%
0.5 µs, 0.5% 500 µs) or a mix P:US+P:US..."""

EPILOG = """\
examples:
  baremetal lab --cores 2 --dist exp --mean-us 10 --policies c-fcfs,d-fcfs,steal --json out.json
  baremetal lab --dist exp,bimodal-1 --model-only --png plots/
  baremetal lab --task mytask.c:handle --policies c-fcfs,pthread --json mine.json
"""


def add_parser(commands):
    lab = commands.add_parser("lab", help="measure run-to-completion scheduling against its model",
                              description=DESCRIPTION, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    lab.add_argument("--cores", type=int, default=None, metavar="N",
                     help="the machine's cores (default: one per CPU this process may use); "
                          "published by time all of them serve, with a generator all but core 0")
    lab.add_argument("--dist", default="exp", metavar="LIST",
                     help="service-time distributions, comma-separated (default: exp)")
    lab.add_argument("--mean-us", type=float, default=10.0, metavar="US",
                     help="mean service time S̄ in µs of the named distributions (default: 10)")
    lab.add_argument("--policies", default="c-fcfs,d-fcfs,steal", metavar="LIST",
                     help="comma-separated, from c-fcfs, d-fcfs, steal, pthread, executor, ps, preempt "
                          "(default: c-fcfs,d-fcfs,steal)")
    lab.add_argument("--loads", default="0.05:1.0:0.05", metavar="LOADS",
                     help="loads in (0, 1]: L1,L2,... or START:STOP:STEP (default: 0.05:1.0:0.05)")
    lab.add_argument("--arrivals", choices=("published", "generator"), default="published",
                     help="published (default): every core publishes the requests whose time "
                          "has passed, then serves; generator: core 0 sends, the others serve")
    lab.add_argument("--process", choices=("poisson", "fixed"), default="poisson",
                     help="arrival process (default: poisson)")
    lab.add_argument("--model-only", action="store_true",
                     help="only the model (no real runs; no max_load_at_slo in the JSON)")
    lab.add_argument("--samples", type=int, default=1_000_000, metavar="N",
                     help="requests per real point at most (default: 1000000)")
    lab.add_argument("--duration", type=float, default=1.0, metavar="S",
                     help="seconds of arrivals per real point at most (default: 1)")
    lab.add_argument("--model-samples", type=int, default=1_000_000, metavar="N",
                     help="requests per model point (default: 1000000)")
    lab.add_argument("--warmup", type=float, default=0.1, metavar="F",
                     help="fraction of each run's first requests left out (default: 0.1)")
    lab.add_argument("--slo-factor", type=float, default=10.0, metavar="X",
                     help="the SLO: latency percentile at most X·S̄ (default: 10)")
    lab.add_argument("--slo-percentile", type=float, default=99.0, metavar="P",
                     help="the SLO's percentile (default: 99)")
    lab.add_argument("--slo-metric", choices=("latency", "slowdown"), default="latency",
                     help="latency (default): the percentile of latency at most X·S̄; slowdown: "
                          "that of latency over each request's own service time at most X")
    lab.add_argument("--bisect", type=int, default=4, metavar="N",
                     help="real runs refining each max load at SLO (default: 4)")
    lab.add_argument("--model-bisect", type=int, default=10, metavar="N",
                     help="model runs refining each max load at SLO (default: 10)")
    lab.add_argument("--stop-after", type=int, default=2, metavar="N",
                     help="a real sweep stops after N loads in a row miss the SLO (default: 2; 0: "
                          "run every load)")
    lab.add_argument("--seed", type=int, default=1, help="seed of the schedules (default: 1)")
    lab.add_argument("--task", default=None, metavar="FILE:SYMBOL",
                     help="your task instead of the spin task: void SYMBOL(u64 request_index) in a "
                          ".c (built with gcc) or .so file, or a Python function SYMBOL(index) in a "
                          ".py file (it holds the GIL); its service times are measured first")
    lab.add_argument("--quantum-us", type=float, default=None, metavar="US",
                     help="the preempt model's time slice (default: S̄/2)")
    lab.add_argument("--late-us", type=float, default=1.0, metavar="US",
                     help="a request published more than US after its time counts as a late "
                          "send (default: 1)")
    lab.add_argument("--cluster", type=int, default=None, metavar="NODES",
                     help="spread the sweep's parts (one per distribution and policy) over a Ray "
                          "cluster: without --address, a local cluster of NODES raylets on this "
                          "host (they share its CPUs); needs pybaremetal[cluster]")
    lab.add_argument("--address", default=None, metavar="RAY_ADDRESS",
                     help="with --cluster: a running Ray cluster (auto or HOST:PORT) instead of a local one")
    lab.add_argument("--json", default=None, metavar="FILE", help="write the results as JSON")
    lab.add_argument("--csv", default=None, metavar="FILE", help="write one CSV line per point")
    lab.add_argument("--png", default=None, metavar="DIR",
                     help="write plots: latency-DIST.png and cdf-DIST-POLICY.png")
    lab.add_argument("--histograms", action="store_true",
                     help="keep each point's HdrHistogram (encoded) in the JSON")
    lab.add_argument("--quiet", action="store_true", help="no progress bar, no table")
    return lab


def run(args):
    """The `lab` command: sweep, write what was asked, print the summary table; exit status."""
    try:
        import hdrh  # noqa: F401
    except ImportError:
        raise ArgumentError("the lab needs hdrhistogram: pip install 'pybaremetal[lab]'") from None
    from . import output
    if args.address is not None and args.cluster is None:
        raise ArgumentError("--address needs --cluster NODES")
    if args.cluster is not None:
        if args.cluster < 1:
            raise ArgumentError(f"--cluster: expected a number of nodes >= 1, got {args.cluster}")
        from functools import partial

        from ..signals import own_stop_signals, stop_status
        from .spread import sweep_on_cluster
        own_stop_signals()                   # the Ray processes started are stopped on SIGTERM too
        try:
            result = _sweep(args, partial(sweep_on_cluster, nodes=args.cluster, address=args.address))
        except BaseException:
            if stop_status():                # whatever Ray made of it: the signal's status
                return stop_status()
            raise
    else:
        from .sweep import sweep
        result = _sweep(args, sweep)
    if args.json:
        output.save_json(result, args.json)
    if args.csv:
        output.save_csv(result, args.csv)
    if args.png:
        output.save_plots(result, args.png)
    if not args.quiet:
        from rich.console import Console
        Console(file=sys.stdout, width=120).print(output.summary_table(result))
    return 0


def _sweep(args, run_sweep):
    return run_sweep(policies=args.policies, dists=args.dist, mean_us=args.mean_us, cores=args.cores,
                   loads=args.loads, mode=args.arrivals, model_only=args.model_only, samples=args.samples,
                   duration_s=args.duration, model_samples=args.model_samples, warmup=args.warmup,
                   slo_factor=args.slo_factor, slo_percentile=args.slo_percentile,
                   slo_metric=args.slo_metric,
                   bisect=args.bisect, model_bisect=args.model_bisect, seed=args.seed,
                   task=args.task, quantum_us=args.quantum_us, late_us=args.late_us,
                   arrivals=args.process, histograms=args.histograms, progress=not args.quiet,
                   stop_after=args.stop_after)

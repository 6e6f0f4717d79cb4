"""`baremetal cluster APP --nodes N [--cores C] [--address RAY_ADDRESS] [-- app args]`.

Runs APP on every node of a Cluster (node 0 is the master), prints each node's console output
line by line as "[node I] ...", in the order the nodes finish (their stderr on stderr, the
same way), and exits with the master's exit code.  Without --address a local Ray cluster of N
nodes is started for the run, so it works on one machine."""
import sys

from ..errors import ArgumentError


def add_parser(commands):
    """The `cluster` subcommand on the `baremetal` command's subparsers."""
    cluster = commands.add_parser(
        "cluster", help="run an app on many machines, one per Ray node, linked by Ethernet",
        description="Run APP on N hosted machines, one per Ray node (node 0 is the master), "
                    "linked on one Ethernet segment (the socket NIC's multicast hub, interface "
                    "0).  Each node's console output is printed prefixed by its node; the exit "
                    "code is the master's.  Arguments after -- reach the app on every node.")
    cluster.add_argument("app", metavar="APP", help="the app: .py, .c, .so, .app or .asm")
    cluster.add_argument("--nodes", type=int, required=True, metavar="N",
                         help="number of machines (one per Ray node)")
    cluster.add_argument("--cores", type=int, default=1, metavar="C",
                         help="cores of each machine (default: 1)")
    cluster.add_argument("--memory", default="256M", metavar="SIZE",
                         help="memory of each machine (default: 256M)")
    cluster.add_argument("--address", default=None, metavar="RAY_ADDRESS",
                         help="a running Ray cluster ('auto' or HOST:PORT); default: start a "
                              "local one with N nodes for this run")
    cluster.add_argument("--pack", action="store_true",
                         help="allow machines to share Ray nodes (placement PACK instead of "
                              "STRICT_SPREAD)")
    cluster.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                         help="give up on nodes that have not finished after SECONDS")
    return cluster


def _show(node, text, stream):
    for line in text.splitlines():
        print(f"[node {node}] {line}", file=stream)
    stream.flush()


def run(args, app_argv):
    """The command; returns the exit code (the master's)."""
    from .ship import app_files
    if args.nodes < 1:
        raise ArgumentError(f"--nodes must be at least 1, got {args.nodes}")
    app_files(args.app)                  # a bad app is one line before any Ray starts
    from . import Cluster, NodeError, _ray
    from ..cli import exit_code
    from ..signals import own_stop_signals, stop_status
    own_stop_signals()                   # Ray's processes are stopped on SIGTERM too
    try:
        return _run(args, app_argv, Cluster, NodeError, exit_code, _ray())
    except BaseException:
        if stop_status():                # whatever Ray made of it: the signal's status
            return stop_status()
        raise


def _run(args, app_argv, Cluster, NodeError, exit_code, ray):
    with Cluster(nodes=args.nodes, cores=args.cores, memory=args.memory, address=args.address,
                 strategy="PACK" if args.pack else "STRICT_SPREAD") as cluster:
        cluster.dispatch(args.app, app_argv)
        futures = {future.ref: future for future in cluster.execute()}
        master = 1
        pending = list(futures)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=args.timeout)
            if not ready:
                for ref in pending:
                    print(f"baremetal: error: node {futures[ref].node} did not finish within "
                          f"{args.timeout:g} s", file=sys.stderr)
                break
            future = futures[ready[0]]
            try:
                result = future.result()
            except NodeError as error:
                print(f"baremetal: error: {error}", file=sys.stderr)
                continue
            _show(result.node, result.output, sys.stdout)
            _show(result.node, result.errors, sys.stderr)
            if result.node == 0:
                master = exit_code(result.exit_code)
        return master

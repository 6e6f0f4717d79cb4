"""A lab sweep spread over the nodes of a Ray cluster (``baremetal lab --cluster N``).

A sweep is a set of independent parts, one per (distribution, policy): each part is the whole
sweep of that policy on that distribution (its real runs on a machine of its own and its
model).  Here each part is a Ray task that needs a node's CPUs for itself, so a node runs one
part at a time and the parts of a sweep run on as many nodes as the cluster has; the results
are merged into the one result :func:`pybaremetal.lab.sweep` gives, each summary row naming
the node that measured it.

Ray only places the parts and carries their results: every measurement runs inside one node,
as it would on one host.  A task given as FILE:SYMBOL is shipped (the file's bytes) with the
part; a Python callable is pickled by Ray.  On a local cluster (no address) every node is a
raylet on this host: the nodes then share this host's CPUs, and parts that run at the same
time disturb each other's tail latency (the result says so under ``cluster``)."""

import os
import tempfile
import time

from ..errors import ArgumentError
from ..signals import reassert_stop_signals
from .sweep import POLICIES, _Progress, parse_list, sweep
from .workload import Distribution


def _ship_task(task):
    """What a part needs to rebuild ``task`` on its node: (name, bytes, symbol) for a file."""
    if not isinstance(task, str):
        return task
    path, sep, symbol = task.rpartition(":")
    if not sep or not path or not symbol:
        raise ArgumentError(f"task {task!r}: write it as FILE.c:SYMBOL or FILE.so:SYMBOL")
    try:
        with open(path, "rb") as f:
            return ("file", os.path.basename(path), f.read(), symbol)
    except OSError as error:
        raise ArgumentError(f"task {task!r}: cannot read {path}: {error.strerror}") from None


def _node_id():
    try:
        import ray
        return ray.get_runtime_context().get_node_id()
    except Exception:                    # not under Ray
        return None


def _part(policy, dist, task, settings, cpu_sets=None):
    """Body of one Ray task: the sweep of ``policy`` on ``dist`` on this node, and where it ran.
    ``cpu_sets``: {Ray node id: CPUs} when the nodes share a host; the part pins itself to its
    node's set (its machine's cores then take those CPUs)."""
    import socket
    began = time.perf_counter()
    node_id = _node_id()
    if cpu_sets and node_id in cpu_sets:
        os.sched_setaffinity(0, cpu_sets[node_id])
    with tempfile.TemporaryDirectory(prefix="baremetal-lab-") as directory:
        if isinstance(task, tuple) and task and task[0] == "file":
            _, name, data, symbol = task
            path = os.path.join(directory, name)
            with open(path, "wb") as f:
                f.write(data)
            task = f"{path}:{symbol}"
        result = sweep([policy], [dist], task=task, progress=False, **settings)
    result["part"] = {"policy": policy, "dist": dist, "hostname": socket.gethostname(),
                      "pid": os.getpid(), "node_id": node_id, "cpus": sorted(os.sched_getaffinity(0)),
                      "seconds": time.perf_counter() - began}
    return result


def _merge(parts, nodes, local, shared):
    """One result from the parts' results (in the order the sweep would give them)."""
    first = parts[0]
    merged = {key: value for key, value in first.items() if key not in ("summary", "part")}
    merged["summary"] = []
    hosts = []
    for part in parts:
        where = part["part"]
        host = part["host"]
        if host not in hosts:
            hosts.append(host)
        for row in part["summary"]:
            row = dict(row)
            row["node"] = {"hostname": where["hostname"], "node_id": where["node_id"],
                           "pid": where["pid"], "seconds": round(where["seconds"], 3)}
            merged["summary"].append(row)
    node_ids = {part["part"]["node_id"] for part in parts}
    merged["cluster"] = {
        "nodes": nodes, "nodes_used": len(node_ids), "local": local,
        "hosts": hosts,
        "note": ("a local Ray cluster on this host, too few CPUs for a set of its own per node: "
                 "nodes share CPUs, so parts running at the same time disturb each other's "
                 "measurements" if shared else
                 "a local Ray cluster on this host: each node's parts ran on a CPU set of their own"
                 if local else "each part ran alone on its node's CPUs")}
    return merged


def sweep_on_cluster(nodes=None, address=None, policies=("c-fcfs", "d-fcfs", "steal"),
                     dists=("exp",), task=None, cpus_per_node=None, progress=False, timeout=None,
                     **settings):
    """:func:`pybaremetal.lab.sweep` with its parts (one per distribution and policy) spread
    over a Ray cluster.  ``address``: None (this process's Ray, or else a local cluster of
    ``nodes`` raylets on this host, ended afterwards), "auto" or "HOST:PORT".  Each part takes
    ``cpus_per_node`` logical CPUs (default: the sweep's cores), so a node runs one at a time.
    ``settings``: sweep's other keywords (cores, loads, samples, ...).  Returns the merged
    result, with ``cluster`` (nodes, hosts) and each summary row's ``node``."""
    from ..cluster import ClusterError, _ray
    from ..cluster import local as local_cluster
    if nodes is not None and (isinstance(nodes, bool) or not isinstance(nodes, int) or not 1 <= nodes <= 255):
        raise ArgumentError(f"cluster nodes must be an int from 1 to 255, got {nodes!r}")
    policies = parse_list(policies, "policies")
    for policy in policies:
        if policy not in POLICIES:
            raise ArgumentError(f"unknown policy {policy!r} (known: {', '.join(POLICIES)})")
    dists = parse_list(dists, "distributions")
    for name in dists:
        Distribution(name, settings.get("mean_us", 10.0))      # an unknown one fails here, not on a node
    cores = settings.get("cores") or len(os.sched_getaffinity(0))
    cpus = cpus_per_node or cores
    shipped = _ship_task(task)
    ray = _ray()
    from ray import exceptions as rx
    local = None
    began = time.perf_counter()
    try:
        if address is None and not ray.is_initialized():
            local = local_cluster.start(nodes or 2, cpus)
        elif address is not None:
            if ray.is_initialized():
                raise ClusterError("this process is already connected to Ray; use address=None")
            import logging
            ray.init(address=address, include_dashboard=False, log_to_driver=False,
                     logging_level=logging.WARNING)
            reassert_stop_signals()             # the command's, not Ray's (see signals)
        alive = [n for n in ray.nodes() if n.get("Alive") and n["Resources"].get("CPU", 0) >= cpus]
        if not alive:
            raise ClusterError(f"the Ray cluster has no node with {cpus} CPU(s) for a lab part "
                               f"(give cpus_per_node, or --cores to match the nodes)")
        settings = dict(settings, cores=cores)
        cpu_sets, shared = None, False
        if local is not None:
            # every raylet is on this host: node k's parts get the k-th run of `cores` CPUs
            mine = sorted(os.sched_getaffinity(0))
            cpu_sets = {n["NodeID"]: [mine[(k * cores + j) % len(mine)] for j in range(min(cores, len(mine)))]
                        for k, n in enumerate(alive)}
            shared = len(alive) * cores > len(mine)
        remote = ray.remote(_part).options(num_cpus=cpus, max_retries=0, scheduling_strategy="SPREAD")
        pairs = [(dist, policy) for dist in dists for policy in policies]
        refs = [remote.remote(policy, dist, shipped, settings, cpu_sets) for dist, policy in pairs]
        done = {}
        with _Progress(progress, len(refs)) as bar:
            pending = list(refs)
            while pending:
                ready, pending = ray.wait(pending, num_returns=1, timeout=timeout)
                if not ready:
                    raise ClusterError(f"lab parts did not finish within {timeout} s")
                for ref in ready:
                    index = refs.index(ref)
                    try:
                        done[index] = ray.get(ref)
                    except rx.RayTaskError as error:
                        cause = getattr(error, "cause", None)
                        if isinstance(cause, ArgumentError):
                            raise ArgumentError(str(cause)) from None
                        raise ClusterError(f"lab part {pairs[index][1]} on {pairs[index][0]} failed: "
                                           f"{str(error).strip().splitlines()[-1][:300]}") from None
                    except (rx.RayActorError, rx.WorkerCrashedError, rx.NodeDiedError,
                            rx.ObjectLostError) as error:
                        raise ClusterError(f"lab part {pairs[index][1]} on {pairs[index][0]}: its node "
                                           f"died ({type(error).__name__})") from None
                    bar.step(f"{pairs[index][1]} {pairs[index][0]} done")
        merged = _merge([done[i] for i in range(len(refs))], len(alive), local is not None, shared)
        merged["cluster"]["seconds"] = round(time.perf_counter() - began, 3)
        return merged
    finally:
        if local is not None:
            local_cluster.stop(local)
        elif address is not None and ray.is_initialized():
            ray.shutdown()


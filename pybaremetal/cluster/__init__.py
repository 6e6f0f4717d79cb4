"""Many hosted machines on Ray: one machine per node, linked on one Ethernet segment.

BareMetal's own multi-node story (BareMetal-Node) is a master that finds its nodes over raw
Ethernet, ships them a binary, runs it and gathers one result per node.  Here Ray does the
placing, shipping and gathering (it runs on laptops, Slurm and clouds), and the machines keep
raw Ethernet between them for the app's own data path, which Ray never touches::

    import pybaremetal as bm
    from pybaremetal.cluster import Cluster

    with Cluster(nodes=2, cores=2) as cluster:          # a local Ray cluster of 2 nodes
        cluster.dispatch("examples/cluster_primes.c", ["1000000"])
        for result in cluster.results(cluster.execute()):
            print(result.node, result.exit_code, result.output)

- Placement: one Ray actor per node, each in its own bundle of a placement group
  (``strategy="STRICT_SPREAD"``: every machine on a different Ray node; ``"PACK"`` puts them
  together, e.g. on one host for testing).  Ray's CPUs are logical, so each actor pins its
  process to a CPU set of its own (``os.sched_setaffinity``; machines sharing a host get
  disjoint sets while the host has CPUs enough) and its machine pins one core per CPU.
- Address: ``None`` uses the Ray this process is already connected to, or else starts a local
  cluster of ``nodes`` raylets on 127.0.0.1 (stopped with the Cluster); ``"auto"`` or
  ``"HOST:PORT"`` connects to a running cluster (pybaremetal must be installed on its nodes).
- Links: every machine gets one NIC (interface 0) on a shared segment, ``link="hub"``: the
  ``socket`` backend's multicast hub (on loopback when every machine is on one host), so a
  frame broadcast by one machine reaches all others and a unicast one its addressee.  Node
  ``i``'s MAC is 02:62:6d:c1:00:ii.  Apps learn their place from NET_STATUS, or from the
  environment: ``BAREMETAL_NODE`` (0 is the master) and ``BAREMETAL_NODES``.
- Verbs, as BareMetal-Node's master has them: :meth:`Cluster.dispatch` ships an app of any
  kind (.py, .c with its local headers, .so, .app, .asm) and builds it on each node;
  :meth:`Cluster.execute` starts it on every node and returns one :class:`NodeFuture` per
  node; :meth:`Cluster.results` waits for them (:class:`NodeResult`: exit code, console
  output, stderr, stats, the app's return value); :meth:`Cluster.reset` reboots every
  machine; :meth:`Cluster.stop` halts them and ends the actors.
- Failures: a node that dies (its raylet or actor gone) makes its future raise
  :class:`NodeError` naming the node; the other nodes' futures are untouched.
  :meth:`Cluster.restart` puts a fresh machine in the dead node's place once Ray has a node
  for it.
"""
import glob
import logging
import os
import random
import shutil
import tempfile
import time
import warnings

from ..errors import BareMetalError
from ..signals import reassert_stop_signals
from .node import NODE_ENV, NODES_ENV, Node, node_mac  # noqa: F401 (re-exported)

STRATEGIES = ("STRICT_SPREAD", "PACK", "SPREAD", "STRICT_PACK")
LINKS = ("hub", None)


class ClusterError(BareMetalError):
    """The cluster cannot be built or used: Ray missing, too few nodes, bad arguments."""


class NodeError(ClusterError):
    """One node failed (its actor or Ray node died, or a call on it failed); ``node`` is its
    index."""

    def __init__(self, node, message):
        super().__init__(message)
        self.node = node


def _ray():
    try:
        import ray
    except ImportError:
        raise ClusterError("pybaremetal.cluster needs Ray: pip install 'pybaremetal[cluster]'") from None
    return ray


class NodeResult:
    """What one node's run gave: ``node`` (index), ``exit_code``, ``value`` (the app's return
    value; a repr if it could not be sent back), ``output`` (console: b_output, printf and
    print in order), ``errors`` (stderr: tracebacks, crash reports), ``stats`` (run time,
    cores and CPUs, boot time, NIC counters for the run)."""

    def __init__(self, node, exit_code, value, output, errors, stats):
        self.node = node
        self.exit_code = exit_code
        self.value = value
        self.output = output
        self.errors = errors
        self.stats = stats

    def __repr__(self):
        return f"<NodeResult node {self.node} exit {self.exit_code}>"


class NodeFuture:
    """A node's run in progress: :meth:`result` waits for its :class:`NodeResult`."""

    def __init__(self, cluster, node, ref):
        self.cluster = cluster
        self.node = node
        self.ref = ref

    def done(self):
        ready, _ = _ray().wait([self.ref], timeout=0)
        return bool(ready)

    def result(self, timeout=None):
        """The node's :class:`NodeResult`; NodeError if the node died or did not answer in
        ``timeout`` seconds."""
        raw = self.cluster._get(self.node, self.ref, timeout, "running the app")
        raw["stats"]["boot_seconds"] = self.cluster.boot_seconds[self.node]
        return NodeResult(raw["node"], raw["exit_code"], raw["value"], raw["output"],
                          raw["errors"], raw["stats"])


def hub_specs(places, group, port):
    """The NIC spec of each node (``places``: what each node's ``where()`` said) on one
    multicast hub, GROUP:PORT: when every machine shares one loopback (one host, one network
    namespace) the group stays on it (the backend's default), else each member joins it on its
    Ray node's address (``ip``)."""
    from ..net import format_mac
    loopbacks = {(p["hostname"], p["boot_id"], p.get("netns")) for p in places}
    specs = []
    for i, place in enumerate(places):
        where = f",ifaddr={place['ip']}" if len(loopbacks) > 1 and place.get("ip") else ""
        specs.append([f"socket:mcast={group}:{port}{where},mac={format_mac(node_mac(i))}"])
    return specs


class Cluster:
    """``nodes`` hosted machines on a Ray cluster, one per node (see the module notes).

    ``cores``, ``memory``, ``queue_size``: each machine's (as :class:`pybaremetal.Machine`).
    ``address``: None, "auto" or a Ray address.  ``strategy``: the placement group's.
    ``cpus_per_node``: logical CPUs each actor takes from Ray (and, for a local cluster, each
    raylet has).  ``link``: "hub" (one shared Ethernet segment) or None (no NIC).
    ``timeout``: seconds to wait for the placement and the boots.
    Raises :class:`ClusterError` when Ray is missing or the cluster has too few nodes."""

    def __init__(self, nodes=2, cores=1, memory="256M", address=None, strategy="STRICT_SPREAD",
                 cpus_per_node=1, link="hub", queue_size=4096, timeout=60):
        if isinstance(nodes, bool) or not isinstance(nodes, int) or not 1 <= nodes <= 255:
            raise ClusterError(f"nodes must be an int from 1 to 255, got {nodes!r}")
        if isinstance(cores, bool) or not isinstance(cores, int) or not 1 <= cores <= 256:
            raise ClusterError(f"cores must be an int from 1 to 256, got {cores!r}")
        if strategy not in STRATEGIES:
            raise ClusterError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
        if link not in LINKS:
            raise ClusterError(f"link must be 'hub' or None, got {link!r}")
        ray = _ray()
        self.nodes, self.cores, self.memory, self.queue_size = nodes, cores, memory, queue_size
        self.strategy, self.cpus_per_node, self.link, self.timeout = strategy, cpus_per_node, link, timeout
        self._local = None
        self._group = None
        self._tag = f"baremetal-{os.getpid()}-{random.randrange(1 << 32):08x}"   # names nodes' files
        self.actors = []
        self.places = []
        self.boot_seconds = []
        self.nic_specs = []
        self._app = None                  # (files ref, app name, args) of the last dispatch
        self._paths = {}                  # node -> the app's path there
        self._futures = []
        began = time.perf_counter()
        try:
            if address is None and not ray.is_initialized():
                from . import local
                self._local = local.start(nodes, cpus_per_node)
            elif address is not None:
                if ray.is_initialized():
                    raise ClusterError("this process is already connected to Ray; use address=None")
                ray.init(address=address, include_dashboard=False, log_to_driver=False,
                         logging_level=logging.WARNING)
                reassert_stop_signals()   # the command's, not Ray's (see signals)
            self._check_size(ray)
            self._place(ray)
            self._boot(ray)
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.perf_counter() - began

    # --- building -----------------------------------------------------------------------

    def _check_size(self, ray):
        """ClusterError now, rather than a placement that never comes, when Ray has too few
        nodes (or CPUs) for the strategy."""
        alive = [n for n in ray.nodes() if n.get("Alive") and n["Resources"].get("CPU", 0) >= self.cpus_per_node]
        if self.strategy == "STRICT_SPREAD" and len(alive) < self.nodes:
            raise ClusterError(f"the Ray cluster has {len(alive)} node(s) with {self.cpus_per_node} CPU(s) "
                               f"to spare; {self.nodes} machines on distinct nodes (STRICT_SPREAD) need "
                               f"{self.nodes} (or use strategy='PACK' to share nodes)")
        cpus = sum(n["Resources"].get("CPU", 0) for n in alive)
        if cpus < self.nodes * self.cpus_per_node:
            raise ClusterError(f"the Ray cluster has {cpus:g} CPU(s); {self.nodes} machines need "
                               f"{self.nodes * self.cpus_per_node}")

    def _place(self, ray):
        from ray.util.placement_group import placement_group
        self._group = placement_group([{"CPU": self.cpus_per_node}] * self.nodes, strategy=self.strategy)
        ready, _ = ray.wait([self._group.ready()], timeout=self.timeout)
        if not ready:
            raise ClusterError(f"Ray could not place {self.nodes} machines ({self.strategy}) within "
                               f"{self.timeout} s: too few free nodes or CPUs")
        self.actors = [self._new_actor(ray, i) for i in range(self.nodes)]
        self.places = [self._get(i, actor.where.remote(), self.timeout, "starting")
                       for i, actor in enumerate(self.actors)]

    def _new_actor(self, ray, index):
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
        remote = ray.remote(Node).options(
            num_cpus=self.cpus_per_node, max_restarts=0,
            scheduling_strategy=PlacementGroupSchedulingStrategy(self._group, placement_group_bundle_index=index))
        return remote.remote(index, self.nodes, self.cores, self.memory, self.queue_size, self._tag)

    def _cpu_sets(self):
        """A CPU set per node: machines sharing a host get disjoint runs of ``cores`` CPUs of
        the host's allowed set (wrapping around, with a warning, when the host has too few)."""
        sets, used = [], {}
        for place in self.places:
            host = (place["hostname"], place["boot_id"])
            cpus = place["cpus"]
            start = used.get(host, 0)
            used[host] = start + self.cores
            if used[host] > len(cpus):
                warnings.warn(f"host {place['hostname']} has {len(cpus)} CPU(s) for "
                              f"{used[host]} cores of this cluster: cores share CPUs")
            sets.append([cpus[(start + k) % len(cpus)] for k in range(min(self.cores, len(cpus)))])
        return sets

    def _nic_specs(self):
        """Each node's NICs for ``link`` (see :func:`hub_specs`)."""
        if self.link is None:
            return [[] for _ in range(self.nodes)]
        group = f"239.255.{random.randrange(256)}.{random.randrange(1, 255)}"
        return hub_specs(self.places, group, random.randrange(20000, 60000))

    def _boot(self, ray):
        self.cpu_sets = self._cpu_sets()
        self.nic_specs = self._nic_specs()
        refs = [actor.start.remote(cpus, nics)
                for actor, cpus, nics in zip(self.actors, self.cpu_sets, self.nic_specs)]
        self.boot_seconds = [self._get(i, ref, self.timeout, "booting") for i, ref in enumerate(refs)]

    # --- calls on nodes -----------------------------------------------------------------

    def _describe(self, node):
        place = self.places[node] if node < len(self.places) else None
        if not place:
            return f"node {node}"
        ray_node = (place.get("node_id") or "?")[:12]
        return f"node {node} (Ray node {ray_node} on {place['hostname']}, pid {place['pid']})"

    def _get(self, node, ref, timeout, doing):
        """ray.get(ref) with Ray's failures turned into NodeError naming the node."""
        ray = _ray()
        from ray import exceptions as rx
        try:
            return ray.get(ref, timeout=timeout)
        except rx.GetTimeoutError:
            raise NodeError(node, f"{self._describe(node)} did not answer within {timeout} s "
                                  f"while {doing}") from None
        except (rx.RayActorError, rx.WorkerCrashedError, rx.NodeDiedError, rx.ObjectLostError) as error:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise NodeError(node, f"{self._describe(node)} died while {doing} ({type(error).__name__}: "
                                  f"{reason[:200]})") from None
        except rx.RayTaskError as error:
            cause = error.as_instanceof_cause() if hasattr(error, "as_instanceof_cause") else error
            message = str(getattr(error, "cause", None) or cause).strip().splitlines()
            raise NodeError(node, f"{self._describe(node)} failed while {doing}: "
                                  f"{message[-1] if message else type(cause).__name__}") from None

    # --- the verbs ----------------------------------------------------------------------

    def dispatch(self, app, args=()):
        """Ship ``app`` (a path: .py, .c with its local headers, .so, .app, .asm) to every
        node and build it there; ``args`` are its arguments (argv[1:]).  Errors (unknown kind,
        missing file, a compile error on a node) raise before anything runs."""
        from .ship import app_files
        ray = _ray()
        files, name = app_files(app)
        ref = ray.put(files)
        self._app = (ref, name, [str(a) for a in args])
        refs = [actor.load.remote(ref, name) for actor in self.actors]
        self._paths = {i: self._get(i, r, None, "loading the app") for i, r in enumerate(refs)}
        return self

    def execute(self, nodes=None):
        """Start the dispatched app on every node (or the indices in ``nodes``) at once;
        returns their :class:`NodeFuture` s, node order."""
        if self._app is None:
            raise ClusterError("execute: nothing dispatched yet (call dispatch(app, args) first)")
        _, _, args = self._app
        indices = range(self.nodes) if nodes is None else nodes
        self._futures = [NodeFuture(self, i, self.actors[i].execute.remote(self._paths[i], args))
                         for i in indices]
        return list(self._futures)

    def results(self, futures=None, timeout=None):
        """Wait for ``futures`` (default: the last execute's) and return their
        :class:`NodeResult` s.  If nodes failed, every other node is waited for first, then
        the first failure's NodeError is raised with ``.results`` holding the others (None in
        the failed places)."""
        futures = self._futures if futures is None else futures
        results, failures = [], []
        for future in futures:
            try:
                results.append(future.result(timeout))
            except NodeError as error:
                results.append(None)
                failures.append(error)
        if failures:
            failures[0].results = results
            raise failures[0]
        return results

    def run(self, app, args=(), timeout=None):
        """dispatch + execute + results."""
        self.dispatch(app, args)
        return self.results(self.execute(), timeout)

    def reset(self):
        """Reboot every machine (memory cleared, cores idle); their NICs stay linked."""
        refs = [actor.reset.remote() for actor in self.actors]
        for i, ref in enumerate(refs):
            self._get(i, ref, self.timeout, "resetting")

    def restart(self, node):
        """Put a fresh machine in place of node ``node`` (after it died): a new actor in the
        same bundle of the placement group (Ray re-places the bundle once a node is free),
        booted with the same CPU set and link, loaded with the dispatched app."""
        ray = _ray()
        try:
            ray.kill(self.actors[node])
        except Exception:
            pass
        self.actors[node] = self._new_actor(ray, node)
        self.places[node] = self._get(node, self.actors[node].where.remote(), self.timeout, "restarting")
        self.boot_seconds[node] = self._get(node, self.actors[node].start.remote(
            self.cpu_sets[node], self.nic_specs[node]), self.timeout, "booting")
        if self._app is not None:
            ref, name, _ = self._app
            self._paths[node] = self._get(node, self.actors[node].load.remote(ref, name), None,
                                          "loading the app")

    def stop(self):
        """Halt every machine, end the actors and the placement group (and the local Ray
        cluster if this Cluster started it).  Idempotent."""
        ray = _ray()
        actors, self.actors = self.actors, []
        if ray.is_initialized():
            # a node still running its app cannot take the halt until the app ends (an actor
            # runs one call at a time): it is killed at once (its drives' writes are already
            # in their files: O_DIRECT), the others halt
            futures = [f for f in self._futures if f.node < len(actors)]
            done = ray.wait([f.ref for f in futures], num_returns=len(futures), timeout=0)[0] if futures else []
            busy = {f.node for f in futures if f.ref not in done}
            halts = [actor.stop.remote() for i, actor in enumerate(actors) if i not in busy]
            if halts:
                ray.wait(halts, num_returns=len(halts), timeout=10)
            for actor in actors:
                try:
                    ray.kill(actor)
                except Exception:
                    pass
            if self._group is not None:
                from ray.util.placement_group import remove_placement_group
                try:
                    remove_placement_group(self._group)
                except Exception:
                    pass
        self._group = None
        # files of nodes that died on this host (a live node removes its own at stop)
        for leftover in glob.glob(os.path.join(tempfile.gettempdir(), f"{self._tag}-node*")):
            shutil.rmtree(leftover, ignore_errors=True)
        if self._local is not None:
            from . import local
            local_cluster, self._local = self._local, None
            local.stop(local_cluster)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
        return False

    def __repr__(self):
        return f"<Cluster {self.nodes} nodes x {self.cores} cores, {self.strategy}>"

"""A Ray cluster of N nodes on this one host (``ray.cluster_utils.Cluster``), for a Cluster
without an address and for tests: a head with no CPUs (so no machine lands on it) and N
nodes, each its own raylet with ``cpus_per_node`` logical CPUs; everything on 127.0.0.1,
small object stores, no dashboard."""

import logging

from ..signals import deferred_stop, reassert_stop_signals

OBJECT_STORE = 100 << 20            # bytes per raylet: the cluster only ships apps and results


def start(nodes, cpus_per_node=1, object_store=OBJECT_STORE):
    """Start the head and ``nodes`` raylets and connect this process to them (ray.init).
    Returns the ``ray.cluster_utils.Cluster``; :func:`stop` ends it."""
    import ray
    logging.getLogger("ray").setLevel(logging.WARNING)   # no INFO lines on the user's terminal
    from ray.cluster_utils import Cluster as RayCluster
    common = dict(object_store_memory=object_store)
    local = RayCluster(initialize_head=True,
                       head_node_args=dict(num_cpus=0, include_dashboard=False, **common))
    try:
        for _ in range(nodes):
            local.add_node(num_cpus=cpus_per_node, **common)
        local.wait_for_nodes()
        ray.init(address=local.address, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING)
        reassert_stop_signals()             # the command's, not Ray's (see signals)
    except BaseException:
        stop(local)
        raise
    return local


def add_node(local, cpus_per_node=1, object_store=OBJECT_STORE):
    """One more raylet in the local cluster; returns it (``local.remove_node`` takes it)."""
    node = local.add_node(num_cpus=cpus_per_node, object_store_memory=object_store)
    local.wait_for_nodes()
    return node


def stop(local):
    """Disconnect and end every process of the local cluster."""
    import ray
    with deferred_stop():
        try:
            ray.shutdown()
        finally:
            local.shutdown()

"""One node of a cluster: the hosted machine that a Ray actor owns, and what runs on it.

:class:`Node` is a plain class (Ray wraps it as an actor in :mod:`pybaremetal.cluster`, so
this module imports nothing from Ray and can be used, and tested, without it).  Its life:

1. ``__init__`` only records who it is; ``where()`` tells the driver which host and CPUs the
   actor got, so the driver can hand out CPU sets (one per machine sharing a host) and links.
2. ``start(cpus, nics)`` pins the actor's process to ``cpus`` (``os.sched_setaffinity``: Ray's
   CPU resources are logical, nothing pins), then builds and boots the Machine; its cores are
   pinned, one per CPU of that set, by the Machine itself.
3. ``load(files, app)`` writes the shipped app (and the local headers a C source includes) to a
   private directory and builds a C source there; ``execute(path, argv)`` runs it on the
   machine, on the actor's own thread as core 0, and returns a plain dict (exit code, console
   output, stderr, stats, the app's return value).  Each run starts on a clean machine: after
   the first run the machine is rebooted (memory cleared, cores idle) and frames left in its
   NICs from the previous run are drained before the app starts.  A C app runs from a fresh
   copy of its shared object each time: dlopen of a path already loaded returns the loaded
   library, whose globals would still hold the previous run's values.

Console capture: fd 1 and fd 2 of the actor process are pointed at files for the run (the
machine's console is fd 1), so b_output, printf from a C app and Python's print land in one
file in program order; stderr (tracebacks, crash reports) in another.
"""
import os
import shutil
import socket
import sys
import tempfile
import time
import traceback

NODE_ENV = "BAREMETAL_NODE"         # the app's node index (0 is the master)
NODES_ENV = "BAREMETAL_NODES"       # how many nodes the cluster has
MAC_BASE = 0x02626DC10000           # node i's MAC: 02:62:6d:c1:00:ii (locally administered)


def node_mac(index):
    """The MAC (48-bit int) node ``index``'s NIC gets: 02:62:6d:c1:HH:LL."""
    return MAC_BASE | (index & 0xFFFF)


def host_identity():
    """(hostname, boot id): equal for two processes exactly when they share a host."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
    except OSError:
        boot = ""
    return socket.gethostname(), boot


def net_namespace():
    """The network namespace this process is in (its inode), "" if unknown: Ray nodes in
    containers or namespaces of one host share its CPUs but each has its own loopback."""
    try:
        return str(os.stat("/proc/self/ns/net").st_ino)
    except OSError:
        return ""


class _Captured:
    """Point fd 1 and fd 2 at fresh files for the duration of a ``with`` block."""

    def __init__(self, directory):
        self.paths = (os.path.join(directory, "stdout"), os.path.join(directory, "stderr"))

    def __enter__(self):
        sys.stdout.flush()
        sys.stderr.flush()
        self.saved = (os.dup(1), os.dup(2))
        for fd, path in zip((1, 2), self.paths):
            target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
            os.dup2(target, fd)
            os.close(target)
        return self

    def __exit__(self, *exc):
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, saved in zip((1, 2), self.saved):
            os.dup2(saved, fd)
            os.close(saved)
        return False

    def read(self):
        texts = []
        for path in self.paths:
            with open(path, "rb") as f:
                texts.append(f.read().decode("utf-8", "replace"))
        return texts


def _drain(machine):
    """Drop the frames waiting in every NIC of ``machine`` (run on core 0)."""
    from .. import net
    dropped = 0
    for nic in machine.nics:
        while len(net.b_net_rx(nic.iid)):
            dropped += 1
    return dropped


class Node:
    """The machine of cluster node ``index`` of ``count`` (the body of a Ray actor).  Its files
    live in a temporary directory named ``TAG-nodeINDEX-*``, removed by :meth:`stop`."""

    def __init__(self, index, count, cores=1, memory="256M", queue_size=4096, tag="baremetal"):
        self.index = index
        self.count = count
        self.cores = cores
        self.memory = memory
        self.queue_size = queue_size
        self.machine = None
        self.nics = ()
        self.runs = 0
        self.built = {}                     # C source -> its built shared object
        self.work = tempfile.mkdtemp(prefix=f"{tag}-node{index}-")   # the app, builds, captures
        os.environ[NODE_ENV] = str(index)
        os.environ[NODES_ENV] = str(count)

    def where(self):
        """Where this actor runs: host identity, pid, the CPUs it may use, Ray's node id."""
        hostname, boot = host_identity()
        node_id = ip = None
        try:
            import ray
            node_id = ray.get_runtime_context().get_node_id()
            ip = ray.util.get_node_ip_address()
        except Exception:               # not under Ray (plain use, tests of this class)
            pass
        return {"index": self.index, "hostname": hostname, "boot_id": boot, "netns": net_namespace(),
                "pid": os.getpid(),
                "cpus": sorted(os.sched_getaffinity(0)), "node_id": node_id, "ip": ip}

    def start(self, cpus=None, nics=()):
        """Pin the process to ``cpus`` (None: leave it) and boot the machine with ``nics``.
        Returns the boot time in seconds."""
        from ..machine import Machine
        began = time.perf_counter()
        if cpus:
            os.sched_setaffinity(0, cpus)
        self.nics = tuple(nics)
        self.machine = Machine(cores=self.cores, memory=self.memory, console="stdout", input=False,
                               nics=self.nics, queue_size=self.queue_size)
        self.machine.boot()
        self.runs = 0
        return time.perf_counter() - began

    def load(self, files, app):
        """Write ``files`` ({relative name: bytes}) to a fresh directory; build ``app`` (one of
        them) if it is a C source.  Returns the path to hand to :meth:`execute`."""
        from ..apps import loader_for
        directory = tempfile.mkdtemp(prefix="app-", dir=self.work)
        for name, data in files.items():
            path = os.path.join(directory, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)
        path = os.path.join(directory, app)
        loader_for(path)
        if path.endswith(".c"):
            from ..apps import c
            self.built[path] = c.cached_build([path])   # compile errors now, at dispatch
        return path

    def reset(self):
        """Reboot the machine (memory cleared, cores idle, clock restarted); a halted machine
        (after a crash) is built anew."""
        if self.machine is None:
            return
        if self.machine.running:
            self.machine.reboot()
        else:
            self.start(None, self.nics)
        self.runs = 0

    def execute(self, path, argv=()):
        """Run the app at ``path`` (from :meth:`load`) with ``argv`` on the machine.

        Returns {"node", "exit_code", "value", "output", "errors", "stats"}; an app that raises
        or crashes gives exit code 1 (or its exit status) with the report in "errors"."""
        from ..apps import loader_for
        from ..cli import exit_code
        from ..errors import BareMetalError
        if self.runs:
            self.reset()
        self.runs += 1
        machine = self.machine
        value, code = None, None
        directory = tempfile.mkdtemp(prefix="run-", dir=self.work)
        before = {nic.iid: dict(nic.stats) for nic in machine.nics}
        began = time.perf_counter()
        run_path = path
        if path.endswith((".c", ".so")):
            # a fresh copy per run: dlopen of a path already loaded would hand back the same
            # library, and the app would start with the previous run's globals
            run_path = os.path.join(directory, os.path.splitext(os.path.basename(path))[0] + ".so")
            shutil.copyfile(self.built.get(path, path), run_path)
        with _Captured(directory) as captured:
            try:
                machine.run(_drain, machine)
                value = loader_for(run_path).run(machine, run_path, list(argv))
                code = exit_code(value)
            except SystemExit as stop:
                if hasattr(stop, "ray_terminate_msg"):
                    # Ray's SIGTERM handler: the worker (or its node) is going away.  Let the
                    # actor die, so the caller gets NodeError, not a result with exit code 1
                    raise
                value, code = stop.code, exit_code(stop.code)
            except BareMetalError as error:
                print(f"baremetal: error: {error}", file=sys.stderr)
                code = getattr(error, "exit_status", 1)
            except Exception:
                traceback.print_exc()
                code = 1
        elapsed = time.perf_counter() - began
        output, errors = captured.read()
        stats = {"run_seconds": elapsed, "cores": machine.num_cores,
                 "cpus": sorted(os.sched_getaffinity(0)),
                 "faults": len(machine.faults) if machine.running else None,
                 "nics": [{key: nic.stats[key] - before.get(nic.iid, {}).get(key, 0)
                           for key in nic.stats} for nic in machine.nics] if machine.running else []}
        try:
            import pickle
            pickle.dumps(value)
        except Exception:
            value = repr(value)
        return {"node": self.index, "exit_code": code, "value": value, "output": output,
                "errors": errors, "stats": stats}

    def stop(self):
        """Halt the machine (drives flushed, NICs closed) and remove the node's files."""
        if self.machine is not None:
            self.machine.halt()
            self.machine = None
        shutil.rmtree(self.work, ignore_errors=True)
        return True

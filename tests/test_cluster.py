"""pybaremetal.cluster on a real local Ray cluster: a head with no CPUs and two nodes, each its
own raylet (ray.cluster_utils), machines linked by the socket NIC's multicast hub on loopback."""
import os
import subprocess
import sys
import textwrap

import pytest
import ray

from pybaremetal.cluster import Cluster, ClusterError, NodeError, local

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRIMES = os.path.join(ROOT, "examples", "cluster_primes.c")


@pytest.fixture(scope="module")
def ray_cluster():
    """Head (0 CPUs) + 2 raylets of 1 CPU, this process connected; all ended after the module."""
    started = local.start(2)
    session = ray._private.worker._global_node.get_session_dir_path()
    yield started
    if ray.is_initialized():
        local.stop(started)
    assert _processes_of(session) == []


@pytest.fixture(scope="module")
def machines(ray_cluster):
    """One Cluster of 2 machines (1 core each, linked) for the tests that only run apps."""
    with Cluster(nodes=2, cores=1) as cluster:
        yield cluster


def _processes_of(session):
    """Pids of live processes whose command line names the Ray session directory."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if session.encode() in f.read():
                    found.append(int(pid))
        except OSError:
            pass
    return found


def _app(tmp_path, source, name="app.py"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(source))
    return str(path)


def test_cluster_machines_land_on_distinct_nodes_with_their_own_cpus(machines, tmp_path):
    node_ids = [place["node_id"] for place in machines.places]
    workers = {n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) >= 1}
    assert len(set(node_ids)) == 2 and set(node_ids) <= workers
    app = _app(tmp_path, """
        import os
        import pybaremetal as bm
        def main():
            bm.b_output(f"node {os.environ['BAREMETAL_NODE']} of {os.environ['BAREMETAL_NODES']}\\n")
            return None
    """)
    results = machines.run(app)
    assert [r.node for r in results] == [0, 1]
    assert [r.output for r in results] == ["node 0 of 2\n", "node 1 of 2\n"]
    assert [r.exit_code for r in results] == [0, 0]
    cpus = [r.stats["cpus"] for r in results]           # each pinned to one CPU, apart if it can
    assert len(cpus[0]) == len(cpus[1]) == 1
    assert cpus[0] != cpus[1] or len(os.sched_getaffinity(0)) == 1


def test_cluster_primes_example_gives_the_exact_count_over_ethernet(machines):
    master, worker = machines.run(PRIMES, ["1000000"], timeout=60)
    assert master.exit_code == 0 and worker.exit_code == 0, (master.errors, worker.errors)
    assert "primes below 1000000: 78498\n" in master.output
    assert "2 node(s)" in master.output
    # the work and the results really crossed the link: WORK frames in, RESULT frames out
    assert worker.stats["nics"][0]["rx_packets"] > 0 and worker.stats["nics"][0]["tx_packets"] > 0
    assert worker.output.startswith("node 1: ") and "jobs counted here" in worker.output
    # the same machines run it again (rebooted, fresh globals, stray frames drained)
    again = machines.results(machines.execute(), timeout=60)
    assert "primes below 1000000: 78498\n" in again[0].output


def test_cluster_frames_between_nodes_arrive_exact(machines, tmp_path):
    """Node 0 sends 300 frames of every length class to node 1, which echoes each back; both
    directions must be byte-exact (node 0 compares every echo)."""
    app = _app(tmp_path, """
        import os, random, time
        import pybaremetal as bm
        from pybaremetal.cluster import node_mac

        def frame(dst, src, body):
            return dst.to_bytes(6, "big") + src.to_bytes(6, "big") + b"\\x88\\xb6" + body

        def receive(deadline):
            while time.monotonic() < deadline:
                got = bm.b_net_rx(0)
                if len(got) and got[12:14] == b"\\x88\\xb6":
                    return bytes(got)
            raise TimeoutError("no frame")

        def main():
            me, other = int(os.environ["BAREMETAL_NODE"]), node_mac(1 - int(os.environ["BAREMETAL_NODE"]))
            mine = node_mac(me)
            deadline = time.monotonic() + 60
            if me == 1:                                   # echo every frame to its sender
                while True:
                    got = receive(deadline)
                    if got[14:] == b"stop":
                        return 0
                    if got[14:] == b"hello?":
                        bm.b_net_tx(frame(other, mine, b"hello!"))
                        continue
                    bm.b_net_tx(frame(other, mine, got[14:]))
            while True:                                   # node 0: find node 1 first
                bm.b_net_tx(frame(other, mine, b"hello?"))
                try:
                    if receive(time.monotonic() + 0.05)[14:] == b"hello!":
                        break
                except TimeoutError:
                    if time.monotonic() > deadline:
                        return 3
            while True:                                   # drain the other hello! replies
                try:
                    receive(time.monotonic() + 0.2)
                except TimeoutError:
                    break
            rng = random.Random(16)
            lengths = [14, 15, 60, 64, 1500, 1514, 1518, 1522] + [rng.randrange(14, 1523) for _ in range(292)]
            for i, length in enumerate(lengths):
                sent = frame(other, mine, i.to_bytes(2, "big") + rng.randbytes(length - 16) if length >= 16
                             else rng.randbytes(length - 14))
                bm.b_net_tx(sent)
                echo = receive(deadline)
                if echo[14:] != sent[14:] or len(echo) != len(sent):
                    bm.b_output(f"frame {i} ({length} bytes) came back different\\n")
                    return 1
            bm.b_net_tx(frame(other, mine, b"stop"))
            bm.b_output(f"{len(lengths)} frames exact\\n")
            return 0
    """)
    sender, echoer = machines.run(app, timeout=60)
    assert sender.exit_code == 0, sender.output + sender.errors
    assert sender.output == "300 frames exact\n"
    assert echoer.exit_code == 0, echoer.errors
    assert echoer.stats["nics"][0]["rx_dropped"] == 0


def test_cluster_dispatch_of_a_broken_c_app_names_the_node(machines, tmp_path):
    app = _app(tmp_path, "int main(void) { return undefined_thing; }\n", "broken.c")
    with pytest.raises(NodeError, match=r"node 0 .* failed while loading the app: .*broken.c"):
        machines.dispatch(app)


def test_cluster_removing_a_node_fails_only_that_nodes_future(machines, ray_cluster, tmp_path):
    app = _app(tmp_path, """
        import os, sys, time
        def main():
            if os.environ["BAREMETAL_NODE"] == "1" and sys.argv[1:] == ["hang"]:
                time.sleep(120)                           # still running when its node goes
            return 7
    """)
    machines.dispatch(app, ["hang"])
    first, second = machines.execute()
    assert first.result(timeout=60).exit_code == 7
    doomed = machines.places[1]["node_id"]
    raylet = next(n for n in ray_cluster.worker_nodes if n.node_id == doomed)
    ray_cluster.remove_node(raylet)
    with pytest.raises(NodeError, match=r"node 1 \(Ray node .* died while running the app") as failed:
        second.result(timeout=60)
    assert failed.value.node == 1
    # the survivor is untouched and runs again
    assert machines.results(machines.execute([0]), timeout=60)[0].exit_code == 7
    # a new raylet lets node 1 come back, with the app loaded: both run
    local.add_node(ray_cluster)
    machines.restart(1)
    assert machines.places[1]["node_id"] != doomed
    machines.dispatch(app)
    assert [r.exit_code for r in machines.results(machines.execute(), timeout=60)] == [7, 7]


def test_cluster_too_small_is_a_clear_error(ray_cluster):
    with pytest.raises(ClusterError, match=r"has 2 node\(s\) .* 3 machines on distinct nodes"):
        Cluster(nodes=3)
    with pytest.raises(ClusterError, match="nodes must be an int"):
        Cluster(nodes=0)


def test_cluster_without_ray_says_how_to_install_it():
    code = "import sys; sys.modules['ray'] = None\nfrom pybaremetal.cluster import Cluster\nCluster(nodes=2)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 1
    assert "pip install 'pybaremetal[cluster]'" in done.stderr.splitlines()[-1]


def test_baremetal_cluster_cli_runs_primes_on_a_local_ray_cluster():
    """No --address: the command starts (and ends) a local Ray cluster of 2 nodes itself."""
    done = subprocess.run([sys.executable, "-m", "pybaremetal", "cluster", PRIMES, "--nodes", "2",
                           "--", "300000"], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    assert "[node 0] primes below 300000: 25997\n" in done.stdout
    assert "[node 1] node 1: " in done.stdout          # the worker's own line, with its prefix


def test_baremetal_cluster_cli_bad_arguments_are_one_line():
    done = subprocess.run([sys.executable, "-m", "pybaremetal", "cluster", "app.txt", "--nodes", "2"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "unknown kind of app" in done.stderr


FOREVER = """
import os, sys, time
def main():
    open(sys.argv[1] + f".{os.getpid()}", "w").close()      # this node's app is running
    while True:
        time.sleep(0.05)
"""


def _ray_processes_of(pid):
    """Live processes started under ``pid`` (a session leader): Ray's raylets, agents, workers."""
    found = []
    for other in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{other}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == pid and fields[0] != "Z":          # session id; zombies are gone
            found.append(int(other))
    return found


def test_the_library_leaves_a_programs_stop_signals_alone(ray_cluster):
    """Only the commands take SIGTERM over (signals.own_stop_signals): a program (here pytest,
    whose forked helpers must die by SIGTERM, not unwind into its code) keeps its handlers."""
    import signal

    from pybaremetal import signals
    assert signal.getsignal(signal.SIGTERM) is not signals._stop
    with signals.deferred_stop() as held:
        assert not held.active and signal.getsignal(signal.SIGTERM) is not held._hold


@pytest.mark.parametrize("command", [["cluster", "APP", "--nodes", "2"],
                                     ["lab", "--cluster", "2", "--cores", "1", "--policies", "c-fcfs",
                                      "--samples", "20000000", "--duration", "100", "--quiet"]])
def test_sigterm_ends_a_ray_command_with_143_and_stops_the_ray_it_started(tmp_path, command):
    """SIGTERM while the nodes work: exit status 143 (Ray's own handlers would exit 1 or abort
    and leave agents running), and no process of the local Ray cluster left."""
    import signal
    import time
    marker = tmp_path / "running"
    app = _app(tmp_path, FOREVER)
    argv = [app if arg == "APP" else arg for arg in command]
    if command[0] == "cluster":
        argv += ["--", str(marker)]
    child = subprocess.Popen([sys.executable, "-m", "pybaremetal", *argv], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        if command[0] == "cluster":      # both nodes run the app
            while len(list(tmp_path.glob("running.*"))) < 2 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert len(list(tmp_path.glob("running.*"))) == 2
        else:                            # the parts run: a node is measuring
            while not any(os.path.exists(f"/proc/{p}") and b"ray::_part" in open(f"/proc/{p}/cmdline", "rb").read()
                          for p in _ray_processes_of(child.pid)) and time.monotonic() < deadline:
                time.sleep(0.1)
        child.send_signal(signal.SIGTERM)
        out, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
    assert child.returncode == 143, err
    assert "Traceback" not in err
    deadline = time.monotonic() + 10
    while _ray_processes_of(child.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _ray_processes_of(child.pid) == []


LAB = ["--cores", "1", "--loads", "0.2,0.5", "--samples", "2000", "--duration", "0.05",
       "--model-samples", "5000", "--bisect", "0", "--model-bisect", "3", "--quiet"]


def test_lab_cluster_spreads_the_sweeps_parts_over_nodes(tmp_path):
    """`baremetal lab --cluster 2` (its own local Ray cluster): one part per distribution and
    policy, run on both nodes, merged in the order one host gives; the model (seeded) is the
    same as one host's."""
    import json
    from pybaremetal.lab import sweep
    out = tmp_path / "lab.json"
    done = subprocess.run([sys.executable, "-m", "pybaremetal", "lab", "--cluster", "2",
                           "--policies", "c-fcfs,d-fcfs", "--dist", "exp,bimodal-1", *LAB,
                           "--json", str(out)], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    rows = result["summary"]
    assert [(r["dist"], r["policy"]) for r in rows] == [
        ("exp", "c-fcfs"), ("exp", "d-fcfs"), ("bimodal-1", "c-fcfs"), ("bimodal-1", "d-fcfs")]
    assert result["cluster"]["nodes"] == 2 and result["cluster"]["local"] is True
    assert len({r["node"]["node_id"] for r in rows}) == 2          # both nodes measured parts
    for row in rows:                                               # every part ran for real
        assert "max_load_at_slo" in row and [p["load"] for p in row["sweep"]] == [0.2, 0.5]
        assert all(p["requests"] >= 1800 for p in row["sweep"])
    here = sweep(["c-fcfs", "d-fcfs"], ["exp", "bimodal-1"], cores=1, loads=[0.2, 0.5],
                 model_only=True, model_samples=5000, model_bisect=3)
    assert [r["model_max_load_at_slo"] for r in rows] == \
        [r["model_max_load_at_slo"] for r in here["summary"]]
    assert [[p["p99"] for p in r["model_sweep"]] for r in rows] == \
        [[p["p99"] for p in r["model_sweep"]] for r in here["summary"]]


def test_lab_cluster_ships_a_task_file_to_the_nodes(tmp_path):
    """A FILE.c:SYMBOL task is sent with the part (the nodes build it from its bytes)."""
    import json
    import shutil
    task = tmp_path / "mytask.c"
    shutil.copy(os.path.join(ROOT, "tests", "lab_tasks.c"), task)
    out = tmp_path / "lab.json"
    done = subprocess.run([sys.executable, "-m", "pybaremetal", "lab", "--cluster", "1",
                           "--policies", "c-fcfs", "--task", f"{task}:mark", *LAB, "--json", str(out)],
                          capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    (row,) = json.loads(out.read_text())["summary"]
    assert row["dist"] == "task:mytask.c:mark" and row["sweep"][0]["requests"] >= 1800


@pytest.mark.parametrize("args, message", [
    (["--address", "auto"], "--address needs --cluster NODES"),
    (["--cluster", "0"], "--cluster: expected a number of nodes >= 1, got 0"),
    (["--cluster", "2", "--dist", "nosuch"], "unknown distribution 'nosuch'"),
    (["--cluster", "2", "--task", "nofile.c:f"], "cannot read nofile.c"),
])
def test_lab_cluster_bad_arguments_are_one_line(args, message):
    done = subprocess.run([sys.executable, "-m", "pybaremetal", "lab", *args, "--quiet"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_machines_on_two_hosts_meet_on_their_node_addresses(tmp_path):
    """Two "hosts": network namespaces joined by a veth pair (each its own loopback, as Ray
    nodes in containers or on two machines have).  The hub specs a Cluster gives them join the
    group on each node's address, and cluster_primes counts exactly across the link."""
    from netns_helper import disable_ipv6, unique
    from pybaremetal.cluster import hub_specs
    from pybaremetal.cluster.node import host_identity
    names, ends = [unique("n"), unique("n")], [unique("v"), unique("v")]
    addresses = ["10.79.0.1", "10.79.0.2"]
    for name in names:
        subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "link", "add", ends[0], "netns", names[0], "type", "veth",
                        "peer", "name", ends[1], "netns", names[1]], check=True)
        places = []
        for name, end, address in zip(names, ends, addresses):
            disable_ipv6(end, name)
            subprocess.run(["ip", "-n", name, "addr", "add", f"{address}/24", "dev", end], check=True)
            subprocess.run(["ip", "-n", name, "link", "set", end, "up"], check=True)
            netns_inode = subprocess.run(["ip", "netns", "exec", name, "stat", "-L", "-c", "%i",
                                          "/proc/self/ns/net"], capture_output=True, text=True).stdout
            hostname, boot = host_identity()
            places.append({"hostname": hostname, "boot_id": boot, "netns": netns_inode.strip(), "ip": address})
        specs = hub_specs(places, "239.255.79.1", 40479)
        assert [spec[0].split(",")[1] for spec in specs] == ["ifaddr=10.79.0.1", "ifaddr=10.79.0.2"]
        one_loopback = hub_specs([dict(places[0], ip=a) for a in addresses], "239.255.79.1", 40479)
        assert all("ifaddr" not in spec[0] for spec in one_loopback)     # one host, one netns
        env = dict(os.environ, BAREMETAL_CACHE=str(tmp_path / "cache"), BAREMETAL_NODES="2")

        def node(index):
            return ["ip", "netns", "exec", names[index], "env", f"BAREMETAL_NODE={index}",
                    sys.executable, "-m", "pybaremetal", "run", "--no-pin", PRIMES,
                    "--nic", specs[index][0], "--", "300000"]
        worker = subprocess.Popen(node(1), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        try:
            master = subprocess.run(node(0), capture_output=True, text=True, timeout=120, env=env)
            out, err = worker.communicate(timeout=30)
        finally:
            worker.kill()
        assert master.returncode == 0, master.stderr + err
        assert "primes below 300000: 25997\n" in master.stdout
        assert "2 node(s)" in master.stdout and worker.returncode == 0
        counted_there = int(out.split("node 1: ")[1].split()[0])
        assert counted_there >= 1                           # the worker got jobs over the link
    finally:
        for name in names:
            subprocess.run(["ip", "netns", "del", name], check=False)

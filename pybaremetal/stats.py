"""A machine's counters as one JSON-ready dict (``baremetal run --stats-json FILE``).

    {"app": ..., "exit_code": 0,
     "machine": {"cores": 2, "memory_bytes": ..., "free_memory_mib": ...},
     "timings_s": {"setup": ..., "run": ..., "halt": ..., "total": ...},
     "cores": [{"id": 0, "cpu": 0, "tasks_run": 12, "busy_s": null}, ...],
     "faults": 0,
     "drives": [{"id": 0, "name": "data", "path": ..., "reads": ..., ...}],
     "nics": [{"iid": 0, "name": "lan", "kind": "wire", "rx_packets": ..., ...}],
     "console": {"lost_bytes": 0}}

``tasks_run`` counts the tasks (queued or SMP_SET) each core ran; ``busy_s`` is the time
worker cores spent from waking up to going idle again (null for core 0, which runs the app
all along).  Take the snapshot before the machine halts: halting closes the drives.
"""
import json

from ._native import ffi, lib


def snapshot(machine):
    """The machine's counters now (cores, faults, drives, NICs, console)."""
    from .io import lost_output
    tasks, busy = ffi.new("u64 *"), ffi.new("u64 *")
    cores = []
    for core in range(machine.num_cores):
        lib.bm_smp_core_counters(machine._c, core, tasks, busy)
        cores.append({"id": core, "cpu": machine.smp.cpu_of(core), "tasks_run": tasks[0],
                      "busy_s": busy[0] / 1e9 if core else None})
    drive_names = {number: name for name, number in machine.drive_ids.items()}
    nic_names = {number: name for name, number in machine.nic_ids.items()}
    return {
        "machine": {"cores": machine.num_cores, "memory_bytes": machine.memory_size,
                    "free_memory_mib": machine.free_memory},
        "cores": cores,
        "faults": machine.fault_count,
        "drives": [{"id": n, "name": drive_names.get(n), "path": str(d.path), **d.stats()}
                   for n, d in enumerate(machine.drives)],
        "nics": [{"iid": nic.iid, "name": nic_names.get(nic.iid), "kind": nic.kind, **nic.stats}
                 for nic in machine.nics],
        "console": {"lost_bytes": lost_output(machine)[0]},
    }


def write(path, counters, timings, app, exit_code):
    """Write the counters, the timings (seconds) and the outcome to ``path`` as JSON."""
    document = {"app": app, "exit_code": exit_code, **counters,
                "timings_s": {name: round(seconds, 6) for name, seconds in timings.items()}}
    with open(path, "w") as f:
        json.dump(document, f, indent=2)
        f.write("\n")

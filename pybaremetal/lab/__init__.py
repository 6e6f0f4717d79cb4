"""The scheduling lab: how much load can tasks take on run-to-completion cores before the tail
latency breaks, and how does that compare with other policies and with the ideal model?

``sweep(...)`` runs it (see :func:`pybaremetal.lab.sweep.sweep`) and returns the results as a
dict; ``save_json``, ``save_csv`` and ``save_plots`` write them; ``baremetal lab`` is the
command line (``pybaremetal.lab.cli``).  The parts: workload.py (distributions, the seeded
schedule, tasks), real.py (runs on a machine's cores and the pthread-pool peer, native/lab.c),
model.py (the discrete-event simulator, native/lab_sim.c, and closed forms), stats.py (one
point's figures, HdrHistogram), output.py (JSON, CSV, PNG), spread.py (``sweep_on_cluster``:
the parts of a sweep spread over a Ray cluster's nodes, ``baremetal lab --cluster``).
"""
from .output import save_csv, save_json, save_plots, summary_table
from .spread import sweep_on_cluster
from .sweep import DEFAULT_LOADS, POLICIES, sweep
from .workload import DISTRIBUTIONS

__all__ = ["sweep", "sweep_on_cluster", "save_json", "save_csv", "save_plots", "summary_table", "DEFAULT_LOADS",
           "POLICIES", "DISTRIBUTIONS"]

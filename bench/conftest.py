"""Benchmark reporting shared by every bench/test_*.py.

A benchmark measures ours and the peer a user would otherwise pick *in the same run*, then
calls the ``record`` fixture once per measure:

    record("b_output 64 B, C face", ours=ns_ours, peer=ns_write, unit="ns/call",
           peer_name="write(2) loop", target="ratio <= 1.2")

``ratio`` is ours / peer.  ``target`` is a condition on ``ratio`` or ``ours`` ("ratio >= 0.9",
"ours <= 1000"), or None for figures reported without a target.  Targets never fail a run
(unit tests never assert on time); the table at the end says which were met.  The rows are
saved to bench/results/summary.json and printed as one table (measure, ours, peer, ratio,
target, met?).
"""
import datetime
import json
import operator
import os
import platform
import re

import pytest

RESULTS = os.path.join(os.path.dirname(__file__), "results")
ROWS = []
_OPS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt}


def _met(target, ours, ratio):
    if not target:
        return None
    match = re.fullmatch(r"\s*(ratio|ours)\s*(<=|>=|<|>)\s*([0-9.eE+-]+)\s*", target)
    if not match:
        raise ValueError(f"target {target!r}: write it as 'ratio >= 0.9' or 'ours <= 1000'")
    value = ratio if match.group(1) == "ratio" else ours
    return None if value is None else bool(_OPS[match.group(2)](value, float(match.group(3))))


@pytest.fixture
def record(request):
    def record(measure, ours, peer=None, *, unit, peer_name="", target=None, note=""):
        ratio = (ours / peer) if (peer not in (None, 0) and ours is not None) else None
        row = {"measure": measure, "ours": ours, "peer": peer, "peer_name": peer_name,
               "unit": unit, "ratio": ratio, "target": target or "", "met": _met(target, ours, ratio),
               "note": note, "test": request.node.nodeid}
        ROWS.append(row)
        return row
    return record


def _fmt(value):
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def pytest_terminal_summary(terminalreporter):
    if not ROWS:
        return
    os.makedirs(RESULTS, exist_ok=True)
    summary = {"when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                           "python": platform.python_version()},
               "rows": ROWS}
    with open(os.path.join(RESULTS, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    from rich.console import Console
    from rich.table import Table
    table = Table(title="pybaremetal benchmarks (ratio = ours / peer, same run)")
    for column in ("measure", "ours", "peer", "ratio", "target", "met?"):
        table.add_column(column, justify="left" if column in ("measure", "target") else "right")
    for row in ROWS:
        peer = f"{_fmt(row['peer'])} ({row['peer_name']})" if row["peer"] is not None else "-"
        met = {True: "[green]yes[/]", False: "[red]no[/]", None: ""}[row["met"]]
        table.add_row(row["measure"], f"{_fmt(row['ours'])} {row['unit']}", peer, _fmt(row["ratio"]),
                      row["target"], met)
    Console(width=160).print(table)
    terminalreporter.write_line(f"saved to {os.path.join(RESULTS, 'summary.json')}")


NATIVE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "native")


@pytest.fixture(scope="session")
def c_peer(tmp_path_factory):
    """Compile bench/peers/NAME.c (with native/ on the include path) into a shared object and
    load it with ctypes.  The runtime's own extension is made global first, so a peer that
    calls b_output & co. reaches the one implementation of each call."""
    import ctypes
    import subprocess

    import pybaremetal._native as native
    ctypes.CDLL(native.__file__, mode=os.RTLD_NOW | os.RTLD_GLOBAL | os.RTLD_NOLOAD)
    built = {}

    def c_peer(name, flags=("-O2",)):
        if name not in built:
            source = os.path.join(os.path.dirname(__file__), "peers", name + ".c")
            target = str(tmp_path_factory.mktemp("peers") / (name + ".so"))
            subprocess.run(["gcc", "-shared", "-fPIC", "-pthread", *flags, "-I", NATIVE, source,
                            "-o", target], check=True)
            built[name] = ctypes.CDLL(target)
        return built[name]
    return c_peer

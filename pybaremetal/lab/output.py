"""Writing a lab result: JSON, CSV (one line per point), PNG plots, the summary table."""
import csv
import json
import os

from ..errors import ArgumentError

CSV_COLUMNS = ("policy", "dist", "kind", "mode", "mean_us", "workers", "load", "requests",
               "p50", "p99", "p99.9", "mean", "p99_over_mean", "slowdown", "slowdown_p99.9",
               "throughput", "late_sends", "cpu_s", "cpu_share", "overhead_us", "median_overhead_us",
               "dispatch_gap_ns", "host_model_p99", "host_overhead_us")


def save_json(result, path):
    with open(path, "w") as f:
        json.dump(result, f, indent=1)


def save_csv(result, path):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in result["summary"]:
            for kind, key in (("real", "sweep"), ("model", "model_sweep")):
                for point in row.get(key, ()):
                    writer.writerow({**point, "policy": row["policy"], "dist": row["dist"],
                                     "kind": kind, "mode": row["mode"], "mean_us": row["mean_us"],
                                     "workers": row["workers"]})


def summary_table(result):
    """A rich Table: max load at SLO, real vs model, per policy and distribution."""
    from rich.table import Table
    slo = result["slo"]
    bound = f"{slo['factor']:g}·S̄" if slo.get("metric", "latency") == "latency" else f"slowdown {slo['factor']:g}"
    table = Table(title=f"max load at SLO (p{slo['percentile']:g} <= {bound}), "
                        f"{result['workers']} workers, arrivals {result['arrivals']}")
    columns = ["policy", "dist", "S̄ µs", "real", "model", "real/model", "model on host", "real/host",
               "overhead µs", "CPU share"]
    on_nodes = "cluster" in result
    if on_nodes:
        columns.append("node")
    for column in columns:
        table.add_column(column, justify="left" if column in ("policy", "dist", "node") else "right")
    for row in result["summary"]:
        node = [f"{row['node']['hostname']} {(row['node']['node_id'] or '?')[:8]}"] if on_nodes else []
        real = row.get("max_load_at_slo")
        fraction = row.get("fraction_of_model")
        overhead = row.get("overhead_us")
        table.add_row(row["policy"], row["dist"], f"{row['mean_us']:.3g}",
                      "-" if real is None else f"{real:.3f}",
                      f"{row['model_max_load_at_slo']:.3f}" + (
                          f" ({row['model_policy']})" if row["model_policy"] != row["policy"] else ""),
                      "-" if fraction is None else f"{fraction:.1%}",
                      "-" if row.get("host_model_max_load_at_slo") is None else f"{row['host_model_max_load_at_slo']:.3f}",
                      "-" if row.get("fraction_of_host_model") is None else f"{row['fraction_of_host_model']:.1%}",
                      "-" if overhead is None else f"{overhead:.3f}",
                      "-" if row.get("min_cpu_share") is None else f"{row['min_cpu_share']:.0%}", *node)
    return table


def save_plots(result, directory):
    """latency-DIST.png (p99 / S̄ against load: real solid, model dashed, the SLO line) and
    cdf-DIST-POLICY.png (latency at each percentile, one line per load).  Returns the paths."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ArgumentError("plots need matplotlib: pip install 'pybaremetal[lab]'") from None
    os.makedirs(directory, exist_ok=True)
    paths = []
    slo = result["slo"]
    dists = list(dict.fromkeys(row["dist"] for row in result["summary"]))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for dist in dists:
        rows = [row for row in result["summary"] if row["dist"] == dist]
        fig, ax = plt.subplots(figsize=(7, 4.2), dpi=90)
        for i, row in enumerate(rows):
            color = colors[i % len(colors)]
            if row.get("sweep"):
                points = row["sweep"]
                ax.plot([p["load"] for p in points], [p["p99_over_mean"] for p in points], "o-",
                        color=color, ms=3, label=f"{row['policy']} (real)")
            points = row["model_sweep"]
            style = ":" if row["policy"] in ("ps", "preempt") else "--"
            if row["policy"] == "pthread":
                continue                        # its model is c-fcfs's, drawn already
            ax.plot([p["load"] for p in points], [p["p99_over_mean"] for p in points], style,
                    color=color, label=f"{row['model_policy']} (model)")
        ax.axhline(slo["factor"], color="black", lw=0.8)
        ax.text(0.02, slo["factor"] * 1.08, f"SLO p{slo['percentile']:g} = {slo['factor']:g}·S̄", fontsize=8)
        ax.set_yscale("log")
        ax.set_ylim(0.5, max(100.0, slo["factor"] * 10))
        ax.set_xlim(0, 1)
        ax.set_xlabel("load")
        ax.set_ylabel(f"p{slo['percentile']:g} latency / S̄")
        measured = any(row.get("sweep") for row in rows)
        ax.set_title(f"{dist}, S̄ = {rows[0]['mean_us']:.3g} µs, {result['workers']} workers, "
                     + (f"arrivals {result['arrivals']}" if measured else "model only"), fontsize=10)
        ax.legend(fontsize=7, ncol=2)
        ax.grid(True, which="both", alpha=0.3)
        paths.append(_save(plt, fig, os.path.join(directory, f"latency-{_safe(dist)}.png")))
        for row in rows:
            points = row.get("sweep") or row["model_sweep"]
            fig, ax = plt.subplots(figsize=(6, 4), dpi=80)
            cmap = plt.get_cmap("viridis")
            for j, point in enumerate(points):
                qs = [q for q, _ in point["cdf"] if q < 100]
                ax.plot([1 / (1 - q / 100) for q in qs], [v for q, v in point["cdf"] if q < 100],
                        color=cmap(j / max(1, len(points) - 1)), lw=1, label=f"{point['load']:.2f}")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xticks([2, 10, 100, 1000, 10000])
            ax.set_xticklabels(["50%", "90%", "99%", "99.9%", "99.99%"])
            ax.set_xlabel("percentile")
            ax.set_ylabel("latency µs")
            kind = "real" if row.get("sweep") else "model"
            ax.set_title(f"{row['policy']} ({kind}), {dist}: latency by percentile, per load", fontsize=9)
            ax.legend(fontsize=5, ncol=2, title="load", title_fontsize=6)
            ax.grid(True, which="both", alpha=0.3)
            paths.append(_save(plt, fig, os.path.join(directory, f"cdf-{_safe(dist)}-{row['policy']}.png")))
    return paths


def _save(plt, fig, path):
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _safe(name):
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)

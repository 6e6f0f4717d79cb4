"""One point of a sweep: latency percentiles (HdrHistogram), slowdown, throughput."""
import numpy as np

#: percentiles of the CDF kept per point (for the CDF plots and the JSON)
CDF_PERCENTILES = (1, 5, 10, 25, 50, 75, 90, 95, 99, 99.5, 99.9, 99.95, 99.99, 100)


def histogram(latency_us):
    """An HdrHistogram of latencies in ns (3 significant digits).  A million values through
    record_value take a second; here numpy computes each value's counts index with the
    histogram's own bucket layout (HdrHistogram's counts_index_for) and adds them in one go."""
    from hdrh.histogram import HdrHistogram
    ns = np.maximum(np.round(np.asarray(latency_us, dtype=np.float64) * 1000.0), 1).astype(np.int64)
    hist = HdrHistogram(1, max(int(ns.max()) * 2, 1000), 3)
    pow2ceiling = np.floor(np.log2(ns | hist.sub_bucket_mask)).astype(np.int64) + 1
    bucket = pow2ceiling - hist.unit_magnitude - (hist.sub_bucket_half_count_magnitude + 1)
    sub_bucket = ns >> (bucket + hist.unit_magnitude)
    index = ((bucket + 1) << hist.sub_bucket_half_count_magnitude) + sub_bucket - hist.sub_bucket_half_count
    counts = np.bincount(index, minlength=hist.counts_len)[:hist.counts_len]
    np.ctypeslib.as_array(hist.counts)[:] += counts.astype(np.uint64)
    nonzero = np.flatnonzero(counts)
    hist.set_internal_tacking_values(int(nonzero[0]), int(nonzero[-1]), int(counts.sum()))
    return hist


def point(load, latency_us, service_us, mean_us, *, duration_us=None, late=None, requests=None,
          cpu_s=None, keep_histogram=False):
    """The figures of one load: p50/p99/p99.9 latency (µs) and p99 / S̄, slowdown (latency
    over the request's own service time) p99 and p99.9, throughput (requests/s), late sends."""
    hist = histogram(latency_us)
    p = {q: hist.get_value_at_percentile(q) / 1000.0 for q in CDF_PERCENTILES}
    slow_p99, slow_p999 = (float(x) for x in np.percentile(np.asarray(latency_us) / np.asarray(service_us), [99, 99.9]))
    row = {"load": round(float(load), 6), "requests": int(len(latency_us)),
           "p50": p[50], "p99": p[99], "p99.9": p[99.9], "mean": float(np.mean(latency_us)),
           "p99_over_mean": p[99] / mean_us,
           "slowdown": slow_p99, "slowdown_p99.9": slow_p999,
           "throughput": (len(latency_us) / duration_us * 1e6) if duration_us else None,
           "late_sends": late, "cpu_s": cpu_s,
           "cdf": [[q, p[q]] for q in CDF_PERCENTILES]}
    if requests is not None:
        row["scheduled"] = int(requests)
    if keep_histogram:
        row["histogram"] = hist.encode().decode() if isinstance(hist.encode(), bytes) else hist.encode()
    return row


def meets(latency_us, service_us, mean_us, slo_factor, slo_percentile, slo_metric="latency"):
    """The SLO (exact, numpy): the slo_percentile of latency is at most slo_factor · S̄, or with
    slo_metric "slowdown", that of latency over each request's own service time is at most
    slo_factor (Shinjuku's form, for mixes where one latency target fits no request type)."""
    if slo_metric == "slowdown":
        values, bound = np.asarray(latency_us) / np.asarray(service_us), slo_factor
    else:
        values, bound = latency_us, slo_factor * mean_us
    return float(np.percentile(values, slo_percentile)) <= bound


def dispatch_gaps_ns(publish, start, end, core):
    """What a core spends between two tasks when the next one was already waiting: for each
    pair of requests run one after the other on a core, the second published before the
    first ended, its start minus the first's end (ns).  Taking from the queue, the stamps and
    (published by time) publishing what became due: the policy's own cost per task.  Unlike
    latency it hardly moves when other processes take CPU time from the cores: a preemption
    lands in a gap of a few hundred ns far less often than in a task of 10 µs."""
    order = np.lexsort((start, core))
    p, s, e, c = publish[order], start[order], end[order], core[order]
    back_to_back = (c[1:] == c[:-1]) & (p[1:] <= e[:-1])
    return (s[1:] - e[:-1])[back_to_back] * 1000.0

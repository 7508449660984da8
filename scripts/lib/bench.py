"""What the Python benchmark scripts share (stdlib only): a free port, a scrape of /metrics, psql,
and one definition of each statistic they print.

A script in scripts/ imports it with

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
    from bench import free_port, median  # noqa: E402
"""

import http.client
import math
import socket
import statistics
import subprocess


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on (as of now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port, timeout=30):
    """The text of `GET /metrics` on 127.0.0.1:port."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", "/metrics")
        return c.getresponse().read().decode()
    finally:
        c.close()


def metric_sum(text, name):
    """The sum of a family's samples (every label set) in a scrape; 0 when absent."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def psql(url, sql):
    """One statement through psql, stopping at the first error; its unaligned output."""
    return subprocess.run(["psql", "-v", "ON_ERROR_STOP=1", url, "-tAc", sql],
                          capture_output=True, text=True, check=True).stdout.strip()


def median(xs):
    """The middle value, or the mean of the two middle values of an even count."""
    return statistics.median(xs)


def percentile(xs, q):
    """The nearest-rank q-quantile (0 < q <= 1) of the values: the smallest value with at
    least q of them at or below it."""
    s = sorted(xs)
    return s[max(0, math.ceil(q * len(s)) - 1)]


def histogram(text, name):
    """A histogram's cumulative buckets [(le, count)] and its count, from a scrape. For a family
    of one series (without labels of its own)."""
    buckets, count = [], 0.0
    for line in text.splitlines():
        if line.startswith(name + "_bucket"):
            le = line.split('le="')[1].split('"')[0]
            buckets.append((float("inf") if le == "+Inf" else float(le),
                            float(line.rsplit(" ", 1)[1])))
        elif line.startswith(name + "_count"):
            count = float(line.rsplit(" ", 1)[1])
    return buckets, count


def quantile(q, buckets, count):
    """Prometheus' histogram_quantile: linear within the bucket the rank falls in; NaN for an
    empty histogram."""
    if count == 0:
        return float("nan")
    rank, prev_le, prev_n = q * count, 0.0, 0.0
    for le, n in buckets:
        if n >= rank:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * (rank - prev_n) / max(n - prev_n, 1e-9)
        prev_le, prev_n = le, n
    return prev_le


def status_kib(pid, field="VmRSS"):
    """A memory figure of a running process from /proc/PID/status, in KiB (VmRSS: resident now,
    VmHWM: the peak); 0 if the field is missing."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def rss_kib(pid):
    return status_kib(pid, "VmRSS")

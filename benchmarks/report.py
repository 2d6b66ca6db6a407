"""Pure bookkeeping for serve_bench: medians over runs, the tables, ratios and the speed targets.

A measurement is a dict: loadgen's Point fields plus "server" and "run". Nothing here does I/O.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict

__all__ = [
    "Check",
    "check_http_targets",
    "check_targets",
    "checks_table",
    "medians",
    "ratio_table",
    "results_table",
]

METRICS = (
    "requests_per_s",
    "rows_per_s",
    "p50_ms",
    "p99_ms",
    "client_cpu_cores",
    "server_cpu_cores",
    "machine_cpu_cores",
)


def _median(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return statistics.median(finite) if finite else float("nan")


def medians(measurements: list[dict]) -> dict[tuple[str, int, int], dict]:
    """(server, batch, concurrency) -> median of each metric over runs, errors summed."""
    groups: dict[tuple[str, int, int], list[dict]] = defaultdict(list)
    for m in measurements:
        groups[(m["server"], m["batch"], m["concurrency"])].append(m)
    out = {}
    for key, ms in groups.items():
        row = {name: _median([m[name] for m in ms]) for name in METRICS}
        row["errors"] = sum(m["errors"] for m in ms)
        # CPU busy outside the client and the server: other work on the machine skews the point
        row["other_cpu_cores"] = _median(
            [
                m["machine_cpu_cores"] - m["client_cpu_cores"] - _zero_nan(m["server_cpu_cores"])
                for m in ms
            ]
        )
        row["runs"] = len(ms)
        out[key] = row
    return out


def _zero_nan(v: float) -> float:
    return 0.0 if math.isnan(v) else v


def _fmt(v: float, digits: int = 0) -> str:
    return "-" if math.isnan(v) else f"{v:,.{digits}f}"


def results_table(med: dict, labels: dict[str, str]) -> str:
    head = (
        f"{'server':<30} {'batch':>5} {'conc':>4} {'req/s':>9} {'rows/s':>10} {'p50 ms':>8} "
        f"{'p99 ms':>8} {'errors':>6} {'client CPU':>10} {'server CPU':>10} {'other CPU':>9}"
    )
    lines = [head, "-" * len(head)]
    for (server, batch, conc), r in med.items():
        lines.append(
            f"{labels.get(server, server):<30} {batch:>5} {conc:>4} {_fmt(r['requests_per_s']):>9} "
            f"{_fmt(r['rows_per_s']):>10} {_fmt(r['p50_ms'], 3):>8} {_fmt(r['p99_ms'], 3):>8} "
            f"{r['errors']:>6} {_fmt(r['client_cpu_cores'], 2):>10} "
            f"{_fmt(r['server_cpu_cores'], 2):>10} {_fmt(r['other_cpu_cores'], 2):>9}"
        )
    return "\n".join(lines)


def _ratio(a: float, b: float) -> float:
    return a / b if b and not math.isnan(a) and not math.isnan(b) else float("nan")


def ratio_table(med: dict, labels: dict[str, str], bases: tuple[str, ...]) -> str:
    """rows/s of every server divided by each base server's rows/s at the same point."""
    points = sorted({(b, c) for (_, b, c) in med})
    servers = list(dict.fromkeys(s for (s, _, _) in med))
    cols = [f"b{b}/c{c}" for b, c in points]
    lines = []
    for base in (b for b in bases if any(s == b for s in servers)):
        lines.append(f"rows/s relative to {labels.get(base, base)}")
        lines.append(f"{'server':<30} " + " ".join(f"{c:>9}" for c in cols))
        for s in servers:
            vals = [_ratio(med[(s, b, c)]["rows_per_s"], _get(med, base, b, c)) for b, c in points]
            lines.append(f"{labels.get(s, s):<30} " + " ".join(f"{_fmt(v, 2):>9}" for v in vals))
        lines.append("")
    return "\n".join(lines)


def _get(med: dict, server: str, batch: int, conc: int, metric: str = "rows_per_s") -> float:
    row = med.get((server, batch, conc))
    return row[metric] if row else float("nan")


class Check(dict):
    """One target at one point: name, server, batch, concurrency, value, threshold, passed."""


def _check(name: str, server: str, b: int, c: int, value: float, threshold: float, higher=True):
    ok = not math.isnan(value) and (value >= threshold if higher else value <= threshold)
    return Check(
        name=name,
        server=server,
        batch=b,
        concurrency=c,
        value=value,
        threshold=threshold,
        passed=ok,
    )


def check_targets(med: dict, ours: tuple[str, str] = ("ours_off", "ours_on")) -> list[Check]:
    """The gRPC speed targets for each variant of our server present in `med` (at every point)."""
    checks = []
    off, on = ours
    for s, b, c in sorted(k for k in med if k[0] in ours):
        rows = med[(s, b, c)]["rows_per_s"]
        checks.append(
            _check("x KServe rows/s", s, b, c, _ratio(rows, _get(med, "kserve", b, c)), 1.3)
        )
        p50_ratio = _ratio(med[(s, b, c)]["p50_ms"], _get(med, "kserve", b, c, "p50_ms"))
        checks.append(_check("p50 / KServe p50", s, b, c, p50_ratio, 1.0, higher=False))
        floor = 0.8 if b == 1 else 0.7
        checks.append(
            _check("x echo rows/s", s, b, c, _ratio(rows, _get(med, "echo", b, c)), floor)
        )
        if s == on:
            need = 0.9 if c == 1 else 1.0
            checks.append(
                _check("on / off rows/s", s, b, c, _ratio(rows, _get(med, off, b, c)), need)
            )
    return checks


REST_PEERS = ("kserve_rest", "kserve_rest_bin", "mlserver_rest")


def check_http_targets(
    med: dict, ours: tuple[str, str] = ("ours_http", "ours_http_bin"), grpc: str = "ours_on"
) -> list[Check]:
    """The HTTP speed targets for our server (JSON and binary) at every point present: rows/s
    >= 1.5x the best REST peer with p50 no higher; JSON >= 0.5x the HTTP floor and binary >= 0.8x
    our own gRPC (``grpc``) at batch 64."""
    checks = []
    json_key, binary_key = ours
    for s, b, c in sorted(k for k in med if k[0] in ours):
        rows = med[(s, b, c)]["rows_per_s"]
        peers = [p for p in REST_PEERS if not math.isnan(_get(med, p, b, c))]
        if peers:
            best = max(peers, key=lambda p: _get(med, p, b, c))
            ratio = _ratio(rows, _get(med, best, b, c))
            checks.append(_check("x best REST rows/s", s, b, c, ratio, 1.5))
            p50 = _ratio(med[(s, b, c)]["p50_ms"], _get(med, best, b, c, "p50_ms"))
            checks.append(_check("p50 / best REST p50", s, b, c, p50, 1.0, higher=False))
        if b == 1:
            continue
        if s == json_key and not math.isnan(_get(med, "http_floor", b, c)):
            floor = _ratio(rows, _get(med, "http_floor", b, c))
            checks.append(_check("x HTTP floor rows/s", s, b, c, floor, 0.5))
        if s == binary_key and not math.isnan(_get(med, grpc, b, c)):
            checks.append(
                _check("x own gRPC rows/s", s, b, c, _ratio(rows, _get(med, grpc, b, c)), 0.8)
            )
    return checks


def checks_table(checks: list[Check], labels: dict[str, str]) -> str:
    lines = [f"{'target':<20} {'server':<30} {'batch':>5} {'conc':>4} {'value':>7} {'need':>7}  ok"]
    for k in checks:
        sign = "<=" if k["name"].startswith("p50") else ">="
        lines.append(
            f"{k['name']:<20} {labels.get(k['server'], k['server']):<30} {k['batch']:>5} "
            f"{k['concurrency']:>4} {_fmt(k['value'], 2):>7} {sign}{k['threshold']:>5.2f}  "
            f"{'PASS' if k['passed'] else 'FAIL'}"
        )
    passed = sum(k["passed"] for k in checks)
    lines.append(f"{passed}/{len(checks)} targets met")
    return "\n".join(lines)

"""Pass/fail of a load test run from Locust's ``<prefix>_stats.csv`` (no Locust import).

A run fails when its failure ratio or its 95th percentile response time is
over the limit, or when it made too few requests to judge at all.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Limits:
    """What a run must stay within."""

    max_failure_ratio: float = 0.01
    max_p95_ms: float = 500.0
    min_requests: int = 100


@dataclass(frozen=True)
class Verdict:
    """The aggregated figures of a run and what, if anything, broke the limits."""

    name: str
    requests: int
    failures: int
    p95_ms: float
    rps: float
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def failure_ratio(self) -> float:
        return self.failures / self.requests if self.requests else 1.0

    def line(self) -> str:
        """One line for the terminal."""
        status = "ok" if self.ok else "FAIL: " + "; ".join(self.problems)
        return (
            f"{self.name}: {self.requests} requests, {self.rps:.0f}/s, failures"
            f" {self.failures} ({self.failure_ratio:.2%}), p95 {self.p95_ms:.0f} ms -> {status}"
        )


# Records each successful request puts into the gateway, by request name (locustfiles).
RECORDS_PER_SUCCESS = {
    "http": {"single": 1, "batch": 10, "batch_mixed": 8},
    "mqtt": {"publish:1:valid": 1},
}


def successes(stats_csv: Path) -> dict[str, int]:
    """Successful requests per request name (count minus failures)."""
    with stats_csv.open(newline="") as f:
        return {
            r["Name"]: int(r["Request Count"]) - int(r["Failure Count"])
            for r in csv.DictReader(f)
            if r.get("Name") != "Aggregated"
        }


def expected_records(phase: str, stats_csv: Path) -> int:
    """How many records the phase's successful requests must have put into the outbox."""
    if not stats_csv.exists():
        return 0
    per = RECORDS_PER_SUCCESS[phase]
    return sum(n * per.get(name, 0) for name, n in successes(stats_csv).items())


def with_delivery(verdict: Verdict, expected: int, delivered: int) -> Verdict:
    """The verdict, failed when fewer records reached the sink than were acknowledged."""
    if delivered >= expected:
        return verdict
    problem = f"{delivered} records delivered < {expected} acknowledged"
    return Verdict(
        verdict.name,
        verdict.requests,
        verdict.failures,
        verdict.p95_ms,
        verdict.rps,
        (*verdict.problems, problem),
    )


def judge(stats_csv: Path, limits: Limits, name: str = "") -> Verdict:
    """Read the ``Aggregated`` row of a Locust stats CSV and hold it against ``limits``."""
    if not stats_csv.exists():
        return Verdict(name or stats_csv.stem, 0, 0, 0.0, 0.0, (f"no stats file {stats_csv}",))
    with stats_csv.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("Name") == "Aggregated"]
    if not rows:
        return Verdict(name or stats_csv.stem, 0, 0, 0.0, 0.0, ("no Aggregated row",))
    row = rows[-1]
    requests = int(row["Request Count"])
    failures = int(row["Failure Count"])
    p95 = float(row["95%"]) if row["95%"] not in ("", "N/A") else 0.0
    rps = float(row["Requests/s"] or 0)
    problems = []
    if requests < limits.min_requests:
        problems.append(f"only {requests} requests (< {limits.min_requests})")
    ratio = failures / requests if requests else 1.0
    if ratio > limits.max_failure_ratio:
        problems.append(f"failure ratio {ratio:.2%} > {limits.max_failure_ratio:.2%}")
    if p95 > limits.max_p95_ms:
        problems.append(f"p95 {p95:.0f} ms > {limits.max_p95_ms:.0f} ms")
    return Verdict(name or stats_csv.stem, requests, failures, p95, rps, tuple(problems))

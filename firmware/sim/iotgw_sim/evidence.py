"""Compare what each simulated device says it sent with what arrived at the gateway's sink.

Per device, from its JSONL log: every seq it queued (with the exact body), every
seq it published, every seq the broker acknowledged (PUBACK), the readings it
dropped from a full ring or lost in a reboot, and what was still buffered when
it stopped. From the file sink's outbox: every envelope of that device.

The comparison holds the gateway to its contract: every acknowledged seq
arrived exactly once, nothing arrived that the device did not publish, the
arrived metrics are the ones the device sent, and every queued seq is
accounted for (arrived, dropped, lost on reboot, or still buffered).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class DeviceEvidence:
    """What one device's log says."""

    device_id: str
    queued: dict[int, dict[str, Any]] = field(default_factory=dict)  # seq -> body
    classes: dict[int, str] = field(default_factory=dict)
    published: Counter[int] = field(default_factory=Counter)  # seq -> publish attempts
    acked: set[int] = field(default_factory=set)
    dropped: set[int] = field(default_factory=set)
    lost_on_reboot: set[int] = field(default_factory=set)
    buffered_at_stop: set[int] = field(default_factory=set)
    boots: int = 0
    connects: int = 0
    connect_failures: int = 0
    links_lost: int = 0
    brownouts: int = 0
    faults: list[str] = field(default_factory=list)
    stopped: bool = False


def read_log(path: Path) -> DeviceEvidence:
    """Parse one device's log.jsonl."""
    evidence = DeviceEvidence(device_id=path.parent.name)
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        ev = row["ev"]
        if ev == "queued":
            evidence.queued[row["seq"]] = row["body"]
            evidence.classes[row["seq"]] = row["cls"]
        elif ev == "publish":
            evidence.published[row["seq"]] += 1
        elif ev == "puback":
            evidence.acked.add(row["seq"])
        elif ev == "drop_oldest":
            evidence.dropped.add(row["seq"])
        elif ev == "lost_on_reboot":
            evidence.lost_on_reboot.update(row["seqs"])
        elif ev == "stop":
            evidence.buffered_at_stop.update(row["buffered"])
            evidence.stopped = True
        elif ev == "boot":
            evidence.boots += 1
        elif ev == "connected":
            evidence.connects += 1
        elif ev == "connect_failed":
            evidence.connect_failures += 1
        elif ev in ("link_lost", "wifi_down"):
            evidence.links_lost += 1
        elif ev == "brownout":
            evidence.brownouts += 1
        elif ev == "fault":
            evidence.faults.append(row["kind"])
    return evidence


def read_logs(state_dir: Path) -> dict[str, DeviceEvidence]:
    """Every device log under ``state_dir`` (``<state_dir>/<device>/log.jsonl``)."""
    return {p.parent.name: read_log(p) for p in sorted(state_dir.glob("*/log.jsonl"))}


def outbox_records(outbox: Path) -> list[dict[str, Any]]:
    """Every envelope in the file sink's outbox (``outbox-*.jsonl``), in file order."""
    out: list[dict[str, Any]] = []
    for path in sorted(outbox.glob("outbox-*.jsonl")):
        for line in path.read_bytes().splitlines():
            if line.strip():
                out.append(json.loads(line))
    return out


@dataclass
class DeviceReport:
    """The comparison for one device; ``ok`` when the gateway kept its contract."""

    device_id: str
    queued: int
    published: int
    acked: int
    arrived: int
    republished: int  # seqs published more than once (reconnects, PUBACK lost)
    acked_missing: list[int]  # PUBACKed but not in the outbox: a loss
    duplicates: list[int]  # in the outbox more than once
    unexpected: list[int]  # in the outbox but never published by the device
    mismatched: list[int]  # arrived with other metrics than the device sent
    unaccounted: list[int]  # queued, not arrived, not dropped/lost/buffered
    arrived_unacked: int  # published, no PUBACK seen, yet arrived (at-least-once window)
    dropped: int
    lost_on_reboot: int
    buffered_at_stop: int
    boots: int
    connects: int
    connect_failures: int
    links_lost: int

    @property
    def ok(self) -> bool:
        return not (
            self.acked_missing
            or self.duplicates
            or self.unexpected
            or self.mismatched
            or self.unaccounted
        )


def compare(evidence: DeviceEvidence, records: list[dict[str, Any]]) -> DeviceReport:
    """Hold one device's log against the envelopes that arrived for it."""
    mine = [r for r in records if r.get("device_id") == evidence.device_id]
    counts = Counter(r.get("seq") for r in mine)
    arrived = {s for s in counts if isinstance(s, int)}
    published = set(evidence.published)
    mismatched = []
    for record in mine:
        sent = evidence.queued.get(record.get("seq"))  # type: ignore[arg-type]
        if sent is not None and (
            record.get("metrics") != sent["metrics"]
            or record.get("class") != evidence.classes.get(record["seq"])
        ):
            mismatched.append(record["seq"])
    accounted = arrived | evidence.dropped | evidence.lost_on_reboot | evidence.buffered_at_stop
    return DeviceReport(
        device_id=evidence.device_id,
        queued=len(evidence.queued),
        published=len(published),
        acked=len(evidence.acked),
        arrived=len(arrived),
        republished=sum(1 for n in evidence.published.values() if n > 1),
        acked_missing=sorted(evidence.acked - arrived),
        duplicates=sorted(s for s, n in counts.items() if isinstance(s, int) and n > 1),
        unexpected=sorted(arrived - published),
        mismatched=sorted(set(mismatched)),
        unaccounted=sorted(set(evidence.queued) - accounted) if evidence.stopped else [],
        arrived_unacked=len((arrived & published) - evidence.acked),
        dropped=len(evidence.dropped),
        lost_on_reboot=len(evidence.lost_on_reboot),
        buffered_at_stop=len(evidence.buffered_at_stop),
        boots=evidence.boots,
        connects=evidence.connects,
        connect_failures=evidence.connect_failures,
        links_lost=evidence.links_lost,
    )


def compare_all(state_dir: Path, outbox: Path) -> list[DeviceReport]:
    """A report per device log under ``state_dir`` against the outbox."""
    records = outbox_records(outbox)
    return [compare(ev, records) for ev in read_logs(state_dir).values()]


def format_reports(reports: list[DeviceReport]) -> str:
    """A table for the terminal."""
    head = (
        f"{'DEVICE':<14}{'QUEUED':>7}{'ACKED':>7}{'ARRIVED':>8}{'REPUB':>6}{'DROP':>5}"
        f"{'LOST':>5}{'BOOTS':>6}{'CONN':>5}{'FAILS':>6}  VERDICT"
    )
    lines = [head]
    for r in reports:
        problems = [
            f"{name}={values[:5]}"
            for name, values in (
                ("acked_missing", r.acked_missing),
                ("duplicates", r.duplicates),
                ("unexpected", r.unexpected),
                ("mismatched", r.mismatched),
                ("unaccounted", r.unaccounted),
            )
            if values
        ]
        lines.append(
            f"{r.device_id:<14}{r.queued:>7}{r.acked:>7}{r.arrived:>8}{r.republished:>6}"
            f"{r.dropped:>5}{r.lost_on_reboot:>5}{r.boots:>6}{r.connects:>5}"
            f"{r.connect_failures:>6}  {'ok' if r.ok else 'FAIL ' + ' '.join(problems)}"
        )
    return "\n".join(lines)

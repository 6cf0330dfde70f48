"""The quarantine: messages the gateway would not take, kept for an operator to look at.

An MQTT message whose topic disagrees with the device registry, or whose
payload is not JSON, too large or invalid, is not a record: it goes here with
the reason, and the broker is acknowledged so that good traffic keeps flowing.

Entries live in their own SQLite file (default ``var/quarantine/quarantine.db``,
WAL mode) so that every ingest service and the CLI (``iotgw quarantine list``)
reach them without touching the spool. Only the first bytes of a payload are
kept, and the table is bounded: the oldest entries are pruned beyond
``max_entries``. ``synchronous=NORMAL``: a power cut may lose the last few
entries, never a record (records are in the spool, not here).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

HEAD_BYTES = 256

_SCHEMA = """
CREATE TABLE IF NOT EXISTS quarantine (
    qid        INTEGER PRIMARY KEY,
    at         REAL    NOT NULL,   -- unix time of receipt
    source     TEXT    NOT NULL,   -- mqtt, http
    topic      TEXT    NOT NULL,
    reason     TEXT    NOT NULL,   -- stable code, e.g. invalid_json, unknown_device
    message    TEXT    NOT NULL,   -- what was wrong, for a human
    client_id  TEXT    NOT NULL,   -- the MQTT client that received it (or sent it, when known)
    size       INTEGER NOT NULL,   -- full payload size in bytes
    head       BLOB    NOT NULL    -- first bytes of the payload
);
CREATE INDEX IF NOT EXISTS ix_quarantine_reason ON quarantine(reason, qid);
"""


@dataclass(frozen=True, slots=True)
class QuarantineEntry:
    """One quarantined message."""

    topic: str
    reason: str
    message: str
    payload_head: bytes
    size: int
    client_id: str = ""
    source: str = "mqtt"
    at: float = 0.0
    qid: int = 0

    @classmethod
    def of(
        cls,
        topic: str,
        reason: str,
        message: str,
        payload: bytes,
        *,
        client_id: str = "",
        source: str = "mqtt",
    ) -> QuarantineEntry:
        """An entry for ``payload`` (keeps its first HEAD_BYTES bytes), stamped now."""
        return cls(
            topic=topic,
            reason=reason,
            message=message,
            payload_head=bytes(payload[:HEAD_BYTES]),
            size=len(payload),
            client_id=client_id,
            source=source,
            at=time.time(),
        )


class Quarantine:
    """The quarantine table in its own SQLite file; safe to share between threads."""

    def __init__(self, path: str | Path, max_entries: int = 100_000) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=10)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._added = 0

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    def add_many(self, entries: Sequence[QuarantineEntry]) -> None:
        """Store entries in one transaction; prune the oldest beyond ``max_entries``."""
        if not entries:
            return
        with self._lock, self._db:
            self._db.executemany(
                "INSERT INTO quarantine(at, source, topic, reason, message, client_id, size, head)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        e.at or time.time(),
                        e.source,
                        e.topic,
                        e.reason,
                        e.message,
                        e.client_id,
                        e.size,
                        e.payload_head,
                    )
                    for e in entries
                ],
            )
            self._added += len(entries)
            if self._added >= 1000:
                self._added = 0
                self._db.execute(
                    "DELETE FROM quarantine WHERE qid <= (SELECT MAX(qid) FROM quarantine) - ?",
                    (self.max_entries,),
                )

    def list(self, limit: int = 50, reason: str | None = None) -> list[QuarantineEntry]:
        """The newest entries first, optionally of one reason."""
        sql = (
            "SELECT qid, at, source, topic, reason, message, client_id, size, head FROM quarantine"
        )
        params: tuple[object, ...] = ()
        if reason:
            sql += " WHERE reason = ?"
            params = (reason,)
        sql += " ORDER BY qid DESC LIMIT ?"
        with self._lock:
            rows = self._db.execute(sql, (*params, limit)).fetchall()
        return [
            QuarantineEntry(
                qid=row[0],
                at=row[1],
                source=row[2],
                topic=row[3],
                reason=row[4],
                message=row[5],
                client_id=row[6],
                size=row[7],
                payload_head=bytes(row[8]),
            )
            for row in rows
        ]

    def counts(self) -> dict[str, int]:
        """Entries held, by reason."""
        with self._lock:
            rows = self._db.execute(
                "SELECT reason, COUNT(*) FROM quarantine GROUP BY reason"
            ).fetchall()
        return {str(r): int(n) for r, n in rows}

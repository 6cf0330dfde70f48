"""HTTP ingest under load: single and batch readings, valid and invalid, HMAC-signed per device.

Each user is one onboarded device; its requests carry ``X-IoTGW-Timestamp``
and ``X-IoTGW-Signature`` (HMAC-SHA256 of ``timestamp + "." + body`` with the
device's HTTP secret, docs/devices.md). A response counts as a success only
when it is the one the contract prescribes: 202 for valid readings, 400 with
the right error code for invalid ones, 401 for a wrong signature.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

from locust import HttpUser, between, task

from loadtest.common import SeqCounter, invalid_reading, take_device, valid_reading

BATCH = 10


class DeviceHttpUser(HttpUser):
    """One device posting readings to /v1/ingest/{device_id}."""

    wait_time = between(0.05, 0.15)

    def on_start(self) -> None:
        self.device = take_device()
        self.seqs = SeqCounter()
        self.path = f"/v1/ingest/{self.device['device_id']}"

    def _post(self, path: str, payload: Any, name: str, *, secret: str | None = None) -> Any:
        body = json.dumps(payload, separators=(",", ":")).encode()
        ts = str(int(time.time()))
        key = (secret or self.device["http_secret"]).encode()
        signature = hmac.new(key, ts.encode() + b"." + body, hashlib.sha256).hexdigest()
        headers = {
            "Content-Type": "application/json",
            "X-IoTGW-Timestamp": ts,
            "X-IoTGW-Signature": signature,
        }
        return self.client.post(path, data=body, headers=headers, name=name, catch_response=True)

    @task(6)
    def single(self) -> None:
        with self._post(self.path, valid_reading(self.seqs.next()), "single") as r:
            if r.status_code != 202:
                r.failure(f"expected 202, got {r.status_code}: {r.text[:200]}")

    @task(2)
    def batch(self) -> None:
        items = [valid_reading(self.seqs.next()) for _ in range(BATCH)]
        with self._post(f"{self.path}/batch", items, "batch") as r:
            if r.status_code != 202:
                r.failure(f"expected 202, got {r.status_code}: {r.text[:200]}")
            elif r.json().get("accepted") != BATCH:
                r.failure(f"expected {BATCH} accepted: {r.text[:200]}")

    @task(1)
    def batch_mixed(self) -> None:
        bad, _ = invalid_reading()
        items = [valid_reading(self.seqs.next()) for _ in range(BATCH - 2)] + [bad, bad]
        with self._post(f"{self.path}/batch", items, "batch_mixed") as r:
            if r.status_code != 202:
                r.failure(f"expected 202, got {r.status_code}: {r.text[:200]}")
            elif r.json().get("rejected") != 2:
                r.failure(f"expected 2 rejected: {r.text[:200]}")

    @task(2)
    def invalid(self) -> None:
        reading, code = invalid_reading()
        with self._post(self.path, reading, "invalid") as r:
            if r.status_code != 400 or r.json().get("code") != code:
                r.failure(f"expected 400 {code}, got {r.status_code}: {r.text[:200]}")
            else:
                r.success()

    @task(1)
    def bad_signature(self) -> None:
        reading = valid_reading(self.seqs.next())
        with self._post(self.path, reading, "bad_signature", secret="not-the-secret") as r:
            if r.status_code != 401:
                r.failure(f"expected 401, got {r.status_code}: {r.text[:200]}")
            else:
                r.success()

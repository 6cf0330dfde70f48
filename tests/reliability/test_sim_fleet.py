"""The device simulator against the real stack: 3 devices, a broker restart, a 20 s Wi-Fi drop.

mosquitto with the edge config (TLS, registry-generated password and ACL
files), the MQTT ingest, the forwarder and the file sink run as processes;
the fleet runs as ``python -m iotgw_sim fleet`` and onboards its devices with
the registry CLI. Afterwards every seq a device saw PUBACKed is in the outbox
exactly once, and the simulator's own evidence (its logs held against the
outbox) agrees.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from iotgw_sim.evidence import compare_all, outbox_records, read_logs

from tests.integration.test_mqtt_ingest import start_ingest
from tests.support.mosquitto import MosquittoBroker
from tests.support.procs import Managed
from tests.support.stack import wait_until

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

PROFILE = """
[profiles.reltest]
tenant = "acme"
site = "aal"
seed = 3

[profiles.reltest.defaults]
period_s = 0.25
health_every = 10
keepalive_s = 5
ring_slots = 256
seq_lease = 16
puback_timeout_s = 3
backoff_cap_s = 2
boot_s = 1
battery = { kind = "bank" }
wifi = { rssi_mean_dbm = -55, rssi_sigma_dbm = 1 }

[[profiles.reltest.devices]]
id = "sim-a"

[[profiles.reltest.devices]]
id = "sim-b"
events = [{ at_s = 5, kind = "wifi_drop", duration_s = 20 }]

[[profiles.reltest.devices]]
id = "sim-c"
mqtt_version = 5
# A short drop of its own fills its ring; the brown-out inside it loses what was buffered.
events = [{ at_s = 9, kind = "wifi_drop", duration_s = 6 }, { at_s = 12, kind = "brownout" }]
"""

DURATION_S = 34
DRAIN_S = 20


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    running = MosquittoBroker(tmp_path / "broker", cert_listener=False).start()
    yield running
    running.stop()


def _events(state_dir: Path, device: str) -> list[dict[str, object]]:
    path = state_dir / device / "log.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _acks(state_dir: Path, device: str) -> int:
    return sum(1 for e in _events(state_dir, device) if e["ev"] == "puback")


def test_fleet_survives_broker_restart_and_wifi_drop(
    broker: MosquittoBroker, gateway_env: dict[str, str], tmp_path: Path
) -> None:
    env = {**gateway_env, **broker.env(), "IOTGW_MQTT_RECONNECT_MAX_S": "1"}
    profiles = tmp_path / "profiles.toml"
    profiles.write_text(PROFILE)
    state_dir = tmp_path / "sim"
    outbox = Path(env["IOTGW_OUTBOX_DIR"])
    ingest = start_ingest(env, tmp_path)
    forwarder = Managed("forwarder", [sys.executable, "-m", "iotgw_forwarder"], tmp_path, env)
    forwarder.start()
    fleet = Managed(
        "fleet",
        [
            *(sys.executable, "-m", "iotgw_sim", "fleet", "--profile", "reltest"),
            *("--profiles", str(profiles), "--state-dir", str(state_dir), "--dev-device", ""),
            *("--host", "127.0.0.1", "--port", str(broker.device_port)),
            *("--ca-file", broker.ca_file),
            *("--duration", str(DURATION_S), "--drain", str(DRAIN_S)),
        ],
        tmp_path,
        broker.env(),  # the registry CLI's paths: the fleet onboards its devices itself
    ).start()
    try:
        # Restart the broker while sim-b is in its Wi-Fi drop (5..25 s) and the others publish.
        wait_until(lambda: _acks(state_dir, "sim-a") >= 30, 30, "sim-a publishing")
        broker.restart()
        assert fleet.proc is not None
        fleet.proc.wait(DURATION_S + DRAIN_S + 30)
        assert fleet.proc.returncode == 0, fleet.log_text()

        logs = read_logs(state_dir)
        assert sorted(logs) == ["sim-a", "sim-b", "sim-c"]
        # The faults happened as scheduled, and every device lived through them.
        for name, ev in logs.items():
            assert ev.stopped and ev.buffered_at_stop == set(), name
            assert ev.acked, name
            assert ev.connects >= 2, (name, ev.connects)  # reconnected after the restart
        assert logs["sim-b"].faults == ["wifi_drop"]
        assert logs["sim-c"].faults == ["wifi_drop", "brownout"] and logs["sim-c"].boots == 2
        lost = logs["sim-c"].lost_on_reboot
        assert len(lost) >= 5  # about 3 s of readings were in RAM when it reset
        assert lost.isdisjoint(logs["sim-c"].acked)
        wifi = [e for e in _events(state_dir, "sim-b") if e["ev"] in ("wifi_down", "connected")]
        assert any(e["ev"] == "wifi_down" for e in wifi)
        down_at = next(float(str(e["s"])) for e in wifi if e["ev"] == "wifi_down")
        back_at = next(
            float(str(e["s"]))
            for e in wifi
            if e["ev"] == "connected" and float(str(e["s"])) > down_at
        )
        assert back_at - down_at >= 19.5  # no connection inside the 20 s window
        # sim-b buffered its readings through the drop and delivered them afterwards.
        assert logs["sim-b"].dropped == set()
        # sim-c's seq went on after the reboot, above everything before it.
        boots = [e for e in _events(state_dir, "sim-c") if e["ev"] == "boot"]
        before = [int(str(e["seq"])) for e in _events(state_dir, "sim-c") if e["ev"] == "queued"]
        resumed = int(str(boots[1]["seq_resume"]))
        assert resumed > max(s for s in before if s < resumed)

        # Every PUBACKed seq arrives; the simulator's comparison agrees (no loss, no duplicate,
        # nothing unexpected, the same metrics, every queued seq accounted for).
        acked = {(name, seq) for name, ev in logs.items() for seq in ev.acked}

        def delivered() -> set[tuple[str, int]]:
            return {(r["device_id"], r["seq"]) for r in outbox_records(outbox)}

        wait_until(lambda: acked <= delivered(), 60, "every acknowledged seq in the outbox")
        wait_until(lambda: all(r.ok for r in compare_all(state_dir, outbox)), 30, "evidence ok")
        counts = Counter((r["device_id"], r["seq"]) for r in outbox_records(outbox))
        assert all(counts[key] == 1 for key in acked)
        assert max(counts.values()) == 1
        reports = {r.device_id: r for r in compare_all(state_dir, outbox)}
        for name, report in reports.items():
            assert report.ok, report
            assert report.acked_missing == [] and report.duplicates == []
            assert report.acked == len(logs[name].acked) > 0
        # What the reboot lost never arrived: a gap the device's log explains.
        assert reports["sim-c"].lost_on_reboot == len(lost)
        assert not lost & {seq for dev, seq in counts if dev == "sim-c"}
        # Telemetry and health, with the contract's topic classes.
        classes = Counter(r["class"] for r in outbox_records(outbox))
        assert classes["telemetry"] > 0 and classes["health"] > 0
    finally:
        fleet.stop()
        ingest.stop()
        forwarder.stop()

"""MQTT ingest against a real mosquitto (edge config) and redis-server."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as paho
import pytest
from iotgw_cli import broker as broker_files
from iotgw_core.quarantine import Quarantine

from tests.support.mosquitto import DevicePublisher, MosquittoBroker, mqtt_ingest_service
from tests.support.procs import Managed, free_port
from tests.support.stack import wait_until

pytestmark = [pytest.mark.integration]


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    running = MosquittoBroker(tmp_path / "broker").start()
    yield running
    running.stop()


@pytest.fixture
def mqtt_env(gateway_env: dict[str, str], broker: MosquittoBroker) -> dict[str, str]:
    # The shared subscription, as replicas use it (the reliability tests use the plain one).
    return {
        **gateway_env,
        **broker.env(),
        "IOTGW_MQTT_RECONNECT_MAX_S": "1",
        "IOTGW_MQTT_SHARE_GROUP": "iotgw-ingest",
    }


def spool_bodies(env: dict[str, str]) -> list[dict[str, Any]]:
    """Every envelope in the spool, in commit order."""
    path = Path(env["IOTGW_SPOOL_PATH"])
    if not path.exists():
        return []
    with sqlite3.connect(path, timeout=30) as db:
        rows = db.execute("SELECT body FROM records ORDER BY rid").fetchall()
    return [json.loads(r[0]) for r in rows]


def start_ingest(env: dict[str, str], tmp_path: Path, name: str = "ingest-mqtt") -> Managed:
    ingest = mqtt_ingest_service(env, tmp_path, name).start()
    try:
        wait_until(lambda: "subscribing" in ingest.log_text(), 20, "the ingest's subscription")
    except AssertionError:
        ingest.stop()  # not left running after the test
        raise
    return ingest


def test_anonymous_connect_refused(broker: MosquittoBroker) -> None:
    for port, tls in ((broker.local_port, False), (broker.device_port, True)):
        client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        if tls:
            client.tls_set_context(broker.tls_context())
        result: list[Any] = []
        client.on_connect = lambda c, u, f, rc, p, out=result: out.append(rc)
        client.connect("127.0.0.1", port)
        client.loop_start()
        wait_until(lambda out=result: bool(out), 10, "a CONNACK")
        client.loop_stop()
        assert result[0].is_failure, f"anonymous connect on port {port} was accepted"


def test_wrong_password_refused(broker: MosquittoBroker) -> None:
    creds = broker.add_device("d-wrong")
    pub = DevicePublisher(broker, {**creds, "password": "not-it"}).start(timeout_s=3)
    try:
        assert not pub.connected.is_set()
        assert pub.connect_rc is not None and pub.connect_rc.is_failure
    finally:
        pub.stop()


def test_device_readings_reach_spool_with_registry_tenant_and_site(
    broker: MosquittoBroker, mqtt_env: dict[str, str], tmp_path: Path
) -> None:
    creds = broker.add_device("d-one", "acme", "aal")
    ingest = start_ingest(mqtt_env, tmp_path)
    pub = DevicePublisher(broker, creds).start()
    try:
        for seq in range(20):
            pub.publish(seq)
        assert pub.wait_acked(20)
        wait_until(lambda: len(spool_bodies(mqtt_env)) == 20, 20, "20 records in the spool")
        bodies = spool_bodies(mqtt_env)
        assert [b["seq"] for b in bodies] == list(range(20))
        assert {(b["tenant"], b["site"], b["device_id"], b["source"]) for b in bodies} == {
            ("acme", "aal", "d-one", "mqtt")
        }
    finally:
        pub.stop()
        ingest.stop()


def test_client_certificate_identity_is_its_common_name(
    broker: MosquittoBroker, mqtt_env: dict[str, str], tmp_path: Path
) -> None:
    creds = broker.add_device("d-cert", cert=True)
    ingest = start_ingest(mqtt_env, tmp_path)
    own = DevicePublisher(broker, creds, port=broker.cert_port, use_cert=True).start()
    try:
        assert own.connected.is_set()
        own.publish(1)
        # The CN is the ACL identity: another device's topic is refused by the broker.
        own.publish(2, topic="v1/acme/aal/d-other/telemetry")
        assert own.wait_acked(1)
        wait_until(lambda: len(spool_bodies(mqtt_env)) >= 1, 20, "the record")
        own.wait_acked(2, timeout_s=2)
        assert [b["device_id"] for b in spool_bodies(mqtt_env)] == ["d-cert"]
    finally:
        own.stop()
        ingest.stop()


def test_broker_acl_refuses_another_devices_topic(
    broker: MosquittoBroker, mqtt_env: dict[str, str], tmp_path: Path
) -> None:
    a = broker.add_device("d-a")
    broker.add_device("d-b")
    ingest = start_ingest(mqtt_env, tmp_path)
    pub = DevicePublisher(broker, a).start()
    try:
        pub.publish(1, topic="v1/acme/aal/d-b/telemetry")
        pub.publish(2, topic="v1/acme/aal/d-a/cmd")  # not a class it may publish
        pub.publish(3)
        wait_until(lambda: len(pub.acked) + len(pub.failed) == 3, 10, "three PUBACKs")
        # MQTT v5: the broker answers a denied publish with a failure reason code.
        assert sorted(seq for seq, _ in pub.failed) == [1, 2]
        wait_until(lambda: len(spool_bodies(mqtt_env)) >= 1, 20, "the good record")
        assert [b["device_id"] for b in spool_bodies(mqtt_env)] == ["d-a"]
        q = Quarantine(broker.paths.quarantine)
        assert q.list() == []  # never reached the gateway
        q.close()
    finally:
        pub.stop()
        ingest.stop()


def _metric(port: int, name: str, **labels: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {name}{{{want}}}")


def test_gateway_quarantines_what_the_broker_let_through(
    broker: MosquittoBroker, mqtt_env: dict[str, str], tmp_path: Path
) -> None:
    """With the broker's ACL bypassed, the gateway's own checks quarantine each bad message."""
    good = broker.add_device("d-good", "acme", "aal")
    # An intruder the broker lets write anywhere under v1/ (as if its ACL were wrong).
    password = broker_files.add_service_user(broker.paths, "iotgw-intruder")
    broker_files.sync_broker_files(broker.paths)
    with broker.paths.acl_file.open("a") as acl:
        acl.write("\nuser iotgw-intruder\ntopic write v1/#\n")
    assert broker_files.reload_broker(broker.paths)
    metrics_port = free_port()
    env = {
        **mqtt_env,
        "IOTGW_MQTT_MAX_PAYLOAD_BYTES": "1024",
        "IOTGW_MQTT_METRICS_PORT": str(metrics_port),
    }
    ingest = start_ingest(env, tmp_path)
    intruder = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    intruder.username_pw_set("iotgw-intruder", password)
    intruder.connect("127.0.0.1", broker.local_port)
    intruder.loop_start()
    ok = b'{"metrics": {"t": 1}}'
    cases = {
        "unknown_device": ("v1/acme/aal/d-nobody/telemetry", ok),
        "tenant_mismatch": ("v1/other/aal/d-good/telemetry", ok),
        "site_mismatch": ("v1/acme/cph/d-good/telemetry", ok),
        "invalid_topic": ("v1/acme/aal/d-good/bogus", ok),
        "invalid_json": ("v1/acme/aal/d-good/telemetry", b"{not json"),
        "payload_too_large": ("v1/acme/aal/d-good/telemetry", b'{"metrics":{}}' + b" " * 2000),
        "too_many_metrics": (
            "v1/acme/aal/d-good/telemetry",
            json.dumps({"metrics": {f"m{i}": i for i in range(40)}}).encode(),
        ),
    }
    pub = DevicePublisher(broker, good).start()
    try:
        for topic, payload in cases.values():
            intruder.publish(topic, payload, qos=1).wait_for_publish(10)
        pub.publish(99)  # good traffic flows past the bad
        wait_until(lambda: len(spool_bodies(env)) == 1, 20, "the good record")
        assert spool_bodies(env)[0]["seq"] == 99
        q = Quarantine(broker.paths.quarantine)
        wait_until(lambda: len(q.list()) == len(cases), 10, "every quarantine entry")
        entries = {e.reason: e for e in q.list()}
        q.close()
        assert set(entries) == set(cases)
        for reason, (topic, payload) in cases.items():
            entry = entries[reason]
            assert entry.topic == topic
            assert entry.payload_head == payload[:256]
            assert entry.size == len(payload)
            assert entry.client_id and entry.at > 0
            assert _metric(metrics_port, "gateway_quarantined_total", reason=reason) == 1
        # The CLI lists them.
        import contextlib
        import io
        import os

        from iotgw_cli.__main__ import main as cli

        out = io.StringIO()
        saved = os.environ.get("IOTGW_QUARANTINE_PATH")
        os.environ["IOTGW_QUARANTINE_PATH"] = str(broker.paths.quarantine)
        try:
            with contextlib.redirect_stdout(out):
                assert cli(["quarantine", "list", "--json"]) == 0
        finally:
            if saved is None:
                os.environ.pop("IOTGW_QUARANTINE_PATH")
            else:
                os.environ["IOTGW_QUARANTINE_PATH"] = saved
        assert {r["reason"] for r in json.loads(out.getvalue())} == set(cases)
    finally:
        pub.stop()
        intruder.loop_stop()
        ingest.stop()


def test_user_properties_seq_and_traceparent_and_one_record_per_seq(
    broker: MosquittoBroker, mqtt_env: dict[str, str], tmp_path: Path
) -> None:
    creds = broker.add_device("d-props")
    ingest = start_ingest(mqtt_env, tmp_path)
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    body = b'{"metrics": {"t": 21.5}}'
    pub = DevicePublisher(broker, creds).start()
    try:
        pub.publish(7, payload=body, props={"seq": "7", "traceparent": traceparent})
        assert pub.wait_acked(1)
        wait_until(lambda: len(spool_bodies(mqtt_env)) == 1, 20, "the record")
    finally:
        pub.stop()
    # The device reconnects (new connection, as after a network loss) and re-publishes seq 7.
    again = DevicePublisher(broker, creds, client_id="d-props-again").start()
    try:
        again.publish(7, payload=body, props={"seq": "7", "traceparent": traceparent})
        again.publish(8, props={"seq": "999"})  # the body's seq wins over the property
        assert again.wait_acked(2)
        wait_until(lambda: len(spool_bodies(mqtt_env)) == 2, 20, "the second record")
        first, second = spool_bodies(mqtt_env)
        assert first["seq"] == 7 and first["trace"] == {"traceparent": traceparent}
        assert second["seq"] == 8
    finally:
        again.stop()
        ingest.stop()


def test_backpressure_pauses_above_high_water_and_resumes_below_low(
    broker: MosquittoBroker, mqtt_env: dict[str, str], tmp_path: Path
) -> None:
    env = {
        **mqtt_env,
        "IOTGW_SPOOL_MAX_RECORDS": "40",
        "IOTGW_SPOOL_HIGH_WATER": "0.5",  # 20 records
        "IOTGW_SPOOL_LOW_WATER": "0.25",  # 10 records
        "IOTGW_MQTT_MAX_BATCH": "5",
        "IOTGW_MQTT_MAX_CONCURRENT_BATCHES": "1",
    }
    creds = broker.add_device("d-bp")
    ingest = start_ingest(env, tmp_path)
    pub = DevicePublisher(broker, creds).start()
    forwarder = Managed(
        "forwarder", [__import__("sys").executable, "-m", "iotgw_forwarder"], tmp_path, env
    )
    try:
        for seq in range(60):
            pub.publish(seq)
        assert pub.wait_acked(60)  # the broker took them all: it queues for the session
        wait_until(lambda: "not taking MQTT messages" in ingest.log_text(), 20, "the pause")
        held = len(spool_bodies(env))
        assert 20 <= held < 60, held
        # Without a forwarder nothing leaves the spool: the ingest stays paused.
        wait_until(lambda: len(spool_bodies(env)) == held, 2, "no growth")
        assert len(spool_bodies(env)) == held
        forwarder.start()  # delivers; the budget loop prunes Acked records; ingest resumes
        wait_until(lambda: "taking MQTT messages again" in ingest.log_text(), 30, "the resume")
        outbox = Path(env["IOTGW_OUTBOX_DIR"])
        from tests.support.stack import outbox_records

        wait_until(lambda: len(outbox_records(outbox)) >= 60, 60, "all 60 in the outbox")
        assert sorted(r["seq"] for r in outbox_records(outbox)) == list(range(60))
    finally:
        pub.stop()
        ingest.stop()
        forwarder.stop()

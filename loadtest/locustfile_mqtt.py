"""MQTT ingest under load: devices publishing QoS 1 over TLS with their own credentials.

Each user is one onboarded device (username = device id, its password, client
id = device id) on the edge broker's TLS listener, publishing to
``v1/{tenant}/{site}/{device_id}/telemetry``. A request is one PUBLISH; its
response time runs until the broker's PUBACK to the device (the broker holds
the message for the ingest's persistent session; the ingest's own PUBACK
after its spool commit is on the broker-to-gateway hop). That every PUBACKed
valid reading reached the sink is checked by ``loadtest.run`` from the
outbox. A few invalid bodies go out too: the gateway quarantines them
(docs/mqtt.md), and the broker acknowledges them like any other.
"""

from __future__ import annotations

import json
import ssl
import time
from typing import Any

from locust import between, task
from locust.contrib.mqtt import MqttClient, MqttUser
from locust.env import Environment

from loadtest.common import SeqCounter, config, invalid_reading, take_device, valid_reading


class LabelledClient(MqttClient):
    """Names requests by kind (``publish:1:valid``) instead of by each device's topic."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._labels: dict[int, str] = {}
        self._naming = "valid"

    def publish_labelled(self, topic: str, payload: bytes, label: str) -> None:
        """QoS 1 publish whose request is named ``label`` when its PUBACK comes."""
        self._naming = label
        info = self.publish(topic, payload, qos=1)
        self._labels[info.mid] = label

    def _on_publish_cb(self, client: Any, userdata: Any, mid: int) -> None:
        self._naming = self._labels.pop(mid, "valid")
        super()._on_publish_cb(client, userdata, mid)

    def _generate_event_name(self, event_type: str, qos: int, topic: str) -> str:
        return f"{event_type}:{qos}:{self._naming}"


def _tls_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=config()["mqtt"]["ca_file"])
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


class DeviceMqttUser(MqttUser):
    """One device on the TLS listener."""

    client_cls = LabelledClient
    wait_time = between(0.02, 0.08)

    def __init__(self, environment: Environment) -> None:
        # MqttUser's constructor connects with these attributes: set them first.
        self.device = take_device()
        mqtt = config()["mqtt"]
        self.host = mqtt["host"]
        self.port = int(mqtt["port"])
        self.tls_context = _tls_context()
        self.client_id = self.device["device_id"]
        self.username = self.device["username"]
        self.password = self.device["password"]
        self.seqs = SeqCounter()
        self.topic = (
            f"v1/{self.device['tenant']}/{self.device['site']}/{self.device['device_id']}/telemetry"
        )
        super().__init__(environment)

    def on_start(self) -> None:
        deadline = time.monotonic() + 15
        while not self.client.is_connected() and time.monotonic() < deadline:
            time.sleep(0.05)

    def on_stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _publish(self, payload: dict[str, Any], label: str) -> None:
        client: LabelledClient = self.client  # type: ignore[assignment]
        client.publish_labelled(self.topic, json.dumps(payload).encode(), label)

    @task(20)
    def valid(self) -> None:
        self._publish(valid_reading(self.seqs.next()), "valid")

    @task(1)
    def invalid(self) -> None:
        reading, _ = invalid_reading()
        self._publish(reading, "invalid")

"""Settings of the MQTT ingest service (environment variables ``IOTGW_*``)."""

from __future__ import annotations

from typing import Annotated

from iotgw_core.settings import CommonSettings, LoopCpus, WorkerCpus
from msgspec import Meta


class IngestMqttSettings(CommonSettings, kw_only=True, frozen=True):
    """MQTT ingest: edge broker connection, session, limits, registry and quarantine."""

    mqtt_host: Annotated[
        str, Meta(description="Edge broker host (its loopback listener for the gateway).")
    ] = "127.0.0.1"
    mqtt_port: Annotated[
        int, Meta(ge=1, le=65535, description="Edge broker port of the loopback listener.")
    ] = 1883
    mqtt_username: Annotated[
        str, Meta(description="MQTT user of the ingest service (ACL: read v1/#).")
    ] = "iotgw-ingest"
    mqtt_password: Annotated[
        str,
        Meta(
            description="Its password; use IOTGW_MQTT_PASSWORD_FILE"
            " (make run: var/mosquitto/iotgw-ingest.password)."
        ),
    ] = ""
    mqtt_client_id: Annotated[
        str,
        Meta(
            description="Client id of the persistent session; one per replica."
            " Empty: `iotgw-ingest-<gateway id>`."
        ),
    ] = ""
    mqtt_share_group: Annotated[
        str,
        Meta(
            description="Shared subscription group (`$share/<group>/...`) so that replicas split"
            " the messages; empty: a plain subscription (one replica). Mosquitto 2.0.11 does not"
            " restore shared subscriptions after a broker restart (docs/mqtt.md)."
        ),
    ] = ""
    mqtt_topic: Annotated[
        str, Meta(description="Topic filter subscribed in the share group (QoS 1).")
    ] = "v1/+/+/+/+"
    mqtt_session_expiry_s: Annotated[
        int,
        Meta(
            ge=0,
            description="How long the broker keeps the session (and queues for it) while"
            " the ingest is away.",
        ),
    ] = 7 * 86400
    mqtt_receive_maximum: Annotated[
        int,
        Meta(
            ge=1,
            le=65535,
            description="Unacknowledged QoS 1 messages the broker may have in flight to the"
            " ingest (MQTT v5 Receive Maximum).",
        ),
    ] = 1000
    mqtt_max_payload_bytes: Annotated[
        int, Meta(ge=64, description="Largest payload taken; larger ones are quarantined.")
    ] = 64 * 1024
    mqtt_max_batch: Annotated[
        int, Meta(ge=1, description="Most messages handed to the spool writer in one go.")
    ] = 500
    mqtt_max_concurrent_batches: Annotated[
        int, Meta(ge=1, description="Batches waiting for their commit at the same time.")
    ] = 4
    mqtt_reconnect_min_s: Annotated[
        float, Meta(gt=0, description="First delay before reconnecting to the broker.")
    ] = 0.5
    mqtt_reconnect_max_s: Annotated[
        float, Meta(gt=0, description="Longest delay between reconnect attempts (doubling).")
    ] = 30.0
    mqtt_keepalive_s: Annotated[
        int, Meta(ge=5, description="MQTT keepalive of the ingest's connection.")
    ] = 30
    mqtt_metrics_port: Annotated[
        int, Meta(ge=0, le=65535, description="Port of /metrics of the MQTT ingest (0: off).")
    ] = 9102
    mqtt_metrics_host: Annotated[str, Meta(description="Address of /metrics.")] = "127.0.0.1"
    commit_max_batch: Annotated[
        int, Meta(ge=1, description="Most records in one group-commit transaction.")
    ] = 1024
    registry_path: Annotated[
        str, Meta(description="Device registry file (re-read when it changes).")
    ] = "var/devices/registry.toml"
    quarantine_path: Annotated[
        str, Meta(description="SQLite file of the quarantine (shared with the CLI).")
    ] = "var/quarantine/quarantine.db"
    mqtt_loop_cpus: LoopCpus = ""
    mqtt_worker_cpus: WorkerCpus = ""

    @property
    def client_id(self) -> str:
        """The MQTT client id in use."""
        return self.mqtt_client_id or f"iotgw-ingest-{self.gateway_id}"[:64]

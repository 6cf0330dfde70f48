"""A real mosquitto on free loopback ports, configured from services/mosquitto's template.

The broker directory, CA, server certificate (made with the ``cryptography``
package through iotgw_cli.pki) and the password/ACL files are generated in
the test's own directory exactly as ``make run`` generates them under var/.
Devices are added with the CLI's own functions, so the tests exercise the
generated files, not a hand-written copy.
"""

from __future__ import annotations

import contextlib
import os
import ssl
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from iotgw_cli import broker as broker_files
from iotgw_cli.devices import add_device
from iotgw_cli.paths import Paths

from .procs import Managed, free_port, python_service, wait_port


class MosquittoBroker:
    """mosquitto with the edge config: loopback, TLS+password and client-certificate listeners."""

    def __init__(self, workdir: Path, *, cert_listener: bool = True) -> None:
        self.workdir = workdir
        var = workdir / "var"
        self.paths = Paths(
            registry=var / "devices" / "registry.toml",
            broker_dir=var / "mosquitto",
            pki_dir=var / "pki",
            quarantine=var / "quarantine" / "quarantine.db",
        )
        self.local_port = free_port()
        self.device_port = free_port()
        self.cert_port = free_port() if cert_listener else None
        broker_files.setup(
            self.paths,
            local_port=self.local_port,
            device_port=self.device_port,
            cert_port=self.cert_port,
        )
        self.managed = Managed(
            f"mosquitto-{self.local_port}",
            ["mosquitto", "-c", str(self.paths.config_file)],
            workdir,
        )

    @property
    def ingest_password(self) -> str:
        return (self.paths.broker_dir / "iotgw-ingest.password").read_text().strip()

    @property
    def ca_file(self) -> str:
        return str(self.paths.ca_cert)

    def env(self) -> dict[str, str]:
        """IOTGW_* variables that point the ingest and the CLI at this broker."""
        return {
            "IOTGW_MQTT_HOST": "127.0.0.1",
            "IOTGW_MQTT_PORT": str(self.local_port),
            "IOTGW_MQTT_PASSWORD": self.ingest_password,
            "IOTGW_REGISTRY_PATH": str(self.paths.registry),
            "IOTGW_BROKER_DIR": str(self.paths.broker_dir),
            "IOTGW_PKI_DIR": str(self.paths.pki_dir),
            "IOTGW_QUARANTINE_PATH": str(self.paths.quarantine),
            "IOTGW_MQTT_METRICS_PORT": "0",
        }

    def start(self) -> MosquittoBroker:
        """Start and wait until every listener accepts connections."""
        self.managed.start()
        for port in (self.local_port, self.device_port, self.cert_port):
            if port:
                wait_port(port, proc=self.managed.proc)
        return self

    def stop(self) -> None:
        """SIGTERM: mosquitto writes its persistence file and exits."""
        self.managed.stop()
        self.paths.pid_file.unlink(missing_ok=True)

    def restart(self) -> None:
        """A clean restart (sessions and queued messages come back from persistence)."""
        self.stop()
        self.start()

    def add_device(
        self, device_id: str, tenant: str = "acme", site: str = "aal", *, cert: bool = False
    ) -> dict[str, Any]:
        """Register a device with the CLI's function; its secrets (broker reloaded by SIGHUP)."""
        shown = add_device(self.paths, device_id, tenant, site, cert=cert)
        time.sleep(0.2)  # the SIGHUP is asynchronous: let mosquitto re-read its files
        return shown

    def tls_context(self, cert: str | None = None, key: str | None = None) -> ssl.SSLContext:
        """A client TLS context trusting the broker's CA (with a client certificate if given)."""
        ctx = ssl.create_default_context(cafile=self.ca_file)
        if cert and key:
            ctx.load_cert_chain(cert, key)
        return ctx

    def log_text(self) -> str:
        return self.managed.log_text()


class DevicePublisher:
    """A device's paho client on the TLS listener; records which messages the broker acked."""

    def __init__(
        self,
        broker: MosquittoBroker,
        creds: dict[str, Any],
        *,
        v5: bool = True,
        port: int | None = None,
        use_cert: bool = False,
        client_id: str | None = None,
    ) -> None:
        self.creds = creds
        self.acked: set[int] = set()
        self.failed: list[tuple[int, str]] = []
        self._mids: dict[int, int] = {}
        self._early: dict[int, Any] = {}
        self._lock = threading.Lock()
        self.connected = threading.Event()
        self.answered = threading.Event()  # a CONNACK came, good or not
        self.connect_rc: Any = None
        self.client = paho.Client(
            paho.CallbackAPIVersion.VERSION2,
            client_id=client_id or f"{creds['device_id']}-{os.getpid()}",
            protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
        )
        if use_cert:
            self.client.tls_set_context(broker.tls_context(creds["cert_file"], creds["key_file"]))
        else:
            self.client.tls_set_context(broker.tls_context())
            self.client.username_pw_set(creds["username"], creds["password"])
        self.client.max_inflight_messages_set(100)
        self.client.reconnect_delay_set(0.1, 1)
        self.client.on_connect = self._on_connect
        self.client.on_publish = self._on_publish
        self.port = port or broker.device_port

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        self.connect_rc = rc
        self.answered.set()
        if not rc.is_failure:
            self.connected.set()

    def _on_publish(self, client: Any, userdata: Any, mid: int, rc: Any, props: Any) -> None:
        with self._lock:
            seq = self._mids.pop(mid, None)
            if seq is None:
                # Acknowledged before publish() returned and registered the mid.
                self._early[mid] = rc
                return
            self._settle(seq, rc)

    def _settle(self, seq: int, rc: Any) -> None:
        if rc.is_failure:
            self.failed.append((seq, str(rc)))
        else:
            self.acked.add(seq)

    def start(self, timeout_s: float = 10.0) -> DevicePublisher:
        """Connect (network loop in paho's thread) and wait for the CONNACK."""
        self.client.connect("127.0.0.1", self.port, keepalive=30)
        self.client.loop_start()
        self.answered.wait(timeout_s)
        return self

    def publish(
        self,
        seq: int,
        *,
        topic: str | None = None,
        payload: bytes | None = None,
        qos: int = 1,
        props: dict[str, str] | None = None,
    ) -> None:
        """Publish reading number ``seq`` (its seq in the body unless a payload is given)."""
        topic = (
            topic
            or f"v1/{self.creds['tenant']}/{self.creds['site']}/{self.creds['device_id']}/telemetry"
        )
        if payload is None:
            payload = b'{"seq": %d, "metrics": {"n": %d}}' % (seq, seq)
        properties = None
        if props:
            properties = paho.Properties(paho.PacketTypes.PUBLISH)
            properties.UserProperty = list(props.items())
        # Not under self._lock: paho may call on_publish from its thread meanwhile.
        info = self.client.publish(topic, payload, qos=qos, properties=properties)
        with self._lock:
            early = self._early.pop(info.mid, None)
            if early is not None:
                self._settle(seq, early)
            else:
                self._mids[info.mid] = seq

    def wait_acked(self, count: int, timeout_s: float = 30.0) -> bool:
        """True once ``count`` messages were acknowledged by the broker."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if len(self.acked) >= count:
                return True
            time.sleep(0.02)
        return False

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.client.disconnect()
        self.client.loop_stop()


def mqtt_ingest_service(env: dict[str, str], log_dir: Path, name: str = "ingest-mqtt") -> Managed:
    """The MQTT ingest as a process."""
    return python_service("iotgw_ingest_mqtt", name, log_dir, env)

"""A stand-in for AWS IoT Core: a real mosquitto with mutual TLS, an ACL and AWS's limits.

Like the real endpoint it requires a client certificate signed by its CA,
takes the certificate's CN as the identity (``use_identity_as_username``),
allows each identity only its topics, and refuses packets over 128 KB. The
:class:`Checker` is a subscriber that keeps every message with its arrival
time and the publishing connection (the sink's ``iotgw-connection`` MQTT v5
user property), so a test can check topics, payloads and the pacing limits.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import ssl
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .procs import Managed, free_port, wait_port

THING = "gw-thing-1"
CHECKER = "standin-checker"


@dataclass(frozen=True)
class Credential:
    """A certificate and its key, as PEM files."""

    cert: Path
    key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


class CertificateAuthority:
    """A throwaway CA that signs the broker's and the clients' certificates."""

    def __init__(self, directory: Path, name: str) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(_name(name))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.cert_path = directory / f"{name}.crt"
        self.cert_path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, cn: str, *, server: bool = False) -> Credential:
        """A certificate for ``cn`` (a server one is valid for 127.0.0.1/localhost)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        cert = builder.sign(self.key, hashes.SHA256())
        cred = Credential(self.directory / f"{cn}.crt", self.directory / f"{cn}.key")
        cred.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(cred.key, key)
        return cred


CONFIG = """# AWS IoT Core stand-in for the tests: mutual TLS, identity from the
# certificate's CN, an ACL per identity, AWS's 128 KB packet limit.
# Written and started by tests/support/aws_standin.py.
user root
per_listener_settings false
allow_anonymous false
persistence true
persistence_location {dir}/
autosave_interval 0
max_packet_size 131072
max_inflight_messages 100
max_queued_messages 1000000
set_tcp_nodelay true
log_dest file {dir}/mosquitto.log
log_type error
log_type warning
log_type notice
connection_messages true
acl_file {dir}/acl
listener {port} 127.0.0.1
cafile {ca}
certfile {cert}
keyfile {key}
require_certificate true
use_identity_as_username true
tls_version tlsv1.2
"""

ACL = """# Who may publish/subscribe where at the AWS IoT Core stand-in.
user {thing}
topic write dt/#
user {checker}
topic read dt/#
"""


class AwsIotStandin:
    """mosquitto as AWS IoT Core: start, stop (an uplink outage), start again on the same port."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.ca = CertificateAuthority(directory / "pki", "standin-ca")
        self.server = self.ca.issue("localhost", server=True)
        self.thing = self.ca.issue(THING)
        self.checker_cred = self.ca.issue(CHECKER)
        self.rogue_ca = CertificateAuthority(directory / "rogue", "rogue-ca")
        self.rogue_thing = self.rogue_ca.issue(THING)
        self.port = free_port()
        conf = directory / "mosquitto.conf"
        conf.write_text(
            CONFIG.format(
                dir=directory,
                port=self.port,
                ca=self.ca.cert_path,
                cert=self.server.cert,
                key=self.server.key,
            )
        )
        (directory / "acl").write_text(ACL.format(thing=THING, checker=CHECKER))
        self.managed = Managed(f"standin-{self.port}", ["mosquitto", "-c", str(conf)], directory)

    def start(self) -> AwsIotStandin:
        """Start mosquitto and wait until it listens."""
        self.managed.start()
        wait_port(self.port, proc=self.managed.proc)
        return self

    def stop(self) -> None:
        """SIGTERM: mosquitto saves its sessions (the checker's queue survives a restart)."""
        self.managed.stop()

    def sink_env(self, *, rogue: bool = False) -> dict[str, str]:
        """IOTGW_* settings of an aws-iot-mqtt sink pointed at this stand-in."""
        cred = self.rogue_thing if rogue else self.thing
        return {
            "IOTGW_SINK": "aws-iot-mqtt",
            "IOTGW_MQTT_SINK_HOST": "127.0.0.1",
            "IOTGW_MQTT_SINK_PORT": str(self.port),
            "IOTGW_MQTT_SINK_CA_FILE": str(self.ca.cert_path),
            "IOTGW_MQTT_SINK_CERT_FILE": str(cred.cert),
            "IOTGW_MQTT_SINK_KEY_FILE": str(cred.key),
            "IOTGW_MQTT_SINK_CLIENT_ID": THING,
            "IOTGW_MQTT_SINK_RECONNECT_BASE_S": "0.2",
            "IOTGW_MQTT_SINK_RECONNECT_CAP_S": "2",
        }

    def log_text(self) -> str:
        """What mosquitto logged."""
        path = self.directory / "mosquitto.log"
        return path.read_text(errors="replace") if path.exists() else ""


@dataclass
class Received:
    """One message the checker got."""

    topic: str
    payload: bytes
    connection: str
    at: float

    def envelopes(self) -> list[dict[str, Any]]:
        """The envelopes of the publish (a batch is a JSON array)."""
        data = json.loads(self.payload)
        return data if isinstance(data, list) else [data]


@dataclass
class Checker:
    """A subscriber to ``dt/#`` at the stand-in (persistent session, QoS 1)."""

    standin: AwsIotStandin
    client_id: str = "checker"
    messages: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    client: paho.Client | None = None
    subscribed: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Checker:
        """Connect, subscribe and keep reconnecting in paho's thread."""
        client = paho.Client(
            paho.CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=paho.MQTTv5,
        )
        ctx = ssl.create_default_context(cafile=str(self.standin.ca.cert_path))
        ctx.load_cert_chain(str(self.standin.checker_cred.cert), str(self.standin.checker_cred.key))
        client.tls_set_context(ctx)
        client.reconnect_delay_set(0.1, 1)
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        client.connect(
            "127.0.0.1",
            self.standin.port,
            keepalive=30,
            clean_start=False,
            properties=_session_expiry(),
        )
        client.loop_start()
        self.client = client
        if not self.subscribed.wait(10):
            raise TimeoutError("the checker could not subscribe at the stand-in")
        return self

    def _on_connect(self, client: paho.Client, *_: Any) -> None:
        client.subscribe("dt/#", qos=1)
        self.subscribed.set()

    def _on_message(self, _c: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
        conn = ""
        for key, value in getattr(msg.properties, "UserProperty", None) or []:
            if key == "iotgw-connection":
                conn = value
        with self.lock:
            self.messages.append(Received(msg.topic, msg.payload, conn, time.monotonic()))

    def stop(self) -> None:
        """Disconnect."""
        if self.client is not None:
            self.client.disconnect()
            self.client.loop_stop()

    def snapshot(self) -> list[Received]:
        """The messages so far."""
        with self.lock:
            return list(self.messages)

    def envelopes(self) -> list[dict[str, Any]]:
        """Every envelope received, in arrival order (batches unpacked)."""
        return [env for msg in self.snapshot() for env in msg.envelopes()]

    def ids(self) -> set[str]:
        """Ids of every envelope received."""
        return {env["id"] for env in self.envelopes()}

    def peak_per_second(self) -> dict[str, int]:
        """Most publishes of each connection within any one second (sliding window)."""
        stamps: dict[str, list[float]] = defaultdict(list)
        for msg in self.snapshot():
            stamps[msg.connection].append(msg.at)
        peaks: dict[str, int] = {}
        for conn, times in stamps.items():
            times.sort()
            start = 0
            best = 0
            for end, t in enumerate(times):
                while times[start] < t - 1.0:
                    start += 1
                best = max(best, end - start + 1)
            peaks[conn] = best
        return peaks


def _session_expiry() -> Any:
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    return props

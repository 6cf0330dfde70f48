"""MQTT end to end: QoS 1 device publishers -> edge Mosquitto -> gateway -> file sink,
against a plain Mosquitto bridge (edge broker bridged at QoS 1 to a second broker).

Both runs use the same edge broker configuration (services/mosquitto template:
TLS device listener, passwords, ACL, persistence) and the same publishers: 3
device processes, each publishing ``PER_DEVICE`` QoS 1 messages with a window
of 100 unacknowledged publishes (TCP_NODELAY), started together by a go file.

- gateway: ingest-mqtt (spool commit before PUBACK, validation, registry
  checks) -> Redis Stream -> forwarder -> file sink. The clock stops when the
  last record is in the outbox.
- bridge: the edge broker with a ``connection`` to a second mosquitto
  (persistence on, QoS 1, clean session off); a QoS 1 subscriber on the second
  broker. The clock stops when it has every message.

- receive-only (the floor of any single Python consumer): a paho-mqtt
  subscriber with the ingest's login and persistent session on the same edge
  broker that does nothing but count each QoS 1 message (PUBACK sent by paho).
  The gateway's ingest does this plus validation, the spool commit and the
  hand-off, so its rate cannot exceed this one.

Figures: messages/s from the go signal to the last message at the far end;
ratio = gateway / bridge; and for each run the CPU time of the whole machine
per message (all processes, from /proc/stat), which says where the two cores
went. Bridge and gateway alternate in ``BENCH_MQTT_ROUNDS`` pairs (3); the
ratio is the median of the pairs'. ``BENCH_MQTT_REPLICAS=N`` runs N
ingest-mqtt replicas on a shared subscription.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from tests.bench import service_env
from tests.bench.clock import Clock, OutboxLines, with_children

DEVICES = 3
PER_DEVICE = int(os.environ.get("BENCH_MQTT_PER_DEVICE", "10000"))
ROUNDS = int(os.environ.get("BENCH_MQTT_ROUNDS", "3"))  # bridge/gateway pairs
WINDOW = 100
TIMEOUT_S = 240.0


def publish_main(creds_file: str, port: int, go_file: str, count: int) -> None:
    """One device: connect over TLS, wait for the go file, publish ``count`` QoS 1 messages."""
    import ssl

    import paho.mqtt.client as paho

    creds = json.loads(Path(creds_file).read_text())
    done = threading.Event()
    acked = [0]
    inflight = threading.Semaphore(WINDOW)

    def on_publish(client: Any, userdata: Any, mid: int, rc: Any, props: Any) -> None:
        acked[0] += 1
        inflight.release()
        if acked[0] >= count:
            done.set()

    client = paho.Client(
        paho.CallbackAPIVersion.VERSION2,
        client_id=f"bench-{creds['device_id']}",
        protocol=paho.MQTTv5,
    )
    client.tls_set_context(ssl.create_default_context(cafile=creds["ca_file"]))
    client.username_pw_set(creds["username"], creds["password"])
    client.max_inflight_messages_set(WINDOW)
    client.max_queued_messages_set(0)
    client.on_publish = on_publish
    client.connect("127.0.0.1", port)
    client.loop_start()
    while client.socket() is None:
        time.sleep(0.01)
    client.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while not Path(go_file).exists():
        time.sleep(0.005)
    topic = creds["publish_topics"][0]
    for seq in range(count):
        inflight.acquire()
        client.publish(topic, b'{"seq":%d,"metrics":{"temp_c":21.5,"humidity":40.2}}' % seq, qos=1)
    done.wait(TIMEOUT_S)
    client.disconnect()
    client.loop_stop()


def _publishers(
    work: Path, creds: list[dict[str, Any]], port: int
) -> tuple[list[subprocess.Popen[bytes]], Path]:
    go = work / "go"
    procs = []
    for c in creds:
        path = work / f"{c['device_id']}.json"
        path.write_text(json.dumps(c))
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.bench.bench_mqtt",
                    "publish",
                    str(path),
                    str(port),
                    str(go),
                    str(PER_DEVICE),
                ],
                cwd=Path(__file__).resolve().parents[2],
            )
        )
    time.sleep(2.0)  # let them connect
    return procs, go


def _wait(check: Any, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise RuntimeError(f"bench: timed out waiting for {what}")


def run_gateway(work: Path) -> tuple[float, float]:
    """Messages/s through edge broker, ingest-mqtt, spool, stream, forwarder, file sink."""
    from tests.support.mosquitto import MosquittoBroker, mqtt_ingest_service
    from tests.support.procs import RedisServer, python_service

    broker = MosquittoBroker(work / "broker", cert_listener=False).start()
    redis = RedisServer(work / "redis").start()
    env = service_env(work, redis.url, **broker.env())
    creds = [broker.add_device(f"bench-{i}") for i in range(DEVICES)]
    replicas = int(os.environ.get("BENCH_MQTT_REPLICAS", "1"))
    if replicas > 1:
        env["IOTGW_MQTT_SHARE_GROUP"] = "bench"
    ingests = [
        mqtt_ingest_service(
            {**env, "IOTGW_MQTT_CLIENT_ID": f"iotgw-ingest-{i}"}, work, f"ingest-mqtt-{i}"
        ).start()
        for i in range(replicas)
    ]
    forwarder = python_service("iotgw_forwarder", "forwarder", work, env).start()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        time.sleep(2.0)
        procs, go = _publishers(work, creds, broker.device_port)
        total = DEVICES * PER_DEVICE
        clock = Clock(
            {
                **{
                    k: v
                    for i, one in enumerate(ingests)
                    for k, v in with_children(f"ingest-{i}", one.pid).items()
                },
                "forwarder": forwarder.pid,
                "redis": redis.managed.pid,
                "edge-broker": broker.managed.pid,
                **_publisher_pids(procs),
            }
        ).start()
        go.touch()
        lines = OutboxLines(work / "outbox")
        _wait(lambda: lines() >= total, "the outbox")
        figures = clock.stop(total)
        clock.report("gateway", "message")
        return figures
    finally:
        for p in procs:
            p.wait(30)
        for one in ingests:
            one.stop()
        forwarder.stop()
        broker.stop()
        redis.stop()


def run_bridge(work: Path) -> tuple[float, float]:
    """Messages/s through the edge broker bridged at QoS 1 to a second broker."""
    from tests.support.mosquitto import MosquittoBroker
    from tests.support.procs import Managed, free_port, wait_port

    far_port = free_port()
    far_dir = work / "far"
    (far_dir / "data").mkdir(parents=True)
    (far_dir / "far.conf").write_text(
        f"user {os.environ.get('USER', 'root')}\nlistener {far_port} 127.0.0.1\n"
        f"allow_anonymous true\npersistence true\npersistence_location {far_dir / 'data'}/\n"
        "max_queued_messages 1000000\nset_tcp_nodelay true\n"
    )
    far = Managed("mosquitto-far", ["mosquitto", "-c", str(far_dir / "far.conf")], far_dir).start()
    wait_port(far_port, proc=far.proc)
    broker = MosquittoBroker(work / "broker", cert_listener=False)
    with broker.paths.config_file.open("a") as conf:
        conf.write(
            "\n# bench: bridge every device topic to the far broker at QoS 1\n"
            f"connection far\naddress 127.0.0.1:{far_port}\ntopic v1/# out 1\n"
            "cleansession false\nbridge_protocol_version mqttv311\n"
            "max_queued_messages 1000000\n"
        )
    broker.start()
    total = DEVICES * PER_DEVICE
    sub, received, got_all = _counting_subscriber("bench-far-sub", far_port, total)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        creds = [broker.add_device(f"bench-{i}") for i in range(DEVICES)]
        time.sleep(1.0)
        procs, go = _publishers(work, creds, broker.device_port)
        clock = Clock(
            {
                "edge-broker": broker.managed.pid,
                "far-broker": far.pid,
                "subscriber (this process)": os.getpid(),
                **_publisher_pids(procs),
            }
        ).start()
        go.touch()
        if not got_all.wait(TIMEOUT_S):
            raise RuntimeError(f"bench: the far subscriber got {received[0]} of {total}")
        figures = clock.stop(total)
        clock.report("bridge", "message")
        return figures
    finally:
        for p in procs:
            p.wait(30)
        sub.loop_stop()
        broker.stop()
        far.stop()


def _publisher_pids(procs: list[subprocess.Popen[bytes]]) -> dict[str, int]:
    return {f"publisher-{i}": p.pid for i, p in enumerate(procs)}


def _counting_subscriber(
    client_id: str, port: int, total: int, login: tuple[str, str] | None = None
) -> tuple[Any, list[int], threading.Event]:
    """A paho QoS 1 subscriber to v1/# (persistent session) that only counts; started."""
    import paho.mqtt.client as paho

    received = [0]
    got_all = threading.Event()

    def on_message(client: Any, userdata: Any, msg: Any) -> None:
        received[0] += 1
        if received[0] >= total:
            got_all.set()

    sub = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
    if login is not None:
        sub.username_pw_set(*login)
    sub.on_message = on_message
    sub.connect("127.0.0.1", port)
    sub.subscribe("v1/#", qos=1)
    sub.loop_start()
    return sub, received, got_all


def receive_main(port: int, password: str, total: int, ready_file: str) -> None:
    """The floor: the ingest's login and session on the edge broker, counting QoS 1 messages."""
    sub, received, got_all = _counting_subscriber(
        "bench-receive-only", port, total, login=("iotgw-ingest", password)
    )
    Path(ready_file).touch()
    if not got_all.wait(TIMEOUT_S):
        raise SystemExit(f"bench: the receive-only subscriber got {received[0]} of {total}")
    Path(ready_file).with_suffix(".done").touch()  # the clock stops here, not at exit
    sub.loop_stop()


def run_receive_only(work: Path) -> tuple[float, float]:
    """Messages/s into one Python process that only receives, on the gateway's edge broker."""
    from tests.support.mosquitto import MosquittoBroker

    broker = MosquittoBroker(work / "broker", cert_listener=False).start()
    total = DEVICES * PER_DEVICE
    ready = work / "receiver.ready"
    receiver = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.bench.bench_mqtt",
            "receive",
            str(broker.local_port),
            broker.ingest_password,
            str(total),
            str(ready),
        ],
        cwd=Path(__file__).resolve().parents[2],
    )
    procs: list[subprocess.Popen[bytes]] = []
    try:
        creds = [broker.add_device(f"bench-{i}") for i in range(DEVICES)]
        _wait(ready.exists, "the receive-only subscriber")
        procs, go = _publishers(work, creds, broker.device_port)
        clock = Clock().start()
        go.touch()
        _wait(lambda: ready.with_suffix(".done").exists() or receiver.poll() is not None, "it")
        figures = clock.stop(total)
        if receiver.wait(TIMEOUT_S) != 0:
            raise RuntimeError("bench: the receive-only subscriber failed")
        return figures
    finally:
        for p in procs:
            p.wait(30)
        if receiver.poll() is None:
            receiver.kill()
        broker.stop()


def run() -> dict[str, float]:
    """Bridge and gateway in alternating rounds, then receive-only; figures and the ratio.

    These machines change speed from one run to the next (every process's CPU
    per message moves together by up to 40%), so a bridge run and the gateway
    run right after it make a pair, ROUNDS pairs are run, and the ratio is
    the median of the pairs' ratios; each pair's ratio is printed too.
    """
    ratios: list[float] = []
    bridges: list[float] = []
    gateways: list[float] = []
    bridge_cpus: list[float] = []
    gateway_cpus: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-mqtt-") as tmp:
        for n in range(ROUNDS):
            bridge, bridge_cpu = run_bridge(Path(tmp) / f"bridge-{n}")
            gateway, gateway_cpu = run_gateway(Path(tmp) / f"gateway-{n}")
            bridges.append(bridge)
            gateways.append(gateway)
            bridge_cpus.append(bridge_cpu)
            gateway_cpus.append(gateway_cpu)
            ratios.append(gateway / bridge)
            print(
                f"round {n + 1}: bridge {bridge:,.0f} msg/s, gateway {gateway:,.0f} msg/s,"
                f" ratio {gateway / bridge:.3f}"
            )
        floor, floor_cpu = run_receive_only(Path(tmp) / "receive-only")
    bridge_median = statistics.median(bridges)
    figures = {
        "mqtt_bridge_msgs_per_s": round(bridge_median, 1),
        "mqtt_gateway_msgs_per_s": round(statistics.median(gateways), 1),
        "mqtt_gateway_vs_bridge_ratio": round(statistics.median(ratios), 3),
        "mqtt_gateway_vs_bridge_ratio_min": round(min(ratios), 3),
        "mqtt_gateway_vs_bridge_ratio_max": round(max(ratios), 3),
        "mqtt_receive_only_msgs_per_s": round(floor, 1),
        "mqtt_receive_only_vs_bridge_ratio": round(floor / bridge_median, 3),
        "mqtt_bridge_machine_cpu_us_per_msg": round(statistics.median(bridge_cpus), 1),
        "mqtt_gateway_machine_cpu_us_per_msg": round(statistics.median(gateway_cpus), 1),
        "mqtt_receive_only_machine_cpu_us_per_msg": round(floor_cpu, 1),
    }
    for key, value in figures.items():
        print(f"{key}: {value}")
    return figures


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "publish":
        publish_main(sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5]))
    elif len(sys.argv) > 1 and sys.argv[1] == "receive":
        receive_main(int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5])
    else:
        print(json.dumps(run()))

"""Crash tests on the real processes: nothing acknowledged is ever lost."""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.reliability.load import send_readings
from tests.support.procs import RedisServer, children_of, python_service, wait_port
from tests.support.stack import Stack, wait_until

pytestmark = [pytest.mark.reliability, pytest.mark.slow]


def outbox_seqs(stack: Stack, device: str) -> Counter[int]:
    return Counter(r["seq"] for r in stack.records() if r["device_id"] == device)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_kill_9_ingest_under_load_loses_no_acknowledged_record(stack: Stack) -> None:
    """10,000 readings; the ingest is killed -9 mid-way and started again."""
    killed = threading.Event()
    writers: list[int] = []

    def on_ack(acked: int) -> None:
        if acked == 3000 and not killed.is_set():
            killed.set()
            threading.Thread(target=crash_and_restart, daemon=True).start()

    def crash_and_restart() -> None:
        writers.extend(children_of(stack.ingest.pid))  # its spool writer process
        stack.ingest.kill9()
        time.sleep(1.0)
        stack.start_ingest()

    result = asyncio.run(
        send_readings(stack.base_url, 10_000, device="dev-a", on_ack=on_ack, time_limit_s=150)
    )
    assert killed.is_set()
    assert writers, "the ingest commits in a spool writer process"
    # The killed ingest's spool writer saw its socket close and exited.
    wait_until(lambda: not any(alive(p) for p in writers), 10, "the orphaned writer to exit")
    assert result.failed > 0, "the client must have seen the crash"
    assert len(result.acked) > 5000
    wait_until(
        lambda: set(outbox_seqs(stack, "dev-a")) >= result.acked, 90, "every acked seq in outbox"
    )
    seen = outbox_seqs(stack, "dev-a")
    missing = result.acked - set(seen)
    assert not missing, f"{len(missing)} acknowledged readings lost"
    # The stable id travels with the record: what the client was told is what arrived.
    by_seq = {r["seq"]: r["id"] for r in stack.records()}
    assert all(by_seq[s] == result.ids[s] for s in result.acked)


def test_redis_restarted_empty_mid_stream_loses_nothing(
    gateway_env: dict[str, str], tmp_path: Path
) -> None:
    redis = RedisServer(tmp_path / "redis").start()
    env = {**gateway_env, "IOTGW_REDIS_URL": redis.url}
    stack = Stack(env, tmp_path).start()
    try:
        restarted = threading.Event()

        def on_ack(acked: int) -> None:
            if acked == 1500 and not restarted.is_set():
                restarted.set()
                threading.Thread(target=redis.restart_empty, daemon=True).start()

        result = asyncio.run(
            send_readings(stack.base_url, 4000, device="dev-r", on_ack=on_ack, time_limit_s=120)
        )
        assert restarted.is_set()
        assert len(result.acked) == 4000, "Redis is not the truth: ingest keeps acknowledging"
        wait_until(
            lambda: set(outbox_seqs(stack, "dev-r")) >= result.acked, 90, "all 4000 in outbox"
        )
        assert (
            "reconciler re-enqueued" in stack.forwarder.log_text() or len(stack.records()) >= 4000
        )
        # The device's order held across the loss: its ids (UUIDv7, minted in commit
        # order by the one spool writer) reached the outbox in increasing order.
        ids = list(dict.fromkeys(r["id"] for r in stack.records() if r["device_id"] == "dev-r"))
        assert ids == sorted(ids), "a record overtook an older one of its device"
    finally:
        stack.stop()
        redis.stop()


def test_kill_9_forwarder_mid_stream_delivers_everything_with_the_same_ids(stack: Stack) -> None:
    def crash() -> None:
        wait_until(lambda: len(stack.records()) >= 500, 60, "first deliveries")
        stack.forwarder.kill9()
        time.sleep(1.0)
        stack.start_forwarder()

    crasher = threading.Thread(target=crash, daemon=True)
    crasher.start()
    result = asyncio.run(send_readings(stack.base_url, 5000, device="dev-f", time_limit_s=120))
    crasher.join(70)
    assert len(result.acked) == 5000
    wait_until(lambda: set(outbox_seqs(stack, "dev-f")) >= result.acked, 90, "all 5000 in outbox")
    for record in stack.records():
        assert record["id"] == result.ids[record["seq"]]


def test_stale_entries_of_a_dead_consumer_are_taken_over(
    gateway_env: dict[str, str], tmp_path: Path
) -> None:
    """Consumer A reads entries and dies; consumer B (another name) claims them."""
    outbox_a = tmp_path / "outbox-a"
    stack = Stack(gateway_env, tmp_path)
    stack.start_ingest()
    first = python_service(
        "iotgw_forwarder",
        "forwarder-a",
        tmp_path,
        {**stack.env, "IOTGW_CONSUMER_NAME": "a", "IOTGW_OUTBOX_DIR": str(outbox_a)},
    ).start()
    wait_until(outbox_a.is_dir, 20, "forwarder A up")
    shutil.rmtree(outbox_a)
    outbox_a.write_text("A cannot deliver any more: its outbox path is a file")
    second = python_service(
        "iotgw_forwarder", "forwarder-b", tmp_path, {**stack.env, "IOTGW_CONSUMER_NAME": "b"}
    )
    try:
        result = asyncio.run(send_readings(stack.base_url, 200, device="dev-c", time_limit_s=60))
        assert len(result.acked) == 200
        time.sleep(1.5)  # A has read them (they are pending for A) but cannot deliver
        first.kill9()
        second.start()
        wait_until(lambda: set(outbox_seqs(stack, "dev-c")) >= result.acked, 60, "B delivers")
        assert "took over" in second.log_text()
        assert "sink file unavailable" in first.log_text()
    finally:
        stack.stop()
        first.stop()
        second.stop()


def test_sigterm_drains_ingest_without_losing_acknowledged_readings(stack: Stack) -> None:
    def stop_soon() -> None:
        time.sleep(1.5)
        code = stack.ingest.stop()
        assert code == 0

    stopper = threading.Thread(target=stop_soon, daemon=True)
    stopper.start()
    result = asyncio.run(send_readings(stack.base_url, 100_000, device="dev-t", time_limit_s=8))
    stopper.join(30)
    assert stack.ingest.proc is not None and stack.ingest.proc.returncode == 0
    assert result.acked
    wait_until(lambda: set(outbox_seqs(stack, "dev-t")) >= result.acked, 60, "acked in outbox")
    log = stack.ingest.log_text()
    assert "drained" in log


def test_forwarder_restart_after_ingest_crash_without_redis_handoff(
    gateway_env: dict[str, str], tmp_path: Path
) -> None:
    """Records committed while Redis was unreachable reach the sink once it is back."""
    redis_port_file = RedisServer(tmp_path / "r2")
    env = {**gateway_env, "IOTGW_REDIS_URL": redis_port_file.url}
    stack = Stack(env, tmp_path)
    stack.start_ingest()  # Redis is not running yet
    try:
        result = asyncio.run(send_readings(stack.base_url, 300, device="dev-n", time_limit_s=60))
        assert len(result.acked) == 300
        redis_port_file.start()
        wait_port(redis_port_file.port)
        stack.start_forwarder()
        wait_until(lambda: set(outbox_seqs(stack, "dev-n")) >= result.acked, 60, "reconciled")
    finally:
        stack.stop()
        redis_port_file.stop()

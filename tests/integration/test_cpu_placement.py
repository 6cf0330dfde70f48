"""IOTGW_*_LOOP_CPUS / *_WORKER_CPUS: a service's event loop on its CPUs, its helpers off them."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from iotgw_core.process import parse_cpus

from tests.support.procs import REPO, Managed, free_port, python_service, wait_port
from tests.support.stack import Stack, wait_until

pytestmark = pytest.mark.integration

CPUS = sorted(os.sched_getaffinity(0))
needs_two_cpus = pytest.mark.skipif(len(CPUS) < 2, reason="placement needs two CPUs")


def _allowed(pid: int, tid: int) -> set[int]:
    for line in Path(f"/proc/{pid}/task/{tid}/status").read_text().splitlines():
        if line.startswith("Cpus_allowed_list:"):
            return set(parse_cpus(line.split(":", 1)[1].strip()))
    raise AssertionError(f"no Cpus_allowed_list for task {tid} of {pid}")


def _tasks(pid: int) -> dict[int, str]:
    """Thread id -> thread name of every thread of ``pid``."""
    return {
        int(tid): Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
        for tid in os.listdir(f"/proc/{pid}/task")
    }


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def test_cpu_lists_are_read_as_taskset_writes_them() -> None:
    assert parse_cpus("") == frozenset()
    assert parse_cpus("3") == {3}
    assert parse_cpus("0,2-4") == {0, 2, 3, 4}
    with pytest.raises(ValueError, match="backwards"):
        parse_cpus("3-1")


@needs_two_cpus
def test_pin_cpus_moves_the_helpers_and_keeps_the_loop() -> None:
    # In a child interpreter: pinning this test process would pin the whole suite.
    script = textwrap.dedent(
        f"""
        import os, subprocess, sys, threading
        from iotgw_core.process import pin_cpus, to_worker_cpus
        seen = {{}}
        started = threading.Event()
        stop = threading.Event()
        def before():
            started.set(); stop.wait(); seen["before"] = os.sched_getaffinity(0)
        early = threading.Thread(target=before); early.start(); started.wait()
        pin_cpus("{CPUS[0]}", "{CPUS[1]}")
        def later():
            seen["inherited"] = os.sched_getaffinity(0)
            to_worker_cpus()
            seen["later"] = os.sched_getaffinity(0)
        late = threading.Thread(target=later); late.start(); late.join()
        stop.set(); early.join()
        child = subprocess.run(
            [sys.executable, "-c", "import os; print(sorted(os.sched_getaffinity(0)))"],
            capture_output=True, text=True, check=True).stdout.strip()
        print(sorted(os.sched_getaffinity(0)), sorted(seen["before"]),
              sorted(seen["inherited"]), sorted(seen["later"]), child,
              os.environ["_IOTGW_WORKER_CPUS"])
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=REPO
    ).stdout.split(" ", 5)
    loop, before, inherited, later, child, env = (part.strip() for part in out)
    assert loop == f"[{CPUS[0]}]"  # the calling thread: the event loop
    assert before == f"[{CPUS[1]}]"  # a thread that already ran was moved
    assert inherited == f"[{CPUS[0]}]"  # a new thread starts on its creator's CPUs...
    assert later == f"[{CPUS[1]}]"  # ...until it leaves them
    assert child == f"[{CPUS[0]}]"  # a child process too: the spool writer leaves at start
    assert env == str(CPUS[1])


@needs_two_cpus
def test_ingest_runs_its_loop_alone_and_its_writer_elsewhere(
    gateway_env: dict[str, str], tmp_path: Path
) -> None:
    port = free_port()
    env = {
        **gateway_env,
        "IOTGW_HTTP_PORT": str(port),
        "IOTGW_HTTP_LOOP_CPUS": str(CPUS[0]),
        "IOTGW_HTTP_WORKER_CPUS": ",".join(str(c) for c in CPUS[1:]),
    }
    ingest = python_service("iotgw_ingest_http", "ingest-http", tmp_path, env).start()
    try:
        wait_port(port, proc=ingest.proc)
        answer = httpx.post(
            f"http://127.0.0.1:{port}/v1/ingest/dev-cpu",
            json={"seq": 1, "metrics": {"v": 1.0}},
            timeout=10,
        )
        assert answer.status_code == 202, answer.text
        pid = ingest.pid
        threads = _tasks(pid)
        assert _allowed(pid, pid) == {CPUS[0]}
        # The WAL checkpointer, asyncio.to_thread's pool and uvloop's pool at least.
        assert "libuv-worker" in threads.values() and len(threads) >= 4, threads
        for tid, name in threads.items():
            if tid != pid:
                assert _allowed(pid, tid) == set(CPUS[1:]), name
        (writer,) = _children(pid)
        # The writer and its stream hand-off thread (started once it hands over).
        wait_until(lambda: len(_tasks(writer)) >= 2, 10, "the writer's hand-off thread")
        for tid, name in _tasks(writer).items():
            assert _allowed(writer, tid) == set(CPUS[1:]), name
    finally:
        ingest.stop()


@needs_two_cpus
def test_a_placed_writer_killed_loses_nothing_and_its_successor_is_placed_too(
    gateway_env: dict[str, str], tmp_path: Path
) -> None:
    workers = set(CPUS[1:])
    env = {
        **gateway_env,
        "IOTGW_HTTP_LOOP_CPUS": str(CPUS[0]),
        "IOTGW_HTTP_WORKER_CPUS": ",".join(str(c) for c in CPUS[1:]),
    }
    stack = Stack(env, tmp_path).start()
    try:
        with stack.client() as http:

            def post(seq: int) -> int:
                reading = {"seq": seq, "metrics": {"v": float(seq)}}
                return http.post("/v1/ingest/dev-kill", json=reading).status_code

            assert [post(seq) for seq in range(1, 51)] == [202] * 50
            (first,) = _children(stack.ingest.pid)
            os.kill(first, signal.SIGKILL)
            # 503 while the writer is gone, then a new one takes the next reading.
            wait_until(lambda: post(51) == 202, 20, "a new spool writer")
        (second,) = _children(stack.ingest.pid)
        assert second != first
        for tid, name in _tasks(second).items():
            assert _allowed(second, tid) == workers, name
        records = stack.wait_outbox(51)
        assert sorted(r["seq"] for r in records) == list(range(1, 52))  # none lost, none twice
    finally:
        stack.stop()


@needs_two_cpus
def test_the_forwarder_runs_its_loop_where_it_is_told(
    run_forwarder: Callable[..., contextlib.AbstractContextManager[Managed]],
) -> None:
    # IOTGW_FORWARDER_LOOP_CPUS alone: its helpers may use every CPU, the loop's too.
    with run_forwarder(forwarder_loop_cpus=str(CPUS[-1])) as forwarder:
        wait_until(lambda: len(_tasks(forwarder.pid)) >= 2, 20, "the forwarder's threads")
        threads = _tasks(forwarder.pid)
        assert _allowed(forwarder.pid, forwarder.pid) == {CPUS[-1]}
        for tid, name in threads.items():
            if tid != forwarder.pid:
                assert _allowed(forwarder.pid, tid) == set(CPUS), name


@pytest.mark.parametrize(
    ("loop", "workers", "says"),
    [
        ("4095", "", "loop CPUs 4095 are not among the CPUs"),
        (str(CPUS[0]), "4095", "worker CPUs 4095 are not among the CPUs"),
        ("zero", "", "IOTGW_HTTP_LOOP_CPUS"),
    ],
)
def test_a_cpu_the_service_cannot_use_is_a_configuration_error(
    gateway_env: dict[str, str], tmp_path: Path, loop: str, workers: str, says: str
) -> None:
    env = {
        **os.environ,
        **gateway_env,
        "IOTGW_HTTP_PORT": str(free_port()),
        "IOTGW_HTTP_LOOP_CPUS": loop,
        "IOTGW_HTTP_WORKER_CPUS": workers,
    }
    done = subprocess.run(
        [sys.executable, "-m", "iotgw_ingest_http"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert done.returncode == 2, done.stderr
    assert "configuration error" in done.stderr and says in done.stderr

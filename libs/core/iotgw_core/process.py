"""Process-wide tuning shared by the services' entry points."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor


def tune_gc() -> None:
    """Make the cyclic garbage collector rare and cheap on a hot ingest path.

    Each request allocates container objects; with the default thresholds the
    collector runs a full (generation 2) pass every few thousand requests and
    walks every live object, which showed as a 25 ms tail in `make bench`
    (p99 47 ms -> 22 ms at 64 connections). Objects alive after start-up
    (modules, settings, the app) are moved out of the collector's reach, and
    the young generation is collected every 50,000 net allocations instead of
    700. Reference counting still frees everything that has no cycle at once.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


# -- CPU placement --------------------------------------------------------------------

# The worker CPUs pin_cpus set, for the helper threads started later and for child
# processes (the spool writer), which inherit the environment. Not a setting.
WORKER_CPUS_ENV = "_IOTGW_WORKER_CPUS"


def parse_cpus(text: str) -> frozenset[int]:
    """CPU numbers from a list as ``taskset -c`` takes it (``0``, ``2-3``, ``0,2-3``);
    empty for an empty string."""
    cpus: set[int] = set()
    for part in filter(None, text.replace(" ", "").split(",")):
        first, _, last = part.partition("-")
        low, high = int(first), int(last or first)
        if high < low:
            raise ValueError(f"CPU range {part!r} runs backwards")
        cpus.update(range(low, high + 1))
    return frozenset(cpus)


def _format_cpus(cpus: frozenset[int]) -> str:
    return ",".join(str(cpu) for cpu in sorted(cpus))


def pin_cpus(loop_cpus: str, worker_cpus: str) -> None:
    """Put the calling thread (the service's event loop) on ``loop_cpus``, and every
    other thread and the child processes started from now on on ``worker_cpus``.

    Both are CPU lists (:func:`parse_cpus`); empty leaves that side where the
    kernel puts it, except that helpers never inherit a pinned loop's CPUs: with
    ``loop_cpus`` alone they may use every CPU the process could at start. Call
    it on the event loop's thread at start-up, before the loop runs. A thread
    started later inherits its creator's CPUs, so a helper thread calls
    :func:`to_worker_cpus` first (docs/performance.md).

    Raises ValueError for a CPU this process may not run on.
    """
    loop, workers = parse_cpus(loop_cpus), parse_cpus(worker_cpus)
    if not loop and not workers:
        return
    allowed = frozenset(os.sched_getaffinity(0))
    workers = workers or allowed
    for name, cpus in (("loop", loop), ("worker", workers)):
        if not cpus <= allowed:
            raise ValueError(
                f"{name} CPUs {_format_cpus(cpus - allowed)} are not among the CPUs this"
                f" process may use ({_format_cpus(allowed)})"
            )
    os.environ[WORKER_CPUS_ENV] = _format_cpus(workers)  # read by to_worker_cpus
    _start_libuv_pool()
    settle_helpers()
    if loop:
        os.sched_setaffinity(0, loop)  # pid 0: the calling thread only


def _start_libuv_pool() -> None:
    """Start uvloop's thread pool (name resolution, file operations: one per process,
    started by its first use) now, so that it begins on every CPU and
    :func:`settle_helpers` moves it, instead of inheriting a pinned loop's CPUs."""
    try:
        import uvloop
    except ImportError:  # the services run on uvloop; without it there is no pool
        return
    loop = uvloop.new_event_loop()
    try:
        loop.run_until_complete(loop.getaddrinfo("127.0.0.1", 0))
    finally:
        loop.close()


def _worker_cpus() -> frozenset[int]:
    """The worker CPUs :func:`pin_cpus` set (here or in a parent process); empty if none."""
    return parse_cpus(os.environ.get(WORKER_CPUS_ENV, ""))


def place_helpers(loop: asyncio.AbstractEventLoop) -> None:
    """On a service's event loop, as it starts: the threads of its default executor
    (``asyncio.to_thread``) start on the worker CPUs, and threads started so far
    leave the loop's CPUs. Nothing unless :func:`pin_cpus` set worker CPUs."""
    if not _worker_cpus():
        return
    loop.set_default_executor(ThreadPoolExecutor(initializer=to_worker_cpus))
    settle_helpers()


def settle_helpers() -> None:
    """Move every thread of this process but the calling one to the worker CPUs
    :func:`pin_cpus` set, if it set any (a thread begins on its creator's CPUs)."""
    workers = _worker_cpus()
    if not workers:
        return
    me = threading.get_native_id()
    for task in os.listdir("/proc/self/task"):
        if int(task) != me:
            with contextlib.suppress(ProcessLookupError):  # a thread that just ended
                os.sched_setaffinity(int(task), workers)


def to_worker_cpus() -> None:
    """Move the calling thread (or process) to the worker CPUs :func:`pin_cpus` set,
    if it set any: for helper threads, and for the spool writer process at start."""
    workers = _worker_cpus()
    if workers:
        os.sched_setaffinity(0, workers)


def tune_process(loop_cpus: str = "", worker_cpus: str = "") -> None:
    """A service's start-up tuning, on its event loop's thread before the loop runs:
    the garbage collector (:func:`tune_gc`) and the CPUs of the loop and its
    helpers (:func:`pin_cpus`, from the service's ``*_LOOP_CPUS`` and
    ``*_WORKER_CPUS`` settings). A CPU the process may not use ends it with
    status 2, as any other configuration error."""
    tune_gc()
    try:
        pin_cpus(loop_cpus, worker_cpus)
    except ValueError as exc:
        print(f"configuration error: CPU placement: {exc}", file=sys.stderr)
        raise SystemExit(2) from None

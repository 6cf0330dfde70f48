"""Stopping background tasks, even one that lets a cancellation pass."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

log = logging.getLogger(__name__)


async def cancel_all(
    tasks: Iterable[asyncio.Task[Any]], timeout_s: float = 5.0, *, every_s: float = 0.05
) -> list[asyncio.Task[Any]]:
    """Cancel ``tasks`` and wait until they have ended, cancelling again while one runs on.

    One ``cancel()`` is not always enough. Under Python 3.11, ``asyncio.wait_for``
    returns its inner result and drops a cancellation that arrives in the loop
    iteration in which the inner awaitable finishes (CPython gh-86296, fixed in
    3.12), and redis-py sends every command through ``wait_for`` when a socket
    timeout is set. A loop cancelled while its command is being sent gets the
    reply instead and goes round again: awaiting it after one ``cancel()`` hung
    the HTTP ingest's shutdown for good (its spool-budget loop) in about one of
    60 starts and stops in a row.

    Returns the tasks still running after ``timeout_s``, each logged; a task that
    failed is logged, not raised, so one loop's error does not stop the others'
    shutdown.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    given = list(tasks)
    pending = {task for task in given if not task.done()}
    ended = [task for task in given if task.done()]
    while pending:
        for task in pending:
            task.cancel()
        left = deadline - loop.time()
        if left <= 0:
            break
        done, pending = await asyncio.wait(pending, timeout=min(every_s, left))
        ended.extend(done)
    for task in ended:
        error = None if task.cancelled() else task.exception()
        if error is not None:
            log.warning("task %s had failed: %r", task.get_name(), error)
    for task in pending:
        name = task.get_name()
        log.error("task %s did not stop within %.1f s of its cancellation", name, timeout_s)
    return list(pending)

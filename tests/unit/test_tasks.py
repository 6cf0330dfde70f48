"""cancel_all: background tasks end at shutdown, even one that lets a cancellation pass."""

from __future__ import annotations

import asyncio
import logging

import pytest
from iotgw_core.tasks import cancel_all


async def _drops_first_cancellations(seen: list[int], drops: int) -> None:
    # What a loop does when a cancellation is lost under it (asyncio.wait_for in
    # Python 3.11, used by redis-py for each command): it goes round again.
    while True:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            seen.append(1)
            if len(seen) > drops:
                raise


async def test_a_task_that_drops_cancellations_is_cancelled_again_until_it_ends() -> None:
    seen: list[int] = []
    task = asyncio.create_task(_drops_first_cancellations(seen, drops=3))
    await asyncio.sleep(0)
    assert await cancel_all([task], timeout_s=5.0, every_s=0.01) == []
    assert task.cancelled()
    assert len(seen) == 4


async def test_a_task_that_never_ends_is_returned_and_logged_after_the_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    release = asyncio.Event()
    seen: list[int] = []

    async def stubborn() -> None:
        while not release.is_set():
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                seen.append(1)

    task = asyncio.create_task(stubborn(), name="stubborn-loop")
    quick = asyncio.create_task(asyncio.sleep(3600), name="quick")
    await asyncio.sleep(0)
    with caplog.at_level(logging.ERROR, logger="iotgw_core.tasks"):
        left = await cancel_all([task, quick], timeout_s=0.3, every_s=0.05)
    assert left == [task] and quick.cancelled()
    assert len(seen) >= 3  # cancelled again, round after round
    assert "stubborn-loop did not stop within 0.3 s" in caplog.text
    release.set()
    task.cancel()
    await asyncio.wait({task}, timeout=1.0)
    assert task.done()


async def test_a_failed_task_is_logged_and_the_others_are_still_cancelled(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def fails() -> None:
        raise RuntimeError("the loop broke")

    failed = asyncio.create_task(fails(), name="broken-loop")
    running = asyncio.create_task(asyncio.sleep(3600))
    await asyncio.sleep(0)
    with caplog.at_level(logging.WARNING, logger="iotgw_core.tasks"):
        assert await cancel_all([failed, running], timeout_s=2.0) == []
    assert running.cancelled()
    assert "broken-loop had failed: RuntimeError('the loop broke')" in caplog.text


async def test_tasks_given_as_a_generator_are_all_waited_for() -> None:
    tasks = [asyncio.create_task(asyncio.sleep(3600)) for _ in range(3)]
    await asyncio.sleep(0)
    assert await cancel_all(t for t in tasks) == []
    assert all(t.cancelled() for t in tasks)

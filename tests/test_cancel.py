"""A background task that swallows a cancel (as Python 3.11's ``asyncio.timeout`` can) is still stopped."""

from __future__ import annotations

import asyncio

from service.cancel import cancel_and_wait


async def test_a_task_that_swallows_the_first_cancel_is_cancelled_again_until_it_ends() -> None:
    cancels_seen = 0

    async def stubborn() -> None:
        nonlocal cancels_seen
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                cancels_seen += 1
                if cancels_seen > 1:
                    raise

    task = asyncio.get_running_loop().create_task(stubborn())
    await asyncio.sleep(0)  # it is waiting
    await asyncio.wait_for(cancel_and_wait(task), 2.0)
    assert task.cancelled()
    assert cancels_seen == 2


async def test_a_task_that_ended_with_an_error_is_waited_for_without_a_warning() -> None:
    async def failing() -> None:
        raise RuntimeError("boom")

    task = asyncio.get_running_loop().create_task(failing())
    await asyncio.sleep(0)
    await cancel_and_wait(task)
    assert isinstance(task.exception(), RuntimeError)

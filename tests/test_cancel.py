"""A cancel that a task swallows once (as Python 3.11's wait_for can) still ends it."""

from __future__ import annotations

import asyncio

from service.cancel import cancel_and_wait


async def test_a_task_that_swallows_a_cancel_is_cancelled_again_until_it_ends() -> None:
    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if swallowed:
                    raise
                swallowed += 1

    task = asyncio.get_running_loop().create_task(stubborn())
    await asyncio.sleep(0)

    await asyncio.wait_for(cancel_and_wait(task, every_s=0.01), timeout=5)

    assert task.cancelled()
    assert swallowed == 1


async def test_a_task_that_ended_with_an_error_leaves_no_unretrieved_exception() -> None:
    async def failing() -> None:
        raise ValueError("boom")

    task = asyncio.get_running_loop().create_task(failing())
    await asyncio.sleep(0)

    await cancel_and_wait(task)

    assert isinstance(task.exception(), ValueError)

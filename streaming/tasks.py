"""Stopping helper tasks: cancel, then wait until they have really stopped."""

from __future__ import annotations

import asyncio
from typing import Any


async def cancel_and_wait(task: asyncio.Future[Any]) -> None:
    """Cancel `task` and wait for it; its result or failure is dropped.

    Its failure was already reported where it happened, or nobody waits for it any more. Our own
    cancellation still propagates, but only a new one: in a `finally` that runs because we were
    cancelled, `await task` would raise again and skip the rest of the clean-up.
    """
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)

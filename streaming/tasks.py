"""Stopping helper tasks (cancel, then wait until they have really stopped), and one-shot timers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

logger = logging.getLogger("streaming.tasks")


async def cancel_and_wait(task: asyncio.Future[Any]) -> None:
    """Cancel `task` and wait for it; its result or failure is dropped.

    Its failure was already reported where it happened, or nobody waits for it any more. Our own
    cancellation still propagates, but only a new one: in a `finally` that runs because we were
    cancelled, `await task` would raise again and skip the rest of the clean-up.
    """
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def stop_tasks(tasks: Iterable[asyncio.Task[Any]], timeout: float,
                     log: Mapping[str, Any]) -> None:
    """Cancel `tasks` (but the one running this) and wait at most `timeout` for them to stop;
    log those that had failed, and those that did not stop (an engine swallowed the
    cancellation: say so rather than hang). `log`: fields for those log records."""
    current = asyncio.current_task()
    pending = [task for task in tasks if task is not current]
    for task in pending:
        task.cancel()
    if not pending:
        return
    stopped, stuck = await asyncio.wait(pending, timeout=timeout)
    for task in stopped:
        if not task.cancelled() and task.exception() is not None:
            logger.error("session task failed: %r", task.exception(),
                         extra={"event": "session_failed", **log})
    for task in stuck:
        logger.error("task did not stop when cancelled: %s", task.get_name(),
                     extra={"event": "task_leaked", **log})


class OneShotTimer:
    """At most one pending `callback` on the running loop: `start` replaces it, `cancel` drops it."""

    def __init__(self, callback: Callable[[], None]) -> None:
        self._callback = callback
        self._handle: asyncio.TimerHandle | None = None

    @property
    def pending(self) -> bool:
        return self._handle is not None

    def start(self, delay: float) -> None:
        self.cancel()
        self._handle = asyncio.get_running_loop().call_later(delay, self._fire)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _fire(self) -> None:
        self._handle = None
        self._callback()

"""Stopping helper tasks (cancel, then wait until they have really stopped), one-shot timers,
and something to do meanwhile when an answer is slow."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, TypeVar

logger = logging.getLogger("streaming.tasks")

T = TypeVar("T")


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


async def meanwhile(work: Awaitable[T], after: float, cue: Callable[[], Awaitable[object]]) -> T:
    """`work`'s result (or its error). When it takes longer than `after` seconds (0: never),
    `cue()` runs meanwhile, once, and this returns only when the cue is over too: what follows
    never overlaps it. A failing cue raises at once, and `work` is cancelled."""
    if after <= 0:
        return await work
    task = asyncio.ensure_future(work)
    started: asyncio.Task[object] | None = None
    try:
        await asyncio.wait((task,), timeout=after)
        if not task.done():
            started = asyncio.ensure_future(cue())
            pending: set[asyncio.Future[Any]] = {task, started}
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_EXCEPTION)
                if started in done:
                    started.result()
        return task.result()
    finally:
        for job in (task, started):
            if job is not None and not job.done():
                await cancel_and_wait(job)

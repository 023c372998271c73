"""Ending asyncio tasks without swallowing the caller's own cancellation.

The usual teardown idiom, ``task.cancel()`` then ``with suppress(CancelledError): await task``,
cannot tell the task's CancelledError (expected) from one delivered to the caller while it
waits (a hang-up, a shutdown with a deadline), and silently swallows the latter: the caller
then carries on with work it was told to stop. :func:`cancel_and_wait` absorbs only the first.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

__all__ = ["cancel_and_wait"]


async def cancel_and_wait(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` and wait until it has finished.

    The task's own cancellation is absorbed. A cancellation of the calling task that arrives
    while it waits propagates (a new cancel request is one that raises
    :meth:`asyncio.Task.cancelling` above its value on entry, so this also works inside
    cleanup code already running because of an earlier cancellation). An exception the task
    raised instead of being cancelled propagates as well.

    Args:
        task: the task to end; done tasks are fine.

    Raises:
        asyncio.CancelledError: the caller itself was cancelled while waiting.
    """
    current = asyncio.current_task()
    before = current.cancelling() if current is not None else 0
    task.cancel()
    # The task's CancelledError, or the caller's own while it waits: told apart just below.
    with contextlib.suppress(asyncio.CancelledError):
        await task
    # Checked whether or not ``task`` raised: a cancellation of the caller while it waited is
    # handed on to ``task``, which may absorb it and return normally.
    if current is not None and current.cancelling() > before:
        raise asyncio.CancelledError

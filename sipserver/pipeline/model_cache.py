"""Models loaded once per process, shared by every session that uses the same file and settings.

Loading takes a lock, so two sessions that ask at once load a model once; :meth:`ModelCache.aget`
loads on a thread the first time (loading reads hundreds of MB and would stall the event loop)
and returns the cached model directly afterwards.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

__all__ = ["ModelCache", "loaded_models"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class ModelCache(Generic[K, V]):
    """Loaded models by key (path, threads, ...)."""

    __slots__ = ("__weakref__", "_items", "_lock")

    def __init__(self) -> None:
        self._items: dict[K, V] = {}
        self._lock = threading.Lock()
        _caches.add(self)

    def get(self, key: K, load: Callable[[K], V]) -> V:
        """The model of ``key``, loaded now with ``load(key)`` (blocking) if it is not yet."""
        with self._lock:
            item = self._items.get(key)
            if item is None:
                item = load(key)
                self._items[key] = item
            return item

    async def aget(self, key: K, load: Callable[[K], V]) -> V:
        """Like :meth:`get`, loading on a thread so the event loop never waits for it."""
        item = self._items.get(key)
        if item is not None:
            return item
        return await asyncio.to_thread(self.get, key, load)

    def peek(self, key: K) -> V | None:
        """The model of ``key`` if it is loaded, else None (never loads)."""
        return self._items.get(key)


_caches: weakref.WeakSet[ModelCache[Any, Any]] = weakref.WeakSet()


def loaded_models() -> int:
    """Models (STT, TTS, turn, VAD sessions) this process has loaded, over every cache: 0 in
    a main process whose calls' sessions all run in call workers (``/status`` says it)."""
    return sum(len(cache._items) for cache in list(_caches))

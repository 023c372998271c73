"""The process-wide count of loaded models (``/status`` ``models_loaded``)."""

from __future__ import annotations

import gc

from sipserver.pipeline.model_cache import ModelCache, loaded_models


async def test_loaded_models_counts_every_cache_and_forgets_dropped_ones() -> None:
    before = loaded_models()
    first: ModelCache[str, object] = ModelCache()
    second: ModelCache[str, object] = ModelCache()
    assert loaded_models() == before  # a cache is not a model
    assert first.peek("a") is None and loaded_models() == before  # peek never loads
    loads: list[str] = []
    first.get("a", lambda k: loads.append(k) or object())
    first.get("a", lambda k: loads.append(k) or object())  # loaded once
    await second.aget("b", lambda k: object())
    assert loads == ["a"]
    assert loaded_models() == before + 2
    del second
    gc.collect()
    assert loaded_models() == before + 1

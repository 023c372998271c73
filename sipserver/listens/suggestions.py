"""Suggestions for the human agent: moved to :mod:`sipserver.pipeline.suggestions` (a call
worker makes them too); these names stay importable from here."""

from sipserver.pipeline.suggestions import (
    NO_SUGGESTION,
    Source,
    Suggestion,
    SuggestionEngine,
    suggestion_prompt,
)

__all__ = ["NO_SUGGESTION", "Source", "Suggestion", "SuggestionEngine", "suggestion_prompt"]

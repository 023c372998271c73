"""The stable JSON of AI Listens items, carried from a call worker to the main process's hub.

A call worker runs a monitored call's transcription and suggestions
(:class:`~sipserver.pipeline.listening.ListenedCall`); the dashboard's hub lives in the main
process. Every item the worker publishes travels in a frame link EVENT record
(``{"call": n, "event": {...}}``, docs/framelink.md "AI Listens items") as one of these objects:

==============================  ===========================================================
``type``                        fields
==============================  ===========================================================
``listens_started``             ``call_id``, ``agent``, ``number``, ``caller``, ``channel``,
                                ``transport`` (str), ``started_at`` (unix time)
``listens_transcript``          ``speaker`` (``caller``/``agent``/``mixed``), ``text``,
                                ``offset`` (s into the track), ``at`` (unix time)
``listens_suggestion_delta``    ``text`` (a streamed piece of a suggestion)
``listens_suggestion``          ``text``, ``sources`` (list of ``{title, source, score,
                                text}``), ``utterance``, ``mode`` (``passage``/``llm``), ``at``
``listens_ended``               ``reason``, ``lines``, ``dropped`` (int), ``suggestions_skipped``
                                (object: reason -> count)
==============================  ===========================================================

The items' bodies are exactly what the dashboard receives (the hub publishes them unchanged),
so the SSE stream is the same wherever the call was transcribed. An unknown ``type`` is not a
listens item (:func:`listens_item_from_json` returns None); a known one with a missing or
mistyped field raises :class:`ValueError` (the receiver logs and drops it, never a link error).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

__all__ = [
    "LISTENS_EVENT_PREFIX",
    "ListensItem",
    "listens_item_from_json",
    "listens_item_to_json",
]

LISTENS_EVENT_PREFIX: Final = "listens_"
"""Every listens item's ``type`` starts with this."""

ItemKind = Literal["started", "transcript", "suggestion_delta", "suggestion", "ended"]

_FIELDS: Final[dict[str, dict[str, tuple[type, ...]]]] = {
    "started": {
        "call_id": (str,),
        "agent": (str,),
        "number": (str,),
        "caller": (str,),
        "channel": (str,),
        "transport": (str,),
        "started_at": (int, float),
    },
    "transcript": {
        "speaker": (str,),
        "text": (str,),
        "offset": (int, float),
        "at": (int, float),
    },
    "suggestion_delta": {"text": (str,)},
    "suggestion": {
        "text": (str,),
        "sources": (list,),
        "utterance": (str,),
        "mode": (str,),
        "at": (int, float),
    },
    "ended": {
        "reason": (str,),
        "lines": (int,),
        "dropped": (int,),
        "suggestions_skipped": (dict,),
    },
}


@dataclass(frozen=True, slots=True)
class ListensItem:
    """One AI Listens item of a monitored call.

    Attributes:
        kind: ``started``, ``transcript``, ``suggestion_delta``, ``suggestion`` or ``ended``.
        data: its fields (the JSON object without ``type``).
    """

    kind: ItemKind
    data: Mapping[str, Any]


def listens_item_to_json(kind: ItemKind, data: Mapping[str, Any]) -> dict[str, Any]:
    """The EVENT payload of an item (``{"type": "listens_<kind>", **data}``).

    Raises:
        ValueError: a field is missing or of the wrong type (a bug of the sender).
    """
    _check(kind, data)
    return {"type": LISTENS_EVENT_PREFIX + kind, **data}


def listens_item_from_json(obj: Mapping[str, Any]) -> ListensItem | None:
    """The item of :func:`listens_item_to_json`'s form.

    Returns:
        The item; None when ``type`` is not a listens item this version knows.

    Raises:
        ValueError: a known type with a missing or mistyped field.
    """
    kind = obj.get("type")
    if not isinstance(kind, str) or not kind.startswith(LISTENS_EVENT_PREFIX):
        return None
    name = kind[len(LISTENS_EVENT_PREFIX) :]
    if name not in _FIELDS:
        return None
    data = {k: v for k, v in obj.items() if k != "type"}
    _check(name, data)
    return ListensItem(name, data)  # type: ignore[arg-type]  # checked: a key of _FIELDS


def _check(kind: str, data: Mapping[str, Any]) -> None:
    fields = _FIELDS.get(kind)
    if fields is None:
        raise ValueError(f"unknown listens item kind {kind!r}")
    for key, types in fields.items():
        value = data.get(key)
        if isinstance(value, bool) or not isinstance(value, types):
            names = " or ".join(t.__name__ for t in types)
            raise ValueError(f"listens_{kind}: {key!r} must be {names}, got {value!r}")

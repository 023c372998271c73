"""The settings of a custom realtime voice model as the console's model page shows them.

One entry per key of :class:`sipserver.config.CustomModel`'s settings, grouped as the product's
page groups them (Interruption Handling, VAD, Audio Feedback, Other, Turn Detection), each with
its label, unit, bounds and help text. The help text says what the setting changes, as
docs/pipeline.md's settings table does; defaults come from the configuration's own models, so
the page never shows a default the server does not use. ``tests/unit/test_model_fields.py``
checks that every setting of the model is here and every key here is a setting.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from sipserver.config import SHIPPED_SOUNDS, CustomModel, LiveKitInferenceModel
from sipserver.pipeline.providers.registry import LLM_PROVIDERS, STT_PROVIDERS, TTS_PROVIDERS

__all__ = ["GROUPS", "Field", "page_schema"]


@dataclass(frozen=True, slots=True)
class Field:
    """One setting on the page.

    Attributes:
        key: Dotted key under the model (``vad.min_speech_duration``).
        label: The field's label.
        kind: ``number``, ``integer``, ``boolean``, ``choice`` or ``sound``.
        help: What it changes.
        unit: Shown after the input (``s``, ``Hz``, ``words``), or empty.
        minimum: Smallest value, or None.
        maximum: Largest value, or None.
        choices: The values of a ``choice`` (a ``sound`` offers the shipped clips).
    """

    key: str
    label: str
    kind: str
    help: str
    unit: str = ""
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()


GROUPS: Final[tuple[tuple[str, tuple[Field, ...]], ...]] = (
    (
        "Interruption Handling",
        (
            Field("interruptions.allow_interruptions", "Allow interruptions", "boolean",
                  "Caller speech may stop the agent while it speaks. Off: speech over the "
                  "agent neither pauses it nor becomes a turn."),
            Field("interruptions.min_interruption_duration", "Minimum interruption duration",
                  "number", "Speech shorter than this never interrupts (a 0.3 s cough pauses "
                  "the agent with 0.2, not with 0.5).", "s", 0),
            Field("interruptions.min_interruption_words", "Minimum interruption words",
                  "integer", "Words the STT must hear before speech counts as an interruption "
                  "(0: any speech). With 3, the pause waits for 3 words.", "words", 0),
            Field("interruptions.false_interruption_timeout", "False interruption timeout",
                  "number", "No transcript within this time after the agent paused: the "
                  "interruption was false (a noise).", "s", 0),
            Field("interruptions.resume_false_interruption", "Resume after a false interruption",
                  "boolean", "On: the agent resumes where it paused and the whole reply is "
                  "heard. Off: it stops; the history keeps the part that was heard."),
        ),
    ),
    (
        "VAD",
        (
            Field("vad.min_speech_duration", "Minimum speech duration", "number",
                  "Shorter blips are not speech.", "s", 0),
            Field("vad.min_silence_duration", "Minimum silence duration", "number",
                  "Silence that ends a speech segment.", "s", 0),
            Field("vad.activation_threshold", "Activation threshold", "number",
                  "Silero speech probability above which audio is speech (released 0.15 "
                  "below it).", "0..1", 0, 1),
            Field("vad.prefix_padding_duration", "Prefix padding duration", "number",
                  "Audio kept before the start of speech and sent to the STT with it.", "s", 0),
            Field("vad.max_buffered_speech", "Maximum buffered speech", "number",
                  "Cap on one utterance's audio: a longer one reaches the STT cut to this.",
                  "s", 0),
            Field("vad.sample_rate", "Sample rate", "choice",
                  "Rate the VAD runs at; the caller's audio is resampled once. Telephony "
                  "audio is 8 kHz.", "Hz", choices=("8000", "16000")),
        ),
    ),
    (
        "Audio Feedback",
        (
            Field("audio_feedback.enabled", "Play audio feedback", "boolean",
                  "Off: neither the thinking sound nor the ambient sound plays."),
            Field("audio_feedback.thinking_sound", "Thinking sound", "sound",
                  "Mixed in only while the agent prepares its reply, with 100 ms fades. A "
                  "shipped clip or the path of an audio file (relative to the configuration "
                  "file's directory).", choices=SHIPPED_SOUNDS),
            Field("audio_feedback.thinking_volume", "Thinking volume", "number",
                  "0.8 plays it twice as loud (RMS) as 0.4.", "0..1", 0, 1),
            Field("audio_feedback.ambient_sound", "Ambient sound", "sound",
                  "Loops under the whole call; none: silence.",
                  choices=(*SHIPPED_SOUNDS, "none")),
            Field("audio_feedback.ambient_volume", "Ambient volume", "number",
                  "Volume of the ambient bed.", "0..1", 0, 1),
        ),
    ),
    (
        "Other",
        (
            Field("preemptive_generation", "Preemptive generation", "boolean",
                  "Start the LLM on the final transcript before the end of turn is committed; "
                  "the reply is dropped if the caller goes on. The first reply starts sooner."),
        ),
    ),
    (
        "Turn Detection",
        (
            Field("turn_detection.model", "Turn detection model", "choice",
                  "vad: silence only (the minimum delay); multilingual / english: Smart Turn "
                  "v3.2, offline; stt: the STT provider's own end of turn.",
                  choices=("multilingual", "english", "vad", "stt")),
            Field("endpointing.min_endpointing_delay", "Minimum endpointing delay", "number",
                  "Silence before the end of turn when the turn model says the caller is done.",
                  "s", 0),
            Field("endpointing.max_endpointing_delay", "Maximum endpointing delay", "number",
                  "Silence that forces the end of turn when the turn model is unsure. Equal "
                  "to the minimum: the turn model is never asked.", "s", 0),
        ),
    ),
)  # fmt: skip
"""The groups of the page, in order, with their fields."""

_STAGE_OPTIONS: Final = {"stt": ("model", "language"), "llm": ("model",), "tts": ("model", "voice")}

_LIVEKIT_HELP: Final = {
    key: (LiveKitInferenceModel.model_fields[key].description or "").replace("``", "")
    for key in ("stt", "llm", "tts")
}


def _default(key: str) -> Any:
    value: Any = CustomModel()
    for part in key.split("."):
        value = getattr(value, part)
    return value


def page_schema() -> dict[str, Any]:
    """What the model page needs to draw its form (sent as JSON in the page).

    Returns:
        ``groups`` (each ``{title, fields: [{key, label, kind, help, unit, min, max, choices,
        default}]}``), ``providers`` per stage, ``stage_options`` (the provider options the
        page edits per stage), ``sounds`` (the shipped clips) and ``livekit_help``.
    """
    groups = [
        {
            "title": title,
            "fields": [
                {
                    "key": f.key,
                    "label": f.label,
                    "kind": f.kind,
                    "help": f.help,
                    "unit": f.unit,
                    "min": f.minimum,
                    "max": f.maximum,
                    "choices": list(f.choices),
                    "default": _default(f.key),
                }
                for f in fields
            ],
        }
        for title, fields in GROUPS
    ]
    return {
        "groups": groups,
        "providers": {
            "stt": sorted(STT_PROVIDERS),
            "llm": sorted(LLM_PROVIDERS),
            "tts": sorted(TTS_PROVIDERS),
        },
        "stage_options": {stage: list(keys) for stage, keys in _STAGE_OPTIONS.items()},
        "sounds": list(SHIPPED_SOUNDS),
        "livekit_help": _LIVEKIT_HELP,
    }

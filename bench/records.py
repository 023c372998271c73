"""Call records benchmark: what a call's record and recording cost, 50 concurrent calls.

Each call is an echo session fed the same conversation (bench/recording.py's espeak-ng turns)
one 20 ms tick at a time, every call per tick in turn as a call worker's media clock does, as
fast as the loop goes. Two runs of the same calls:

- **bare**: the sessions alone;
- **records**: each session wrapped by the session tap (:class:`RecordedSession`) with an Ogg/Opus
  stereo recording (:class:`CallRecording`, one encoder thread for all), its record events and,
  every ``--turn-every`` seconds of a call, a caller line, a turn with its latency stages and an
  agent line, JSON-encoded and decoded as the frame link carries them, into a
  :class:`CallRecordBook` writing to a :class:`RecordStore` (SQLite in a temporary directory)
  as the main process does; the records are closed and the files finished at the end.

The figure is the difference of the process's CPU time (all threads) between the two runs,
divided by the seconds of call audio: CPU per call-second, i.e. the fraction of a core each
call costs (1 ms per call-second = 0.1% of a core per call). The issue's target for records +
recording: under 0.3% of a core per call. What the run leaves out: the frame link's socket
writes of the record EVENTs (a few per turn) and the webhooks (none configured).

Usage::

    python -m bench.records                   # 50 calls x 30 s, Opus stereo at 8 kHz
    python -m bench.records --calls 20 --seconds 10 --rate 16000 --format wav
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.recording import conversation, machine
from sipserver.media.recording import CallRecording, RecordingEncoder
from sipserver.pipeline.call_record import RecordEvent
from sipserver.pipeline.echo import EchoSession
from sipserver.pipeline.record_tap import RecordedSession, record_batch
from sipserver.pipeline.session import CallInfo, CallSession
from sipserver.records.book import CallRecordBook
from sipserver.records.store import RecordStore


def _turn_events(offset: float, index: int) -> list[RecordEvent]:
    """What one turn adds to a record (the sizes of a real turn's events)."""
    stages = {"end_of_turn": 620, "stt": 410, "turn_model": 46, "llm": 120, "tts": 180}
    return [
        RecordEvent(
            "transcript",
            offset - 2.0,
            {"speaker": "caller", "text": "How much does it cost to call Lakeside?", "end": offset},
        ),
        RecordEvent(
            "turn",
            offset,
            {
                "index": index,
                "text": "How much does it cost to call Lakeside?",
                "preemptive": True,
                "stages": {**stages, "transport": 20},
                "voice_to_voice": 940,
            },
        ),
        RecordEvent(
            "transcript",
            offset + 1.0,
            {
                "speaker": "agent",
                "text": "Calls to Lakeside cost five cents a minute during the day.",
                "end": offset + 4.0,
                "interrupted": False,
            },
        ),
    ]


def run(
    calls: int,
    caller: np.ndarray,
    agent: np.ndarray,
    *,
    rate: int,
    records: bool,
    fmt: str,
    turn_every: float,
) -> float:
    """CPU seconds (all threads) of ``calls`` calls of the conversation, with or without records."""
    size = rate // 50
    ticks = caller.size // size
    caller_frames = [caller[i * size : (i + 1) * size].tobytes() for i in range(ticks)]
    turn_ticks = max(1, int(turn_every * 50))
    greeting = np.zeros(size * 10, np.int16).tobytes()
    with tempfile.TemporaryDirectory() as tmp:
        store = RecordStore(Path(tmp) / "records.db", flush_interval=0.5)
        store.open()
        book = CallRecordBook(store, max_open=calls * 2)
        encoder = RecordingEncoder(max_chunks=calls * (ticks // 50 + 1))
        encoder.start()
        cpu0 = time.process_time()
        sessions: list[CallSession] = []
        recordings: list[CallRecording] = []
        for i in range(calls):
            info = CallInfo(f"call-{i}", "support", "+14155550123", "+15005550100", rate, "sip")
            inner = EchoSession(greeting, sample_rate=rate)
            if not records:
                session: CallSession = inner
            else:
                book.open(i, agent="support", ingress="sip", caller=info.caller, codec="PCMU")

                def emit(events: list[RecordEvent], key: int = i) -> None:
                    # As a call worker sends them and main reads them: JSON over the link.
                    wire = json.loads(json.dumps(record_batch(events)))
                    book.add_json(key, wire["events"])

                rec = CallRecording(
                    Path(tmp) / f"{i}.{fmt}",
                    sample_rate=rate,
                    channels="stereo",
                    format=fmt,
                    encoder=encoder,
                )
                recordings.append(rec)
                session = RecordedSession(inner, emit, recorder=rec)
            session.on_start(info)
            sessions.append(session)
        for k in range(ticks):
            frame = caller_frames[k]
            for session in sessions:
                session.on_audio(frame)
                session.next_frame()
            if records and k % turn_ticks == turn_ticks - 1:
                for i in range(calls):
                    wire = json.loads(json.dumps(record_batch(_turn_events(k / 50, k))))
                    book.add_json(i, wire["events"])
        for i, session in enumerate(sessions):
            session.on_hangup("bye")
            if records:
                book.close(i, end_reason="caller_bye", ended_by="caller")
        for rec in recordings:
            rec.future.result(timeout=600)
        store.flush()
        cpu = time.process_time() - cpu0
        encoder.stop()
        store.close()
    return cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--rate", type=int, default=8000, choices=(8000, 16000))
    parser.add_argument("--format", default="opus", choices=("opus", "wav"))
    parser.add_argument("--turn-every", type=float, default=6.0, help="seconds between turns")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each kind (best kept)")
    args = parser.parse_args()
    caller, agent = conversation(args.rate, args.seconds)
    audio = args.calls * (caller.size // (args.rate // 50)) * 0.02
    print(f"machine: {machine()}")
    print(
        f"{args.calls} calls x {args.seconds:g} s at {args.rate} Hz, {args.format} stereo, "
        f"a turn every {args.turn_every:g} s; best of {args.repeat}"
    )
    bare = min(
        run(
            args.calls,
            caller,
            agent,
            rate=args.rate,
            records=False,
            fmt=args.format,
            turn_every=args.turn_every,
        )
        for _ in range(args.repeat)
    )
    full = min(
        run(
            args.calls,
            caller,
            agent,
            rate=args.rate,
            records=True,
            fmt=args.format,
            turn_every=args.turn_every,
        )
        for _ in range(args.repeat)
    )
    extra = (full - bare) / audio * 1000
    print(f"bare sessions:   {bare / audio * 1000:6.3f} ms CPU per call-second")
    print(f"with records:    {full / audio * 1000:6.3f} ms CPU per call-second")
    print(
        f"records + recording: {extra:.3f} ms per call-second = {extra / 10:.3f}% of a core "
        "per call (target < 0.3%)"
    )


if __name__ == "__main__":
    main()

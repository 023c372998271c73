"""sipserver.media.recording: channel placement, alignment on the call's clock, formats, file
modes, a full queue, failures, and the agents[].recording settings.

Every file is decoded back with PyAV. Ogg/Opus decodes at 48 kHz with the pre-skip applied by
FFmpeg, so times are compared in seconds; WAV is bit-exact and checked sample by sample.
"""

from __future__ import annotations

import dataclasses
import os
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path

import av
import numpy as np
import numpy.typing as npt
import pytest
import yaml
from prometheus_client import CollectorRegistry

from sipserver.config import ConfigError, parse_config
from sipserver.media.recording import (
    CallRecording,
    RecordingEncoder,
    RecordingError,
    RecordingFile,
    recording_path,
)

WAIT = 60.0
"""Seconds to wait for the encoder thread (generous: a loaded CI machine)."""


@pytest.fixture
def encoder() -> Iterator[RecordingEncoder]:
    enc = RecordingEncoder(registry=CollectorRegistry())
    yield enc
    enc.stop(timeout=WAIT)


def decode(path: str | Path) -> tuple[int, npt.NDArray[np.float64]]:
    """(sample rate, channels x samples in [-1, 1]) of a recording."""
    planes: list[npt.NDArray[np.float64]] = []
    rate = 0
    with av.open(str(path)) as container:
        for frame in container.decode(audio=0):
            rate = frame.sample_rate
            data = frame.to_ndarray()
            channels = len(frame.layout.channels)
            if not frame.format.is_planar:
                data = data.reshape(-1, channels).T
            scale = 32768.0 if data.dtype == np.int16 else 1.0
            planes.append(data.astype(np.float64) / scale)
    return rate, np.concatenate(planes, axis=1)


def tone(freq: float, rate: int, ticks: int, amplitude: float = 8000.0) -> list[bytes]:
    """``ticks`` 20 ms frames of a sine at ``freq`` Hz."""
    n = rate // 50
    t = np.arange(ticks * n) / rate
    pcm = (amplitude * np.sin(2 * np.pi * freq * t)).astype("<i2")
    return [pcm[i * n : (i + 1) * n].tobytes() for i in range(ticks)]


def click(rate: int) -> bytes:
    """A frame starting with a 2 ms burst of 1 kHz at full level, then silence."""
    n = rate // 50
    pcm = np.zeros(n, "<i2")
    m = rate // 500
    pcm[:m] = (30000 * np.sin(2 * np.pi * 1000 * np.arange(m) / rate)).astype("<i2")
    return pcm.tobytes()


def constant(value: int, rate: int) -> bytes:
    """A frame whose every sample is ``value`` (identifies a frame in a WAV file)."""
    return np.full(rate // 50, value, "<i2").tobytes()


def rms(x: npt.NDArray[np.float64]) -> float:
    return float(np.sqrt(np.mean(np.square(x)))) if x.size else 0.0


def peak_frequency(x: npt.NDArray[np.float64], rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[int(np.argmax(spectrum))])


def record(
    path: Path,
    encoder: RecordingEncoder,
    ticks: Sequence[tuple[Sequence[bytes], bytes]],
    *,
    rate: int,
    channels: str = "stereo",
    format: str = "wav",
    max_caller_lead: int = 5,
) -> tuple[CallRecording, RecordingFile]:
    rec = CallRecording(
        path,
        sample_rate=rate,
        channels=channels,
        format=format,
        encoder=encoder,
        max_caller_lead=max_caller_lead,
    )
    for caller, agent in ticks:
        rec.add(caller, agent)
    rec.close()
    return rec, rec.future.result(timeout=WAIT)


# --- channels --------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["opus", "wav"])
@pytest.mark.parametrize("rate", [8000, 16000])
def test_stereo_puts_the_caller_left_and_the_agent_right(
    tmp_path: Path, encoder: RecordingEncoder, fmt: str, rate: int
) -> None:
    silence = bytes(rate // 50 * 2)
    caller = tone(440.0, rate, 100)
    agent = tone(1250.0, rate, 100, amplitude=6000.0)
    # 0-2 s the caller talks, 2-3 s nobody, 3-5 s the agent answers.
    ticks = [([c], silence) for c in caller] + [([], silence)] * 50
    ticks += [([], a) for a in agent]
    _, info = record(tmp_path / f"call.{fmt}", encoder, ticks, rate=rate, format=fmt)

    out_rate, audio = decode(info.path)
    assert audio.shape[0] == 2
    left, right = audio

    def span(x: npt.NDArray[np.float64], start: float, end: float) -> npt.NDArray[np.float64]:
        return x[int(start * out_rate) : int(end * out_rate)]

    # The caller's tone on the left only, the agent's on the right only.
    assert rms(span(left, 0.2, 1.8)) > 0.1
    assert rms(span(right, 0.2, 1.8)) < 0.01 * rms(span(left, 0.2, 1.8))
    assert rms(span(right, 3.2, 4.8)) > 0.08
    assert rms(span(left, 3.2, 4.8)) < 0.01 * rms(span(right, 3.2, 4.8))
    assert abs(peak_frequency(span(left, 0.2, 1.8), out_rate) - 440.0) < 10.0
    assert abs(peak_frequency(span(right, 3.2, 4.8), out_rate) - 1250.0) < 10.0
    assert rms(span(left, 2.2, 2.8)) < 0.01 and rms(span(right, 2.2, 2.8)) < 0.01

    assert info.duration == pytest.approx(5.0)
    assert audio.shape[1] == pytest.approx(5.0 * out_rate, abs=out_rate // 50)
    assert (info.format, info.channels, info.sample_rate) == (fmt, "stereo", rate)
    assert info.bytes == os.path.getsize(info.path) > 0
    assert Path(info.path).is_absolute()


@pytest.mark.parametrize("fmt", ["opus", "wav"])
def test_mixed_is_one_channel_with_both_parties(
    tmp_path: Path, encoder: RecordingEncoder, fmt: str
) -> None:
    rate = 16000
    silence = bytes(rate // 50 * 2)
    ticks = [([c], silence) for c in tone(440.0, rate, 50)]
    ticks += [([], a) for a in tone(1250.0, rate, 50)]
    _, info = record(tmp_path / "m", encoder, ticks, rate=rate, channels="mixed", format=fmt)
    out_rate, audio = decode(info.path)
    assert audio.shape[0] == 1
    first, second = audio[0][:out_rate], audio[0][out_rate : 2 * out_rate]
    assert abs(peak_frequency(first[out_rate // 10 :], out_rate) - 440.0) < 10.0
    assert abs(peak_frequency(second[out_rate // 10 :], out_rate) - 1250.0) < 10.0
    assert info.channels == "mixed"


def test_mixed_never_clips_when_both_talk_loudly(tmp_path: Path, encoder: RecordingEncoder) -> None:
    rate = 8000
    loud = constant(30000, rate)
    quiet = constant(3000, rate)
    ticks = [([loud], loud)] * 25 + [([quiet], quiet)] * 25
    _, info = record(tmp_path / "m.wav", encoder, ticks, rate=rate, channels="mixed")
    with av.open(info.path) as container:
        pcm = np.concatenate([f.to_ndarray()[0] for f in container.decode(audio=0)])
    loud_part, quiet_part = pcm[: rate // 2], pcm[rate // 2 :]
    # Full-scale sums are compressed below full scale, not flattened at it...
    assert 16384 < int(loud_part.max()) < 32767
    # ...and ordinary levels pass unchanged.
    assert set(quiet_part.tolist()) == {6000}


# --- alignment -------------------------------------------------------------------------------


def arrivals(frames: Sequence[bytes], pattern: str) -> list[list[bytes]]:
    """The caller frames each tick receives: ``steady`` (one per tick), ``late`` (every 7th
    frame comes one tick late, with the next one), ``chunked`` (a client sending 100 ms at a
    time: five frames every fifth tick, when the last of them is due)."""
    ticks: list[list[bytes]] = [[] for _ in frames]
    for k, frame in enumerate(frames):
        if pattern == "steady":
            due = k
        elif pattern == "late":
            due = k + 1 if k % 7 == 3 else k
        else:
            due = k - k % 5 + 4
        ticks[min(due, len(frames) - 1)].append(frame)
    return ticks


@pytest.mark.parametrize("pattern", ["steady", "late", "chunked"])
@pytest.mark.parametrize("fmt", ["opus", "wav"])
@pytest.mark.parametrize("rate", [8000, 16000])
def test_a_click_at_tick_k_is_at_k_times_20_ms(
    tmp_path: Path, encoder: RecordingEncoder, fmt: str, rate: int, pattern: str
) -> None:
    silence = bytes(rate // 50 * 2)
    caller_tick, agent_tick = 123, 201
    caller = [click(rate) if k == caller_tick else silence for k in range(300)]
    agent = [click(rate) if k == agent_tick else silence for k in range(300)]
    ticks = list(zip(arrivals(caller, pattern), agent, strict=True))
    _, info = record(tmp_path / "click", encoder, ticks, rate=rate, format=fmt)
    out_rate, (left, right) = decode(info.path)
    frame = 0.020
    assert np.argmax(np.abs(left)) / out_rate == pytest.approx(caller_tick * frame, abs=frame)
    assert np.argmax(np.abs(right)) / out_rate == pytest.approx(agent_tick * frame, abs=frame)
    assert info.duration == pytest.approx(300 * frame)


def frames_in(path: str, rate: int) -> tuple[list[int], list[int]]:
    """The value of each 20 ms frame of a stereo WAV file of constant frames, per channel."""
    with av.open(path) as container:
        pcm = np.concatenate([f.to_ndarray()[0] for f in container.decode(audio=0)])
    stereo = pcm.reshape(-1, 2)
    n = rate // 50
    assert len(stereo) % n == 0
    left = stereo[:, 0].reshape(-1, n)
    right = stereo[:, 1].reshape(-1, n)
    assert (left == left[:, :1]).all() and (right == right[:, :1]).all()  # frames stay whole
    return left[:, 0].tolist(), right[:, 0].tolist()


def test_gaps_become_silence_and_bursts_fill_back_then_run_ahead_within_the_lead(
    tmp_path: Path, encoder: RecordingEncoder
) -> None:
    rate = 8000
    plan: list[list[int]] = []  # caller frame values arriving at each tick
    plan += [[k + 1] for k in range(10)]  # ticks 0-9: one frame each
    plan += [[], [], []]  # ticks 10-12: nothing arrived: silence
    plan += [[101, 102, 103]]  # tick 13: 2 late frames take 11 and 12 back, 103 on 13
    plan += [[104]]  # tick 14
    plan += [[], []]  # ticks 15-16: silence
    plan += [[201]]  # tick 17: one frame after a pause is this tick's (no fill-back)
    plan += [[] for _ in range(3)]  # ticks 18-20: silence
    plan += [list(range(301, 311))]  # tick 21: 10 frames: 3 fill 18-20, 6 run to 26, 1 dropped
    plan += [[] for _ in range(5)]  # ticks 22-26: the track is ahead, no silence added
    plan += [[400 + k] for k in range(27, 40)]  # ticks 27-39: one frame each, on time
    plan += [[500, 501, 502]]  # tick 40, the last: 500 on it, the rest cut off at close
    ticks = [
        ([constant(v, rate) for v in values], constant(-(k + 1), rate))
        for k, values in enumerate(plan)
    ]
    rec, info = record(tmp_path / "a.wav", encoder, ticks, rate=rate, max_caller_lead=5)

    left, right = frames_in(info.path, rate)
    assert right == [-(k + 1) for k in range(41)]  # one agent frame per tick, in order
    expected = [k + 1 for k in range(10)] + [0, 101, 102, 103, 104, 0, 0, 201]
    expected += list(range(301, 310)) + [400 + k for k in range(27, 40)] + [500]
    assert left == expected
    assert rec.dropped_frames == 1
    assert encoder.stats()["dropped_frames"] == 1
    assert info.duration == pytest.approx(41 * 0.020)


def test_late_packets_land_on_their_tick_across_chunks(
    tmp_path: Path, encoder: RecordingEncoder
) -> None:
    """A packet one tick late (nothing, then two frames) is put back on its own tick, also
    where the tick straddles a one-second hand-over; the rest of the call is untouched."""
    rate = 16000
    late = {3, 49, 52, 99, 101, 150, 199, 248}
    plan: list[list[int]] = []
    for k in range(260):
        if k in late:
            plan.append([])
        elif k - 1 in late:
            plan.append([k, k + 1])  # frame k (value k) arrived with frame k + 1
        else:
            plan.append([k + 1])
    ticks = [([constant(v, rate) for v in values], constant(7, rate)) for values in plan]
    _, info = record(tmp_path / "c.wav", encoder, ticks, rate=rate)
    left, right = frames_in(info.path, rate)
    assert left == [k + 1 for k in range(260)]
    assert right == [7] * 260


def test_odd_frame_lengths_are_cut_or_padded(tmp_path: Path, encoder: RecordingEncoder) -> None:
    rate = 8000
    short = np.full(100, 9, "<i2").tobytes()
    long = np.full(200, 5, "<i2").tobytes()
    _, info = record(tmp_path / "o.wav", encoder, [([short], long)] * 3, rate=rate)
    with av.open(info.path) as container:
        pcm = np.concatenate([f.to_ndarray()[0] for f in container.decode(audio=0)])
    stereo = pcm.reshape(-1, 2)
    assert len(stereo) == 3 * 160
    assert stereo[:100, 0].tolist() == [9] * 100 and stereo[100:160, 0].tolist() == [0] * 60
    assert set(stereo[:, 1].tolist()) == {5}


def test_the_file_facts_are_the_call_records_recording_info() -> None:
    fields = [f.name for f in dataclasses.fields(RecordingFile)]
    assert fields == ["path", "format", "channels", "sample_rate", "duration", "bytes"]
    call_record = pytest.importorskip("sipserver.pipeline.call_record")
    assert fields == [f.name for f in dataclasses.fields(call_record.RecordingInfo)]
    facts = RecordingFile("/r/x.ogg", "opus", "stereo", 8000, 5.0, 1234)
    info = call_record.RecordingInfo(**dataclasses.asdict(facts))
    assert info.media_type == "audio/ogg"


# --- files -----------------------------------------------------------------------------------


def test_recording_path_and_modes(tmp_path: Path, encoder: RecordingEncoder) -> None:
    data_dir = tmp_path / "data"
    started = 1_796_515_200.0 + 3600 * 23.5  # 2026-12-06 23:30 UTC
    path = recording_path(data_dir, "0190abc", "opus", started)
    assert path == data_dir / "recordings" / "2026-12-06" / "0190abc.ogg"
    assert recording_path(data_dir, "x", "wav", started).suffix == ".wav"
    with pytest.raises(ValueError, match="plain file name"):
        recording_path(data_dir, "../etc/passwd", "wav", started)
    with pytest.raises(ValueError, match="format"):
        recording_path(data_dir, "x", "mp3", started)

    old = os.umask(0o022)
    try:
        rate = 8000
        _, info = record(path, encoder, [([bytes(320)], bytes(320))] * 10, rate=rate, format="opus")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(info.path).st_mode) == 0o600
    for directory in (data_dir, data_dir / "recordings", path.parent):
        assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
    with av.open(info.path) as container:
        assert container.format.name == "ogg"
        assert container.streams.audio[0].codec_context.name == "opus"


def test_a_full_queue_drops_chunks_as_silence_and_counts_them(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    encoder = RecordingEncoder(max_chunks=2, registry=registry)
    start = encoder.start
    encoder.start = lambda: None  # type: ignore[method-assign]  # hold the thread back
    try:
        rate = 8000
        rec = CallRecording(tmp_path / "q.wav", sample_rate=rate, format="wav", encoder=encoder)
        for second in range(5):  # 5 one-second chunks: 2 queued, 3 dropped
            for _ in range(50):
                rec.add([constant(second + 1, rate)], constant(-(second + 1), rate))
        for _ in range(10):  # a 200 ms tail, handed over at close
            rec.add([constant(9, rate)], constant(-9, rate))
        assert encoder.queued_chunks() == 2
        rec.close()
        start()
        info = rec.future.result(timeout=WAIT)
    finally:
        encoder.stop(timeout=WAIT)
    assert encoder.stats()["dropped_chunks"] == 3
    assert registry.get_sample_value("sipserver_recording_dropped_chunks_total") == 3.0
    assert info.duration == pytest.approx(5.2)
    left, right = frames_in(info.path, rate)
    assert len(left) == 260
    assert left[::50] == [1, 2, 0, 0, 0, 9]  # the dropped seconds are silence, in place
    assert right[::50] == [-1, -2, 0, 0, 0, -9]


def test_an_unwritable_directory_fails_the_recording_not_the_call(
    tmp_path: Path, encoder: RecordingEncoder
) -> None:
    blocker = tmp_path / "data"
    blocker.write_text("a file where the directory should be")
    rec = CallRecording(blocker / "recordings" / "x.ogg", sample_rate=8000, encoder=encoder)
    with pytest.raises(RecordingError, match=r"(?i)not a directory"):
        rec.future.result(timeout=WAIT)
    assert rec.failed
    for _ in range(200):  # the host goes on feeding it: nothing is buffered, nothing raised
        rec.add([bytes(320)], bytes(320))
    rec.close()
    assert encoder.stats()["errors"] == 1
    # The encoder still serves other calls.
    _, info = record(tmp_path / "ok.wav", encoder, [([bytes(320)], bytes(320))] * 60, rate=8000)
    assert info.duration == pytest.approx(1.2)


def test_a_failed_write_mid_call_removes_the_partial_file(
    tmp_path: Path, encoder: RecordingEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sipserver.media import recording

    calls = 0
    real = recording._Writer._encode

    def failing(self: recording._Writer, *args: npt.NDArray[np.int16]) -> None:
        nonlocal calls
        calls += 1
        if calls > 1:
            raise OSError(28, "No space left on device")
        real(self, *args)

    monkeypatch.setattr(recording._Writer, "_encode", failing)
    path = tmp_path / "full.ogg"
    rec = CallRecording(path, sample_rate=16000, encoder=encoder)
    for _ in range(150):
        rec.add([bytes(640)], bytes(640))
    with pytest.raises(RecordingError, match="No space left"):
        rec.future.result(timeout=WAIT)
    rec.add([bytes(640)], bytes(640))
    rec.close()
    assert not path.exists()
    assert encoder.stats()["errors"] == 1


def test_a_call_without_audio_leaves_no_file(tmp_path: Path, encoder: RecordingEncoder) -> None:
    path = tmp_path / "empty.ogg"
    rec = CallRecording(path, sample_rate=8000, encoder=encoder)
    rec.close()
    with pytest.raises(RecordingError, match="nothing was recorded"):
        rec.future.result(timeout=WAIT)
    assert not path.exists()
    assert encoder.stats()["errors"] == 0  # not a failure: the call had no media


def test_a_path_that_cannot_be_opened_is_left_alone(
    tmp_path: Path, encoder: RecordingEncoder
) -> None:
    target = tmp_path / "someone-elses.txt"
    target.write_text("keep me")
    link = tmp_path / "link.ogg"
    link.symlink_to(target)
    rec = CallRecording(link, sample_rate=8000, encoder=encoder)
    with pytest.raises(RecordingError):
        rec.future.result(timeout=WAIT)
    assert link.is_symlink() and target.read_text() == "keep me"


def test_stop_finishes_open_recordings_and_refuses_new_ones(tmp_path: Path) -> None:
    encoder = RecordingEncoder()
    rec = CallRecording(tmp_path / "s.ogg", sample_rate=8000, encoder=encoder)
    for _ in range(120):  # two seconds handed over, 0.4 s still in the call's buffer
        rec.add([bytes(320)], bytes(320))
    encoder.stop(timeout=WAIT)
    info = rec.future.result(timeout=0)
    assert info.duration == pytest.approx(2.0)
    rec.add([bytes(320)], bytes(320))
    rec.close()
    assert rec.future.result(timeout=0) == info

    late = CallRecording(tmp_path / "late.ogg", sample_rate=8000, encoder=encoder)
    with pytest.raises(RecordingError, match="stopped"):
        late.future.result(timeout=0)
    late.add([bytes(320)], bytes(320))
    late.close()


def test_many_calls_share_one_encoder(tmp_path: Path, encoder: RecordingEncoder) -> None:
    rate = 8000
    recs = [
        CallRecording(tmp_path / f"{i}.wav", sample_rate=rate, format="wav", encoder=encoder)
        for i in range(8)
    ]
    for _ in range(75):
        for i, rec in enumerate(recs):
            rec.add([constant(i + 1, rate)], constant(-(i + 1), rate))
    for rec in recs:
        rec.close()
    for i, rec in enumerate(recs):
        left, right = frames_in(rec.future.result(timeout=WAIT).path, rate)
        assert left == [i + 1] * 75 and right == [-(i + 1)] * 75


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sample_rate": 44100}, "sample rate"),
        ({"sample_rate": 8000, "channels": "quad"}, "channels"),
        ({"sample_rate": 8000, "format": "mp3"}, "format"),
    ],
)
def test_unsupported_settings_are_refused(
    tmp_path: Path, encoder: RecordingEncoder, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        CallRecording(tmp_path / "x", encoder=encoder, **kwargs)  # type: ignore[arg-type]


# --- configuration ---------------------------------------------------------------------------


def agent_config(recording: object) -> str:
    return yaml.safe_dump({"agents": [{"slug": "a", "recording": recording}]})


def test_recording_is_off_by_default_and_stereo_opus() -> None:
    config = parse_config(yaml.safe_dump({"agents": [{"slug": "a"}]}), env={})
    settings = config.agents[0].recording
    assert (settings.enabled, settings.channels, settings.format) == (False, "stereo", "opus")
    config = parse_config(
        agent_config({"enabled": True, "channels": "mixed", "format": "wav"}), env={}
    )
    assert config.agents[0].recording.model_dump() == {
        "enabled": True,
        "channels": "mixed",
        "format": "wav",
    }


@pytest.mark.parametrize(
    ("recording", "key"),
    [
        ({"channels": "left"}, "agents[0].recording.channels"),
        ({"format": "mp3"}, "agents[0].recording.format"),
        ({"enabled": "sometimes"}, "agents[0].recording.enabled"),
        ({"bitrate": 32000}, "agents[0].recording.bitrate"),
    ],
)
def test_recording_errors_name_the_key(recording: object, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(agent_config(recording), env={})
    assert any(line.startswith(key) for line in info.value.errors), info.value.errors

"""A Twilio Media Streams client for tests: real-time paced audio out, everything in recorded.

It behaves like Twilio's side of a bidirectional stream: ``connected`` and ``start`` first,
then a 20 ms ``media`` chunk every 20 ms (silence unless something was queued with
:meth:`MediaStreamClient.say`), marks echoed as soon as they arrive, ``clear`` recorded.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np

from sipserver.media import codecs


@dataclass
class Received:
    t: float
    pcm: np.ndarray


@dataclass
class MediaStreamClient:
    ws: aiohttp.ClientWebSocketResponse
    l16: bool = False
    sid: str = "MZ00000000000000000000000000000001"
    frames: list[Received] = field(default_factory=list)
    marks: list[str] = field(default_factory=list)
    clears: list[float] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    close_code: int | None = None
    close_reason: str = ""
    echo_marks: bool = True

    def __post_init__(self) -> None:
        self.rate = 16000 if self.l16 else 8000
        self.frame_samples = self.rate // 50
        self._queue: deque[np.ndarray] = deque()
        self._chunk = 0
        self.t0 = 0.0
        self._tasks: list[asyncio.Task[None]] = []
        self.closed = asyncio.Event()

    async def start(self, params: dict[str, str] | None = None, *, pump: bool = True) -> None:
        loop = asyncio.get_running_loop()
        await self.ws.send_str(json.dumps({"event": "connected", "protocol": "Call"}))
        fmt = (
            {"encoding": "audio/L16;rate=16000", "sampleRate": 16000, "channels": 1}
            if self.l16
            else {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}
        )
        start = {
            "accountSid": "AC0",
            "streamSid": self.sid,
            "callSid": "CA0",
            "tracks": ["inbound"],
            "mediaFormat": fmt,
            "customParameters": params or {"caller": "+14155550123"},
        }
        await self.ws.send_str(
            json.dumps({"event": "start", "start": start, "streamSid": self.sid})
        )
        self.t0 = loop.time()
        self._tasks.append(loop.create_task(self._receive()))
        if pump:
            self._tasks.append(loop.create_task(self._pump()))

    def say(self, samples: np.ndarray) -> None:
        """Queue audio (int16 at the stream rate) to be sent at real-time pace."""
        n = self.frame_samples
        padded = np.concatenate((samples, np.zeros(-samples.size % n, dtype=np.int16)))
        self._queue.extend(padded.reshape(-1, n).astype(np.int16))

    async def idle(self) -> None:
        while self._queue:
            await asyncio.sleep(0.02)

    async def send_frame(self, frame: np.ndarray) -> None:
        pcm = frame.astype("<i2").tobytes()
        payload = codecs.pcm_to_l16(pcm) if self.l16 else codecs.ulaw_encode(pcm)
        self._chunk += 1
        media = {
            "track": "inbound",
            "chunk": str(self._chunk),
            "timestamp": str((self._chunk - 1) * 20),
            "payload": base64.b64encode(payload).decode(),
        }
        await self.ws.send_str(
            json.dumps({"event": "media", "streamSid": self.sid, "media": media})
        )

    async def _pump(self) -> None:
        loop = asyncio.get_running_loop()
        silence = np.zeros(self.frame_samples, dtype=np.int16)
        n = 0
        while not self.ws.closed:
            frame = self._queue.popleft() if self._queue else silence
            try:
                await self.send_frame(frame)
            except (ConnectionError, RuntimeError):
                return
            n += 1
            await asyncio.sleep(max(0.0, self.t0 + n * 0.02 - loop.time()))

    async def _receive(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            msg = await self.ws.receive()
            if msg.type is not aiohttp.WSMsgType.TEXT:
                if msg.type is aiohttp.WSMsgType.CLOSE:
                    self.close_reason = str(msg.extra or "")
                break
            data = json.loads(msg.data)
            event = data.get("event")
            if event == "media":
                raw = base64.b64decode(data["media"]["payload"])
                pcm = codecs.l16_to_pcm(raw) if self.l16 else codecs.ulaw_decode(raw)
                self.frames.append(Received(loop.time() - self.t0, np.frombuffer(pcm, "<i2")))
            elif event == "mark":
                name = data["mark"]["name"]
                self.marks.append(name)
                if self.echo_marks:
                    reply = {"event": "mark", "streamSid": self.sid, "mark": {"name": name}}
                    await self.ws.send_str(json.dumps(reply))
            elif event == "clear":
                self.clears.append(loop.time() - self.t0)
            elif event == "sipserver":
                self.events.append(data["sipserver"])
        self.close_code = self.ws.close_code
        self.closed.set()

    def audio(self, start: float = 0.0, end: float = 1e9) -> np.ndarray:
        """Received audio whose arrival time (seconds after start) is in [start, end)."""
        parts = [f.pcm for f in self.frames if start <= f.t < end]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int16)

    def agent_speaking(self, window: int = 10, threshold: float = 300.0) -> bool:
        recent = self.frames[-window:]
        if len(recent) < window:
            return False
        rms = float(np.sqrt(np.mean(np.concatenate([f.pcm for f in recent]).astype(float) ** 2)))
        return rms > threshold

    async def stop(self) -> None:
        if not self.ws.closed:
            await self.ws.send_str(json.dumps({"event": "stop", "streamSid": self.sid}))
        await asyncio.wait_for(self.closed.wait(), 5)
        await self.aclose()

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.ws.close()

"""Helpers for AI Listens tests: a two-track Twilio fork client, dashboard login, SSE reader."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np

from sipserver.media import codecs

FRAME = 160  # 20 ms at 8 kHz


def _frames(samples: np.ndarray) -> list[np.ndarray]:
    padded = np.concatenate((samples, np.zeros(-samples.size % FRAME, dtype=np.int16)))
    return list(padded.reshape(-1, FRAME).astype(np.int16))


@dataclass
class ForkClient:
    """Twilio's side of a unidirectional ``<Start><Stream track=both_tracks>`` fork.

    Every 20 ms it sends one ``inbound`` (caller) and one ``outbound`` (human agent) media
    message; each track plays what was queued with :meth:`say`, silence otherwise.
    """

    ws: aiohttp.ClientWebSocketResponse
    sid: str = "MZ00000000000000000000000000000777"
    tracks: tuple[str, ...] = ("inbound", "outbound")
    received: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._queues: dict[str, list[np.ndarray]] = {t: [] for t in self.tracks}
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self, params: dict[str, str]) -> None:
        await self.ws.send_str(json.dumps({"event": "connected", "protocol": "Call"}))
        start = {
            "accountSid": "AC0",
            "streamSid": self.sid,
            "callSid": "CA777",
            "tracks": list(self.tracks),
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            "customParameters": params,
        }
        await self.ws.send_str(json.dumps({"event": "start", "start": start}))
        loop = asyncio.get_running_loop()
        self._tasks += [loop.create_task(self._pump()), loop.create_task(self._receive())]

    def say(self, track: str, samples: np.ndarray) -> None:
        self._queues[track].extend(_frames(samples))

    async def idle(self) -> None:
        while any(self._queues.values()):
            await asyncio.sleep(0.02)

    async def _pump(self) -> None:
        loop = asyncio.get_running_loop()
        t0, n, chunk = loop.time(), 0, 0
        silence = np.zeros(FRAME, dtype=np.int16)
        while not self.ws.closed:
            for track in self.tracks:
                queue = self._queues[track]
                frame = queue.pop(0) if queue else silence
                chunk += 1
                payload = codecs.ulaw_encode(frame.astype("<i2").tobytes())
                media = {
                    "track": track,
                    "chunk": str(chunk),
                    "timestamp": str(n * 20),
                    "payload": base64.b64encode(payload).decode(),
                }
                try:
                    await self.ws.send_str(
                        json.dumps({"event": "media", "streamSid": self.sid, "media": media})
                    )
                except (ConnectionError, RuntimeError):
                    return
            n += 1
            await asyncio.sleep(max(0.0, t0 + n * 0.02 - loop.time()))

    async def _receive(self) -> None:
        async for msg in self.ws:  # a fork is unidirectional: anything here is a bug
            self.received.append(str(msg.data))

    async def stop(self) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.ws.send_str(json.dumps({"event": "stop", "streamSid": self.sid}))
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.ws.close()


async def login(
    base_url: str, name: str, password: str
) -> tuple[aiohttp.ClientSession, aiohttp.ClientResponse]:
    """A client session logged in (or not: check the response) as ``name``."""
    http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
    resp = await http.post(
        f"{base_url}/dashboard/login",
        data={"name": name, "password": password, "next": "/dashboard"},
        allow_redirects=False,
    )
    await resp.read()
    return http, resp


@dataclass
class SseReader:
    """Reads Server-Sent Events from a response into :attr:`events` (kind, data, id)."""

    response: aiohttp.ClientResponse
    events: list[tuple[str, Any, str | None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        kind, data, event_id = "message", "", None
        async for raw in self.response.content:
            line = raw.decode().rstrip("\n")
            if not line:
                if data:
                    self.events.append((kind, json.loads(data), event_id))
                kind, data, event_id = "message", "", None
            elif line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                data += line[6:]
            elif line.startswith("id: "):
                event_id = line[4:]

    def of(self, kind: str) -> list[Any]:
        return [data for k, data, _ in self.events if k == kind]

    async def wait_for(self, predicate: Any, timeout: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if predicate(self):
                return True
            await asyncio.sleep(0.05)
        return False

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self.task
        self.response.close()

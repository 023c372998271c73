"""Play a forked two-track call into a running sipserver's AI Listens, like Twilio would.

    python scripts/listens_demo_call.py [--url http://127.0.0.1:8080] [--agent demo]
        [--secret demo-websocket-secret-0001] [--number +15005550199]

The caller asks a question and the human agent answers (espeak-ng speech, 8 kHz mu-law, real
time); watch it on http://127.0.0.1:8080/dashboard (log in as supervisor /
demo-supervisor-password). Run from the repository root (it uses the tests' fork client).
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import wave
from pathlib import Path

import aiohttp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.integration.listens_client import ForkClient

LINES = [
    ("inbound", "Hello, I would like to know how much it costs."),
    ("outbound", "Of course, let me look that up for you."),
    ("inbound", "And is there a free trial?"),
    ("outbound", "Yes, every plan starts with a free trial."),
]


def speech(text: str, workdir: Path) -> np.ndarray:
    raw, out = workdir / "raw.wav", workdir / "8k.wav"
    subprocess.run(["espeak-ng", "-w", str(raw), text], check=True)
    subprocess.run(
        ["sox", "-D", str(raw), "-r", "8000", "-c", "1", "-b", "16", str(out)], check=True
    )
    with wave.open(str(out), "rb") as w:
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")


async def main(args: argparse.Namespace) -> None:
    ws_url = args.url.replace("http", "ws", 1) + f"/listens/{args.agent}/{args.secret}/stream"
    with tempfile.TemporaryDirectory() as tmp:
        clips = [(track, speech(text, Path(tmp))) for track, text in LINES]
    async with aiohttp.ClientSession() as http:
        fork = ForkClient(await http.ws_connect(ws_url))
        await fork.start({"caller": "+14155550123", "called": args.number, "callSid": "CAdemo"})
        print(f"forked call streaming to {ws_url}")
        await asyncio.sleep(2.0)
        for track, clip in clips:
            fork.say(track, clip)
            await fork.idle()
            await asyncio.sleep(2.5)
        await asyncio.sleep(args.linger)
        await fork.stop()
        print("call ended")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--agent", default="demo")
    parser.add_argument("--secret", default="demo-websocket-secret-0001")
    parser.add_argument("--number", default="+15005550199")
    parser.add_argument("--linger", type=float, default=5.0, help="seconds before hanging up")
    asyncio.run(main(parser.parse_args()))

"""The call history pages in a real browser: headless Chromium over the DevTools Protocol
(tests/integration/cdp.py) against a real server whose ``records.db`` was seeded before it
started (31 calls; one of them with a conversation, three turns, DTMF, an interruption, an
error, a delivered webhook and a stereo WAV recording).

The admin opens Calls from the agent card's menu (filtered to alice), pages through the list
with the cursor, searches the transcripts, opens the call: the facts, the summary row, the
conversation (caller left, agent right, the interrupted line marked, events between) and the
server-drawn latency timeline are there; selecting a line moves the player to its offset and
highlights it, and the highlight follows the player. The admin deletes another call. A
supervisor has no Delete button, and an unknown call is the 404 page. Screenshots go to the
test's temporary directory (docs/records.md, "Pages").

The pages read the server's calls API (docs/records.md, "API"). Skipped when chromium is not
installed.
"""

from __future__ import annotations

import json
import time
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sipserver.pipeline.call_record import (
    CallRecord,
    MediaQuality,
    RecordEvent,
    RecordingInfo,
    new_record_id,
)
from sipserver.records.store import RecordStore
from tests.integration.cdp import Page, chromium_path, open_page
from tests.integration.conftest import ServerProcess
from tests.integration.console_ui import press, set_value
from tests.integration.test_console_api import with_users
from tests.integration.test_console_pages_agents import log_in

pytestmark = pytest.mark.integration

RATE = 16000
PLAIN_CALLS = 30


def write_recording(path: Path, seconds: float) -> None:
    """A stereo 16-bit WAV: a tone on the caller's (left) channel, another on the right."""
    t = np.arange(int(seconds * RATE)) / RATE
    left = 0.3 * np.sin(2 * np.pi * 440 * t)
    right = 0.3 * np.sin(2 * np.pi * 660 * t)
    frames = (np.stack([left, right], axis=1) * 32767).astype("<i2")
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(2)
        out.setsampwidth(2)
        out.setframerate(RATE)
        out.writeframes(frames.tobytes())
    path.chmod(0o600)


def turn(index: int, offset: float, text: str, v2v: float | None, **stages: Any) -> RecordEvent:
    full = dict.fromkeys(("end_of_turn", "stt", "turn_model", "llm", "tts", "transport"))
    full.update(stages)
    data = {"index": index, "text": text, "preemptive": False, "stages": full,
            "voice_to_voice": v2v}  # fmt: skip
    return RecordEvent("turn", offset, data)


def said(offset: float, speaker: str, text: str, end: float, **more: Any) -> RecordEvent:
    return RecordEvent("transcript", offset, {"speaker": speaker, "text": text, "end": end, **more})


RICH_EVENTS = [
    said(0.6, "agent", "Hello, this is Alice. How can I help?", 2.4),
    said(2.8, "caller", "I would like a refund for my order", 4.2),
    turn(0, 4.3, "I would like a refund for my order", 930, end_of_turn=420, stt=180,
         turn_model=35, llm=310, tts=160, transport=40),
    said(4.9, "agent", "Sure, I can help with the refund. Which", 5.5, interrupted=True),
    RecordEvent("interruption", 5.5, {"kind": "interrupted"}),
    RecordEvent("dtmf", 5.6, {"digit": "4"}),
    said(5.8, "caller", "It is order four four one two, placed last Tuesday", 8.4),
    turn(1, 8.5, "It is order four four one two, placed last Tuesday", 840, end_of_turn=600,
         stt=240, llm=0, tts=210, transport=30),
    RecordEvent("error", 8.6, {"stage": "tts", "error": "first audio late <retrying>"}),
    said(8.8, "agent", "Done: the refund for order 4412 is on its way.", 9.6),
    turn(2, 9.7, "thanks", None, end_of_turn=500),
    RecordEvent("end", 10.0, {"reason": "caller_bye", "ended_by": "caller"}),
]  # fmt: skip


def seed(data_dir: Path) -> str:
    """Fill ``<data_dir>/records.db`` (as the server would have); returns the rich call's id."""
    store = RecordStore(data_dir / "records.db", flush_interval=0.05)
    store.open()
    now = time.time()
    for i in range(PLAIN_CALLS):
        started = now - 3600 - i * 60
        record = CallRecord(
            id=new_record_id(started), agent="alice" if i % 3 else "fenced", ingress="sip",
            caller=f"+1500555{i:04d}", called="+15005550101", sip_call_id=f"plain-{i}@test",
            started_at=started, answered_at=started + 0.5, ended_at=started + 30 + i,
            end_reason="caller_bye", ended_by="caller", codec="PCMU",
        )  # fmt: skip
        store.save(record)
        reply = turn(0, 2.1, f"hello number {i}", 700 + 10 * i, end_of_turn=400,
                     llm=200 + 10 * i, tts=80, transport=20)  # fmt: skip
        store.append(record.id, [said(1.0, "caller", f"hello number {i}", 2.0), reply])
    started = now - 120
    rich_id = new_record_id(started)
    path = data_dir / "recordings" / f"{rich_id}.wav"
    write_recording(path, 10.5)
    rich = CallRecord(
        id=rich_id, agent="alice", ingress="sip", caller="+15005550199", called="+15005550101",
        sip_call_id="rich-call@127.0.0.1", started_at=started, answered_at=started + 0.4,
        ended_at=started + 10.4, end_reason="caller_bye", ended_by="caller", codec="PCMU",
        media=MediaQuality(lost=2, concealed=3, late=1),
        recording=RecordingInfo(str(path), "wav", "stereo", RATE, 10.5, path.stat().st_size),
        webhook_status={"call_ended": {"status": "delivered", "attempts": 2, "code": 200}},
    )  # fmt: skip
    store.save(rich)
    store.append(rich_id, RICH_EVENTS)
    assert store.flush()
    store.close()
    return rich_id


@pytest.fixture
def seeded(server_factory: Any) -> tuple[ServerProcess, str]:
    ids: list[str] = []

    def mutate(config: dict[str, Any]) -> None:
        with_users(config)
        ids.append(seed(Path(config["server"]["data_dir"])))

    server: ServerProcess = server_factory(mutate)
    return server, ids[0]


def rows_js() -> str:
    return "[...document.querySelectorAll('#calls-rows tr[data-call]')].map(r => r.dataset.call)"


async def loaded(page: Page, count: int) -> list[str]:
    """Wait for the list's ``count``-th load; the ids of its rows."""
    await page.until(f"Number(document.body.dataset.loaded) >= {count}", timeout=20)
    ids: list[str] = await page.eval(rows_js())
    return ids


async def test_calls_list_search_and_the_call_page_with_its_player(
    seeded: tuple[ServerProcess, str], tmp_path: Path
) -> None:
    if chromium_path() is None:
        pytest.skip("chromium is not installed (scripts/test installs it)")
    server, rich_id = seeded
    base = server.http_url
    async with (
        open_page("about:blank", tmp_path / "chromium-profile", ("--window-size=1280,1500",))
        as page,
    ):  # fmt: skip
        # The agent card's menu opens Calls filtered to alice.
        await log_in(page, base, "admin", "/dashboard")
        href = await page.eval(
            "document.querySelector('[data-agent=alice] nav a[href^=\"/dashboard/calls\"]')"
            ".getAttribute('href')"
        )
        assert href == "/dashboard/calls?agent=alice"
        assert await page.eval("!!document.querySelector('.bar a[href=\"/dashboard/calls\"]')")
        await page.goto(f"{base}{href}")
        alice = await loaded(page, 1)
        agents = await page.eval(
            "[...document.querySelectorAll('#calls-rows tr[data-call] td:nth-child(2)')]"
            ".map(c => c.textContent)"
        )
        assert await page.eval("document.getElementById('agent').value") == "alice"
        assert len(alice) == 21 and set(agents) == {"alice"}, agents  # 20 plain + the rich one
        assert alice[0] == rich_id  # newest first

        # Every agent: 25 a page, the cursor for the next.
        await set_value(page, "agent", "")
        first = await loaded(page, 2)
        summary = await page.eval("document.getElementById('summary').textContent")
        await page.screenshot(tmp_path / "calls-1-list.png")
        assert len(first) == 25 and first[0] == rich_id, summary
        assert summary == "Calls 1\u201325, more on the next page."
        assert await page.eval("location.search") == ""
        await press(page, "#next")
        second = await loaded(page, 3)
        assert len(second) == PLAIN_CALLS + 1 - 25 and not set(first) & set(second)
        assert await page.eval("document.getElementById('next').disabled")
        await press(page, "#previous")
        assert await loaded(page, 4) == first

        # Text search in the transcripts.
        await set_value(page, "q", "REFUND for my")
        await press(page, "#apply")
        found = await loaded(page, 5)
        assert found == [rich_id]
        assert await page.eval("location.search") == "?q=REFUND+for+my"
        cells = await page.eval(
            "[...document.querySelector('#calls-rows tr').children].map(c => c.textContent)"
        )
        await page.screenshot(tmp_path / "calls-2-search.png")
        assert cells[1:6] == ["alice", "sip", "+15005550199", "+15005550101", "10 s"], cells
        assert cells[6] == "caller (caller_bye)" and cells[7] == "yes"

        # From half an hour ago (the plain calls started over an hour ago).
        await set_value(page, "q", "")
        await page.eval(
            "(d => { document.getElementById('from').value = new Date(d.getTime() - "
            "d.getTimezoneOffset() * 60000).toISOString().slice(0, 16); return true; })"
            "(new Date(Date.now() - 1800e3))"
        )
        await press(page, "#apply")
        assert await loaded(page, 6) == [rich_id]
        assert (await page.eval("location.search")).startswith("?from=")
        assert await page.eval("document.getElementById('summary').textContent") == "1 call."

        # The call page.
        await press(page, f"#calls-rows tr[data-call='{rich_id}'] a")
        await page.until(f"location.pathname === '/dashboard/calls/{rich_id}'")
        await page.until("document.body.dataset.loaded === 'true'", timeout=20)
        facts = await page.eval(
            "Object.fromEntries([...document.querySelectorAll('#facts div')]"
            ".map(d => [d.querySelector('dt').textContent, d.querySelector('dd').textContent]))"
        )
        assert facts["SIP Call-ID"] == "rich-call@127.0.0.1" and facts["Codec"] == "PCMU"
        assert facts["Duration"] == "10 s" and facts["Ended by"] == "caller"
        assert facts["Media (caller → server)"] == "2 lost · 3 concealed · 1 late"
        assert facts["Recording"].startswith("wav, stereo, 16000 Hz"), facts
        summary_row = await page.eval(
            "['call-p50', 'call-p95', 'agent-p50', 'agent-p95']"
            ".map(id => document.getElementById(id).textContent)"
        )
        # This call's turns: 840 and 930 ms (the third had no reply); the agent's day also
        # holds the plain calls' 700..990 ms. (How a percentile interpolates is the API's.)
        shown = [float(v.removesuffix(" ms").replace(",", "")) for v in summary_row]
        assert 840 <= shown[0] <= shown[1] <= 930, summary_row
        assert 700 <= shown[2] <= shown[3] <= 990, summary_row
        conversation = await page.eval(
            "[...document.querySelectorAll('#conversation > li')].map(li => "
            "[li.className, li.textContent])"
        )
        kinds = [c[0] for c in conversation]
        assert kinds == ["agent", "caller", "agent", "event", "event", "caller", "event",
                         "agent", "event"], conversation  # fmt: skip
        assert "interrupted" in conversation[2][1] and "DTMF key 4" in conversation[4][1]
        assert "Error (tts): first audio late <retrying>" in conversation[6][1]
        assert "Call ended: caller_bye, by caller" in conversation[8][1]
        sides = await page.eval(
            "['caller', 'agent'].map(k => { const b = document.querySelector("
            "`#conversation li.${k} .line`).getBoundingClientRect(); return [b.left, b.right]; })"
        )
        assert sides[0][0] < sides[1][0] and sides[0][1] < sides[1][1]  # caller left, agent right
        timeline = await page.eval(
            "(s => [s.getAttribute('role'), s.getAttribute('aria-label'), "
            "s.querySelectorAll('g.turn').length, s.querySelectorAll('rect.seg').length, "
            "s.getBoundingClientRect().width])(document.querySelector('#timeline svg'))"
        )
        assert timeline[0] == "img" and "3 turns" in timeline[1], timeline
        assert timeline[2] == 3 and timeline[3] == 4 + 3 + 1 and timeline[4] > 600, timeline
        webhook = await page.eval(
            "[...document.querySelectorAll('#webhook-rows tr[data-webhook=call_ended] > *')]"
            ".map(c => c.textContent)"
        )
        assert webhook[:2] == ["call_ended", "delivered"] and "attempts: 2" in webhook[2]
        assert not await page.eval("document.getElementById('delete').hidden")  # admin
        assert await page.eval("document.getElementById('export').getAttribute('href')") == (
            f"/api/calls/{rich_id}/export.jsonl"
        )
        await page.screenshot(tmp_path / "call-1-page.png")

        # The player: selecting a line plays from its offset and marks it.
        await page.until("document.getElementById('audio').readyState >= 1", timeout=20)
        assert await page.eval("document.getElementById('audio').duration") == pytest.approx(
            10.5, abs=0.05
        )
        line = "#conversation li[data-offset='5.8'] .line"
        await press(page, line)
        await page.until("document.getElementById('audio').currentTime >= 5.75", timeout=20)
        state = await page.eval(
            "(a => { a.pause(); return [a.currentTime, document.querySelector("
            f"{json.dumps(line)}).getAttribute('aria-current')]; }})"
            "(document.getElementById('audio'))"
        )
        assert 5.75 <= state[0] < 8.9 and state[1] == "true", state
        marked = await page.eval("document.querySelectorAll('[aria-current=true]').length")
        await page.eval(f"document.querySelector({json.dumps(line)}).scrollIntoView(); 1")
        await page.screenshot(tmp_path / "call-2-playing.png")
        assert marked == 1
        # The highlight follows the player: back to the greeting.
        await page.eval("document.getElementById('audio').currentTime = 1.0; 1")
        await page.until(
            "document.querySelector(\"#conversation li[data-offset='0.6'] .line\")"
            ".getAttribute('aria-current') === 'true'"
        )
        await page.eval("document.getElementById('timeline').scrollIntoView(); 1")
        await page.screenshot(tmp_path / "call-3-timeline.png")

        # The admin deletes a call (confirmed): back to the list, and the call is gone.
        gone = second[-1]
        await page.goto(f"{base}/dashboard/calls/{gone}")
        await page.until("document.body.dataset.loaded === 'true'", timeout=20)
        await page.eval("window.confirm = () => true; 1")
        await press(page, "#delete")
        await page.until("location.pathname === '/dashboard/calls'")
        listed = await loaded(page, 1)
        await page.goto(f"{base}/dashboard/calls/{gone}")
        deleted = await page.eval("document.getElementById('error-status')?.textContent")
        assert gone not in listed and deleted == "404" and len(listed) == 25
        uncaught = [e for e in page.errors if e.startswith("uncaught")]

        # A supervisor: no Delete; an unknown call is the 404 page.
        await page.eval(
            "document.querySelector('form[action=\"/dashboard/logout\"] button').click()"
        )
        await page.until("location.pathname === '/dashboard/login'")
        await log_in(page, base, "supervisor", f"/dashboard/calls/{rich_id}")
        await page.until("document.body.dataset.loaded === 'true'", timeout=20)
        assert await page.eval("document.getElementById('delete').hidden")
        await page.goto(f"{base}/dashboard/calls/{'0' * 26}")
        status = await page.eval("document.getElementById('error-status').textContent")
    print(f"screenshots {tmp_path}")
    assert status == "404"
    assert uncaught == [], page.errors

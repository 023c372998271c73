"""Twilio webhook (TwiML, signatures behind proxies), Media Streams parsing, slug/secret checks."""

from __future__ import annotations

import base64
import json
import xml.etree.ElementTree as ET
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from twilio.request_validator import RequestValidator

from sipserver.config import parse_config
from sipserver.gateway import twilio
from sipserver.gateway.websocket import MediaStreamGateway
from sipserver.observability import Metrics

SECRET = "support-ws-secret-0123456789"
OFF_SECRET = "off-ws-secret-0123456789"
TOKEN = "twilio-auth-token-for-tests"
PUBLIC = "https://voice.example.com"
FORM = {"CallSid": "CA123", "From": "+14155550123", "To": "+15005550100", "AccountSid": "AC1"}


def config(token: str | None = TOKEN) -> Any:
    ws: dict[str, Any] = {"enabled": True, "secret": SECRET}
    if token:
        ws["twilio_auth_token"] = token
    return parse_config(
        json.dumps(
            {
                "server": {"public_url": PUBLIC},
                "agents": [
                    {"slug": "support", "websocket": ws},
                    {"slug": "off", "websocket": {"enabled": False, "secret": OFF_SECRET}},
                ],
            }
        )
    )


async def client_for(cfg: Any) -> TestClient[Any, Any]:
    app = web.Application()
    gateway = MediaStreamGateway(lambda: cfg, lambda info, on_event: None, Metrics())
    gateway.add_routes(app)
    client: TestClient[Any, Any] = TestClient(TestServer(app))
    await client.start_server()
    return client


def sign(url: str, params: dict[str, str]) -> str:
    return str(RequestValidator(TOKEN).compute_signature(url, params))


async def test_webhook_answers_connect_stream_twiml_with_parameters() -> None:
    client = await client_for(config(token=None))
    try:
        resp = await client.post(f"/incoming-call/support/{SECRET}", data=FORM)
        assert resp.status == 200
        assert resp.content_type == "application/xml"
        root = ET.fromstring(await resp.text())
        stream = root.find("./Connect/Stream")
        assert stream is not None
        assert stream.get("url") == f"wss://voice.example.com/ws/support/{SECRET}"
        params = {p.get("name"): p.get("value") for p in stream.findall("Parameter")}
        assert params == {"caller": "+14155550123", "called": "+15005550100", "callSid": "CA123"}
    finally:
        await client.close()


async def test_signature_valid_invalid_and_missing() -> None:
    client = await client_for(config())
    path = f"/incoming-call/support/{SECRET}"
    try:
        good = sign(PUBLIC + path, FORM)
        resp = await client.post(path, data=FORM, headers={"X-Twilio-Signature": good})
        assert resp.status == 200
        bad = sign(PUBLIC + path, {**FORM, "From": "+19999999999"})
        resp = await client.post(path, data=FORM, headers={"X-Twilio-Signature": bad})
        assert resp.status == 403
        resp = await client.post(path, data=FORM)
        assert resp.status == 403
    finally:
        await client.close()


async def test_signature_behind_a_proxy_uses_forwarded_headers() -> None:
    # Twilio signed https://edge.example.net/...; public_url says voice.example.com, the
    # proxy says which host and scheme the request came in with.
    client = await client_for(config())
    path = f"/incoming-call/support/{SECRET}?tenant=1"
    try:
        signature = sign("https://edge.example.net" + path, FORM)
        headers = {
            "X-Twilio-Signature": signature,
            "X-Forwarded-Proto": "https",
            "X-Forwarded-Host": "edge.example.net",
        }
        assert (await client.post(path, data=FORM, headers=headers)).status == 200
        headers["X-Forwarded-Proto"] = "http"  # the scheme is part of the signed URL
        assert (await client.post(path, data=FORM, headers=headers)).status == 403
    finally:
        await client.close()


async def test_wrong_slug_or_secret_is_403_alike_and_disabled_is_404() -> None:
    client = await client_for(config())
    try:
        a = await client.get(f"/ws/support/{SECRET}x")
        b = await client.get(f"/ws/nobody/{SECRET}")
        assert a.status == b.status == 403
        assert await a.text() == await b.text()
        assert (await client.get(f"/ws/off/{OFF_SECRET}")).status == 404
        assert (await client.get("/ws/off/wrong-secret-0000000")).status == 403
        assert (await client.post(f"/incoming-call/nobody/{SECRET}", data=FORM)).status == 403
    finally:
        await client.close()


def test_candidate_urls_order_and_dedup() -> None:
    urls = twilio.candidate_urls(
        public_url="https://voice.example.com/",
        path_qs="/incoming-call/a/b",
        request_url="http://127.0.0.1:8080/incoming-call/a/b",
        headers={"X-Forwarded-Proto": "https", "X-Forwarded-Host": "voice.example.com"},
    )
    assert urls == [
        "https://voice.example.com/incoming-call/a/b",
        "http://127.0.0.1:8080/incoming-call/a/b",
    ]


def test_parse_twilio_messages() -> None:
    start = twilio.parse_message(
        json.dumps(
            {
                "event": "start",
                "sequenceNumber": "1",
                "start": {
                    "accountSid": "AC1",
                    "streamSid": "MZ1",
                    "callSid": "CA1",
                    "tracks": ["inbound"],
                    "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                    "customParameters": {"caller": "+1415"},
                },
                "streamSid": "MZ1",
            }
        )
    )
    assert isinstance(start, twilio.Start)
    assert start.media_format is twilio.MULAW_8K and start.custom_parameters == {"caller": "+1415"}
    payload = base64.b64encode(b"\xff" * 160).decode()
    chunk = {"chunk": "2", "timestamp": "20", "payload": payload}
    media = twilio.parse_message(json.dumps({"event": "media", "media": chunk}))
    assert media == twilio.Media(b"\xff" * 160, 2, 20, "inbound")
    assert twilio.parse_message('{"event":"dtmf","dtmf":{"digit":"#"}}') == twilio.Dtmf("#")
    assert twilio.parse_message('{"event":"mark","mark":{"name":"x"}}') == twilio.Mark("x")
    assert twilio.parse_message('{"event":"stop"}') == twilio.Stop()
    assert twilio.parse_message('{"event":"wobble"}') == twilio.Unknown("wobble")
    l16 = twilio.parse_message(
        '{"event":"start","start":{"streamSid":"b","mediaFormat":'
        '{"encoding":"audio/L16;rate=16000","sampleRate":16000,"channels":1}}}'
    )
    assert isinstance(l16, twilio.Start) and l16.media_format is twilio.L16_16K


@pytest.mark.parametrize(
    ("text", "code", "reason"),
    [
        ("{nope", 1007, "invalid JSON"),
        ("[1]", 1007, "JSON object"),
        ('{"event":"media","media":{"payload":"***"}}', 1007, "base64"),
        ('{"event":"dtmf","dtmf":{"digit":"x"}}', 1007, "dtmf"),
        (
            '{"event":"start","start":{"streamSid":"s","mediaFormat":{"encoding":"audio/opus"}}}',
            1003,
            "unsupported mediaFormat",
        ),
    ],
)
def test_bad_messages_raise_with_close_code(text: str, code: int, reason: str) -> None:
    with pytest.raises(twilio.ProtocolError) as info:
        twilio.parse_message(text)
    assert info.value.code == code and reason in info.value.reason


def test_outbound_messages_are_valid_json() -> None:
    sid = json.dumps('MZ"1')
    assert json.loads(twilio.media_message(sid, b"\x01\x02")) == {
        "event": "media",
        "streamSid": 'MZ"1',
        "media": {"payload": "AQI="},
    }
    assert json.loads(twilio.mark_message(sid, "t50"))["mark"] == {"name": "t50"}
    assert json.loads(twilio.clear_message(sid)) == {"event": "clear", "streamSid": 'MZ"1'}
    assert json.loads(twilio.event_message(sid, {"type": "state"}))["sipserver"] == {
        "type": "state"
    }

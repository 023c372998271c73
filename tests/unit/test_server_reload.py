"""Server.reload: what changes at once and what needs a restart (no sockets involved)."""

from __future__ import annotations

from typing import Any

import yaml

from sipserver.config import Config, parse_config
from sipserver.server import Server


def config(**sip: Any) -> Config:
    raw = {
        "server": {"store": "memory", "sip": {"udp": ["127.0.0.1:5060"], "tcp": [], **sip}},
        "agents": [
            {
                "slug": "a",
                "sip": {
                    "enabled": True,
                    "numbers": ["+15005550101"],
                    "username": "a",
                    "password": "a-password-1",
                },
            }
        ],
    }
    return parse_config(yaml.safe_dump(raw), env={})


def test_reload_swaps_router_and_keeps_transactions() -> None:
    server = Server(config())
    before = server.router
    assert server.reload(config(min_expires=120)) == []
    assert server.router is not before
    assert server.listeners.router is server.router
    assert server.router.transactions is before.transactions
    assert (
        server.metrics.registry.get_sample_value("sipserver_config_reloads_total", {"result": "ok"})
        == 1
    )


def test_reload_reports_settings_that_need_a_restart() -> None:
    server = Server(config())
    changed = server.reload(config(udp=["127.0.0.1:5070"], ban={"max_failures": 9}))
    assert changed == ["server.sip.udp", "server.sip.ban"]

"""/status and /metrics off the public port (issue [2/7], "Probing and exposure"): served on the
admin listener (server.admin_http, loopback), and on the public listener only with the bearer
token (server.admin_token); the public port keeps /healthz and /readyz."""

from __future__ import annotations

import urllib.error
import urllib.request
from typing import Any

import pytest

from tests.integration.conftest import ServerProcess

pytestmark = pytest.mark.integration

TOKEN = "admin-token-0123456789"


def status_of(url: str, token: str | None = None) -> tuple[int, dict[str, str]]:
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return int(r.status), dict(r.headers)
    except urllib.error.HTTPError as exc:
        return int(exc.code), dict(exc.headers)


def test_public_port_hides_status_and_metrics(server: ServerProcess) -> None:
    public, admin = server.http_url, server.admin_url
    for path in ("/status", "/metrics"):
        assert status_of(public + path)[0] == 404  # as any path that does not exist
        assert status_of(public + path, TOKEN)[0] == 404  # no token configured: none opens it
        assert status_of(admin + path)[0] == 200
    for path in ("/healthz", "/readyz"):
        assert status_of(public + path)[0] == 200
        assert status_of(admin + path)[0] == 200
    # The admin listener serves nothing else (no dashboard, no webhooks).
    assert status_of(admin + "/dashboard/login")[0] == 404


def test_the_admin_token_opens_them_on_the_public_port(server_factory: Any) -> None:
    def with_token(config: dict[str, Any]) -> None:
        config["server"]["admin_token"] = TOKEN

    server: ServerProcess = server_factory(with_token)
    public = server.http_url
    for path in ("/status", "/metrics"):
        status, headers = status_of(public + path)
        assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
        assert status_of(public + path, "wrong-token-0123456789")[0] == 401
        assert status_of(public + path, TOKEN)[0] == 200
    assert status_of(server.admin_url + "/status")[0] == 200  # the admin port needs none


def test_no_admin_listener(server_factory: Any) -> None:
    def without_admin(config: dict[str, Any]) -> None:
        config["server"]["admin_http"] = None

    server: ServerProcess = server_factory(without_admin)
    assert status_of(server.http_url + "/metrics")[0] == 404
    assert not any(e.get("event") == "admin_http_listening" for e in server.log_events())

"""Rules of server.admin_http, server.admin_token and server.login_limit (each with a test)."""

from __future__ import annotations

import pytest

from sipserver.config import ConfigError, parse_config
from sipserver.reload import classify


def errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, env={})
    return info.value.errors


def test_defaults() -> None:
    server = parse_config("{}", env={}).server
    assert server.admin_http == "127.0.0.1:8081" and server.admin_token is None
    assert server.admin_host_port == ("127.0.0.1", 8081)
    assert server.login_limit.max_failures_per_source == 10
    assert server.login_limit.max_failures_per_user == 30


@pytest.mark.parametrize(
    ("http", "admin"),
    [("127.0.0.1:8080", "127.0.0.1:8080"), ("0.0.0.0:9000", "127.0.0.1:9000")],
)
def test_admin_listener_must_not_be_the_public_one(http: str, admin: str) -> None:
    (error,) = errors(f"server: {{http: '{http}', admin_http: '{admin}'}}")
    assert error.startswith("server.admin_http: must not be the public listener's address")


def test_admin_listener_may_be_off_or_elsewhere() -> None:
    assert parse_config("server: {admin_http: null}", env={}).server.admin_http is None
    server = parse_config("server: {http: '0.0.0.0:80', admin_http: '[::1]:81'}", env={}).server
    assert server.admin_host_port == ("::1", 81)


@pytest.mark.parametrize("token", ["short", "with spaces inside it!", "x" * 15])
def test_admin_token_is_long_and_without_spaces(token: str) -> None:
    (error,) = errors(f"server: {{admin_token: '{token}'}}")
    assert error.startswith("server.admin_token: must be at least 16 printable characters")
    assert token not in error  # a secret is never echoed


def test_admin_token_is_not_shown_in_repr() -> None:
    server = parse_config("server: {admin_token: 'abcdefghijklmnop1234'}", env={}).server
    assert "abcdefghijklmnop1234" not in repr(server)


@pytest.mark.parametrize(
    "setting",
    ["max_failures_per_source: 0", "max_failures_per_user: 0", "window: 0", "concurrent_checks: 0"],
)
def test_login_limit_bounds(setting: str) -> None:
    (error,) = errors(f"server: {{login_limit: {{{setting}}}}}")
    assert error.startswith(f"server.login_limit.{setting.split(':')[0]}:")


def test_reload_classes() -> None:
    assert classify("server.admin_http") == "restart"
    assert classify("server.admin_token") == "live"
    assert classify("server.login_limit.window") == "live"

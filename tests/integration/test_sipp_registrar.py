"""SIPp scenarios against a real sipserver process (UDP and TCP)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.conftest import DEMO_USER, ServerProcess, run_sipp

pytestmark = pytest.mark.integration

TRANSPORTS = ["udp", "tcp"]


def assert_ok(result: Any) -> None:
    assert result.returncode == 0, result.output


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_register_with_digest(server: ServerProcess, transport: str) -> None:
    assert_ok(run_sipp("register.xml", server.sip_port, transport=transport))
    assert server.metric("sipserver_registrations_active") == 1
    assert server.metric("sipserver_register_requests_total", result="ok") == 1
    assert server.metric("sipserver_register_requests_total", result="challenged") == 1


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_register_with_sipp_default_digest_uri(server: ServerProcess, transport: str) -> None:
    # REGISTER sip:localhost; SIPp (no -auth_uri) answers with uri="sip:127.0.0.1:<port>", which
    # names this server but is not the Request-URI: accepted by default (digest_uri_check: server).
    assert_ok(run_sipp("register_by_domain.xml", server.sip_port, transport=transport))
    assert server.metric("sipserver_register_requests_total", result="ok") == 1
    assert server.metric("sipserver_auth_failures_total", reason="wrong_uri") == 0
    assert server.metric("sipserver_registrations_active") == 1
    registered = [e for e in server.log_events() if e["event"] == "registered"]
    assert len(registered) == 1, registered
    assert registered[0]["aor"] == f"sip:{DEMO_USER}@127.0.0.1"
    assert registered[0]["expires"] == 3600
    assert registered[0]["source"].startswith(f"{transport}:127.0.0.1:")
    assert registered[0]["level"] == "info"


def test_strict_digest_uri_check_refuses_sipp_default_uri(server_factory: Any) -> None:
    def strict(config: dict[str, Any]) -> None:
        config["server"]["sip"]["digest_uri_check"] = "strict"

    server = server_factory(strict)
    assert_ok(run_sipp("register_by_domain.xml", server.sip_port))
    assert server.metric("sipserver_register_requests_total", result="auth_failed") == 1
    assert server.metric("sipserver_auth_failures_total", reason="wrong_uri") == 1
    assert server.metric("sipserver_registrations_active") == 0
    # The uri Request-URI exactly (SIPp's default for REGISTER sip:127.0.0.1:<port>) still works.
    assert_ok(run_sipp("register.xml", server.sip_port))
    assert server.metric("sipserver_registrations_active") == 1


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_wrong_password_is_refused(server: ServerProcess, transport: str) -> None:
    result = run_sipp(
        "register_rejected.xml", server.sip_port, password="wrong", transport=transport
    )
    assert_ok(result)
    assert server.metric("sipserver_auth_failures_total", reason="bad_password") == 1
    assert server.metric("sipserver_registrations_active") == 0


def test_unknown_user_is_challenged_then_refused(server: ServerProcess) -> None:
    # Unknown users get the same challenge as known ones, so scanners cannot enumerate them.
    assert_ok(run_sipp("register_rejected.xml", server.sip_port, service="mallory"))
    assert server.metric("sipserver_auth_failures_total", reason="unknown_user") == 1


def test_source_outside_cidr_gets_403_without_challenge(server_factory: Any) -> None:
    # Both agents accept only 192.0.2.0/24; SIPp sends from 127.0.0.1: 403 before any
    # challenge, for an address of record that exists and for one that does not.
    def fence_alice(config: dict[str, Any]) -> None:
        config["agents"][0]["sip"]["allowed_ips"] = ["192.0.2.0/24"]

    server = server_factory(fence_alice)
    for user in ("fenced", "nobody"):
        result = run_sipp(
            "register_forbidden.xml", server.sip_port, service=user, password="fenced-password-1"
        )
        assert_ok(result)
    assert server.metric("sipserver_register_requests_total", result="acl_denied") == 2


def test_aor_outside_its_cidr_is_challenged_then_refused(server: ServerProcess) -> None:
    # "fenced" accepts only 192.0.2.0/24 but alice accepts everyone: from 127.0.0.1 fenced's
    # address of record is challenged like any other (no probing), refused after the digest.
    result = run_sipp(
        "register_rejected.xml", server.sip_port, service="fenced", password="fenced-password-1"
    )
    assert_ok(result)
    assert server.metric("sipserver_register_requests_total", result="acl_denied") == 1


def test_cidr_allows_loopback_network(server_factory: Any) -> None:
    def allow_loopback(config: dict[str, Any]) -> None:
        config["agents"][1]["sip"]["allowed_ips"] = ["127.0.0.0/8"]

    server = server_factory(allow_loopback)
    assert_ok(
        run_sipp("register.xml", server.sip_port, service="fenced", password="fenced-password-1")
    )


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_unregister(server: ServerProcess, transport: str) -> None:
    assert_ok(run_sipp("unregister.xml", server.sip_port, transport=transport))
    assert server.metric("sipserver_registrations_active") == 0
    changes = [e for e in server.log_events() if e["event"] in ("registered", "unregistered")]
    assert [(e["event"], e["level"]) for e in changes] == [
        ("registered", "info"),
        ("unregistered", "info"),
    ], changes
    assert changes[1]["contact"] == changes[0]["contact"]
    assert changes[1]["reason"] == "request"


def test_wildcard_unregister_removes_every_contact(server: ServerProcess) -> None:
    assert_ok(run_sipp("unregister_wildcard.xml", server.sip_port))
    assert server.metric("sipserver_registrations_active") == 0


def test_refresh_updates_expiry(server: ServerProcess) -> None:
    assert_ok(run_sipp("register_refresh.xml", server.sip_port))
    assert server.metric("sipserver_registrations_active") == 1


def test_interval_too_brief(server: ServerProcess) -> None:
    assert_ok(run_sipp("register_too_brief.xml", server.sip_port))
    assert server.metric("sipserver_registrations_active") == 0


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_options_ping(server: ServerProcess, transport: str) -> None:
    assert_ok(run_sipp("options.xml", server.sip_port, transport=transport))
    assert server.metric("sipserver_sip_messages_in_total", transport=transport, method="OPTIONS")


def test_malformed_request_gets_400_and_server_stays_up(server: ServerProcess) -> None:
    assert_ok(run_sipp("bad_request.xml", server.sip_port))
    assert server.metric("sipserver_sip_parse_errors_total", transport="udp", answered="yes") == 1


def test_brute_force_bans_source(server: ServerProcess) -> None:
    # ban.max_failures is 3 in the test config: three wrong passwords, then even the right
    # password is refused without a challenge.
    for _ in range(3):
        assert_ok(run_sipp("register_rejected.xml", server.sip_port, password="wrong"))
    assert server.metric("sipserver_bans_total") == 1
    assert server.metric("sipserver_banned_sources") >= 0  # refreshed by the 1 s timer
    assert_ok(run_sipp("register_forbidden.xml", server.sip_port))
    assert server.metric("sipserver_register_requests_total", result="banned") == 1


def test_registrations_survive_restart(server: ServerProcess) -> None:
    assert_ok(run_sipp("register.xml", server.sip_port))
    assert server.stop() == 0
    server.start()
    assert server.metric("sipserver_registrations_active") == 1
    # A binding query (REGISTER without Contact) lists the contact registered before.
    assert_ok(run_sipp("register_query.xml", server.sip_port, service=DEMO_USER))


def test_ipv6_listeners(server_factory: Any) -> None:
    # IPv6 on loopback ([::1]); SIPp registers over UDP and pings over TCP.
    def ipv6(config: dict[str, Any]) -> None:
        port = config["server"]["sip"]["udp"][0].rsplit(":", 1)[1]
        config["server"]["sip"]["udp"].append(f"[::1]:{port}")
        config["server"]["sip"]["tcp"].append(f"[::1]:{port}")

    server = server_factory(ipv6)
    for scenario, transport in (("register.xml", "udp"), ("options.xml", "tcp")):
        result = run_sipp(scenario, server.sip_port, transport=transport, host="::1")
        assert_ok(result)
    assert server.metric("sipserver_registrations_active") == 1

"""SIP over TLS and SDES-SRTP through the edge, with real TLS peers.

Each test makes its own CA and certificates (tests/tls_certs.py). Peers: Python's ssl module
(OpenSSL 3) for single requests, handshakes and certificate checks; SIPp through stunnel (the
Debian build of SIPp has no TLS: ``-t l1`` answers "To use a TLS transport you must compile
SIPp with OpenSSL", so stunnel's TLS client carries SIPp's TCP scenarios); pjsua2 (its own
TLS transport and SRTP) placing calls with audio.
"""

from __future__ import annotations

import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import (
    DEMO_PASSWORD,
    DEMO_USER,
    ServerProcess,
    free_port,
    place_call,
    run_sipp,
)
from tests.integration.rtp_signals import tone, write_pcmu_pcap
from tests.integration.test_calls import ENGINES, on_engine
from tests.tls_certs import CertFiles, TestCa

pytestmark = pytest.mark.integration

NUMBER = "+15005550101"  # agent "alice" in the test config


@pytest.fixture
def ca(tmp_path: Path) -> TestCa:
    (tmp_path / "certs").mkdir()
    return TestCa(tmp_path / "certs")


def with_tls(cert: CertFiles, ca: TestCa | None = None, *, srtp: str = "off", **tls: Any) -> Any:
    """A server_factory mutation: a TLS listener on a free port with ``cert``."""

    def mutate(config: dict[str, Any]) -> None:
        config["server"]["sip"]["tls"] = {
            "listen": [f"127.0.0.1:{free_port(socket.SOCK_STREAM)}"],
            "certificate": str(cert.cert),
            "key": str(cert.key),
            **({"ca_bundle": str(ca.path)} if ca is not None else {}),
            **tls,
        }
        config["agents"][0]["sip"]["srtp"] = srtp

    return mutate


def tls_port(server: ServerProcess) -> int:
    return int(server.config["server"]["sip"]["tls"]["listen"][0].rsplit(":", 1)[1])


def client_context(ca: TestCa, cert: CertFiles | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca.path))
    if cert is not None:
        context.load_cert_chain(str(cert.cert), str(cert.key))
    return context


def options(port: int, *, branch: str = "z9hG4bKtls1") -> bytes:
    return (
        f"OPTIONS sip:127.0.0.1:{port};transport=tls SIP/2.0\r\n"
        f"Via: SIP/2.0/TLS 127.0.0.1:5999;branch={branch}\r\n"
        "Max-Forwards: 70\r\nFrom: <sip:probe@127.0.0.1>;tag=p1\r\n"
        f"To: <sip:127.0.0.1:{port}>\r\nCall-ID: {branch}@test\r\nCSeq: 1 OPTIONS\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def read_response(sock: ssl.SSLSocket) -> bytes:
    """One SIP response from a stream (headers, then Content-Length bytes)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError(f"closed after {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() in (b"content-length", b"l"):
            length = int(value)
    while len(body) < length:
        body += sock.recv(4096)
    return head + b"\r\n\r\n" + body


def tls_exchange(
    port: int, context: ssl.SSLContext, data: bytes
) -> tuple[bytes, dict[str, Any] | None]:
    """Connect, send ``data``, read one response; also the server certificate seen."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as sock,
    ):
        peer = sock.getpeercert()
        sock.sendall(data)
        return read_response(sock), peer


def test_options_over_tls_and_plain_tcp_on_the_tls_port_is_refused(
    server_factory: Any, ca: TestCa
) -> None:
    server = server_factory(with_tls(ca.issue("server")))
    port = tls_port(server)
    answer, _ = tls_exchange(port, client_context(ca), options(port))
    assert answer.startswith(b"SIP/2.0 200 OK\r\n"), answer
    assert b"Via: SIP/2.0/TLS 127.0.0.1:5999;branch=z9hG4bKtls1" in answer
    # Cleartext SIP on the TLS port: no answer, the connection is closed, the refusal counted.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.sendall(options(port, branch="z9hG4bKplain"))
        assert raw.recv(4096) == b""
    assert (
        server.metric("sipserver_refusals_total", ingress="sip_tls", reason="handshake_failed") == 1
    )
    listeners = server.get("/status")[1]["listeners"]
    assert {"transport": "tls", "host": "127.0.0.1", "port": port} in listeners


def test_handshake_deadline(server_factory: Any, ca: TestCa) -> None:
    server = server_factory(with_tls(ca.issue("server"), handshake_timeout=1))
    with socket.create_connection(("127.0.0.1", tls_port(server)), timeout=10) as raw:
        started = time.monotonic()
        assert raw.recv(4096) == b""  # nothing sent: closed at the deadline
        waited = time.monotonic() - started
    assert 0.9 <= waited < 8, waited
    assert (
        server.metric("sipserver_refusals_total", ingress="sip_tls", reason="handshake_timeout")
        == 1
    )


def test_mutual_tls(server_factory: Any, ca: TestCa) -> None:
    server = server_factory(with_tls(ca.issue("server"), ca, verify_client=True))
    port = tls_port(server)
    # Without a client certificate: the handshake fails (TLS 1.3 reports it on first read).
    with pytest.raises((ssl.SSLError, ConnectionError)):
        tls_exchange(port, client_context(ca), options(port))
    # A certificate from another CA is refused too.
    stranger = TestCa(ca.directory, "stranger").issue("trunk-x", client=True)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        tls_exchange(port, client_context(ca, stranger), options(port, branch="z9hG4bKs"))
    # One signed by the configured CA is accepted.
    trunk = ca.issue("trunk", client=True)
    answer, _ = tls_exchange(port, client_context(ca, trunk), options(port, branch="z9hG4bKok"))
    assert answer.startswith(b"SIP/2.0 200 OK\r\n"), answer
    refused = server.metric(
        "sipserver_refusals_total", ingress="sip_tls", reason="handshake_failed"
    )
    assert refused == 2


def test_certificate_reload(server_factory: Any, ca: TestCa) -> None:
    first = ca.issue("server")
    server = server_factory(with_tls(first))
    port = tls_port(server)
    context = client_context(ca)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as kept,
    ):
        assert _serial(kept.getpeercert()) == first.serial
        renewed = ca.issue("server")  # the same file names, a new key and certificate
        assert server.proc is not None
        server.proc.send_signal(signal.SIGHUP)
        _wait_for_event(server, "config_reloaded")
        _, seen = tls_exchange(port, context, options(port, branch="z9hG4bKnew"))
        assert _serial(seen) == renewed.serial
        # The connection opened before the reload keeps working on its handshake.
        kept.sendall(options(port, branch="z9hG4bKkept"))
        assert read_response(kept).startswith(b"SIP/2.0 200 OK\r\n")
    # A broken file fails the reload and changes nothing.
    first.cert.write_text("garbage\n")
    server.proc.send_signal(signal.SIGHUP)
    failed = _wait_for_event(server, "config_reload_failed")
    assert any("server.sip.tls.certificate" in error for error in failed["errors"]), failed
    _, seen = tls_exchange(port, context, options(port, branch="z9hG4bKstill"))
    assert _serial(seen) == renewed.serial


def _serial(cert: dict[str, Any] | None) -> int:
    assert cert is not None
    return int(str(cert["serialNumber"]), 16)


def _wait_for_event(server: ServerProcess, event: str, timeout: float = 20) -> dict[str, Any]:
    seen = len([e for e in server.log_events() if e.get("event") == event])
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [e for e in server.log_events() if e.get("event") == event]
        if len(found) > seen or (seen == 0 and found):
            return found[-1]
        time.sleep(0.05)
    pytest.fail(f"no {event} in {timeout} s:\n{server.log_path.read_text()[-3000:]}")


# ------------------------------------------------------------------ SIPp through stunnel


@pytest.fixture
def stunnel(tmp_path: Path) -> Iterator[Any]:
    """Start stunnel as a TLS client: SIPp's TCP on a local port, TLS to the edge."""
    binary = shutil.which("stunnel4") or shutil.which("stunnel")
    if binary is None:
        pytest.fail("stunnel is not installed (apt-get install stunnel4; scripts/test does it)")
    procs: list[subprocess.Popen[bytes]] = []

    def start(target_port: int, ca: TestCa, cert: CertFiles | None = None) -> int:
        accept = free_port(socket.SOCK_STREAM)
        conf = tmp_path / f"stunnel-{accept}.conf"
        lines = [
            "foreground = yes",
            f"pid = {tmp_path / f'stunnel-{accept}.pid'}",
            "[sip]",
            "client = yes",
            f"accept = 127.0.0.1:{accept}",
            f"connect = 127.0.0.1:{target_port}",
            f"CAfile = {ca.path}",
            "verifyChain = yes",
            "checkHost = localhost",
            "sslVersionMin = TLSv1.2",
        ]
        if cert is not None:
            lines += [f"cert = {cert.cert}", f"key = {cert.key}"]
        conf.write_text("\n".join(lines) + "\n")
        log = (tmp_path / f"stunnel-{accept}.log").open("ab")
        proc = subprocess.Popen([binary, str(conf)], stdout=log, stderr=subprocess.STDOUT)
        procs.append(proc)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", accept), timeout=1).close()
                return accept
            except OSError:
                time.sleep(0.05)
        pytest.fail("stunnel did not start")

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.parametrize("engine", ENGINES)
def test_sipp_register_options_and_call_over_tls(
    server_factory: Any, ca: TestCa, stunnel: Any, tmp_path: Path, engine: str
) -> None:
    server = server_factory(on_engine(engine, with_tls(ca.issue("server"))))
    port = tls_port(server)
    tunnel = stunnel(port, ca)
    for scenario in ("register.xml", "options.xml"):
        result = run_sipp(scenario, tunnel, transport="tcp", workdir=tmp_path)
        assert result.returncode == 0, result.output
    registers = server.metric("sipserver_sip_messages_in_total", transport="tls", method="REGISTER")
    assert registers >= 2  # challenged, then authorised
    (tmp_path / "pcap").mkdir()
    write_pcmu_pcap(tmp_path / "pcap" / "pcmu_tone.pcap", tone(3.0))
    trace = tmp_path / "call.trace"
    result = run_sipp(
        "uac_edge_call.xml",
        tunnel,
        service=NUMBER,
        auth_user=DEMO_USER,
        password=DEMO_PASSWORD,
        transport="tcp",
        workdir=tmp_path,
        # SIPp's digest uri names the server it dialled: stunnel's port, so name the edge's.
        extra=("-trace_msg", "-message_file", str(trace), "-auth_uri", f"127.0.0.1:{port}"),
    )
    assert result.returncode == 0, result.output
    # The Record-Route towards the caller names the TLS listener (RFC 5658 outside entry).
    text = trace.read_text()
    assert f"<sip:127.0.0.1:{port};transport=tls;lr;r2=on>" in text, text[-3000:]
    # SIPp's BYE came back over the TLS connection, routed by that entry, and ended the call.
    assert server.metric("sipserver_calls_ended_total", reason="caller_bye") == 1


# ------------------------------------------------------------------ pjsua2 over TLS with SRTP


@pytest.mark.parametrize("engine", ENGINES)
def test_pjsua2_call_over_mutual_tls_with_srtp_required(
    server_factory: Any, ca: TestCa, tmp_path: Path, engine: str
) -> None:
    """A real UA (pjsua2, its own TLS transport and SRTP) calls through the edge over mutual
    TLS to an agent whose policy is ``srtp: required``: the call connects with RTP/SAVP and the
    caller hears its own speech echoed back (cross-correlated), so audio flows both ways
    through SRTP on the caller's leg."""
    import numpy as np

    from tests.integration.rtp_signals import RATE
    from tests.integration.test_calls import wait_metric
    from tests.speech import espeak, read_wav, write_wav

    server = server_factory(
        on_engine(engine, with_tls(ca.issue("server"), ca, srtp="required", verify_client=True))
    )
    wait_metric(server, "sipserver_media_workers_up", 1)
    trunk = ca.issue("trunk", client=True)
    play, record = tmp_path / "play.wav", tmp_path / "rec.wav"
    sent = espeak("Testing a secure call: these words should come back to me.", tmp_path, rate=RATE)
    write_wav(play, sent, RATE)
    tls = ("--tls-ca", str(ca.path), "--tls-cert", str(trunk.cert), "--tls-key", str(trunk.key))
    result = place_call(
        sip_port=tls_port(server), number=NUMBER, user=DEMO_USER, password=DEMO_PASSWORD,
        play=play, record=record, seconds=len(sent) / RATE + 1.0, dtmf="#", wait_bye=5,
        timeout=60, transport="tls", srtp="required", tls=tls,
    )  # fmt: skip
    assert result["ended_by"] == "remote", result  # the agent hung up on '#'
    # RFC 4568 §6.1: the answerer takes the first offered suite it supports: pjmedia offers
    # AES_256_CM first, which pjsua2 supports; libsrtp's profiles in pylibsrtp (the native
    # engine) stop at AES_CM_128, the first of pjmedia's offers it takes.
    suite = "AES_256_CM_HMAC_SHA1_80" if engine == "pjsua2" else "AES_CM_128_HMAC_SHA1_80"
    assert result["srtp"] == suite, result
    got = read_wav(record)[1].astype(np.float64)
    ref = sent.astype(np.float64)
    size = 1 << (len(got) + len(ref) - 1).bit_length()
    corr = np.fft.irfft(np.fft.rfft(got, size) * np.conj(np.fft.rfft(ref, size)), size)
    corr = np.abs(corr[: len(got)])
    ratio = float(corr.max()) / (float(np.median(corr)) + 1e-9)
    assert ratio > 20, ratio
    assert server.metric("sipserver_sip_messages_in_total", transport="tls", method="INVITE") >= 2


@pytest.mark.parametrize("engine", ENGINES)
def test_pjsua2_call_to_a_sips_uri(
    server_factory: Any, ca: TestCa, tmp_path: Path, engine: str
) -> None:
    """A sips: Request-URI (RFC 5630): the edge Record-Routes with sips: (RFC 3261 §16.6 step 4),
    the caller routes its in-dialog requests by it, and the worker's BYE (a UDP hop on loopback
    from the worker) reaches the caller over its TLS connection."""
    from tests.integration.rtp_signals import tone
    from tests.integration.test_calls import wait_metric
    from tests.speech import write_wav

    server = server_factory(on_engine(engine, with_tls(ca.issue("server"))))
    wait_metric(server, "sipserver_media_workers_up", 1)
    play = tmp_path / "play.wav"
    write_wav(play, tone(1.0), 8000)
    result = place_call(
        sip_port=tls_port(server), number=NUMBER, user=DEMO_USER, password=DEMO_PASSWORD,
        play=play, record=tmp_path / "rec.wav", seconds=0.5, dtmf="#", wait_bye=5,
        timeout=60, transport="sips", tls=("--tls-ca", str(ca.path)),
    )  # fmt: skip
    assert result["ended_by"] == "remote", result  # the agent's BYE on '#' reached the caller
    wait_metric(server, "sipserver_calls_ended_total", 1, reason="worker_bye")


@pytest.mark.parametrize(
    ("agent", "caller", "status"),
    [
        ("required", "off", 488),  # a plain RTP/AVP offer to an agent that requires SRTP
        ("off", "required", 488),  # an RTP/SAVP-only offer to an agent without SRTP
    ],
)
@pytest.mark.parametrize("engine", ENGINES)
def test_srtp_policy_mismatch_is_488(
    server_factory: Any,
    ca: TestCa,
    tmp_path: Path,
    agent: str,
    caller: str,
    status: int,
    engine: str,
) -> None:
    from tests.integration.rtp_signals import tone
    from tests.integration.test_calls import wait_metric
    from tests.speech import write_wav

    server = server_factory(on_engine(engine, with_tls(ca.issue("server"), srtp=agent)))
    wait_metric(server, "sipserver_media_workers_up", 1)
    play, record = tmp_path / "play.wav", tmp_path / "rec.wav"
    write_wav(play, tone(0.5), 8000)
    result = place_call(
        sip_port=tls_port(server), number=NUMBER, user=DEMO_USER, password=DEMO_PASSWORD,
        play=play, record=record, seconds=0.5, wait_bye=1, timeout=60,
        transport="tls", srtp=caller, tls=("--tls-ca", str(ca.path)),
    )  # fmt: skip
    assert (result["ended_by"], result["status"]) == ("never-connected", status), result


@pytest.mark.parametrize(
    ("agent", "offers"),
    [
        # caller's srtp -> the answer is SRTP
        ("optional", (("optional", True), ("required", True), ("off", False))),
        # an RTP/AVP offer with crypto lines is answered with plain RTP
        ("off", (("optional", False),)),
    ],
)
@pytest.mark.parametrize("engine", ENGINES)
def test_srtp_answers_what_the_policy_allows(
    server_factory: Any,
    ca: TestCa,
    tmp_path: Path,
    agent: str,
    offers: tuple[tuple[str, bool], ...],
    engine: str,
) -> None:
    from tests.integration.rtp_signals import tone
    from tests.integration.test_calls import wait_metric
    from tests.speech import write_wav

    server = server_factory(on_engine(engine, with_tls(ca.issue("server"), srtp=agent)))
    wait_metric(server, "sipserver_media_workers_up", 1)
    play = tmp_path / "play.wav"
    write_wav(play, tone(0.5), 8000)
    for caller, encrypted in offers:
        result = place_call(
            sip_port=tls_port(server), number=NUMBER, user=DEMO_USER, password=DEMO_PASSWORD,
            play=play, record=tmp_path / f"rec-{caller}.wav", seconds=0.5, wait_bye=0.5,
            timeout=60, transport="tls", srtp=caller, tls=("--tls-ca", str(ca.path)),
        )  # fmt: skip
        assert result["ended_by"] == "local", (caller, result)
        assert (result["srtp"] is not None) is encrypted, (caller, result)

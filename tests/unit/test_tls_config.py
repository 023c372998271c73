"""``server.sip.tls`` rules, the server TLS context, its reload class and the SRTP warning."""

from __future__ import annotations

import contextlib
import ssl
from pathlib import Path
from typing import Any

import pytest
import yaml

from sipserver.config import Config, ConfigError, parse_config, srtp_warnings
from sipserver.reload import plan_reload
from tests.tls_certs import CertFiles, TestCa


@pytest.fixture
def ca(tmp_path: Path) -> TestCa:
    return TestCa(tmp_path)


@pytest.fixture
def server_cert(ca: TestCa) -> CertFiles:
    return ca.issue("server")


def parse(doc: dict[str, Any], base_dir: Path | None = None) -> Config:
    return parse_config(yaml.safe_dump(doc), env={}, base_dir=base_dir)


def tls_doc(**tls: Any) -> dict[str, Any]:
    return {"server": {"sip": {"tls": {"listen": ["127.0.0.1:5061"], **tls}}}}


def errors(doc: dict[str, Any], base_dir: Path | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(doc, base_dir)
    return info.value.errors


def test_listen_needs_certificate_and_key() -> None:
    found = errors(tls_doc())
    assert "server.sip.tls.certificate: required when listen is set" in found
    assert "server.sip.tls.key: required when listen is set" in found


def test_no_listener_reads_no_file() -> None:
    # Files named but TLS off (listen: []): nothing is read, nothing can fail.
    doc = {"server": {"sip": {"tls": {"certificate": "/nonexistent.pem", "key": "/x.key"}}}}
    assert parse(doc).server.sip.tls.listen == []


def test_missing_file_names_the_key(server_cert: CertFiles, tmp_path: Path) -> None:
    found = errors(tls_doc(certificate=str(tmp_path / "gone.pem"), key=str(server_cert.key)))
    assert found == [f"server.sip.tls.certificate: no such file: {tmp_path / 'gone.pem'}"]


def test_bad_pem_certificate(server_cert: CertFiles, tmp_path: Path) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate\n")
    found = errors(tls_doc(certificate=str(bad), key=str(server_cert.key)))
    assert len(found) == 1 and found[0].startswith("server.sip.tls.certificate: no PEM certificate")


def test_bad_pem_key(server_cert: CertFiles, tmp_path: Path) -> None:
    bad = tmp_path / "bad.key"
    bad.write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    found = errors(tls_doc(certificate=str(server_cert.cert), key=str(bad)))
    assert len(found) == 1
    assert found[0].startswith("server.sip.tls.key: cannot load the private key")


def test_key_of_another_certificate(ca: TestCa, server_cert: CertFiles) -> None:
    other = ca.issue("other")
    found = errors(tls_doc(certificate=str(server_cert.cert), key=str(other.key)))
    assert found == [
        f"server.sip.tls.key: does not match the certificate {server_cert.cert}",
    ]


def test_verify_client_needs_a_ca_bundle(server_cert: CertFiles) -> None:
    doc = tls_doc(certificate=str(server_cert.cert), key=str(server_cert.key), verify_client=True)
    assert errors(doc) == ["server.sip.tls.ca_bundle: required when verify_client is true"]


def test_bad_ca_bundle(server_cert: CertFiles, tmp_path: Path) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("garbage\n")
    doc = tls_doc(certificate=str(server_cert.cert), key=str(server_cert.key), ca_bundle=str(bad))
    assert errors(doc) == [f"server.sip.tls.ca_bundle: no PEM CA certificate in {bad}"]


def test_old_tls_versions_are_refused(server_cert: CertFiles) -> None:
    doc = tls_doc(certificate=str(server_cert.cert), key=str(server_cert.key), min_version="1.1")
    found = errors(doc)
    assert len(found) == 1 and found[0].startswith("server.sip.tls.min_version:")


def test_relative_paths_are_taken_from_the_config_directory(
    ca: TestCa, server_cert: CertFiles, tmp_path: Path
) -> None:
    doc = tls_doc(certificate="server.pem", key="server.key", ca_bundle=ca.path.name)
    tls = parse(doc, base_dir=tmp_path).server.sip.tls
    assert tls.certificate == str(tmp_path / "server.pem")
    assert tls.ca_bundle == str(ca.path)
    assert tls.key == str(server_cert.key)


def test_context_settings(ca: TestCa, server_cert: CertFiles) -> None:
    doc = tls_doc(
        certificate=str(server_cert.cert),
        key=str(server_cert.key),
        ca_bundle=str(ca.path),
        verify_client=True,
        min_version="1.3",
    )
    config = parse(doc)
    context = config.server.sip.tls.server_context()
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.minimum_version == ssl.TLSVersion.TLSv1_3
    assert config.server.sip.tls_addresses == [("127.0.0.1", 5061)]
    plain = parse(tls_doc(certificate=str(server_cert.cert), key=str(server_cert.key)))
    context = plain.server.sip.tls.server_context()
    assert context.verify_mode == ssl.CERT_NONE
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2


def _handshake_serial(server_context: ssl.SSLContext, ca: TestCa) -> int:
    """The serial of the certificate a client sees, over an in-memory handshake."""
    client_context = ssl.create_default_context(cafile=str(ca.path))
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_context.wrap_bio(c_in, c_out, server_hostname="localhost")
    server = server_context.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        for side in (client, server):
            with contextlib.suppress(ssl.SSLWantReadError):
                side.do_handshake()
        s_in.write(c_out.read())
        c_in.write(s_out.read())
    cert = client.getpeercert()
    assert cert is not None
    return int(str(cert["serialNumber"]), 16)


def test_a_new_context_reads_the_files_again(ca: TestCa, server_cert: CertFiles) -> None:
    # What a reload does: the same settings, renewed files -> the new certificate.
    tls = parse(tls_doc(certificate=str(server_cert.cert), key=str(server_cert.key)))
    first = tls.server.sip.tls.server_context()
    assert _handshake_serial(first, ca) == server_cert.serial
    renewed = ca.issue("server")  # same file names, new key and serial
    assert renewed.serial != server_cert.serial
    assert _handshake_serial(tls.server.sip.tls.server_context(), ca) == renewed.serial
    assert _handshake_serial(first, ca) == server_cert.serial  # the old context keeps its own


def test_reload_applies_files_and_verification_but_not_listeners(
    ca: TestCa, server_cert: CertFiles
) -> None:
    other = ca.issue("other")
    running = parse(tls_doc(certificate=str(server_cert.cert), key=str(server_cert.key)))
    new_doc = tls_doc(
        certificate=str(other.cert),
        key=str(other.key),
        ca_bundle=str(ca.path),
        verify_client=True,
    )
    new_doc["server"]["sip"]["tls"]["listen"] = ["127.0.0.1:5062"]
    plan = plan_reload(running, parse(new_doc), pool_runs=False)
    assert plan.restart_needed == ("server.sip.tls.listen",)
    assert set(plan.changed) == {
        "server.sip.tls.certificate",
        "server.sip.tls.key",
        "server.sip.tls.ca_bundle",
        "server.sip.tls.verify_client",
    }
    tls = plan.config.server.sip.tls
    assert tls.listen == ["127.0.0.1:5061"] and tls.certificate == str(other.cert)


def _agent(srtp: str) -> dict[str, Any]:
    sip = {"enabled": True, "username": "a", "password": "pw-0123456789ab", "srtp": srtp}
    return {"slug": "a", "sip": sip}


def test_srtp_policy_values() -> None:
    assert parse({"agents": [_agent("required")]}).agents[0].sip.srtp == "required"
    found = errors({"agents": [_agent("mandatory")]})
    assert len(found) == 1 and found[0].startswith("agents[0].sip.srtp:")


def test_srtp_without_tls_is_warned(server_cert: CertFiles) -> None:
    plain = parse({"agents": [_agent("required")]})
    (warning,) = srtp_warnings(plain)
    assert warning.startswith("agents[0].sip.srtp is 'required' but server.sip.tls has no listener")
    assert srtp_warnings(parse({"agents": [_agent("off")]})) == []
    with_tls = tls_doc(certificate=str(server_cert.cert), key=str(server_cert.key))
    with_tls["agents"] = [_agent("optional")]
    assert srtp_warnings(parse(with_tls)) == []


def test_check_config_prints_tls_errors_and_the_srtp_warning(
    tmp_path: Path, server_cert: CertFiles, ca: TestCa, capsys: pytest.CaptureFixture[str]
) -> None:
    from sipserver.cli import main

    other = ca.issue("other")
    bad = tmp_path / "bad.yaml"
    doc = tls_doc(certificate="server.pem", key=other.key.name)  # relative to the file
    bad.write_text(yaml.safe_dump(doc))
    assert main(["check-config", str(bad)]) == 1
    err = capsys.readouterr().err
    assert f"server.sip.tls.key: does not match the certificate {server_cert.cert}" in err
    plain = tmp_path / "plain.yaml"
    plain.write_text(yaml.safe_dump({"agents": [_agent("optional")]}))
    assert main(["check-config", str(plain)]) == 0
    captured = capsys.readouterr()
    assert "warning: agents[0].sip.srtp is 'optional' but server.sip.tls has no listener" in (
        captured.err
    )
    assert "1 warning(s)" in captured.out

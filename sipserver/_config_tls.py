"""The ``server.sip.tls`` block: SIP over TLS listeners and the server's TLS context.

Private to :mod:`sipserver.config`, which re-exports :class:`SipTlsConfig`. The certificate,
key and CA bundle are read when the configuration is validated (``check-config``, start,
reload), so a missing file, a bad PEM or a key that does not match its certificate is a
configuration error naming the key; :meth:`SipTlsConfig.server_context` reads them again into
a fresh :class:`ssl.SSLContext`, which is how a reload picks up renewed files.
"""

from __future__ import annotations

import pathlib
import ssl
from typing import Annotated, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from sipserver._config_rules import Issue, RuleErrors
from sipserver._config_types import Listeners
from sipserver._config_types import StrictModel as _Model

__all__ = ["TLS_VERSIONS", "SipTlsConfig", "TlsSetupError", "build_server_context"]

TLS_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
"""``min_version`` values; nothing older than TLS 1.2 (RFC 8996 deprecates 1.0 and 1.1)."""


class TlsSetupError(ValueError):
    """A TLS file cannot be used; :attr:`key` names the setting (``certificate``, ``key``...)."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


def build_server_context(
    *,
    certificate: str,
    key: str,
    ca_bundle: str | None,
    verify_client: bool,
    min_version: str,
) -> ssl.SSLContext:
    """A server-side TLS context from PEM files.

    Args:
        certificate: the server's certificate chain (PEM; leaf first).
        key: its private key (PEM, unencrypted).
        ca_bundle: CA certificates that sign client certificates (PEM), or None.
        verify_client: require a client certificate signed by ``ca_bundle`` (mutual TLS).
        min_version: ``"1.2"`` or ``"1.3"``.

    Returns:
        A new context; connections accepted with it use these files.

    Raises:
        TlsSetupError: a file is missing or unreadable, a PEM does not parse, or the key does
            not match the certificate; its ``key`` names the setting.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = TLS_VERSIONS[min_version]
    for name, path in (("certificate", certificate), ("key", key), ("ca_bundle", ca_bundle)):
        if path is not None and not pathlib.Path(path).is_file():
            raise TlsSetupError(name, f"no such file: {path}")
    try:
        context.load_cert_chain(certificate, key)
    except ssl.SSLError as exc:
        # OpenSSL's reasons: KEY_VALUES_MISMATCH for a key of another certificate, PEM or
        # ASN1 errors for a file that is not what it should be.
        text = f"{exc.reason or ''} {exc}".upper()
        if "MISMATCH" in text:
            raise TlsSetupError("key", f"does not match the certificate {certificate}") from exc
        if not _has_pem(certificate, "CERTIFICATE"):
            raise TlsSetupError("certificate", f"no PEM certificate in {certificate}") from exc
        raise TlsSetupError("key", f"cannot load the private key from {key}: {exc}") from exc
    except OSError as exc:
        raise TlsSetupError("certificate", f"cannot read: {exc}") from exc
    if ca_bundle is not None:
        try:
            context.load_verify_locations(cafile=ca_bundle)
        except (ssl.SSLError, OSError) as exc:
            raise TlsSetupError("ca_bundle", f"no PEM CA certificate in {ca_bundle}") from exc
    context.verify_mode = ssl.CERT_REQUIRED if verify_client else ssl.CERT_NONE
    return context


def _has_pem(path: str, label: str) -> bool:
    try:
        return f"-----BEGIN {label}-----" in pathlib.Path(path).read_text(errors="replace")
    except OSError:
        return False


def _absolute(value: str | None, info: ValidationInfo) -> str | None:
    """A path taken from the configuration file's directory when relative."""
    if value is None:
        return None
    path = pathlib.Path(value).expanduser()
    if not path.is_absolute():
        context = info.context if isinstance(info.context, dict) else {}
        base = context.get("base_dir")
        path = (pathlib.Path(base) if base is not None else pathlib.Path.cwd()) / path
    return str(path)


class SipTlsConfig(_Model):
    """SIP over TLS listeners (RFC 3261 §26.2; ``sips:`` and ``transport=tls``).

    ``listen`` is bound at start; the files and the other settings are read again on every
    reload (SIGHUP, ``sipserver reload``) into a new context that new connections use, so a
    renewed certificate needs no restart.
    """

    listen: Listeners = Field(default_factory=list)
    """TLS listeners, ``host:port`` (usually port 5061); ``[]``: off."""
    certificate: str | None = None
    """PEM certificate chain of the server (leaf first); required with ``listen``. A relative
    path is taken from the configuration file's directory."""
    key: str | None = Field(None, repr=False)
    """PEM private key of ``certificate`` (unencrypted; keep it mode 0600); required with
    ``listen``."""
    ca_bundle: str | None = None
    """PEM CA certificates that sign client certificates; required by ``verify_client``."""
    verify_client: bool = False
    """Mutual TLS: refuse clients without a certificate signed by ``ca_bundle`` (trunks that
    present one). Off: any client may connect and digest authentication does the rest."""
    min_version: Literal["1.2", "1.3"] = "1.2"
    """Oldest TLS version accepted."""
    handshake_timeout: Annotated[float, Field(gt=0, le=120)] = 10.0
    """Seconds a client has to finish the TLS handshake before the connection is closed."""

    @field_validator("certificate", "key", "ca_bundle")
    @classmethod
    def _paths(cls, value: str | None, info: ValidationInfo) -> str | None:
        return _absolute(value, info)

    @model_validator(mode="after")
    def _files(self) -> SipTlsConfig:
        if not self.listen:
            return self
        missing: list[Issue] = [
            ((name,), "required when listen is set")
            for name in ("certificate", "key")
            if getattr(self, name) is None
        ]
        if self.verify_client and self.ca_bundle is None:
            missing.append((("ca_bundle",), "required when verify_client is true"))
        RuleErrors.raise_if_any(missing)
        try:
            self.server_context()
        except TlsSetupError as exc:
            raise RuleErrors([((exc.key,), exc.reason)]) from exc
        return self

    def server_context(self) -> ssl.SSLContext:
        """A new server context from the files as they are now (see :func:`build_server_context`).

        Raises:
            TlsSetupError: a file cannot be used (the error names the setting).
            ValueError: no listener is configured.
        """
        if self.certificate is None or self.key is None:
            raise ValueError("server.sip.tls has no certificate and key")
        return build_server_context(
            certificate=self.certificate,
            key=self.key,
            ca_bundle=self.ca_bundle,
            verify_client=self.verify_client,
            min_version=self.min_version,
        )

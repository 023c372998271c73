"""The base of the configuration's pydantic models and the field types they share.

Private to :mod:`sipserver.config`, which re-exports what callers need.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from sipserver import _config_rules as rules

__all__ = [
    "DigestAlgorithm",
    "Duration",
    "Fraction",
    "Host",
    "HostPort",
    "Listeners",
    "StrictModel",
]

DigestAlgorithm = Literal["MD5", "SHA-256"]
"""Digest algorithms the registrar can challenge with (RFC 7616, RFC 8760)."""


class StrictModel(BaseModel):
    """A frozen model that refuses unknown keys; attribute docstrings document the fields."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


Duration = Annotated[float, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]
Host = Annotated[str, AfterValidator(rules.check_host)]
HostPort = Annotated[str, AfterValidator(rules.check_host_port)]
Listeners = Annotated[list[HostPort], BeforeValidator(rules.one_or_many)]

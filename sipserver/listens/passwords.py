"""Password hashes of the dashboard users: scrypt (default) and PBKDF2-SHA256, standard library.

Formats (``users[].password_hash``)::

    scrypt$<n>$<r>$<p>$<salt, base64>$<key, base64>
    pbkdf2_sha256$<iterations>$<salt>$<key, base64>      (Django's layout)

:func:`hash_password` makes a scrypt hash (``sipserver hash-password`` prints one);
:func:`verify_password` checks either in constant time. Both are CPU-bound (tens of ms): call
them on a thread (:func:`verify_password_async`), never on the event loop.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import secrets
from typing import Final

__all__ = ["SCRYPT_N", "hash_password", "verify_password", "verify_password_async"]

SCRYPT_N: Final = 2**14
"""scrypt cost (16 MiB of memory with r=8), the interactive-login parameters of RFC 7914."""
_SCRYPT_R: Final = 8
_SCRYPT_P: Final = 1
_KEY_BYTES: Final = 32
_MAX_N: Final = 2**20  # refuse absurd costs from a config (memory/CPU)
_MAX_ITERATIONS: Final = 5_000_000


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def hash_password(password: str, *, n: int = SCRYPT_N) -> str:
    """A new scrypt hash of ``password`` with a random 16-byte salt.

    Args:
        password: The password (UTF-8).
        n: scrypt cost parameter, a power of two (tests use a small one).
    """
    salt = secrets.token_bytes(16)
    key = hashlib.scrypt(
        password.encode(),
        salt=salt,
        n=n,
        r=_SCRYPT_R,
        p=_SCRYPT_P,
        maxmem=_maxmem(n, _SCRYPT_R),
        dklen=_KEY_BYTES,
    )
    return f"scrypt${n}${_SCRYPT_R}${_SCRYPT_P}${_b64(salt)}${_b64(key)}"


def _maxmem(n: int, r: int) -> int:
    return 128 * n * r * 2


def verify_password(password: str, encoded: str) -> bool:
    """True when ``password`` matches ``encoded`` (compared in constant time).

    A malformed hash or unsupported parameters never match (and never raise).
    """
    scheme, _, rest = encoded.partition("$")
    try:
        if scheme == "scrypt":
            n_text, r_text, p_text, salt_text, key_text = rest.split("$")
            n, r, p = int(n_text), int(r_text), int(p_text)
            if not (1 < n <= _MAX_N and n & (n - 1) == 0 and 1 <= r <= 32 and 1 <= p <= 16):
                return False
            expected = _unb64(key_text)
            got = hashlib.scrypt(
                password.encode(),
                salt=_unb64(salt_text),
                n=n,
                r=r,
                p=p,
                maxmem=_maxmem(n, r),
                dklen=len(expected),
            )
        elif scheme == "pbkdf2_sha256":
            iterations_text, salt, key_text = rest.split("$")
            iterations = int(iterations_text)
            if not 1 <= iterations <= _MAX_ITERATIONS:
                return False
            expected = _unb64(key_text)
            got = hashlib.pbkdf2_hmac(
                "sha256", password.encode(), salt.encode(), iterations, len(expected)
            )
        else:
            return False
    except (ValueError, binascii.Error, MemoryError):
        return False
    return bool(expected) and hmac.compare_digest(got, expected)


async def verify_password_async(password: str, encoded: str) -> bool:
    """:func:`verify_password` on a worker thread."""
    return await asyncio.to_thread(verify_password, password, encoded)

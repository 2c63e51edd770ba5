"""Decryption of the learner's JWT from ``POST /api/v1/agent/user-token``.

Format ``{iv_hex}:{ciphertext_hex}``: AES-256-CBC, 16-byte IV, PKCS7 padding. The key is the shared
secret's UTF-8 bytes truncated to 32 bytes, or right-padded to 32 bytes with the byte set by
``SHARED_SECRET_PAD_BYTE`` (default ``0x00``) - the same rule as the reference API.

Every failure (bad hex, wrong IV length, bad padding, wrong key, not a JWT) raises the same
:class:`TokenDecryptionError` with the same message and no chained cause, so callers (and their
logs) cannot tell padding errors from others: no padding oracle, and no token material anywhere.
"""

from __future__ import annotations

import base64
import binascii
import json
import re

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

# The key rule has one home, shared with the other end of the passthrough.
from loqua_common.tokenkey import KEY_BYTES

IV_BYTES = 16
BLOCK_BYTES = 16
# A user JWT is a few hundred bytes; anything this large is not one and is not worth decrypting.
MAX_ENCRYPTED_CHARS = 64 * 1024

_HEX = re.compile(r"[0-9a-fA-F]+")
_B64URL = re.compile(r"[A-Za-z0-9_-]+")
DECRYPTION_FAILED = "user token could not be decrypted"


class TokenDecryptionError(Exception):
    """The encrypted user token could not be turned into a JWT. Always the same message."""

    def __init__(self) -> None:
        super().__init__(DECRYPTION_FAILED)


def _b64url_decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def looks_like_jwt(token: str) -> bool:
    """``header.payload.signature``: three base64url segments; header and payload are JSON objects
    and the header names an ``alg``."""
    parts = token.split(".")
    if len(parts) != 3 or not all(_B64URL.fullmatch(p) for p in parts):
        return False
    try:
        header = json.loads(_b64url_decode(parts[0]))
        payload = json.loads(_b64url_decode(parts[1]))
    except (ValueError, binascii.Error):
        return False
    return (
        isinstance(header, dict)
        and isinstance(header.get("alg"), str)
        and bool(header["alg"])
        and isinstance(payload, dict)
    )


def _decrypt_or_none(encrypted: object, key: bytes) -> str | None:
    """The whole check; ``None`` on any failure so the caller raises outside every ``except``
    block (no exception context leaks which step failed)."""
    if not isinstance(encrypted, str) or len(encrypted) > MAX_ENCRYPTED_CHARS or len(key) != KEY_BYTES:
        return None
    parts = encrypted.split(":")
    if len(parts) != 2:
        return None
    iv_hex, data_hex = parts
    # bytes.fromhex() tolerates whitespace; the wire format does not.
    if not (_HEX.fullmatch(iv_hex) and _HEX.fullmatch(data_hex)):
        return None
    if len(iv_hex) != IV_BYTES * 2 or len(data_hex) % (BLOCK_BYTES * 2) != 0:
        return None
    try:
        iv = bytes.fromhex(iv_hex)
        data = bytes.fromhex(data_hex)
        decryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
        padded = decryptor.update(data) + decryptor.finalize()
        unpadder = padding.PKCS7(algorithms.AES.block_size).unpadder()
        token = (unpadder.update(padded) + unpadder.finalize()).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None
    return token if looks_like_jwt(token) else None


def decrypt_user_token(encrypted: str, key: bytes) -> str:
    """Decrypt ``{iv_hex}:{ciphertext_hex}`` with ``key`` and return the JWT.

    Raises :class:`TokenDecryptionError` (one message, no cause) for every malformed input.
    """
    token = _decrypt_or_none(encrypted, key)
    if token is None:
        raise TokenDecryptionError()
    return token

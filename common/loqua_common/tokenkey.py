"""The AES key rule for the user-token passthrough, shared by the Loqua API side and the worker.

The key is the shared secret's UTF-8 bytes truncated to 32 bytes, or right-padded to 32 bytes with
the byte set by ``SHARED_SECRET_PAD_BYTE`` (default ``0x00``). Both ends must use the same pad byte,
so the rule lives here once: the reference API encrypts with it, the tutor decrypts with it.
"""

from __future__ import annotations

import re

KEY_BYTES = 32
DEFAULT_PAD_BYTE = 0x00
PAD_BYTE_SETTING = "SHARED_SECRET_PAD_BYTE"
_HEX_BYTE = re.compile(r"0[xX][0-9a-fA-F]{1,2}")


def parse_pad_byte(value: str | None) -> int:
    """Read ``SHARED_SECRET_PAD_BYTE``: ``0x..`` (one hex byte) or one ASCII character; unset → 0x00."""
    if value is None or value == "":
        return DEFAULT_PAD_BYTE
    if _HEX_BYTE.fullmatch(value):
        return int(value[2:], 16)
    if len(value) == 1 and value.isascii():
        return ord(value)
    raise ValueError(
        f"{PAD_BYTE_SETTING} must be one hex byte like 0x00 or a single ASCII character like 0, got {value!r}"
    )


def derive_key(secret: str, pad_byte: int = DEFAULT_PAD_BYTE) -> bytes:
    """The 32-byte AES key: UTF-8 bytes of the secret, truncated or right-padded with ``pad_byte``."""
    if not 0 <= pad_byte <= 0xFF:
        raise ValueError("pad_byte must be in 0..255")
    return secret.encode("utf-8")[:KEY_BYTES].ljust(KEY_BYTES, bytes([pad_byte]))

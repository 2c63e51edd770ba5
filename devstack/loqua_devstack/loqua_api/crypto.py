"""Encryption of the user JWT in the user-token response.

Format ``{iv_hex}:{ciphertext_hex}``: AES-256-CBC, a random 16-byte IV, PKCS7 padding. The key is the
shared secret's UTF-8 bytes truncated to 32 bytes, or right-padded to 32 bytes with the byte set by
``SHARED_SECRET_PAD_BYTE`` (default ``0x00``). The tutor worker derives its key by the same rule.
"""

from __future__ import annotations

import os

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

# The key rule has one home, shared with the other end of the passthrough.
from loqua_common.tokenkey import DEFAULT_PAD_BYTE, derive_key

IV_BYTES = 16


def encrypt_token(token: str, secret: str, pad_byte: int = DEFAULT_PAD_BYTE, iv: bytes | None = None) -> str:
    """Encrypt ``token`` for transport; ``iv`` is random unless given (tests only)."""
    iv = os.urandom(IV_BYTES) if iv is None else iv
    if len(iv) != IV_BYTES:
        raise ValueError(f"iv must be {IV_BYTES} bytes")
    padder = padding.PKCS7(algorithms.AES.block_size).padder()
    padded = padder.update(token.encode("utf-8")) + padder.finalize()
    encryptor = Cipher(algorithms.AES(derive_key(secret, pad_byte)), modes.CBC(iv)).encryptor()
    ciphertext = encryptor.update(padded) + encryptor.finalize()
    return f"{iv.hex()}:{ciphertext.hex()}"

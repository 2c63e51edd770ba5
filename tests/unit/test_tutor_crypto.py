"""Decryption of the user token: round trip, key rule, and one indistinguishable error."""

from __future__ import annotations

import base64
import json
import traceback

import jwt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loqua_common.tokenkey import derive_key, parse_pad_byte
from loqua_devstack.loqua_api.crypto import encrypt_token  # the API's side of the format
from loqua_tutor.crypto import (
    DECRYPTION_FAILED,
    TokenDecryptionError,
    decrypt_user_token,
    looks_like_jwt,
)

SECRET = "dev-shared-secret"
KEY = derive_key(SECRET)
TOKEN = jwt.encode({"sub": "user-1", "exp": 2_000_000_000}, "api-signing-key-of-32-bytes-long", algorithm="HS256")


def _error_of(encrypted: object, key: bytes = KEY) -> TokenDecryptionError:
    with pytest.raises(TokenDecryptionError) as info:
        decrypt_user_token(encrypted, key)  # type: ignore[arg-type]
    return info.value


def _assert_indistinguishable(exc: TokenDecryptionError) -> None:
    assert type(exc) is TokenDecryptionError
    assert str(exc) == DECRYPTION_FAILED
    assert exc.args == (DECRYPTION_FAILED,)
    # Raised outside every except block: nothing chained that could tell which step failed.
    assert exc.__cause__ is None and exc.__context__ is None


def test_round_trip() -> None:
    encrypted = encrypt_token(TOKEN, SECRET)
    assert decrypt_user_token(encrypted, KEY) == TOKEN


def test_reference_api_encryption_is_readable_with_either_pad_byte() -> None:
    # The key rule itself (loqua_common.tokenkey) is tested in test_loqua_api_crypto.py.
    for pad in (0x00, 0x30):
        encrypted = encrypt_token(TOKEN, SECRET, pad)
        assert decrypt_user_token(encrypted, derive_key(SECRET, pad)) == TOKEN


@pytest.mark.parametrize(("raw", "expected"), [("", 0), ("0x00", 0), ("0x20", 32), ("0XFF", 255), ("0", 48)])
def test_parse_pad_byte(raw: str, expected: int) -> None:
    assert parse_pad_byte(raw) == expected


@pytest.mark.parametrize("raw", ["0x100", "00", "ab", "é", "0xg0"])
def test_parse_pad_byte_rejects(raw: str) -> None:
    with pytest.raises(ValueError):
        parse_pad_byte(raw)


def _b64(obj: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def test_jwt_shape_check() -> None:
    assert looks_like_jwt(TOKEN)
    assert not looks_like_jwt("a.b")
    assert not looks_like_jwt(f"{_b64({'typ': 'JWT'})}.{_b64({})}.sig")  # header without alg
    assert not looks_like_jwt(f"{_b64([1])}.{_b64({})}.sig")
    assert not looks_like_jwt(f"{_b64({'alg': 'HS256'})}.{_b64({})}.")  # empty signature
    assert not looks_like_jwt(f"{_b64({'alg': 'HS256'})}.{_b64({})}.s+g")


VALID = encrypt_token(TOKEN, SECRET, iv=bytes(range(16)))
IV_HEX, DATA_HEX = VALID.split(":")


def _flip_last_byte(hex_text: str) -> str:
    return hex_text[:-2] + f"{int(hex_text[-2:], 16) ^ 0x01:02x}"


MALFORMED = {
    "empty": "",
    "no separator": IV_HEX + DATA_HEX,
    "two separators": f"{IV_HEX}:{DATA_HEX}:00",
    "bad hex": f"{IV_HEX}:{DATA_HEX[:-2]}zz",
    "hex with spaces": f"{IV_HEX}:{DATA_HEX[:32]} {DATA_HEX[32:]}",
    "short iv": f"{IV_HEX[:-2]}:{DATA_HEX}",
    "long iv": f"{IV_HEX}00:{DATA_HEX}",
    "partial block": f"{IV_HEX}:{DATA_HEX[:-2]}",
    "empty ciphertext": f"{IV_HEX}:",
    "bad padding": f"{IV_HEX}:{_flip_last_byte(DATA_HEX)}",
    "not a jwt": encrypt_token("hello world", SECRET, iv=bytes(16)),
    "jwt without alg": encrypt_token(f"{_b64({'typ': 'JWT'})}.{_b64({})}.sig", SECRET, iv=bytes(16)),
    "not utf-8": encrypt_token("x", SECRET, iv=bytes(16)).split(":")[0] + ":" + "ff" * 16,
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_every_malformed_input_gives_the_same_error(name: str) -> None:
    _assert_indistinguishable(_error_of(MALFORMED[name]))


def test_wrong_key_and_wrong_types_give_the_same_error() -> None:
    _assert_indistinguishable(_error_of(VALID, derive_key("another secret")))
    _assert_indistinguishable(_error_of(VALID, b"short key"))
    _assert_indistinguishable(_error_of(None))
    _assert_indistinguishable(_error_of(b"bytes"))
    _assert_indistinguishable(_error_of("00" * 16 + ":" + "00" * 100_000))


def test_error_text_holds_no_token_material() -> None:
    exc = _error_of(MALFORMED["bad padding"])
    text = "".join(traceback.format_exception(exc))
    assert IV_HEX not in text and DATA_HEX not in text and TOKEN not in text


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_property_random_text_never_decrypts_to_anything_but_the_one_error(text: str) -> None:
    try:
        decrypt_user_token(text, KEY)
    except TokenDecryptionError as exc:
        _assert_indistinguishable(exc)
    else:  # pragma: no cover - would need a forged ciphertext
        pytest.fail("random text decrypted")


@settings(max_examples=300, deadline=None)
@given(iv=st.binary(min_size=16, max_size=16), blocks=st.binary(min_size=16, max_size=96))
def test_property_random_ciphertext_gives_the_one_error(iv: bytes, blocks: bytes) -> None:
    data = blocks[: len(blocks) - len(blocks) % 16]
    try:
        decrypt_user_token(f"{iv.hex()}:{data.hex()}", KEY)
    except TokenDecryptionError as exc:
        _assert_indistinguishable(exc)


@settings(max_examples=200, deadline=None)
@given(
    claims=st.dictionaries(st.sampled_from(["sub", "room", "agent_id", "role"]), st.text(max_size=30)),
    secret=st.text(min_size=1, max_size=50),
    pad=st.integers(min_value=0, max_value=255),
    iv=st.binary(min_size=16, max_size=16),
)
def test_property_valid_tokens_round_trip(claims: dict, secret: str, pad: int, iv: bytes) -> None:
    token = jwt.encode(claims, "k" * 32, algorithm="HS256")
    assert decrypt_user_token(encrypt_token(token, secret, pad, iv), derive_key(secret, pad)) == token


@settings(max_examples=200, deadline=None)
@given(position=st.integers(min_value=0), flip=st.integers(min_value=1, max_value=15))
def test_property_tampered_ciphertext_gives_the_one_error_or_a_jwt(position: int, flip: int) -> None:
    # Changing any hex digit must never produce a different kind of error; in the rare case
    # it still decrypts to something JWT-shaped the shape check has done its job.
    pos = position % len(VALID)
    if VALID[pos] == ":":
        return
    tampered = VALID[:pos] + f"{int(VALID[pos], 16) ^ flip:x}" + VALID[pos + 1 :]
    try:
        result = decrypt_user_token(tampered, KEY)
    except TokenDecryptionError as exc:
        _assert_indistinguishable(exc)
    else:
        assert looks_like_jwt(result)

"""Reference Loqua API, pure parts: token encryption, settings, JWTs, context aggregation, CLI errors."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from loqua_common.tokenkey import derive_key, parse_pad_byte
from loqua_devstack.loqua_api import config as api_config
from loqua_devstack.loqua_api.__main__ import main
from loqua_devstack.loqua_api.context import current_streak, progress_totals
from loqua_devstack.loqua_api.crypto import encrypt_token
from loqua_devstack.loqua_api.tokens import TokenError, mint_agent_token, mint_user_token, verify_token

JWT_SECRET = "unit-jwt-secret-0123456789abcdef-0123456789"


def independent_decrypt(encrypted: str, secret: str, pad_byte: int) -> str:
    """Seed 003's decryption steps, written from the primitives (not loqua_api.crypto)."""
    iv_hex, data_hex = encrypted.split(":")
    raw = secret.encode("utf-8")
    key = raw[:32] if len(raw) >= 32 else raw + bytes([pad_byte]) * (32 - len(raw))
    decryptor = Cipher(algorithms.AES(key), modes.CBC(bytes.fromhex(iv_hex))).decryptor()
    padded = decryptor.update(bytes.fromhex(data_hex)) + decryptor.finalize()
    n = padded[-1]
    assert 1 <= n <= 16 and padded[-n:] == bytes([n]) * n, "bad PKCS7 padding"
    return padded[:-n].decode("utf-8")


# ---- encryption -----------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    secret=st.one_of(
        st.text(min_size=1, max_size=80),
        st.text(alphabet="äöü€漢字🙂", min_size=9, max_size=20),  # multi-byte, over 32 bytes
        st.text(alphabet="abc", min_size=33, max_size=64),
    ),
    pad_byte=st.integers(min_value=0, max_value=255),
    plaintext=st.text(max_size=300),
)
def test_encrypt_round_trips_with_independent_decrypt(secret: str, pad_byte: int, plaintext: str) -> None:
    encrypted = encrypt_token(plaintext, secret, pad_byte)
    iv_hex, data_hex = encrypted.split(":")
    assert len(iv_hex) == 32 and len(data_hex) % 32 == 0 and len(data_hex) >= 32
    assert independent_decrypt(encrypted, secret, pad_byte) == plaintext


@settings(max_examples=50, deadline=None)
@given(prefix=st.text(alphabet="xyz", min_size=32, max_size=32), tail=st.text(min_size=1, max_size=10))
def test_key_ignores_bytes_after_32(prefix: str, tail: str) -> None:
    encrypted = encrypt_token("header.payload.sig", prefix + tail)
    assert independent_decrypt(encrypted, prefix, 0) == "header.payload.sig"


def test_known_vector() -> None:
    iv = bytes(range(16))
    key = b"secret" + b"\x00" * 26
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    block = b"a.b.c" + bytes([11]) * 11
    expected = iv.hex() + ":" + (encryptor.update(block) + encryptor.finalize()).hex()
    assert encrypt_token("a.b.c", "secret", 0x00, iv=iv) == expected


def test_derive_key_padding_rule() -> None:
    assert derive_key("abc") == b"abc" + b"\x00" * 29
    assert derive_key("abc", ord("0")) == b"abc" + b"0" * 29
    assert derive_key("é" * 20) == ("é" * 16).encode()  # 40 UTF-8 bytes, cut to 32
    assert derive_key("x" * 31 + "é") == b"x" * 31 + "é".encode()[:1]  # a character may be cut in half


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, 0),
        ("", 0),
        ("0x00", 0),
        ("0x0", 0),
        ("0X20", 32),
        ("0xff", 255),
        ("0", 48),
        (" ", 32),
        ("x", 120),
    ],
)
def test_parse_pad_byte(value: str | None, expected: int) -> None:
    assert parse_pad_byte(value) == expected


@pytest.mark.parametrize("value", ["0x100", "0xg1", "00", "é", "null", "0x"])
def test_parse_pad_byte_rejects(value: str) -> None:
    with pytest.raises(ValueError, match="SHARED_SECRET_PAD_BYTE"):
        parse_pad_byte(value)


# ---- settings -------------------------------------------------------------------------------------

BASE_ENV = {"LOQUA_JWT_SECRET": "j", "LOQUA_ADMIN_TOKEN": "a", "SHARED_SECRET": "s"}


def test_config_defaults() -> None:
    cfg = api_config.load_config(BASE_ENV, Path("x.sqlite"))
    assert (cfg.shared_secret, cfg.pad_byte, cfg.user_token_ttl_seconds) == ("s", 0, 3600)


@pytest.mark.parametrize(
    ("env", "secret"),
    [
        ({"DEV_AGENT_SECRET": "dev"}, "dev"),
        ({"LOQUA_ENV": "staging", "STAGING_AGENT_SECRET": "stg", "DEV_AGENT_SECRET": "dev"}, "stg"),
        ({"LOQUA_ENV": "prod", "PROD_AGENT_SECRET": "prd"}, "prd"),
        ({"SHARED_SECRET": "shared", "PROD_AGENT_SECRET": "prd", "LOQUA_ENV": "prod"}, "shared"),
    ],
)
def test_config_environment_secrets(env: dict[str, str], secret: str) -> None:
    base = {k: v for k, v in BASE_ENV.items() if k != "SHARED_SECRET"}
    assert api_config.load_config({**base, **env}, Path("x")).shared_secret == secret


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"LOQUA_JWT_SECRET": ""}, "LOQUA_JWT_SECRET"),
        ({"LOQUA_ADMIN_TOKEN": ""}, "LOQUA_ADMIN_TOKEN"),
        ({"SHARED_SECRET": ""}, "DEV_AGENT_SECRET"),
        ({"SHARED_SECRET": "", "LOQUA_ENV": "prod"}, "PROD_AGENT_SECRET"),
        ({"SHARED_SECRET": "", "LOQUA_ENV": "qa"}, "LOQUA_ENV"),
        ({"SHARED_SECRET_PAD_BYTE": "zz"}, "SHARED_SECRET_PAD_BYTE"),
        ({"USER_TOKEN_TTL_SECONDS": "0"}, "USER_TOKEN_TTL_SECONDS"),
        ({"USER_TOKEN_TTL_SECONDS": "1h"}, "USER_TOKEN_TTL_SECONDS"),
    ],
)
def test_config_errors_name_the_setting(change: dict[str, str], named: str) -> None:
    with pytest.raises(api_config.ConfigError, match=named):
        api_config.load_config({**BASE_ENV, **change}, Path("x"))


def test_config_repr_hides_secrets() -> None:
    cfg = api_config.load_config(
        {"LOQUA_JWT_SECRET": "JJJJ", "LOQUA_ADMIN_TOKEN": "AAAA", "SHARED_SECRET": "SSSS"}, Path("x")
    )
    assert not {"JJJJ", "AAAA", "SSSS"} & set(repr(cfg).replace("'", " ").replace(",", " ").split())


def test_cli_missing_secret_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    for name in ("LOQUA_JWT_SECRET", "LOQUA_ADMIN_TOKEN", "SHARED_SECRET", "DEV_AGENT_SECRET", "LOQUA_ENV"):
        monkeypatch.delenv(name, raising=False)
    assert main(["--db", str(tmp_path / "db.sqlite")]) == 2
    assert "LOQUA_JWT_SECRET" in capsys.readouterr().err


def test_cli_help_lists_settings(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for word in (
        "--db",
        "--host",
        "--port",
        "LOQUA_JWT_SECRET",
        "SHARED_SECRET_PAD_BYTE",
        "USER_TOKEN_TTL_SECONDS",
    ):
        assert word in out


# ---- tokens -----------------------------------------------------------------------------------------


def test_agent_token_claims() -> None:
    token = mint_agent_token(JWT_SECRET, "tutor-1", 120)
    claims = jwt.decode(token, JWT_SECRET, algorithms=["HS256"])
    assert claims["sub"] == "tutor-1" and claims["role"] == "agent" and claims["exp"] - claims["iat"] == 120
    assert verify_token(JWT_SECRET, token, "agent")["sub"] == "tutor-1"


@pytest.mark.parametrize(
    ("token", "role", "code"),
    [
        (mint_agent_token(JWT_SECRET, "a", -1), "agent", "TOKEN_EXPIRED"),
        (mint_agent_token(JWT_SECRET, "a", 86400), "user", "WRONG_TOKEN_ROLE"),  # minted at collection
        (mint_user_token(JWT_SECRET, "u", "r", "a", 86400), "agent", "WRONG_TOKEN_ROLE"),
        (
            jwt.encode({"sub": "a", "role": "agent", "iat": 1}, JWT_SECRET, algorithm="HS256"),
            "agent",
            "INVALID_TOKEN",
        ),
        (
            jwt.encode({"sub": "a", "role": "agent", "iat": 1, "exp": 2**40}, None, algorithm="none"),
            "agent",
            "INVALID_TOKEN",
        ),
        ("a.b.c", "agent", "INVALID_TOKEN"),
    ],
)
def test_verify_token_refuses(token: str, role: str, code: str) -> None:
    with pytest.raises(TokenError) as exc:
        verify_token(JWT_SECRET, token, role)
    assert exc.value.code == code


# ---- context aggregation ------------------------------------------------------------------------------

TODAY = dt.date(2026, 3, 10)


def _day(offset: int) -> dt.date:
    return TODAY - dt.timedelta(days=offset)


@pytest.mark.parametrize(
    ("offsets", "streak"),
    [
        ([], 0),
        ([0], 1),
        ([1], 1),  # yesterday still counts until today ends
        ([2], 0),
        ([0, 1, 2, 4], 3),
        ([1, 2, 3], 3),
        ([0, 2, 3], 1),
    ],
)
def test_current_streak(offsets: list[int], streak: int) -> None:
    assert current_streak({_day(o) for o in offsets}, TODAY) == streak


def _iso(offset: int) -> str:
    return f"{_day(offset).isoformat()}T12:00:00Z"


def test_progress_totals_take_latest_update_per_session() -> None:
    def update(sid: str, offset: int, **progress: object) -> dict[str, object]:
        return {
            "session_id": sid,
            "received_at": _iso(offset),
            "data": {"status": "in_progress", "progress": progress},
        }

    progress = [
        update("A", 2, words_learned=1, phrases_practiced=1, pronunciation_score=50),
        update("A", 2, words_learned=4, phrases_practiced=6, pronunciation_score=70, grammar_points=["g1"]),
        update("A", 2, words_learned=4, phrases_practiced=6, pronunciation_score=70),  # a retry
        update("B", 1, words_learned=2, grammar_points=["g2", "g1"]),
    ]
    sessions = [
        {
            "session_id": "A",
            "created_at": _iso(1),
            "duration_minutes": 20,
            "new_vocabulary": [{}] * 3,
            "grammar_points": ["g3"],
            "achievements": ["first"],
        },
        {
            "session_id": "C",
            "created_at": _iso(0),
            "duration_minutes": 10,
            "new_vocabulary": [{}] * 7,
            "achievements": ["first", "second"],
        },
    ]
    totals = progress_totals(progress, sessions, TODAY)
    assert totals == {
        "total_sessions": 2,
        "total_conversation_time": 30,
        "words_learned": 4 + 2 + 7,
        "phrases_practiced": 6,
        "pronunciation_score_avg": 70,
        "grammar_points_covered": ["g1", "g2", "g3"],
        "achievements_unlocked": ["first", "second"],
        "last_session_date": _iso(0),
        "current_streak": 3,
    }

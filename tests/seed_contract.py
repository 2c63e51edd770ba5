"""Seed 003's API contract as the tests check it: response key sets, and the token decryption
written from the primitives, independently of both the server's and the worker's code."""

from __future__ import annotations

import re

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
USER_TOKEN_KEYS = {"encrypted_token", "user_id", "room_name", "expires_in", "issued_at", "issued_to"}
PROGRESS_KEYS = {"success", "message", "userId", "sessionId", "agentId", "timestamp"}
SESSION_KEYS = {"success", "session_id", "created_at", "created_by", "agent_id"}
CONTEXT_KEYS = {
    "user_id",
    "preferences",
    "progress",
    "session_history",
    "created_at",
    "updated_at",
    "accessed_by",
}
PREFERENCE_KEYS = {
    "language_learning",
    "native_language",
    "learning_pace",
    "focus_areas",
    "session_length_preference",
}
CONTEXT_PROGRESS_KEYS = {
    "total_sessions",
    "total_conversation_time",
    "words_learned",
    "phrases_practiced",
    "pronunciation_score_avg",
    "grammar_points_covered",
    "achievements_unlocked",
    "last_session_date",
    "current_streak",
}
HISTORY_KEYS = {"session_id", "date", "duration_minutes", "topics_covered"}
HEALTH_KEYS = {"status", "agent_id", "permissions", "timestamp"}


def independent_decrypt(encrypted: str, secret: str, pad_byte: int) -> str:
    """Seed 003's decryption steps, written from the primitives (not loqua_api.crypto)."""
    iv_hex, data_hex = encrypted.split(":")
    key = (secret.encode("utf-8") + bytes([pad_byte]) * 32)[:32]
    decryptor = Cipher(algorithms.AES(key), modes.CBC(bytes.fromhex(iv_hex))).decryptor()
    padded = decryptor.update(bytes.fromhex(data_hex)) + decryptor.finalize()
    n = padded[-1]
    assert 1 <= n <= 16 and padded[-n:] == bytes([n]) * n, "bad PKCS7 padding"
    return padded[:-n].decode("utf-8")


def example_session_body(user_id: str, session_id: str | None = None) -> dict:
    """Seed 003's example POST /api/v1/agent/sessions body."""
    body: dict = {
        "userId": user_id,
        "duration_minutes": 30,
        "topics_covered": ["greetings", "travel"],
        "new_vocabulary": [{"word": "hello", "translation": "hola", "language": "es"}],
        "grammar_points": ["present_tense"],
        "pronunciation_practice_count": 15,
        "overall_performance": "good",
        "achievements": ["first_conversation"],
        "next_session_recommendations": ["Focus on past tense verbs"],
    }
    if session_id is not None:
        body["sessionId"] = session_id
    return body

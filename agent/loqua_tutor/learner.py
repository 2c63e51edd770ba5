"""The learner, from their participant attributes - untrusted input, validated before use.

``user_id`` and ``sessionId`` go into API URLs and bodies, log lines and (as counts) metrics. A
value that could change a URL's meaning (``..`` survives percent-encoding and httpx removes dot
segments: ``/user/../context``), forge a log line (newlines, control characters) or blow up a
label is refused: the job ends cleanly, logged without the value and counted in
``loqua_tutor_invalid_attributes_total{attribute}``, as for a missing ``user_id``.

The rule: 1-128 characters, ASCII letters and digits plus ``_ - . : @ +``, starting with a letter
or digit (so never ``.`` or ``..``) - UUIDs, e-mail-like ids and seed 003's
``sess_{timestamp}_{random}`` all pass; separators (``/``, ``\\``), whitespace, ``%``, ``?``, ``#``
and anything non-ASCII do not. ``display_name`` and ``email`` only reach the tutor's prompt: they
are reduced to one line of printable text.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

ID_MAX = 128
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@+-]{0,127}")
ID_RULE = f"1-{ID_MAX} characters: letters, digits and _ - . : @ +, starting with a letter or digit"
DISPLAY_NAME_MAX = 80
EMAIL_MAX = 254


@dataclass(frozen=True)
class Learner:
    """The learner's participant attributes (seed 003 names: ``user_id``, ``sessionId``, ...)."""

    user_id: str
    session_id: str
    identity: str = ""
    display_name: str = ""
    email: str = ""


@dataclass(frozen=True)
class Refusal:
    """Why a participant cannot be served: ``attribute`` (a metric label) and what to do."""

    attribute: str  # "user_id" or "sessionId"
    missing: bool

    def message(self) -> str:
        if self.missing:
            return (
                "has no user_id attribute (the app must set user_id, sessionId, display_name and email "
                "when the learner joins)"
            )
        return f"has an invalid {self.attribute} attribute (must be {ID_RULE}; the value is not logged)"


def is_valid_id(value: str) -> bool:
    return bool(_ID.fullmatch(value))


def new_session_id(now: float, random_part: str | None = None) -> str:
    """``sess_{timestamp}_{random}`` as in seed 003 (timestamp in milliseconds, 9 random chars)."""
    rnd = random_part if random_part is not None else secrets.token_hex(5)[:9]
    return f"sess_{int(now * 1000)}_{rnd}"


def _one_line(value: str, limit: int) -> str:
    """Printable text on one line (control characters and line breaks become spaces)."""
    return " ".join("".join(c if c.isprintable() else " " for c in value).split())[:limit]


def learner_from_attributes(identity: str, attributes: Mapping[str, str], now: float) -> Learner | Refusal:
    """The learner, or why not. Surrounding whitespace is trimmed (apps pad values); a missing or
    blank ``sessionId`` is generated in seed 003's format."""
    user_id = (attributes.get("user_id") or "").strip()
    if not user_id:
        return Refusal("user_id", missing=True)
    if not is_valid_id(user_id):
        return Refusal("user_id", missing=False)
    session_id = (attributes.get("sessionId") or "").strip()
    if not session_id:
        session_id = new_session_id(now)
    elif not is_valid_id(session_id):
        return Refusal("sessionId", missing=False)
    return Learner(
        user_id=user_id,
        session_id=session_id,
        identity=identity,
        display_name=_one_line(attributes.get("display_name") or "", DISPLAY_NAME_MAX),
        email=_one_line(attributes.get("email") or "", EMAIL_MAX),
    )

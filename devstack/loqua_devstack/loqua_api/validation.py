"""Field checks for JSON request bodies; each failure is a 400 that names the field."""

from __future__ import annotations

import json
from collections.abc import Collection
from typing import Any

from loqua_devstack.loqua_api.errors import bad_request

MAX_ID_LEN = 256
MAX_TEXT_LEN = 2000
MAX_ITEMS = 1000
_MISSING = object()


def parse_object(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object; an empty body counts as ``{}``."""
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise bad_request("INVALID_JSON", "the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise bad_request("INVALID_JSON", "the request body must be a JSON object")
    return body


def _get(body: dict[str, Any], key: str) -> Any:
    value = body.get(key, _MISSING)
    return _MISSING if value is None else value


def text(
    body: dict[str, Any],
    key: str,
    *,
    name: str | None = None,
    required: bool = True,
    missing_code: str = "MISSING_FIELD",
    max_len: int = MAX_ID_LEN,
) -> str | None:
    """A string field; blank counts as missing."""
    name = name or key
    value = _get(body, key)
    if value is not _MISSING and not isinstance(value, str):
        raise bad_request("INVALID_FIELD", f"{name} must be a string")
    if value is _MISSING or not value.strip():
        if required:
            raise bad_request(missing_code, f"{name} is required")
        return None
    if len(value) > max_len:
        raise bad_request("INVALID_FIELD", f"{name} must be at most {max_len} characters")
    return value


def enum(
    body: dict[str, Any],
    key: str,
    allowed: Collection[str],
    *,
    name: str | None = None,
    required: bool = True,
    default: str | None = None,
) -> str | None:
    name = name or key
    value = _get(body, key)
    if value is _MISSING:
        if required:
            raise bad_request("MISSING_FIELD", f"{name} is required")
        return default
    if value not in allowed:
        raise bad_request("INVALID_FIELD", f"{name} must be one of: {', '.join(allowed)}")
    return str(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def number(
    body: dict[str, Any],
    key: str,
    *,
    name: str | None = None,
    required: bool = False,
    minimum: float = 0,
    maximum: float | None = None,
    integer: bool = False,
) -> int | float | None:
    """A number (``integer=True``: a whole number) within ``[minimum, maximum]``."""
    name = name or key
    value = _get(body, key)
    if value is _MISSING:
        if required:
            raise bad_request("MISSING_FIELD", f"{name} is required")
        return None
    kind = "an integer" if integer else "a number"
    if not _is_number(value) or (integer and not isinstance(value, int)) or value != value:
        raise bad_request("INVALID_FIELD", f"{name} must be {kind}")
    if value < minimum or (maximum is not None and value > maximum):
        upper = f" and {maximum}" if maximum is not None else ""
        raise bad_request("INVALID_FIELD", f"{name} must be {kind} between {minimum}{upper}")
    return value


def str_list(
    body: dict[str, Any], key: str, *, name: str | None = None, max_len: int = MAX_TEXT_LEN
) -> list[str] | None:
    """An optional list of non-empty strings."""
    name = name or key
    value = _get(body, key)
    if value is _MISSING:
        return None
    if not isinstance(value, list) or len(value) > MAX_ITEMS:
        raise bad_request("INVALID_FIELD", f"{name} must be a list of at most {MAX_ITEMS} strings")
    for item in value:
        if not isinstance(item, str) or not item.strip() or len(item) > max_len:
            raise bad_request("INVALID_FIELD", f"{name} must contain non-empty strings (≤ {max_len} chars)")
    return list(value)


def obj(body: dict[str, Any], key: str, *, name: str | None = None, required: bool = True) -> dict[str, Any] | None:
    name = name or key
    value = _get(body, key)
    if value is _MISSING:
        if required:
            raise bad_request("MISSING_FIELD", f"{name} is required")
        return None
    if not isinstance(value, dict):
        raise bad_request("INVALID_FIELD", f"{name} must be an object")
    return value


def no_unknown_keys(body: dict[str, Any], allowed: Collection[str], *, where: str) -> None:
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise bad_request("INVALID_FIELD", f"unknown field(s) in {where}: {', '.join(unknown)}")

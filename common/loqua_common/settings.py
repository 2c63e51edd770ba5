"""Settings errors a person can act on: every bad setting named by its environment variable.

``load_settings(OperatorSettings)`` instead of ``OperatorSettings()`` turns pydantic's
``ValidationError`` into one ``SettingsError`` line such as::

    invalid settings: LIVEKIT_URL: field required (set it in the environment);
    AGENT_TTL_SECONDS: must be <= 86400 (got 99999)

The offending value is shown for ordinary settings and never for secrets: a field whose name or
environment variable contains SECRET, TOKEN, KEY or PASSWORD, or whose type is ``SecretStr`` /
``SecretBytes``.
"""

from __future__ import annotations

import re
from typing import Any, TypeVar

import pydantic
import pydantic_settings
from pydantic import AliasChoices, AliasPath, SecretBytes, SecretStr
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

__all__ = ["SettingsError", "load_settings"]

T = TypeVar("T", bound=BaseSettings)

SECRET_WORDS = ("SECRET", "TOKEN", "KEY", "PASSWORD")
_MAX_SHOWN = 80  # characters of a bad value quoted back; enough to recognise it

# pydantic error type -> phrase (formatted with the error's ctx); others use pydantic's own msg.
_PHRASES = {
    "missing": "field required (set it in the environment)",
    "less_than_equal": "must be <= {le}",
    "less_than": "must be < {lt}",
    "greater_than_equal": "must be >= {ge}",
    "greater_than": "must be > {gt}",
    "multiple_of": "must be a multiple of {multiple_of}",
    "int_parsing": "must be an integer",
    "int_from_float": "must be a whole number",
    "float_parsing": "must be a number",
    "bool_parsing": "must be a boolean (true/false, 1/0, yes/no)",
    "string_pattern_mismatch": "must match {pattern}",
    "string_too_short": "must be at least {min_length} characters",
    "string_too_long": "must be at most {max_length} characters",
    "too_short": "must have at least {min_length} items",
    "too_long": "must have at most {max_length} items",
    "literal_error": "must be one of {expected}",
    "enum": "must be one of {expected}",
    "url_parsing": "must be a URL",
    "url_scheme": "must be a URL with scheme {expected_schemes}",
    "json_invalid": "must be valid JSON",
    "extra_forbidden": "unknown setting",
}
_SOURCE_ERROR = re.compile(r'field "(?P<field>[^"]+)"')


class SettingsError(RuntimeError):
    """Invalid or missing settings. ``problems`` maps each environment variable to what is wrong."""

    def __init__(self, problems: dict[str, str]) -> None:
        self.problems = problems
        super().__init__("invalid settings: " + "; ".join(f"{env}: {why}" for env, why in problems.items()))


def load_settings(cls: type[T], **overrides: Any) -> T:
    """Instantiate ``cls`` from the environment (``overrides`` win, by field name), or raise
    ``SettingsError`` naming every bad or missing setting by its environment variable."""
    try:
        return cls(**overrides)
    except pydantic.ValidationError as exc:
        problems: dict[str, str] = {}
        for error in exc.errors(include_url=False):
            env, why = _describe(cls, error)
            # Several errors on one variable (e.g. union members): keep them all, once each.
            if env in problems and why not in problems[env]:
                problems[env] = f"{problems[env]}, or {why}"
            else:
                problems.setdefault(env, why)
        raise SettingsError(problems) from None  # the chained error would repeat the input values
    except pydantic_settings.SettingsError as exc:
        # Raised by a settings source before validation, typically a list/dict variable that is
        # not valid JSON. The message names the field, never the value.
        match = _SOURCE_ERROR.search(str(exc))
        name = match.group("field") if match else ""
        env = _env_name(cls, name) if name else "settings"
        why = 'could not be parsed (lists and objects must be JSON, e.g. ["a", "b"])'
        raise SettingsError({env: why}) from None


def _field(cls: type[BaseSettings], name: str) -> tuple[str, FieldInfo | None]:
    """The field for an error location item, which is the field name or its alias."""
    fields = cls.model_fields
    if name in fields:
        return name, fields[name]
    for field_name, info in fields.items():
        if name in (info.alias, info.validation_alias) or (
            isinstance(info.validation_alias, AliasChoices) and name in info.validation_alias.choices
        ):
            return field_name, info
    return name, None


def _alias_env(alias: object) -> str | None:
    if isinstance(alias, str):
        return alias
    if isinstance(alias, AliasChoices):
        for choice in alias.choices:
            found = _alias_env(choice)
            if found:
                return found
    if isinstance(alias, AliasPath) and alias.path and isinstance(alias.path[0], str):
        return alias.path[0]
    return None


def _env_name(cls: type[BaseSettings], name: str) -> str:
    field_name, info = _field(cls, name)
    if info is not None:
        # pydantic-settings reads an aliased field from the alias alone, without the prefix.
        alias = _alias_env(info.validation_alias) or _alias_env(info.alias)
        if alias:
            return alias.upper()
    prefix = cls.model_config.get("env_prefix") or ""
    return f"{prefix}{field_name}".upper()


def _is_secret(env: str, field_name: str, info: FieldInfo | None) -> bool:
    names = f"{env} {field_name}".upper()
    if any(word in names for word in SECRET_WORDS):
        return True
    annotation = info.annotation if info is not None else None
    return annotation is not None and any(secret in _leaf_types(annotation) for secret in (SecretStr, SecretBytes))


def _leaf_types(annotation: object) -> set[object]:
    # SecretStr | None and friends: look inside unions and generics.
    args = getattr(annotation, "__args__", None)
    if not args:
        return {annotation}
    found: set[object] = {annotation}
    for arg in args:
        found |= _leaf_types(arg)
    return found


def _describe(cls: type[BaseSettings], error: Any) -> tuple[str, str]:
    loc = tuple(error.get("loc") or ())
    if not loc or not isinstance(loc[0], str):
        env, field_name, info = "settings", "", None
    else:
        field_name, info = _field(cls, loc[0])
        env = _env_name(cls, loc[0])
        delimiter = cls.model_config.get("env_nested_delimiter") or "."
        for part in loc[1:]:
            # Nested model keys follow the nested delimiter; list items are shown as [i].
            env += f"[{part}]" if isinstance(part, int) else f"{delimiter}{part}".upper()
    kind = error.get("type", "")
    ctx = error.get("ctx") or {}
    phrase = _PHRASES.get(kind)
    why = ""
    if phrase is not None:
        try:
            why = phrase.format(**ctx)
        except (KeyError, IndexError):
            why = ""
    if not why:
        why = str(error.get("msg") or kind or "invalid")
        why = why.removeprefix("Value error, ").removeprefix("Assertion failed, ")
        why = why[:1].lower() + why[1:]
    if kind == "missing":
        return env, why
    secret = _is_secret(env, field_name, info)
    value = error.get("input")
    if secret:
        # A custom validator may have put the value in its message: take it out again.
        if isinstance(value, str) and value:
            why = why.replace(value, "***")
        return env, why
    if isinstance(value, dict) and not loc[1:]:
        return env, why  # a model-level error: the input is every setting, secrets included
    return env, f"{why} (got {_shown(value)})"


def _shown(value: object) -> str:
    if isinstance(value, str) and value and value.strip() == value and " " not in value:
        text = value
    else:
        text = repr(value)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."

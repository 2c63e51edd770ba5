"""One log format for the operator and the tutor worker: context ids, rate limiting, redaction.

``configure_logging()`` installs a single handler on the root logger; every logger (ours, kopf,
livekit, aiohttp.access, httpx) propagates to it. Per line the handler:

1. folds repeats and rate limits (``LogRateLimiter``: DEBUG dropped first, ERROR never);
2. formats as text::

       [2026-11-21T17:01:02.345Z] [INFO] [AGENT_ID] [SESSION_ID] [USER_ID] Message key=value ...

   or as one JSON object per line (keys timestamp, level, logger, component, agent_id, session_id,
   user_id, message, then the fields, and exception/stack when present);

   one record is one line: in the text format every field - message, ids, field keys and values -
   has newlines and other control or non-printable characters escaped (``\\n``, ``\\x1b``,
   ``\\u2028``), so a value from outside (a participant attribute, an API error) cannot forge a
   line. A traceback follows its line with its own line breaks, each of its lines escaped the same
   way and indented when it would start with ``[``. JSON lines escape them by construction (plus
   U+0085, U+2028 and U+2029, which line splitters also break on);
3. redacts the whole rendered text line, traceback included (in JSON: every value): registered
   secrets, JWTs, ``Bearer ...`` and encrypted tokens (``{32 hex}:{hex}``) become ``***``.

Ids come from ``bind_context()`` / ``set_context()`` (contextvars, so each asyncio task sees the
ids of the code that created it), or per call from ``extra={"session_id": ...}``. Structured fields
come from the context's other keys and ``extra={"fields": {...}}``; fields that are None are left out.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import re
import sys
import threading
import time
import traceback
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import TextIO

from loqua_common.ratelimit import Fold, LogRateLimiter

__all__ = [
    "FORMATS",
    "ContextFilter",
    "LoquaHandler",
    "bind_context",
    "configure_logging",
    "current_context",
    "escape_text",
    "redact",
    "register_secret",
    "reset_context",
    "set_context",
]

FORMATS = ("text", "json")
REDACTED = "***"
MISSING_ID = "-"
ID_KEYS = ("agent_id", "session_id", "user_id")
# Third-party loggers that must end up in our handler (they get no console handler of their own).
THIRD_PARTY_LOGGERS = ("kopf", "livekit", "livekit.agents", "aiohttp.access", "aiohttp", "httpx", "httpcore")
SUMMARY_LOGGER = "loqua_common.ratelimit"
_CONTEXT_ATTR = "_loqua_context"
MIN_SECRET_LENGTH = 4

# -- redaction ------------------------------------------------------------------------------------------

# Always redacted, registered or not. Each pattern runs only when a substring test says it could
# match: a combined regex costs several microseconds per line, the substring tests a fraction of one.
_BEARER = re.compile(r"(?i:\bbearer)\s+[A-Za-z0-9._~+/=*-]+")  # RFC 6750 b64token ('*': already redacted)
_JWT = re.compile(r"eyJ[A-Za-z0-9_=-]*\.[A-Za-z0-9_=-]+\.[A-Za-z0-9_=-]*")  # header.payload.signature
_ENCRYPTED = re.compile(r"(?<![0-9A-Fa-f])[0-9A-Fa-f]{32}:[0-9A-Fa-f]+")  # {32 hex iv}:{hex ciphertext}
_HEX32 = re.compile(r"[0-9A-Fa-f]{32}")
_secrets: set[str] = set()
_secrets_lock = threading.Lock()
_secrets_pattern: re.Pattern[str] | None = None


def register_secret(value: str | None) -> bool:
    """Redact ``value`` from every log line from now on. Values under 4 characters are ignored
    (they would mangle ordinary words); returns whether the value is redacted."""
    global _secrets_pattern
    if not value or len(value) < MIN_SECRET_LENGTH:
        return False
    # Also the JSON-escaped form, which is what a quoted text field (key="...") contains.
    forms = {value, json.dumps(value, ensure_ascii=False)[1:-1]}
    with _secrets_lock:
        if forms <= _secrets:
            return True
        _secrets.update(forms)
        # Longest first, so a secret that contains another one is replaced whole. The new pattern
        # replaces the old in one assignment: readers never see a half-built one.
        ordered = sorted(_secrets, key=len, reverse=True)
        _secrets_pattern = re.compile("|".join(re.escape(s) for s in ordered))
    return True


def _may_hold_encrypted_token(text: str) -> bool:
    # Every line has colons (the timestamp); only look closer at those after 32 hex digits.
    colon = text.find(":", 32)
    while colon != -1:
        if _HEX32.fullmatch(text, colon - 32, colon):
            return True
        colon = text.find(":", colon + 1)
    return False


def redact(text: str) -> str:
    """``text`` with secrets, JWTs, bearer tokens and encrypted tokens replaced by ``***``."""
    # Registered secrets first: they are exact, and a later pattern could otherwise cut one in two.
    secrets = _secrets_pattern
    if secrets is not None:
        text = secrets.sub(REDACTED, text)
    if "bearer" in text.lower():
        text = _BEARER.sub(REDACTED, text)
    if "eyJ" in text:
        text = _JWT.sub(REDACTED, text)
    if _may_hold_encrypted_token(text):
        text = _ENCRYPTED.sub(REDACTED, text)
    return text


# -- context --------------------------------------------------------------------------------------------

# Never mutated in place: bind/set build a new dict, so tasks that copied the context are unaffected.
_EMPTY: Mapping[str, object] = MappingProxyType({})
_context: contextvars.ContextVar[Mapping[str, object]] = contextvars.ContextVar("loqua_log_context", default=_EMPTY)


def _merged(fields: Mapping[str, object]) -> dict[str, object]:
    merged = dict(_context.get())
    for key, value in fields.items():
        if value is None:
            merged.pop(key, None)  # None unsets a key
        else:
            merged[key] = value
    return merged


@contextlib.contextmanager
def bind_context(**fields: object) -> Iterator[Mapping[str, object]]:
    """Add ``session_id``, ``user_id``, ``agent_id`` and any other fields to every log line inside
    the block, including lines of asyncio tasks created inside it. A None value unsets a key."""
    token = _context.set(_merged(fields))
    try:
        yield _context.get()
    finally:
        _context.reset(token)


def set_context(**fields: object) -> contextvars.Token[Mapping[str, object]]:
    """Like ``bind_context`` without a block: for the rest of the current task (or thread).
    Returns a token that ``reset_context`` takes to undo it."""
    return _context.set(_merged(fields))


def reset_context(token: contextvars.Token[Mapping[str, object]]) -> None:
    _context.reset(token)


def current_context() -> dict[str, object]:
    return dict(_context.get())


# -- one record, one line ------------------------------------------------------------------------------

_CONTROL_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# Characters that str.splitlines() breaks on although JSON does not escape them.
_JSON_LINE_BREAKS = {"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def _escape_char(c: str) -> str:
    if c.isprintable():
        return c
    known = _CONTROL_ESCAPES.get(c)
    if known is not None:
        return known
    code = ord(c)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def escape_text(text: str) -> str:
    """``text`` with newlines, control and other non-printable characters escaped (one line)."""
    if text.isprintable():  # the common case, at C speed
        return text
    return "".join(_escape_char(c) for c in text)


def _escape_block(block: str) -> str:
    """A traceback: its own line breaks kept, everything else escaped, no line starting with '['."""
    lines = [escape_text(line) for line in block.split("\n")]
    return "\n".join("  " + line if line.startswith("[") else line for line in lines)


def _json_line(text: str) -> str:
    if text.isascii():
        return text
    for char, escaped in _JSON_LINE_BREAKS.items():
        if char in text:
            text = text.replace(char, escaped)
    return text


# -- the handler ----------------------------------------------------------------------------------------


def _id(value: object) -> str:
    if value is None or value == "":
        return MISSING_ID
    return escape_text(str(value))


def _text_value(value: object) -> str:
    text = value if isinstance(value, str) else str(value)
    if not text or any(c.isspace() or c in '"=' for c in text):
        text = json.dumps(text, ensure_ascii=False)  # keeps key=value pairs parseable
    return escape_text(text)


def _json_value(value: object) -> object:
    """A redacted JSON-ready copy: strings redacted, containers walked, other objects as str."""
    if isinstance(value, str):
        return redact(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, list | tuple | set | frozenset):
        return [_json_value(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _json_value(v) for k, v in value.items()}
    return redact(str(value))


class ContextFilter(logging.Filter):
    """Copies the current context onto each record: ids as ``agent_id`` / ``session_id`` /
    ``user_id`` attributes, other keys into ``fields``. For handlers that carry records elsewhere,
    such as livekit-agents' job processes sending them to the main process, where the context of
    the job is unknown; ``LoquaHandler`` reads these attributes before the context."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = _context.get()
        if context:
            rec = record.__dict__
            for key in ID_KEYS:
                if key in context and not rec.get(key):
                    rec[key] = context[key]
            extra = {k: v for k, v in context.items() if k not in ID_KEYS}
            if extra:
                fields = rec.get("fields")
                rec["fields"] = {**extra, **fields} if isinstance(fields, Mapping) else extra
        return True


def _fold_key(record: logging.LogRecord, message: str, context: Mapping[str, object]) -> str:
    """What makes two lines "the same" for folding: logger and message, and also whatever else the
    line shows (ids, fields, the exception), so that a fold never hides another session's line."""
    key = f"{record.name}\0{message}"
    rec = record.__dict__
    if not (context or rec.get("fields") or record.exc_info or any(k in rec for k in ID_KEYS)):
        return key  # the common case: no extra work
    exc = record.exc_info[1] if record.exc_info else None
    # A context dict is never mutated and the folded record keeps it alive, so its id() identifies it.
    ids = "\0".join(str(rec.get(k)) for k in ID_KEYS)
    return f"{key}\0{id(context)}\0{ids}\0{rec.get('fields')!r}\0{exc!r}"


class LoquaHandler(logging.Handler):
    """The single root handler: rate limit and fold, format (text or JSON), redact, write."""

    def __init__(
        self,
        *,
        component: str,
        agent_id: str = MISSING_ID,
        fmt: str = "text",
        limiter: LogRateLimiter | None = None,
        stream: TextIO | None = None,
    ) -> None:
        super().__init__()
        if fmt not in FORMATS:
            raise ValueError(f"LOG_FORMAT must be 'text' or 'json', got {fmt!r}")
        self.component = component
        self.agent_id = agent_id or MISSING_ID
        self.fmt = fmt
        self.limiter = limiter if limiter is not None else LogRateLimiter()
        self._stream = stream  # None: whatever sys.stderr is at write time (works with test capture)
        self._render = self._render_json if fmt == "json" else self._render_text
        self._ts_second = -1
        self._ts_prefix = ""

    @property
    def stream(self) -> TextIO:
        return self._stream if self._stream is not None else sys.stderr

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            context = _context.get()
            if context:
                # Kept on the record: a "(repeated N times)" line written later needs the original
                # ids. A plain dict, so the record stays picklable (livekit-agents ships records
                # from job processes to the main process).
                record.__dict__[_CONTEXT_ATTR] = context
            decision = self.limiter.decide(record.levelno, _fold_key(record, message, context), record)
            if decision.fold is None and decision.summary is None:  # the common case
                if decision.emit:
                    self._write(self._render(record, message, context, record.created))
                return
            lines: list[str] = []
            if decision.fold is not None:
                lines.append(self._fold_line(decision.fold))
            if decision.emit:
                lines.append(self._render(record, message, context, record.created))
            if decision.summary is not None:
                lines.append(self._summary_line(decision.summary))
            self._write("\n".join(lines))
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

    def _fold_line(self, fold: Fold) -> str:
        record = fold.payload
        assert isinstance(record, logging.LogRecord)
        message = f"{record.getMessage()} (repeated {fold.count} times)"
        context = record.__dict__.get(_CONTEXT_ATTR, _EMPTY)
        return self._render(record, message, context, time.time(), with_exc=False)

    def _summary_line(self, summary: str) -> str:
        record = logging.LogRecord(SUMMARY_LOGGER, logging.WARNING, __file__, 0, summary, None, None)
        return self._render(record, summary, _EMPTY, record.created)

    def _write(self, text: str) -> None:
        stream = self.stream
        stream.write(text + "\n")
        stream.flush()

    def flush(self) -> None:
        """Write the pending "(repeated N times)" line and the drop summary, then flush the stream."""
        self.acquire()
        try:
            with contextlib.suppress(ValueError, OSError):  # a closed stream at interpreter exit
                lines = []
                fold = self.limiter.flush()
                if fold is not None:
                    lines.append(self._fold_line(fold))
                summary = self.limiter.summary()
                if summary is not None:
                    lines.append(self._summary_line(summary))
                if lines:
                    self._write("\n".join(lines))
                else:
                    self.stream.flush()
        finally:
            self.release()

    def handleError(self, record: logging.LogRecord) -> None:
        # The stock version prints the record's msg and args to stderr: they may hold secrets.
        if not logging.raiseExceptions:
            return
        exc = sys.exc_info()[1]
        with contextlib.suppress(Exception):
            sys.stderr.write(
                f"--- logging error in {record.name} ({record.pathname}:{record.lineno}): "
                f"{type(exc).__name__}: {redact(str(exc))}\n"
            )

    # -- rendering --------------------------------------------------------------------------------------

    def _timestamp(self, created: float) -> str:
        second = int(created)
        if second != self._ts_second:  # strftime once per second, not once per line
            self._ts_prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._ts_second = second
        return f"{self._ts_prefix}.{int((created - second) * 1000):03d}Z"

    def _ids(self, record: logging.LogRecord, context: Mapping[str, object]) -> tuple[object, object, object]:
        rec = record.__dict__  # per-call ids from extra={"session_id": ...} win over the context
        return (
            rec.get("agent_id") or context.get("agent_id") or self.agent_id,
            rec.get("session_id") or context.get("session_id"),
            rec.get("user_id") or context.get("user_id"),
        )

    @staticmethod
    def _fields(record: logging.LogRecord, context: Mapping[str, object]) -> dict[str, object]:
        extra = record.__dict__.get("fields")
        if not context and not extra:
            return {}
        fields = {k: v for k, v in context.items() if k not in ID_KEYS}
        if isinstance(extra, Mapping):
            fields.update(extra)
        return {k: v for k, v in fields.items() if v is not None}

    @staticmethod
    def _exception(record: logging.LogRecord, message: str) -> tuple[str, str]:
        """(message, traceback): the traceback once, apart from the message."""
        if record.exc_info:
            return message, "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
        exc_text = record.exc_text or ""
        # Records forwarded from another process (livekit-agents' job processes) arrive with the
        # traceback both in exc_text and already appended to the message: show it once.
        if exc_text and message.endswith(exc_text):
            return message[: -len(exc_text)].rstrip("\n"), exc_text
        return message, exc_text

    def _render_text(
        self,
        record: logging.LogRecord,
        message: str,
        context: Mapping[str, object],
        created: float,
        *,
        with_exc: bool = True,
    ) -> str:
        agent_id, session_id, user_id = self._ids(record, context)
        message, exc = self._exception(record, message) if with_exc else (message, "")
        parts = [
            f"[{self._timestamp(created)}] [{record.levelname}] [{_id(agent_id)}] [{_id(session_id)}] "
            f"[{_id(user_id)}] {escape_text(message)}"
        ]
        for key, value in self._fields(record, context).items():
            parts.append(f" {escape_text(str(key))}={_text_value(value)}")
        if exc:
            parts.append("\n" + _escape_block(exc))
        if with_exc and record.stack_info:
            parts.append("\n" + _escape_block(record.stack_info))
        return redact("".join(parts))

    def _render_json(
        self,
        record: logging.LogRecord,
        message: str,
        context: Mapping[str, object],
        created: float,
        *,
        with_exc: bool = True,
    ) -> str:
        agent_id, session_id, user_id = self._ids(record, context)
        message, exc = self._exception(record, message) if with_exc else (message, "")
        # Values are redacted one by one, not the serialized line: a replacement there could break
        # the JSON (think of a secret that equals "null" or a key name).
        doc: dict[str, object] = {
            "timestamp": self._timestamp(created),
            "level": record.levelname,
            "logger": record.name,
            "component": self.component,
            "agent_id": None if agent_id == MISSING_ID else _json_value(agent_id),
            "session_id": _json_value(session_id),
            "user_id": _json_value(user_id),
            "message": redact(message),
        }
        for key, value in self._fields(record, context).items():
            doc[f"field_{key}" if key in doc else key] = _json_value(value)
        if exc:
            doc["exception"] = redact(exc)
        if with_exc and record.stack_info:
            doc["stack"] = redact(record.stack_info)
        return _json_line(json.dumps(doc, ensure_ascii=False, default=str))


# -- configuration --------------------------------------------------------------------------------------


def _parse_level(level: str | int) -> int:
    if isinstance(level, int):
        return level
    value = logging.getLevelNamesMapping().get(level.strip().upper())
    if value is None:
        raise ValueError(f"LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL; got {level!r}")
    return value


def _is_console_handler(handler: logging.Handler) -> bool:
    # Exactly StreamHandler (basicConfig, kopf's default): subclasses such as pytest's capture
    # handlers and file handlers stay.
    return type(handler) is logging.StreamHandler


def configure_logging(
    *,
    component: str,
    agent_id: str = MISSING_ID,
    fmt: str = "text",
    rate_limit: float = 400.0,
    level: str = "INFO",
    stream: TextIO | None = None,
) -> logging.Handler:
    """Install the Loqua handler as the root logger's only console handler; returns it.

    Idempotent: a handler installed by an earlier call is flushed and replaced, as are plain console
    ``StreamHandler``s on the root and on the third-party loggers (they would print unredacted).
    ``fmt`` is LOG_FORMAT (text|json), ``rate_limit`` LOG_RATE_LIMIT (lines/s), ``level`` LOG_LEVEL.
    """
    if fmt not in FORMATS:
        raise ValueError(f"LOG_FORMAT must be 'text' or 'json', got {fmt!r}")
    levelno = _parse_level(level)
    if not rate_limit > 0:
        raise ValueError(f"LOG_RATE_LIMIT must be > 0 lines per second, got {rate_limit!r}")
    handler = LoquaHandler(
        component=component,
        agent_id=agent_id,
        fmt=fmt,
        limiter=LogRateLimiter(rate=rate_limit),
        stream=stream,
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        if isinstance(old, LoquaHandler) or _is_console_handler(old):
            root.removeHandler(old)
            with contextlib.suppress(Exception):
                old.flush()
                old.close()
    root.addHandler(handler)
    root.setLevel(levelno)
    for name in THIRD_PARTY_LOGGERS:
        third = logging.getLogger(name)
        third.propagate = True
        for old in list(third.handlers):
            if _is_console_handler(old):
                third.removeHandler(old)
    logging.captureWarnings(True)  # warnings.warn(...) goes through the same handler
    return handler

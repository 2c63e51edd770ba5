"""One log format for the operator and the tutor worker: context ids, rate limiting, redaction.

``configure_logging()`` installs a single handler on the root logger; every logger (ours, kopf,
livekit, aiohttp.access, httpx) propagates to it. Per line the handler:

1. folds repeats and rate limits (``LogRateLimiter``: DEBUG dropped first, ERROR never);
2. formats as text::

       [2026-11-21T17:01:02.345Z] [INFO] [AGENT_ID] [SESSION_ID] [USER_ID] Message key=value ...

   or as one JSON object per line (keys timestamp, level, logger, component, agent_id, session_id,
   user_id, message, then the fields, and exception/stack when present);
3. redacts the whole rendered line, traceback included: registered secrets, JWTs, ``Bearer ...``
   and encrypted tokens (``{32 hex}:{hex}``) become ``***``.

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
    "LoquaHandler",
    "bind_context",
    "configure_logging",
    "current_context",
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

# Always redacted, registered or not. The JWT's third segment may be empty (unsigned tokens).
_ALWAYS = (
    r"eyJ[A-Za-z0-9_=-]*\.[A-Za-z0-9_=-]+\.[A-Za-z0-9_=-]*",  # JWT: header.payload.signature
    r"(?i:\bbearer)\s+[A-Za-z0-9._~+/=-]+",  # RFC 6750 b64token after "Bearer"
    r"(?<![0-9A-Fa-f])[0-9A-Fa-f]{32}:[0-9A-Fa-f]+",  # encrypted token: {32 hex iv}:{hex ciphertext}
)
_secrets: set[str] = set()
_secrets_lock = threading.Lock()
_pattern = re.compile("|".join(_ALWAYS))


def _compile(secrets: set[str]) -> re.Pattern[str]:
    # Longest first, so a secret that contains another one is replaced whole.
    escaped = [re.escape(s) for s in sorted(secrets, key=len, reverse=True)]
    return re.compile("|".join([*_ALWAYS, *escaped]))


def register_secret(value: str | None) -> bool:
    """Redact ``value`` from every log line from now on. Values under 4 characters are ignored
    (they would mangle ordinary words); returns whether the value is redacted."""
    global _pattern
    if not value or len(value) < MIN_SECRET_LENGTH:
        return False
    # Also the JSON-escaped form, which is what a JSON line (or a quoted field) contains.
    forms = {value, json.dumps(value, ensure_ascii=False)[1:-1]}
    with _secrets_lock:
        if forms <= _secrets:
            return True
        _secrets.update(forms)
        _pattern = _compile(_secrets)  # swapped atomically: readers never see a half-built pattern
    return True


def redact(text: str) -> str:
    """``text`` with secrets, JWTs, bearer tokens and encrypted tokens replaced by ``***``."""
    return _pattern.sub(REDACTED, text)


# -- context --------------------------------------------------------------------------------------------

# Never mutated in place: bind/set build a new dict, so tasks that copied the context are unaffected.
_EMPTY: Mapping[str, object] = MappingProxyType({})
_context: contextvars.ContextVar[Mapping[str, object]] = contextvars.ContextVar(
    "loqua_log_context", default=_EMPTY
)


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


# -- the handler ----------------------------------------------------------------------------------------


def _id(value: object) -> str:
    if value is None or value == "":
        return MISSING_ID
    return str(value)


def _text_value(value: object) -> str:
    text = value if isinstance(value, str) else str(value)
    if not text or any(c.isspace() or c in '"=' for c in text):
        return json.dumps(text, ensure_ascii=False)  # keeps key=value pairs parseable
    return text


def _json_value(value: object) -> object:
    if value is None or isinstance(value, str | int | float | bool | list | tuple | dict):
        return value
    return str(value)


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
            # Kept on the record: a "(repeated N times)" line written later needs the original ids.
            context = record.__dict__[_CONTEXT_ATTR] = _context.get()
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

    def _exception(self, record: logging.LogRecord) -> str:
        if record.exc_info:
            return "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
        return record.exc_text or ""

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
        parts = [
            f"[{self._timestamp(created)}] [{record.levelname}] [{_id(agent_id)}] [{_id(session_id)}] "
            f"[{_id(user_id)}] {message}"
        ]
        for key, value in self._fields(record, context).items():
            parts.append(f" {key}={_text_value(value)}")
        if with_exc:
            exc = self._exception(record)
            if exc:
                parts.append("\n" + exc)
            if record.stack_info:
                parts.append("\n" + record.stack_info)
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
        doc: dict[str, object] = {
            "timestamp": self._timestamp(created),
            "level": record.levelname,
            "logger": record.name,
            "component": self.component,
            "agent_id": None if agent_id == MISSING_ID else agent_id,
            "session_id": session_id,
            "user_id": user_id,
            "message": message,
        }
        for key, value in self._fields(record, context).items():
            doc[f"field_{key}" if key in doc else key] = _json_value(value)
        if with_exc:
            exc = self._exception(record)
            if exc:
                doc["exception"] = exc
            if record.stack_info:
                doc["stack"] = record.stack_info
        # Redacting the serialized line covers keys and values; register_secret also registers the
        # JSON-escaped form of each secret for this.
        return redact(json.dumps(doc, ensure_ascii=False, default=str))


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

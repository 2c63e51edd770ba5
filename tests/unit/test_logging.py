"""The shared log handler: exact formats, context ids, redaction, rate limiting and folding."""

from __future__ import annotations

import asyncio
import calendar
import io
import json
import logging
import pickle
import sys
import warnings
from collections.abc import Iterator

import pytest

from loqua_common.logging import (
    ContextFilter,
    LoquaHandler,
    bind_context,
    configure_logging,
    current_context,
    redact,
    register_secret,
    reset_context,
    set_context,
)
from loqua_common.ratelimit import LogRateLimiter

# 2026-11-21T17:01:02.345Z
CREATED = calendar.timegm((2026, 11, 21, 17, 1, 2, 0, 0, 0)) + 0.3456
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1c2VyLTEiLCJ2aWRlbyI6e319.c2lnbmF0dXJlX2J5dGVz"
ENCRYPTED = "0123456789abcdef0123456789ABCDEF:deadbeefcafe0042"


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make_handler(fmt: str = "text", limiter: LogRateLimiter | None = None) -> tuple[LoquaHandler, io.StringIO]:
    stream = io.StringIO()
    limiter = limiter or LogRateLimiter(rate=float("inf"))
    handler = LoquaHandler(component="operator", agent_id="loqua-operator", fmt=fmt, limiter=limiter, stream=stream)
    return handler, stream


def log(
    handler: logging.Handler,
    level: int,
    msg: str,
    *args: object,
    name: str = "loqua_operator.test",
    exc_info: object = None,
    **extra: object,
) -> None:
    logger = logging.getLogger(name)
    record = logger.makeRecord(name, level, __file__, 1, msg, args, exc_info, extra=extra or None)  # type: ignore[arg-type]
    record.created = CREATED
    handler.handle(record)


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


@pytest.fixture
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
    for h in handlers:
        if h not in root.handlers:
            root.addHandler(h)
    root.setLevel(level)
    logging.captureWarnings(False)


class TestTextFormat:
    def test_exact_line_with_missing_ids(self) -> None:
        handler, stream = make_handler()
        log(handler, logging.INFO, "reconciled %s in %d ms", "room-1", 12)
        assert lines(stream) == [
            "[2026-11-21T17:01:02.345Z] [INFO] [loqua-operator] [-] [-] reconciled room-1 in 12 ms"
        ]

    def test_ids_and_fields(self) -> None:
        handler, stream = make_handler()
        with bind_context(session_id="sess-1", user_id="user-9"):
            log(
                handler,
                logging.WARNING,
                "dispatch reused",
                fields={
                    "dispatch_id": "AD_x",
                    "room": "r1",
                    "namespace": "default",
                    "note": "two words",
                    "gone": None,
                },
            )
        assert lines(stream) == [
            "[2026-11-21T17:01:02.345Z] [WARNING] [loqua-operator] [sess-1] [user-9] dispatch reused "
            'dispatch_id=AD_x room=r1 namespace=default note="two words"'
        ]

    def test_agent_id_from_context_and_per_call_extra(self) -> None:
        handler, stream = make_handler()
        with bind_context(agent_id="tutor-7", room="r2"):
            log(handler, logging.ERROR, "boom", session_id="s-extra")
        assert lines(stream) == ["[2026-11-21T17:01:02.345Z] [ERROR] [tutor-7] [s-extra] [-] boom room=r2"]

    def test_traceback_follows_the_line(self) -> None:
        handler, stream = make_handler()
        try:
            raise RuntimeError("kaput")
        except RuntimeError:
            log(handler, logging.ERROR, "failed", exc_info=sys.exc_info())
        out = lines(stream)
        assert out[0] == "[2026-11-21T17:01:02.345Z] [ERROR] [loqua-operator] [-] [-] failed"
        assert out[1] == "Traceback (most recent call last):"
        assert out[-1] == "RuntimeError: kaput"


class TestOneRecordOneLine:
    """Untrusted values (participant attributes, API errors) cannot forge log lines (issue 16)."""

    FORGED = "x\n[2026-01-01T00:00:00.000Z] [INFO] [a] [b] [c] forged"

    def test_every_text_field_escapes_newlines_and_control_characters(self) -> None:
        handler, stream = make_handler()
        with bind_context(session_id="s\r\n1", user_id=self.FORGED, room="r\x1b[31m"):
            log(handler, logging.WARNING, "learner %s joined\u2028again", "id\x00\x85", fields={"k\n": "v\tw"})
        out = stream.getvalue()
        assert out.count("\n") == 1 and len(out.splitlines()) == 1, out
        assert out == (
            "[2026-11-21T17:01:02.345Z] [WARNING] [loqua-operator] [s\\r\\n1] "
            "[x\\n[2026-01-01T00:00:00.000Z] [INFO] [a] [b] [c] forged] "
            'learner id\\x00\\x85 joined\\u2028again room=r\\x1b[31m k\\n="v\\tw"\n'
        )

    def test_printable_text_is_untouched(self) -> None:
        handler, stream = make_handler()
        log(handler, logging.INFO, 'café ¿qué tal? "quoted" 100%', user_id="ana@example.com")
        assert lines(stream) == [
            '[2026-11-21T17:01:02.345Z] [INFO] [loqua-operator] [-] [ana@example.com] café ¿qué tal? "quoted" 100%'
        ]

    def test_traceback_keeps_its_lines_but_cannot_forge_one(self) -> None:
        handler, stream = make_handler()
        try:
            raise ValueError(self.FORGED + "\x1b")
        except ValueError:
            log(handler, logging.ERROR, "failed", exc_info=sys.exc_info())
        out = lines(stream)
        assert out[1] == "Traceback (most recent call last):"
        assert not any(line.startswith("[2026-01-01") for line in out)
        assert out[-1] == "  [2026-01-01T00:00:00.000Z] [INFO] [a] [b] [c] forged\\x1b"

    def test_forwarded_traceback_is_split_from_its_message(self) -> None:
        handler, stream = make_handler()
        tb = "Traceback (most recent call last):\nValueError: x"
        record = logging.LogRecord("job", logging.ERROR, __file__, 1, f"failed {self.FORGED}\n{tb}", None, None)
        record.exc_text = tb
        record.created = CREATED
        handler.handle(record)
        out = lines(stream)
        assert out[0].endswith("failed x\\n[2026-01-01T00:00:00.000Z] [INFO] [a] [b] [c] forged")
        assert out[1:] == ["Traceback (most recent call last):", "ValueError: x"]

    def test_json_lines_stay_one_line_for_every_splitter(self) -> None:
        handler, stream = make_handler("json")
        log(handler, logging.INFO, "a\u2028b\x85c\u2029d\ne", user_id="u\x1c1")
        out = stream.getvalue()
        assert len(out.splitlines()) == 1, out
        doc = json.loads(out)
        assert doc["message"] == "a\u2028b\x85c\u2029d\ne" and doc["user_id"] == "u\x1c1"


class TestJsonFormat:
    def test_exact_object(self) -> None:
        handler, stream = make_handler("json")
        with bind_context(session_id="sess-1"):
            log(
                handler,
                logging.INFO,
                "created %s",
                "AD_1",
                fields={"dispatch_id": "AD_1", "attempt": 2, "level": "x"},
            )
        (line,) = lines(stream)
        assert json.loads(line) == {
            "timestamp": "2026-11-21T17:01:02.345Z",
            "level": "INFO",
            "logger": "loqua_operator.test",
            "component": "operator",
            "agent_id": "loqua-operator",
            "session_id": "sess-1",
            "user_id": None,
            "message": "created AD_1",
            "dispatch_id": "AD_1",
            "attempt": 2,
            "field_level": "x",  # a field never overwrites a standard key
        }

    def test_exception_is_a_key_and_the_line_stays_one_line(self) -> None:
        handler, stream = make_handler("json")
        try:
            raise ValueError("bad\nthing")
        except ValueError:
            log(handler, logging.ERROR, "failed", exc_info=sys.exc_info())
        (line,) = lines(stream)
        doc = json.loads(line)
        assert doc["message"] == "failed"
        assert doc["exception"].startswith("Traceback") and doc["exception"].endswith("ValueError: bad\nthing")


class TestContext:
    def test_bind_nests_and_restores(self) -> None:
        assert current_context() == {}
        with bind_context(session_id="a", user_id="u"):
            with bind_context(session_id="b", user_id=None, extra_field=1):
                assert current_context() == {"session_id": "b", "extra_field": 1}
            assert current_context() == {"session_id": "a", "user_id": "u"}
        assert current_context() == {}

    def test_set_context_and_reset(self) -> None:
        token = set_context(agent_id="tutor-1")
        try:
            assert current_context() == {"agent_id": "tutor-1"}
        finally:
            reset_context(token)
        assert current_context() == {}

    async def test_context_follows_asyncio_tasks(self) -> None:
        handler, stream = make_handler()

        async def session(session_id: str, user_id: str) -> None:
            with bind_context(session_id=session_id, user_id=user_id):
                await asyncio.sleep(0)
                await asyncio.create_task(child())  # a task created inside inherits the ids
                await asyncio.sleep(0)
                log(handler, logging.INFO, "end")

        async def child() -> None:
            await asyncio.sleep(0)
            log(handler, logging.INFO, "child")

        await asyncio.gather(session("s1", "u1"), session("s2", "u2"))
        got = sorted(line.split("] ", 3)[3] for line in lines(stream))
        assert got == sorted(["[s1] [u1] child", "[s1] [u1] end", "[s2] [u2] child", "[s2] [u2] end"]), lines(stream)
        assert current_context() == {}

    def test_context_filter_carries_ids_on_the_record(self) -> None:
        # As livekit-agents does with records of job processes: pickled there, handled here.
        record = logging.LogRecord("job", logging.INFO, __file__, 1, "hello", None, None)
        record.created = CREATED
        with bind_context(session_id="s9", user_id="u9", room="r9"):
            ContextFilter().filter(record)
        handler, stream = make_handler()
        handler.handle(pickle.loads(pickle.dumps(record)))
        assert lines(stream) == ["[2026-11-21T17:01:02.345Z] [INFO] [loqua-operator] [s9] [u9] hello room=r9"]

    def test_handled_records_stay_picklable(self) -> None:
        handler, _ = make_handler()
        for context in ({}, {"session_id": "s1", "n": 1}):
            record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", None, None)
            with bind_context(**context):
                handler.handle(record)
            pickle.dumps(record)

    def test_forwarded_traceback_is_shown_once(self) -> None:
        handler, stream = make_handler()
        tb = "Traceback (most recent call last):\nValueError: x"
        record = logging.LogRecord("job", logging.ERROR, __file__, 1, f"failed\n{tb}", None, None)
        record.exc_text = tb
        handler.handle(record)
        assert stream.getvalue().count("Traceback") == 1


class TestRedaction:
    @pytest.mark.parametrize("fmt", ["text", "json"])
    def test_everything_secret_is_redacted(self, fmt: str) -> None:
        secret = "s3cr3t-api-value-91"
        assert register_secret(secret)
        handler, stream = make_handler(fmt)
        log(handler, logging.INFO, f"connecting with {secret}")
        log(handler, logging.INFO, "args: %s %s", secret, JWT)
        log(handler, logging.INFO, "headers", fields={"authorization": f"Bearer {JWT}", "key": secret})
        log(handler, logging.INFO, "Authorization: Bearer abc.def-ghi_jkl")
        log(handler, logging.INFO, "stored token %s", ENCRYPTED)
        log(handler, logging.INFO, "url wss://lk/rtc?access_token=%s&x=1", JWT)
        with bind_context(session_id=secret):
            log(handler, logging.INFO, "in context")
        try:
            raise PermissionError(f"token {JWT} rejected for {secret}")
        except PermissionError:
            log(handler, logging.ERROR, "call failed", exc_info=sys.exc_info())
        out = stream.getvalue()
        for leaked in (secret, JWT, "abc.def-ghi_jkl", ENCRYPTED, "deadbeefcafe0042", "eyJ"):
            assert leaked not in out
        assert out.count("***") >= 11
        assert "PermissionError: token *** rejected for ***" in out

    def test_secret_with_json_special_characters(self) -> None:
        secret = 'pa"ss\\word with quotes'
        register_secret(secret)
        handler, stream = make_handler("json")
        log(handler, logging.INFO, "value %s", secret, fields={"v": secret, "nested": {"a": [secret, 1]}})
        doc = json.loads(stream.getvalue())
        assert (doc["message"], doc["v"], doc["nested"]) == ("value ***", "***", {"a": ["***", 1]})
        handler, stream = make_handler("text")
        log(handler, logging.INFO, "value", fields={"v": secret})  # quoted and escaped in text
        assert lines(stream) == ['[2026-11-21T17:01:02.345Z] [INFO] [loqua-operator] [-] [-] value v="***"']

    def test_short_values_are_not_registered(self) -> None:
        assert not register_secret("abc")
        assert not register_secret("")
        assert redact("abc abc") == "abc abc"

    def test_ordinary_text_is_untouched(self) -> None:
        text = "room r1 dispatch AD_x8Kq at 2026-11-21T17:01:02.345Z sha 0123abcd eyJ-not-a-token"
        assert redact(text) == text

    def test_logging_errors_do_not_print_arguments(self, capsys: pytest.CaptureFixture[str]) -> None:
        handler, stream = make_handler()
        log(handler, logging.INFO, "%d items", "not-a-number-but-a-secret-token")
        err = capsys.readouterr().err
        assert "logging error in loqua_operator.test" in err
        assert "not-a-number-but-a-secret-token" not in err
        assert stream.getvalue() == ""


class TestLimitingThroughTheHandler:
    def test_only_truly_identical_lines_fold(self) -> None:
        handler, stream = make_handler()
        log(handler, logging.INFO, "same")
        log(handler, logging.INFO, "same", name="other.logger")
        log(handler, logging.INFO, "same", fields={"room": "r1"})
        log(handler, logging.INFO, "same", fields={"room": "r2"})
        for session_id in ("s1", "s2"):
            with bind_context(session_id=session_id):
                log(handler, logging.INFO, "same")
        for exc in (KeyError("a"), KeyError("b")):
            log(handler, logging.ERROR, "same", exc_info=(KeyError, exc, None))
        assert "repeated" not in stream.getvalue()
        assert len([line for line in lines(stream) if "same" in line]) == 8

    def test_fold_line_and_summary(self) -> None:
        clock = FakeClock()
        handler, stream = make_handler(limiter=LogRateLimiter(rate=10, clock=clock, summary_interval=30))
        with bind_context(session_id="s1"):
            for _ in range(4):
                log(handler, logging.WARNING, "LiveKit unreachable")
        log(handler, logging.INFO, "recovered")
        for i in range(20):
            log(handler, logging.DEBUG, "noise %d", i)
        clock.now = 30.0
        log(handler, logging.INFO, "later")
        prefix = "[2026-11-21T17:01:02.345Z]"
        out = lines(stream)
        assert out[0] == f"{prefix} [WARNING] [loqua-operator] [s1] [-] LiveKit unreachable"
        # Written when the run ends, with the ids of the original lines and the current time.
        assert out[1].endswith("] [WARNING] [loqua-operator] [s1] [-] LiveKit unreachable (repeated 3 times)")
        assert out[2] == f"{prefix} [INFO] [loqua-operator] [-] [-] recovered"
        assert all("noise" in line for line in out[3:-2])
        assert out[-2] == f"{prefix} [INFO] [loqua-operator] [-] [-] later"
        dropped = 20 - (len(out) - 5)
        assert out[-1].endswith(
            f"] [WARNING] [loqua-operator] [-] [-] log rate limiter dropped {dropped} lines "
            f"in the last 30s (DEBUG={dropped})"
        )

    def test_flush_writes_pending_fold_and_summary(self) -> None:
        handler, stream = make_handler(limiter=LogRateLimiter(rate=2, clock=FakeClock()))
        for name in ("a", "b", "c", "d"):  # two tokens: c and d are dropped
            log(handler, logging.INFO, name)
        for _ in range(3):
            log(handler, logging.ERROR, "e")
        handler.flush()
        out = [line.split("] [-] [-] ", 1)[1] for line in lines(stream)]
        assert out == [
            "a",
            "b",
            "e",
            "e (repeated 2 times)",
            "log rate limiter dropped 2 lines in the last 0s (INFO=2)",
        ]
        handler.flush()
        assert len(lines(stream)) == 5  # nothing pending any more

    def test_errors_pass_a_flood(self) -> None:
        handler, stream = make_handler(limiter=LogRateLimiter(rate=5, clock=FakeClock()))
        for i in range(100):
            log(handler, logging.INFO, "flood %d", i)
        for i in range(10):
            log(handler, logging.ERROR, "error %d", i)
        out = stream.getvalue()
        assert all(f"error {i}\n" in out for i in range(10))
        assert out.count("flood") == 4  # 5 tokens, 20 % held back from INFO


class TestConfigureLogging:
    def test_replaces_its_own_handler_and_console_handlers(self, restore_root: None) -> None:
        root = logging.getLogger()
        console = logging.StreamHandler(io.StringIO())
        root.addHandler(console)
        kopf_console = logging.StreamHandler(io.StringIO())
        logging.getLogger("kopf").addHandler(kopf_console)
        logging.getLogger("kopf").propagate = False
        first = configure_logging(component="operator", stream=io.StringIO())
        stream = io.StringIO()
        second = configure_logging(component="operator", agent_id="op-1", fmt="json", level="debug", stream=stream)
        ours = [h for h in root.handlers if isinstance(h, LoquaHandler)]
        assert ours == [second] and first not in root.handlers and console not in root.handlers
        assert root.level == logging.DEBUG
        assert kopf_console not in logging.getLogger("kopf").handlers

        for name in ("kopf.activities", "livekit.agents", "aiohttp.access", "httpx"):
            logging.getLogger(name).info("from %s", name)
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn("deprecated thing", UserWarning, stacklevel=1)
        docs = [json.loads(line) for line in lines(stream)]
        assert [d["logger"] for d in docs] == [
            "kopf.activities",
            "livekit.agents",
            "aiohttp.access",
            "httpx",
            "py.warnings",
        ]
        assert {d["agent_id"] for d in docs} == {"op-1"}

    @pytest.mark.parametrize(
        ("kwargs", "match"),
        [
            ({"fmt": "xml"}, "LOG_FORMAT must be 'text' or 'json', got 'xml'"),
            ({"level": "LOUD"}, "LOG_LEVEL"),
            ({"rate_limit": 0}, "LOG_RATE_LIMIT"),
        ],
    )
    def test_bad_arguments_name_the_setting(self, kwargs: dict[str, object], match: str, restore_root: None) -> None:
        with pytest.raises(ValueError, match=match):
            configure_logging(component="operator", **kwargs)  # type: ignore[arg-type]

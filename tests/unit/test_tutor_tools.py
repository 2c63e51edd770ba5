"""Function tools and the text-free RPC interface; instructions and provider selection."""

from __future__ import annotations

import json

import pytest
from prometheus_client import CollectorRegistry

from loqua_tutor.instructions import build_instructions
from loqua_tutor.metrics import JobMetrics
from loqua_tutor.pipeline import PipelineError, check_providers, mode_description
from loqua_tutor.settings import TutorSettings
from loqua_tutor.tools import ToolError, TutorTools, handle_rpc_payload, llm_tools
from loqua_tutor.tracker import ProgressTracker, UserContext


def rpc(tools: TutorTools, payload: object) -> dict:
    return json.loads(handle_rpc_payload(tools, payload if isinstance(payload, str) else json.dumps(payload)))


def test_tools_feed_the_tracker_and_count() -> None:
    changes: list[int] = []
    metrics = JobMetrics(CollectorRegistry())
    tools = TutorTools(ProgressTracker(), session_id="sess_1_a", metrics=metrics, on_change=lambda: changes.append(1))
    assert tools.call("new_word", {"word": "hola", "translation": "hello", "language": "es"}) == {
        "added": True,
        "words_learned": 1,
    }
    assert tools.call("phrase_practiced", {"phrase": "¿qué tal?"}) == {"phrases_practiced": 1}  # alias
    assert tools.call("pronunciation_score", {"score": 88, "text": "hola"}) == {"average": 88.0, "count": 1}
    assert tools.call("grammar_point", {"point": "present_tense"})["grammar_points"] == ["present_tense"]
    state = tools.call("state")
    assert state["words_learned"] == 1 and state["session_id"] == "sess_1_a"
    assert len(changes) == 4  # state() changes nothing
    assert metrics.tool_calls.labels("new_word", "ok")._value.get() == 1


@pytest.mark.parametrize(
    ("tool", "args", "message"),
    [
        ("fly", {}, "unknown tool"),
        ("new_word", {"word": "x"}, "missing translation, language"),
        ("grammar_point", {"point": "x", "extra": 1}, "unknown extra"),
        ("pronunciation_score", {"score": 140}, "between 0 and 100"),
        ("new_word", {"word": "", "translation": "x", "language": "es"}, "must not be empty"),
        ("state", [1], "'args' must be an object"),
        (None, {}, "'tool' must be"),
    ],
)
def test_bad_calls_raise_tool_error(tool: object, args: object, message: str) -> None:
    with pytest.raises(ToolError, match=message):
        TutorTools(ProgressTracker()).call(tool, args)


def test_rpc_payloads() -> None:
    tools = TutorTools(ProgressTracker(), session_id="sess_9_z")
    reply = rpc(tools, {"tool": "new_word", "args": {"word": "gato", "translation": "cat", "language": "es"}})
    assert reply == {
        "ok": True,
        "tool": "new_word",
        "result": {"added": True, "words_learned": 1},
        "session_id": "sess_9_z",
    }
    assert rpc(tools, "not json") == {"ok": False, "error": "payload must be JSON"}
    assert rpc(tools, [1, 2])["ok"] is False
    assert "unknown tool" in rpc(tools, {"tool": "nope"})["error"]
    assert rpc(tools, "x" * 20000) == {"ok": False, "error": "payload too large"}


async def test_llm_tools_wrap_the_same_calls() -> None:
    tracker = ProgressTracker()
    fns = llm_tools(TutorTools(tracker))
    assert len(fns) == 5
    out = json.loads(await fns[0]("hola", "hello", "es"))  # function_tool keeps the callable
    assert out["words_learned"] == 1 and tracker.snapshot().words_learned == 1
    assert "error" in json.loads(await fns[2](150))


def test_instructions_follow_the_context() -> None:
    ctx = UserContext.from_api(
        "u",
        {
            "preferences": {
                "language_learning": "french",
                "native_language": "german",
                "learning_pace": "slow",
                "focus_areas": ["pronunciation"],
            },
            "progress": {"total_sessions": 0},
        },
    )
    text = build_instructions(ctx, "Ana")
    assert "French tutor" in text and "German natively" in text and "Ana" in text
    assert "Speak slowly" in text and "pronunciation" in text and "first conversation" in text
    assert "new_word" in text


def _settings(**kw: str) -> TutorSettings:
    return TutorSettings(
        agent_jwt_token="a.b.c",
        agent_id="t",
        api_base_url="http://x",
        shared_secret="s" * 8,
        livekit_url="ws://x",
        livekit_api_key="k",
        livekit_api_secret="s",
        **kw,
    )


def test_text_free_mode_and_missing_plugins() -> None:
    assert "text-free mode" in mode_description(_settings())
    check_providers(_settings())  # nothing to import
    with pytest.raises(PipelineError, match="STT_PROVIDER=deepgram needs the package livekit-plugins-deepgram"):
        check_providers(_settings(stt_provider="deepgram", llm_provider="openai", tts_provider="openai"))

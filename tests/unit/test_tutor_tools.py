"""The Tutor agent's function tools, the ``tutor.tool`` RPC that runs them through livekit-agents'
own executor, the instructions and provider selection. No model: the tools are driven directly."""

from __future__ import annotations

import json

import pytest
from livekit.agents import AgentSession, llm
from prometheus_client import CollectorRegistry

from loqua_tutor.agent import Tutor, TutorData, run_tool_call
from loqua_tutor.instructions import build_instructions
from loqua_tutor.metrics import JobMetrics
from loqua_tutor.pipeline import PipelineError, check_providers, mode_description
from loqua_tutor.settings import TutorSettings
from loqua_tutor.state import SessionState, UserContext

TOOLS = ["new_word", "phrase_practised", "pronunciation_score", "grammar_point", "topic", "state"]


def tutor(session_id: str = "sess_1_a") -> tuple[Tutor, AgentSession[TutorData], JobMetrics]:
    metrics = JobMetrics(CollectorRegistry())
    data = TutorData(SessionState(), session_id, metrics)
    return Tutor(UserContext.default("u1")), AgentSession[TutorData](userdata=data), metrics


async def rpc(agent: Tutor, session: AgentSession[TutorData], payload: object) -> dict:
    raw = payload if isinstance(payload, str) else json.dumps(payload)
    return json.loads(await run_tool_call(agent, session, raw))


def test_tools_are_declared_once_as_function_tool_methods() -> None:
    agent, _, _ = tutor()
    assert sorted(t.info.name for t in agent.tools) == sorted(TOOLS)
    assert all(llm.is_function_tool(t) for t in agent.tools)
    new_word = next(t for t in agent.tools if t.info.name == "new_word")
    assert "new word" in new_word.info.description
    schema = llm.utils.build_legacy_openai_schema(new_word)["function"]["parameters"]  # what the LLM sees
    assert set(schema["required"]) == {"word", "translation", "language"}
    assert "context" not in schema["properties"]  # RunContext is injected, not asked for


async def test_tools_feed_the_session_state_and_count() -> None:
    agent, session, metrics = tutor()
    state = session.userdata.state
    word = {"tool": "new_word", "args": {"word": "hola", "translation": "hello", "language": "es"}}
    assert await rpc(agent, session, word) == {
        "ok": True,
        "tool": "new_word",
        "result": {"added": True, "words_learned": 1},
        "session_id": "sess_1_a",
    }
    reply = await rpc(agent, session, {"tool": "phrase_practiced", "args": {"phrase": "¿qué tal?"}})  # alias
    assert reply["result"] == {"phrases_practiced": 1} and reply["tool"] == "phrase_practised"
    reply = await rpc(agent, session, {"tool": "pronunciation_score", "args": {"score": 88, "text": "hola"}})
    assert reply["result"] == {"average": 88.0, "count": 1}
    reply = await rpc(agent, session, {"tool": "grammar_point", "args": {"point": "present_tense"}})
    assert reply["result"]["grammar_points"] == ["present_tense"]
    version = state.version
    reply = await rpc(agent, session, {"tool": "state"})
    assert reply["result"]["words_learned"] == 1 and reply["result"]["session_id"] == "sess_1_a"
    assert state.version == version == 4  # state() changes nothing
    assert metrics.tool_calls.labels("new_word", "ok")._value.get() == 1


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"tool": "fly"}, "unknown tool 'fly'"),
        ({"tool": "new_word", "args": {"word": "x"}}, "translation"),
        (
            {"tool": "pronunciation_score", "args": {"score": 140}},
            "pronunciation_score: score must be between 0 and 100",
        ),
        ({"tool": "pronunciation_score", "args": {"score": "loud"}}, "score"),
        ({"tool": "new_word", "args": {"word": "", "translation": "x", "language": "es"}}, "must not be empty"),
        ({"tool": "state", "args": [1]}, "'args' must be an object"),
        ({"args": {}}, "'tool' must be"),
        ([1, 2], "payload must be an object"),
        ("not json", "payload must be JSON"),
        ("x" * 20000, "payload too large"),
    ],
)
async def test_bad_calls_are_tool_errors_answered_to_the_caller(payload: object, message: str) -> None:
    agent, session, _ = tutor()
    reply = await rpc(agent, session, payload)
    assert reply["ok"] is False and message in reply["error"], reply
    assert session.userdata.state.version == 0


async def test_invalid_values_are_counted() -> None:
    agent, session, metrics = tutor()
    await rpc(agent, session, {"tool": "pronunciation_score", "args": {"score": 150}})
    assert metrics.tool_calls.labels("pronunciation_score", "invalid")._value.get() == 1


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

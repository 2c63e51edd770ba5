"""The tutor, shaped like a livekit/agents example: an ``Agent`` subclass whose tools are
``@function_tool`` methods on ``RunContext[TutorData]``, with the session's state in ``userdata``.

The tools are declared once, here. The LLM calls them through the AgentSession (voice mode); the
``tutor.tool`` RPC method runs the very same tools through livekit-agents' own executor
(``llm.execute_function_call``: argument validation, ``ToolError`` handling), so a test that drives
them over RPC exercises exactly what the LLM would. RPC interface (method ``tutor.tool`` on the
agent participant; only the session's learner may call it)::

    request:  {"tool": "new_word", "args": {"word": "hola", "translation": "hello", "language": "es"}}
    response: {"ok": true, "tool": "new_word", "result": {...}, "session_id": "sess_..."}
              {"ok": false, "error": "..."}
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from livekit.agents import Agent, AgentSession, RunContext, ToolError, function_tool, llm
from livekit.agents.voice.speech_handle import SpeechHandle

from loqua_tutor.instructions import build_instructions
from loqua_tutor.metrics import JobMetrics
from loqua_tutor.state import SessionState, UserContext

log = logging.getLogger(__name__)

RPC_METHOD = "tutor.tool"
MAX_PAYLOAD = 16 * 1024
# Older names some clients send; RPC only (the LLM sees the tools' own names).
RPC_ALIASES = {"phrase_practiced": "phrase_practised", "add_word": "new_word", "pronunciation": "pronunciation_score"}
READ_ONLY_TOOLS = frozenset({"state"})
T = TypeVar("T")


@dataclass
class TutorData:
    """The AgentSession's ``userdata``: what the tools work on."""

    state: SessionState
    session_id: str
    metrics: JobMetrics | None = None
    rpc_calls: itertools.count = field(default_factory=itertools.count)


def _apply(context: RunContext[TutorData], tool: str, change: Callable[[SessionState], T]) -> T:
    """Run one change of the session state; bad input becomes the framework's ``ToolError``."""
    data = context.userdata
    try:
        result = change(data.state)
    except ValueError as exc:
        _count(data, tool, "invalid")
        raise ToolError(f"{tool}: {exc}") from None
    _count(data, tool, "ok")
    return result


def _count(data: TutorData, tool: str, result: str) -> None:
    if data.metrics is not None and tool not in READ_ONLY_TOOLS:
        data.metrics.tool_calls.labels(tool, result).inc()


class Tutor(Agent):
    """The language tutor: instructions from the learner's context, progress recorded by tools."""

    def __init__(self, context: UserContext, display_name: str = "") -> None:
        super().__init__(instructions=build_instructions(context, display_name))

    @function_tool
    async def new_word(
        self, context: RunContext[TutorData], word: str, translation: str, language: str
    ) -> dict[str, Any]:
        """Record a new word the learner has just learned.

        Args:
            word: the word in the language being learned
            translation: its translation in the learner's native language
            language: ISO code of the word's language, e.g. "es"
        """
        added = _apply(context, "new_word", lambda s: s.record_new_word(word, translation, language))
        return {"added": added, "words_learned": context.userdata.state.snapshot().words_learned}

    @function_tool
    async def phrase_practised(self, context: RunContext[TutorData], phrase: str) -> dict[str, Any]:
        """Record that the learner practised a phrase (say it, repeat it, use it).

        Args:
            phrase: the phrase in the language being learned
        """
        return {"phrases_practiced": _apply(context, "phrase_practised", lambda s: s.record_phrase(phrase))}

    @function_tool
    async def pronunciation_score(self, context: RunContext[TutorData], score: float, text: str = "") -> dict[str, Any]:
        """Record how well the learner pronounced something, from 0 (unintelligible) to 100 (native).

        Args:
            score: the score, 0-100
            text: what the learner said
        """
        average = _apply(context, "pronunciation_score", lambda s: s.record_pronunciation(score))
        return {"average": round(average, 1), "count": len(context.userdata.state.snapshot().pronunciation_scores)}

    @function_tool
    async def grammar_point(self, context: RunContext[TutorData], point: str) -> dict[str, Any]:
        """Record a grammar point covered, as a short snake_case id such as present_tense.

        Args:
            point: the grammar point
        """
        added = _apply(context, "grammar_point", lambda s: s.record_grammar_point(point))
        return {"added": added, "grammar_points": list(context.userdata.state.snapshot().grammar_points)}

    @function_tool
    async def topic(self, context: RunContext[TutorData], topic: str) -> dict[str, Any]:
        """Record a conversation topic covered, such as greetings or travel.

        Args:
            topic: the topic
        """
        return {"added": _apply(context, "topic", lambda s: s.record_topic(topic))}

    @function_tool
    async def state(self, context: RunContext[TutorData]) -> dict[str, Any]:
        """What the learner has done so far this session (read-only)."""
        data = context.userdata
        snap = data.state.snapshot()
        return {
            "session_id": data.session_id,
            "words_learned": snap.words_learned,
            "phrases_practiced": snap.phrases_practiced,
            "pronunciation_avg": snap.pronunciation_avg,
            "pronunciation_count": len(snap.pronunciation_scores),
            "grammar_points": list(snap.grammar_points),
            "topics": list(snap.topics),
            "vocabulary": [v.to_json() for v in snap.vocabulary],
        }


# The tools that change the session state: what loqua_tutor_tool_calls_total counts.
RECORDING_TOOLS = tuple(
    sorted(t.info.name for t in llm.find_function_tools(Tutor) if t.info.name not in READ_ONLY_TOOLS)
)


class _RequestError(Exception):
    """A malformed RPC request; the message is safe to return."""


def _parse_request(payload: str) -> tuple[str, dict[str, Any]]:
    if len(payload) > MAX_PAYLOAD:
        raise _RequestError("payload too large")
    try:
        request = json.loads(payload)
    except ValueError:
        raise _RequestError("payload must be JSON") from None
    if not isinstance(request, dict):
        raise _RequestError('payload must be an object like {"tool": "...", "args": {...}}')
    tool, args = request.get("tool"), request.get("args")
    if not isinstance(tool, str) or not tool:
        raise _RequestError("'tool' must be a non-empty string")
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise _RequestError("'args' must be an object")
    return RPC_ALIASES.get(tool, tool), args


async def run_tool_call(agent: Tutor, session: AgentSession[TutorData], payload: str) -> str:
    """One ``tutor.tool`` RPC call: JSON in, JSON out; errors are answers, never exceptions."""
    tools = llm.ToolContext(agent.tools)
    try:
        name, args = _parse_request(payload)
        if name not in tools.function_tools:
            raise _RequestError(f"unknown tool {name[:40]!r}; known: {', '.join(tools.function_tools)}")
    except _RequestError as exc:
        return json.dumps({"ok": False, "error": str(exc)})
    data = session.userdata
    call_id = f"rpc_{next(data.rpc_calls)}"
    arguments = json.dumps(args)
    call_ctx = RunContext(
        session=session,
        speech_handle=SpeechHandle.create(),
        function_call=llm.FunctionCall(call_id=call_id, name=name, arguments=arguments),
    )
    result = await llm.execute_function_call(
        llm.FunctionToolCall(call_id=call_id, name=name, arguments=arguments), tools, call_ctx=call_ctx
    )
    if result.raw_exception is not None:
        error = result.raw_exception.message if isinstance(result.raw_exception, ToolError) else "internal error"
        return json.dumps({"ok": False, "error": error})
    return json.dumps({"ok": True, "tool": name, "result": result.raw_output, "session_id": data.session_id})

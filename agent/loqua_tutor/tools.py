"""The tutor's function tools, for the LLM (voice mode) and over LiveKit RPC (text-free mode).

Both paths go through :meth:`TutorTools.call`, so a test that drives the tools over RPC exercises
exactly what the LLM would. RPC interface (method ``tutor.tool`` on the agent participant)::

    request:  {"tool": "new_word", "args": {"word": "hola", "translation": "hello", "language": "es"}}
    response: {"ok": true, "tool": "new_word", "result": {...}, "session_id": "sess_..."}
              {"ok": false, "error": "..."}

Tools: ``new_word(word, translation, language)``, ``phrase_practised(phrase)``,
``pronunciation_score(score, text?)``, ``grammar_point(point)``, ``topic(topic)`` and the
read-only ``state()``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

from loqua_tutor.metrics import JobMetrics
from loqua_tutor.tracker import ProgressTracker

log = logging.getLogger(__name__)

RPC_METHOD = "tutor.tool"
MAX_PAYLOAD = 16 * 1024

# tool name -> (required args, optional args)
TOOL_ARGS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "new_word": (("word", "translation", "language"), ()),
    "phrase_practised": (("phrase",), ()),
    "pronunciation_score": (("score",), ("text",)),
    "grammar_point": (("point",), ()),
    "topic": (("topic",), ()),
    "state": ((), ()),
}
ALIASES = {
    "phrase_practiced": "phrase_practised",
    "add_word": "new_word",
    "pronunciation": "pronunciation_score",
}


class ToolError(ValueError):
    """Bad tool name or arguments; the message is safe to return to the caller."""


class TutorTools:
    def __init__(
        self,
        tracker: ProgressTracker,
        *,
        session_id: str = "",
        metrics: JobMetrics | None = None,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.tracker = tracker
        self.session_id = session_id
        self._metrics = metrics
        self._on_change = on_change

    # ---- the tools -----------------------------------------------------------------------------
    def new_word(self, word: str, translation: str, language: str) -> dict[str, Any]:
        added = self.tracker.record_new_word(word, translation, language)
        return {"added": added, "words_learned": self.tracker.snapshot().words_learned}

    def phrase_practised(self, phrase: str) -> dict[str, Any]:
        return {"phrases_practiced": self.tracker.record_phrase(phrase)}

    def pronunciation_score(self, score: float, text: str = "") -> dict[str, Any]:
        average = self.tracker.record_pronunciation(score)
        count = len(self.tracker.snapshot().pronunciation_scores)
        return {"average": round(average, 1), "count": count}

    def grammar_point(self, point: str) -> dict[str, Any]:
        added = self.tracker.record_grammar_point(point)
        return {"added": added, "grammar_points": list(self.tracker.snapshot().grammar_points)}

    def topic(self, topic: str) -> dict[str, Any]:
        return {"added": self.tracker.record_topic(topic)}

    def state(self) -> dict[str, Any]:
        snap = self.tracker.snapshot()
        return {
            "session_id": self.session_id,
            "words_learned": snap.words_learned,
            "phrases_practiced": snap.phrases_practiced,
            "pronunciation_avg": snap.pronunciation_avg,
            "pronunciation_count": len(snap.pronunciation_scores),
            "grammar_points": list(snap.grammar_points),
            "topics": list(snap.topics),
            "vocabulary": [v.to_json() for v in snap.vocabulary],
        }

    # ---- one entry point -------------------------------------------------------------------------
    def call(self, tool: object, args: object = None) -> dict[str, Any]:
        """Validate and run one tool call; raises :class:`ToolError` for bad input."""
        if not isinstance(tool, str) or not tool:
            raise ToolError("'tool' must be a non-empty string")
        name = ALIASES.get(tool, tool)
        if name not in TOOL_ARGS:
            raise ToolError(f"unknown tool {tool[:40]!r}; known: {', '.join(TOOL_ARGS)}")
        if args is None:
            args = {}
        if not isinstance(args, Mapping):
            raise ToolError("'args' must be an object")
        required, optional = TOOL_ARGS[name]
        missing = [a for a in required if a not in args]
        unknown = [a for a in args if a not in required and a not in optional]
        if missing or unknown:
            raise ToolError(
                f"{name}: "
                + "; ".join(
                    p
                    for p in (
                        f"missing {', '.join(missing)}" if missing else "",
                        f"unknown {', '.join(str(u)[:40] for u in unknown)}" if unknown else "",
                    )
                    if p
                )
            )
        before = self.tracker.version
        try:
            result: dict[str, Any] = getattr(self, name)(**dict(args))
        except ValueError as exc:
            self._count(name, "invalid")
            raise ToolError(f"{name}: {exc}") from None
        self._count(name, "ok")
        if self.tracker.version != before and self._on_change is not None:
            self._on_change()
        return result

    def _count(self, tool: str, result: str) -> None:
        if self._metrics is not None and tool != "state":
            self._metrics.tool_calls.labels(tool, result).inc()


def handle_rpc_payload(tools: TutorTools, payload: str) -> str:
    """JSON in, JSON out; never raises (errors are answers, so the caller sees why)."""
    tool: object = None
    try:
        if len(payload) > MAX_PAYLOAD:
            raise ToolError("payload too large")
        try:
            request = json.loads(payload)
        except ValueError:
            raise ToolError("payload must be JSON") from None
        if not isinstance(request, dict):
            raise ToolError('payload must be an object like {"tool": "...", "args": {...}}')
        tool = request.get("tool")
        result = tools.call(tool, request.get("args"))
    except ToolError as exc:
        return json.dumps({"ok": False, "error": str(exc)})
    return json.dumps({"ok": True, "tool": tool, "result": result, "session_id": tools.session_id})


def llm_tools(tools: TutorTools) -> list[Any]:
    """The same tools as livekit-agents function tools for the LLM (imported lazily)."""
    from livekit.agents import function_tool

    def run(name: str, **args: Any) -> str:
        try:
            return json.dumps(tools.call(name, args))
        except ToolError as exc:
            return json.dumps({"error": str(exc)})

    @function_tool
    async def new_word(word: str, translation: str, language: str) -> str:
        """Record a new word the learner has just learned.

        Args:
            word: the word in the language being learned
            translation: its translation in the learner's native language
            language: ISO code of the word's language, e.g. "es"
        """
        return run("new_word", word=word, translation=translation, language=language)

    @function_tool
    async def phrase_practised(phrase: str) -> str:
        """Record that the learner practised a phrase (say it, repeat it, use it).

        Args:
            phrase: the phrase in the language being learned
        """
        return run("phrase_practised", phrase=phrase)

    @function_tool
    async def pronunciation_score(score: float, text: str = "") -> str:
        """Record how well the learner pronounced something, from 0 (unintelligible) to 100 (native).

        Args:
            score: the score, 0-100
            text: what the learner said
        """
        return run("pronunciation_score", score=score, text=text)

    @function_tool
    async def grammar_point(point: str) -> str:
        """Record a grammar point covered, as a short snake_case id such as present_tense.

        Args:
            point: the grammar point
        """
        return run("grammar_point", point=point)

    @function_tool
    async def topic(topic: str) -> str:
        """Record a conversation topic covered, such as greetings or travel.

        Args:
            topic: the topic
        """
        return run("topic", topic=topic)

    return [new_word, phrase_practised, pronunciation_score, grammar_point, topic]

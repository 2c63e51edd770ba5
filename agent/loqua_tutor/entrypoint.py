"""The job: one room, one learner session. Runs in a job process (or thread) of the worker.

1. ``ctx.connect()``; wait for the learner (``PARTICIPANT_WAIT_TIMEOUT_SECONDS``; none → log, metric,
   clean end of the job);
2. read ``user_id`` (required: missing → error log, metric, clean end), ``sessionId``,
   ``display_name``, ``email`` from the learner's attributes;
3. start the session (token exchange, context, health check, progress loop) and the tutor - the
   ``Tutor`` agent (loqua_tutor.agent) with its tools on an AgentSession's userdata: started with
   the voice pipeline when providers are configured; its tools also over the ``tutor.tool`` RPC
   method, for the session's learner only;
4. stay: a learner who leaves (page refresh) is waited for again; the session ends when the job
   does - dispatch deleted, room closed, or worker drained - and is finalized exactly once from
   ``on_session_end`` (before the room is left), with a shutdown callback as the fallback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from livekit import rtc
from livekit.agents import AgentSession, AutoSubscribe, JobContext, room_io

from loqua_common.logging import set_context
from loqua_common.tokenkey import derive_key
from loqua_tutor.agent import RECORDING_TOOLS, RPC_METHOD, Tutor, TutorData, run_tool_call
from loqua_tutor.api_client import LoquaApiClient, shared_ssl_context
from loqua_tutor.breaker import CircuitBreaker
from loqua_tutor.cache import TTLCache
from loqua_tutor.learner import Learner, Refusal, learner_from_attributes
from loqua_tutor.metrics import JobMetrics, job_metrics
from loqua_tutor.session import TutorSession
from loqua_tutor.settings import TutorSettings
from loqua_tutor.state import UserContext
from loqua_tutor.token_manager import TokenManager, user_token_exchange

log = logging.getLogger("loqua_tutor.job")

LEARNER_KINDS = (
    rtc.ParticipantKind.PARTICIPANT_KIND_STANDARD,
    rtc.ParticipantKind.PARTICIPANT_KIND_SIP,
    rtc.ParticipantKind.PARTICIPANT_KIND_CONNECTOR,
)
# Attributes set on the agent participant, so clients and tests can see the session is live.
ATTR_SESSION_ID = "loqua.session_id"
ATTR_STATUS = "loqua.status"
RPC_FORBIDDEN = 403  # an application RpcError code (1001-1999 are LiveKit's own)

# Per job id. Module-level because on_session_end gets only the JobContext; with the thread
# executor several jobs share this process (and this dict).
_sessions: dict[str, TutorSession] = {}
_background: dict[str, asyncio.Task[None]] = {}
_cache: TTLCache[str, UserContext] | None = None


def prewarm(proc: Any) -> None:
    """livekit-agents ``setup_fnc``: runs in each (idle) job process before it gets a job."""
    shared_ssl_context()


def context_cache(settings: TutorSettings) -> TTLCache[str, UserContext]:
    global _cache
    if _cache is None:
        _cache = TTLCache(settings.context_cache_ttl_seconds)
    return _cache


def build_session(
    settings: TutorSettings,
    room_name: str,
    learner: Learner,
    metrics: JobMetrics | None,
    **client_kwargs: Any,
) -> TutorSession:
    """Wire API client, breaker, token manager and session for one learner."""
    breaker: CircuitBreaker

    def on_breaker(state: int) -> None:
        if metrics is not None:
            metrics.set_breaker_state(id(breaker), int(state))
        log.warning("Loqua API circuit breaker is now %s", getattr(state, "name", state))

    breaker = CircuitBreaker(
        failure_threshold=settings.breaker_failure_threshold,
        reset_timeout=settings.breaker_reset_seconds,
        on_change=on_breaker,
    )
    if metrics is not None:
        metrics.set_breaker_state(id(breaker), 0)
    api = LoquaApiClient(
        settings.api_base_url,
        agent_id=settings.agent_id,
        agent_token=settings.agent_jwt_token.get_secret_value(),
        breaker=breaker,
        metrics=metrics,
        timeout=settings.api_timeout_seconds,
        max_retries=settings.api_max_retries,
        retry_base=settings.api_retry_base_seconds,
        **client_kwargs,
    )
    tokens = TokenManager(
        user_token_exchange(
            api,
            key=derive_key(settings.secret, settings.pad_byte),
            room_name=room_name,
            user_id=learner.user_id,
            metrics=metrics,
        ),
        margin=settings.token_refresh_margin_seconds,
        metrics=metrics,
    )
    api.set_user_tokens(tokens)
    return TutorSession(
        learner=learner,
        room_name=room_name,
        api=api,
        tokens=tokens,
        context_cache=context_cache(settings),
        metrics=metrics,
        progress_interval=settings.progress_interval_seconds,
        finalize_timeout=settings.finalize_timeout_seconds,
    )


def _is_learner(p: rtc.RemoteParticipant, user_id: str | None) -> bool:
    if p.kind not in LEARNER_KINDS:
        return False
    return user_id is None or (p.attributes.get("user_id") or "").strip() == user_id


async def wait_for_learner(room: rtc.Room, user_id: str | None = None) -> rtc.RemoteParticipant:
    """The first learner in the room (with ``user_id``, when given: after a page refresh the
    learner may come back under a new identity). Raises RuntimeError if the room disconnects."""
    fut: asyncio.Future[rtc.RemoteParticipant] = asyncio.get_running_loop().create_future()

    def consider(p: rtc.RemoteParticipant, *_: Any) -> None:
        if not fut.done() and _is_learner(p, user_id):
            fut.set_result(p)

    def on_attributes(_changed: Any, p: rtc.Participant) -> None:
        if isinstance(p, rtc.RemoteParticipant):
            consider(p)

    def on_disconnected(*_: Any) -> None:
        if not fut.done():
            fut.set_exception(RuntimeError("room disconnected while waiting for the learner"))

    room.on("participant_connected", consider)
    room.on("participant_attributes_changed", on_attributes)
    room.on("disconnected", on_disconnected)
    try:
        for p in list(room.remote_participants.values()):
            consider(p)
        return await fut
    finally:
        room.off("participant_connected", consider)
        room.off("participant_attributes_changed", on_attributes)
        room.off("disconnected", on_disconnected)


async def _follow_learner(
    ctx: JobContext, session: TutorSession, identity: str, voice: AgentSession[TutorData] | None
) -> None:
    """Keep the session through page refreshes: when the learner leaves, wait for them again."""
    room = ctx.room
    current = identity
    while True:
        left: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def on_left(p: rtc.RemoteParticipant, who: str = current, fut: asyncio.Future[None] = left) -> None:
            if p.identity == who and not fut.done():
                fut.set_result(None)

        room.on("participant_disconnected", on_left)
        try:
            if current in room.remote_participants:
                await left
        finally:
            room.off("participant_disconnected", on_left)
        log.info("learner left the room (page refresh?); keeping the session and waiting for them to return")
        returned = await wait_for_learner(room, session.learner.user_id)
        log.info("learner is back (identity %s)", returned.identity)
        if voice is not None and returned.identity != current:
            with contextlib.suppress(Exception):
                voice.room_io.set_participant(returned.identity)
        current = returned.identity
        session.participant_identity = current


def _agent_session(settings: TutorSettings, data: TutorData) -> AgentSession[TutorData]:
    """The AgentSession that holds the tools' userdata. Voice mode: with the configured providers,
    started in the room. Text-free mode: no models and never started - the tools run only over RPC."""
    if not settings.voice_enabled:
        return AgentSession[TutorData](userdata=data)
    from loqua_tutor.pipeline import build_voice_components

    parts = build_voice_components(settings)
    return AgentSession[TutorData](userdata=data, stt=parts.stt, llm=parts.llm, tts=parts.tts, vad=parts.vad)


async def _start_voice(ctx: JobContext, agent: Tutor, voice: AgentSession[TutorData], identity: str) -> None:
    await voice.start(
        agent,
        room=ctx.room,
        # close_on_disconnect=False: a page refresh must not end the session.
        room_options=room_io.RoomOptions(close_on_disconnect=False, participant_identity=identity),
    )


def _register_rpc(
    ctx: JobContext, session: TutorSession, agent: Tutor, tools_session: AgentSession[TutorData], metrics: JobMetrics
) -> None:
    async def handler(data: rtc.RpcInvocationData) -> str:
        # Only the session's learner (the participant the session follows, across page refreshes)
        # may record progress: anyone else in the room is refused before the payload is read.
        if data.caller_identity != session.participant_identity:
            metrics.rpc_rejected.labels("not_learner").inc()
            log.warning("refused %s call from %s: not the session's learner", RPC_METHOD, data.caller_identity)
            raise rtc.RpcError(RPC_FORBIDDEN, "only the session's learner may call tutor tools")
        return await run_tool_call(agent, tools_session, data.payload)

    ctx.room.local_participant.register_rpc_method(RPC_METHOD, handler)


async def entrypoint(settings: TutorSettings, ctx: JobContext) -> None:
    metrics = job_metrics()
    metrics.know_tools(RECORDING_TOOLS)
    job_id = ctx.job.id
    room_name = ctx.job.room.name
    ctx.log_context_fields = {"agent_id": settings.agent_id, "fields": {"room": room_name, "job": job_id}}
    set_context(agent_id=settings.agent_id, room=room_name, job=job_id)

    await ctx.connect(
        auto_subscribe=AutoSubscribe.AUDIO_ONLY if settings.voice_enabled else AutoSubscribe.SUBSCRIBE_NONE
    )
    timeout = settings.participant_wait_timeout_seconds
    log.info("joined room; waiting up to %.0fs for the learner", timeout)
    try:
        participant = await asyncio.wait_for(ctx.wait_for_participant(kind=list(LEARNER_KINDS)), timeout)
    except TimeoutError:
        metrics.participant_wait_timeouts.inc()
        log.warning("no learner joined within %.0fs; ending the job", timeout)
        ctx.shutdown(reason="participant wait timeout")
        return
    except RuntimeError:
        log.info("room closed before a learner joined")
        return

    learner = learner_from_attributes(participant.identity, participant.attributes, time.time())
    if isinstance(learner, Refusal):
        if learner.missing:
            metrics.missing_user_id.inc()
        else:
            metrics.invalid_attributes.labels(learner.attribute).inc()
        log.error("participant %s %s; ending the job", participant.identity, learner.message())
        ctx.shutdown(reason=f"{'missing' if learner.missing else 'invalid'} {learner.attribute}")
        return

    ids = {"agent_id": settings.agent_id, "session_id": learner.session_id, "user_id": learner.user_id}
    ctx.log_context_fields = {**ids, "fields": {"room": room_name, "job": job_id}}
    set_context(**ids)
    log.info("learner %s joined", participant.identity)

    session = build_session(settings, room_name, learner, metrics)
    _sessions[job_id] = session
    ctx.add_shutdown_callback(_shutdown_fallback(job_id))
    voice: AgentSession[TutorData] | None = None
    try:
        await session.start()
        agent = Tutor(session.context, learner.display_name)
        tools_session = _agent_session(settings, TutorData(session.state, learner.session_id, metrics))
        _register_rpc(ctx, session, agent, tools_session, metrics)
        if settings.voice_enabled:
            voice = tools_session
            await _start_voice(ctx, agent, voice, participant.identity)
        with contextlib.suppress(Exception):
            await ctx.room.local_participant.set_attributes(
                {ATTR_SESSION_ID: learner.session_id, ATTR_STATUS: "active"}
            )
    except Exception:
        session.mark_failed()
        log.exception("session setup failed")
        ctx.shutdown(reason="session setup failed")
        return
    task = asyncio.create_task(_follow_learner(ctx, session, participant.identity, voice), name="follow-learner")
    _background[job_id] = task
    task.add_done_callback(_log_follow_end)
    # Returning keeps the job alive: it ends when LiveKit ends it (dispatch deleted, room
    # closed) or the worker drains; on_session_end then finalizes the session.


def _log_follow_end(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.debug("stopped following the learner: %s", task.exception())


async def _end(job_id: str, reason: str) -> None:
    task = _background.pop(job_id, None)
    if task is not None:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
    session = _sessions.pop(job_id, None)
    if session is not None:
        await session.finalize(reason)


async def on_session_end(settings: TutorSettings, ctx: JobContext) -> None:
    """livekit-agents calls this when the job ends, before it leaves the room."""
    connected = ctx.room.isconnected()
    await _end(ctx.job.id, "job shutdown (dispatch deleted or worker draining)" if connected else "room closed")


def _shutdown_fallback(job_id: str) -> Any:
    async def finalize_on_shutdown(reason: str) -> None:
        await _end(job_id, reason)

    return finalize_on_shutdown

"""The voice pipeline as configuration: STT, LLM and TTS providers chosen by settings.

Providers come from the optional ``livekit-plugins-*`` packages (the ``voice`` extra), imported
only when configured. With no provider set the worker runs in text-free mode: no AgentSession,
the tools are driven over the ``tutor.tool`` RPC method instead.

Plugins must be imported in the worker's main thread before job processes start (livekit-agents
registers them there and preloads them into job processes), hence :func:`check_providers` at start.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from loqua_tutor.settings import TutorSettings

PLUGIN_MODULES = {
    "openai": "livekit.plugins.openai",
    "deepgram": "livekit.plugins.deepgram",
    "cartesia": "livekit.plugins.cartesia",
    "elevenlabs": "livekit.plugins.elevenlabs",
    "silero": "livekit.plugins.silero",
}
# OpenAI's STT is not streaming: it needs a VAD to cut turns.
NEEDS_VAD = {"openai"}
# What each TTS plugin calls its voice argument (Deepgram encodes the voice in the model name).
TTS_VOICE_ARG = {"openai": "voice", "cartesia": "voice", "elevenlabs": "voice_id", "deepgram": None}


class PipelineError(Exception):
    """A configured provider cannot be used; the message names the setting and the package."""


def mode_description(settings: TutorSettings) -> str:
    if not settings.voice_enabled:
        return (
            "text-free mode: no STT/LLM/TTS providers configured (STT_PROVIDER, LLM_PROVIDER, TTS_PROVIDER "
            "are empty); no voice pipeline, tools are callable over the 'tutor.tool' RPC method"
        )
    return f"voice mode: stt={settings.stt_provider} llm={settings.llm_provider} tts={settings.tts_provider}"


def _import(provider: str, setting: str) -> Any:
    module = PLUGIN_MODULES[provider]
    try:
        return importlib.import_module(module)
    except ImportError:
        package = "livekit-plugins-" + provider
        raise PipelineError(
            f"{setting}={provider} needs the package {package} (install the optional extra: "
            f"pip install 'loqua-agents[voice]')"
        ) from None


def check_providers(settings: TutorSettings) -> None:
    """Import every configured plugin now (main thread, before jobs); raise PipelineError if missing."""
    if not settings.voice_enabled:
        return
    _import(settings.stt_provider, "STT_PROVIDER")
    _import(settings.llm_provider, "LLM_PROVIDER")
    _import(settings.tts_provider, "TTS_PROVIDER")
    if settings.stt_provider in NEEDS_VAD:
        _import("silero", "STT_PROVIDER")


@dataclass
class VoiceComponents:
    stt: Any
    llm: Any
    tts: Any
    vad: Any | None


def _kwargs(**values: str) -> dict[str, str]:
    return {k: v for k, v in values.items() if v}


def build_voice_components(settings: TutorSettings) -> VoiceComponents:
    """Instantiate the providers (in the job). API keys come from the plugins' own environment
    variables (OPENAI_API_KEY, DEEPGRAM_API_KEY, ...)."""
    if not settings.voice_enabled:
        raise PipelineError("no voice providers configured")
    stt_mod = _import(settings.stt_provider, "STT_PROVIDER")
    llm_mod = _import(settings.llm_provider, "LLM_PROVIDER")
    tts_mod = _import(settings.tts_provider, "TTS_PROVIDER")
    stt = stt_mod.STT(**_kwargs(model=settings.stt_model))
    llm = llm_mod.LLM(**_kwargs(model=settings.llm_model))
    voice_arg = TTS_VOICE_ARG.get(settings.tts_provider)
    tts_args = _kwargs(model=settings.tts_model)
    if settings.tts_voice and voice_arg:
        tts_args[voice_arg] = settings.tts_voice
    tts = tts_mod.TTS(**tts_args)
    vad = None
    if settings.stt_provider in NEEDS_VAD:
        vad = _import("silero", "STT_PROVIDER").VAD.load()
    return VoiceComponents(stt=stt, llm=llm, tts=tts, vad=vad)

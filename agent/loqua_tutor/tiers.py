"""The tier table (design section 5, from seed 003): one home for what each worker tier is.

The worker reads ``sessions`` (its concurrency cap unless ``MAX_CONCURRENT_SESSIONS`` is set); the
Helm chart's ``tiers`` values carry the same table as their defaults (CPU and memory limits,
sessions), and ``tests/chart/test_render.py`` keeps the two equal.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Tier(enum.StrEnum):
    BASIC_CONVERSATION = "basic-conversation"
    AI_PROCESSING = "ai-processing"
    SPECIALIZED_TUTOR = "specialized-tutor"


@dataclass(frozen=True)
class TierSpec:
    cpu: str  # limit; requests are half unless set
    memory: str
    sessions: int  # concurrent sessions per worker (seed 003's range in the comment)


TIERS: dict[Tier, TierSpec] = {
    Tier.BASIC_CONVERSATION: TierSpec(cpu="2", memory="4Gi", sessions=10),  # 8-10
    Tier.AI_PROCESSING: TierSpec(cpu="4", memory="8Gi", sessions=5),  # 3-5
    Tier.SPECIALIZED_TUTOR: TierSpec(cpu="2", memory="4Gi", sessions=3),  # 2-3
}


def names() -> str:
    return "|".join(t.value for t in TIERS)


def sessions_by_tier() -> str:
    return "|".join(str(spec.sessions) for spec in TIERS.values())

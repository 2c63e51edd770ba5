"""What every handler needs, built once at start and handed to kopf as its memo."""

from __future__ import annotations

from dataclasses import dataclass

from loqua_operator.health import Liveness
from loqua_operator.index import ObjectIndex
from loqua_operator.metrics import OperatorMetrics
from loqua_operator.reconciler import Reconciler
from loqua_operator.refresh import RoomRefreshQueue
from loqua_operator.settings import OperatorSettings
from loqua_operator.sweep import Sweeper


@dataclass
class OperatorContext:
    settings: OperatorSettings
    metrics: OperatorMetrics
    index: ObjectIndex
    reconciler: Reconciler
    sweeper: Sweeper
    refresh: RoomRefreshQueue
    liveness: Liveness

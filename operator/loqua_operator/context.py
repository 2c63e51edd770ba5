"""What every handler needs, built once at start and handed to kopf as its memo."""

from __future__ import annotations

from dataclasses import dataclass

from loqua_operator.dispatcher import Dispatcher
from loqua_operator.kube import Kube
from loqua_operator.livekit_gateway import LiveKitGateway
from loqua_operator.metrics import OperatorMetrics
from loqua_operator.settings import OperatorSettings
from loqua_operator.tracker import LifecycleTracker


@dataclass
class OperatorContext:
    settings: OperatorSettings
    metrics: OperatorMetrics
    gateway: LiveKitGateway
    dispatcher: Dispatcher
    kube: Kube
    tracker: LifecycleTracker

"""Typed keys of the objects an application holds."""

from __future__ import annotations

from aiohttp import web

from loqua_devstack.loqua_api.config import ApiConfig
from loqua_devstack.loqua_api.db import Store
from loqua_devstack.loqua_api.dispatches import Dispatches
from loqua_devstack.loqua_api.faults import FaultInjector

CONFIG = web.AppKey("config", ApiConfig)
STORE = web.AppKey("store", Store)
FAULTS = web.AppKey("faults", FaultInjector)
DISPATCHES = web.AppKey("dispatches", Dispatches)

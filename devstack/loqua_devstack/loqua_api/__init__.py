"""Reference Loqua API: the five agent endpoints of seed 003 over SQLite, plus admin and fault injection.

Start it with ``python -m loqua_devstack.loqua_api --db PATH`` (see ``--help``); the stack mints the
agent's service JWT with :func:`loqua_devstack.loqua_api.tokens.mint_agent_token`.
"""

from __future__ import annotations

from loqua_devstack.loqua_api.app import create_app
from loqua_devstack.loqua_api.config import ApiConfig, ConfigError, load_config
from loqua_devstack.loqua_api.tokens import mint_agent_token, mint_user_token

__all__ = ["ApiConfig", "ConfigError", "create_app", "load_config", "mint_agent_token", "mint_user_token"]

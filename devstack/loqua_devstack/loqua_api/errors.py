"""The one error shape of the API: ``{"error": {"code", "message"}, "timestamp"}``."""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from aiohttp import web

from loqua_devstack.loqua_api.timeutil import now_iso


class ApiError(Exception):
    """Raised by handlers; the error middleware turns it into the JSON error response."""

    def __init__(self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


def status_code_name(status: int) -> str:
    """``503`` → ``SERVICE_UNAVAILABLE``: an error code for statuses without a more specific one."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        return "HTTP_ERROR"
    return phrase.upper().replace(" ", "_").replace("-", "_").replace("'", "")


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}, "timestamp": now_iso()}


def error_response(err: ApiError) -> web.Response:
    return web.json_response(error_body(err.code, err.message), status=err.status, headers=err.headers)


def bad_request(code: str, message: str) -> ApiError:
    return ApiError(400, code, message)

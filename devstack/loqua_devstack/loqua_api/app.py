"""The aiohttp application: middlewares (access log, errors, faults) and route tables."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Handler

from loqua_devstack.loqua_api import admin, rooms, routes
from loqua_devstack.loqua_api.config import ApiConfig
from loqua_devstack.loqua_api.db import Store
from loqua_devstack.loqua_api.dispatches import Dispatches
from loqua_devstack.loqua_api.errors import ApiError, error_response, status_code_name
from loqua_devstack.loqua_api.faults import FaultInjector
from loqua_devstack.loqua_api.keys import CONFIG, DISPATCHES, FAULTS, STORE

log = logging.getLogger("loqua_api")


@web.middleware
async def access_log(request: web.Request, handler: Handler) -> web.StreamResponse:
    """One line per request: method, path, status, duration. Never headers or bodies (tokens)."""
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    finally:
        log.info("%s %s %d %.1fms", request.method, request.path, status, (time.perf_counter() - started) * 1000)


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error leaves in the one error shape."""
    try:
        return await handler(request)
    except ApiError as err:
        return error_response(err)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = "NOT_FOUND" if exc.status == 404 else status_code_name(exc.status)
        headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")}
        return error_response(ApiError(exc.status, code, exc.reason, headers))
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return error_response(ApiError(500, "INTERNAL_ERROR", "internal server error"))


@web.middleware
async def faults(request: web.Request, handler: Handler) -> web.StreamResponse:
    decision = request.app[FAULTS].decide(request.path)
    if decision.latency_seconds:
        await asyncio.sleep(decision.latency_seconds)
    rule = decision.rule
    if rule is not None and rule.status is not None:
        headers = {"Retry-After": str(rule.retry_after)} if rule.retry_after is not None else None
        raise ApiError(rule.status, status_code_name(rule.status), "injected fault", headers)
    return await handler(request)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def create_app(config: ApiConfig, web_root: Path | None = None) -> web.Application:
    """The API over the SQLite file ``config.db_path`` (opened on startup, closed on cleanup);
    with ``web_root``, the built learner page is served from it under ``/learn/``."""
    app = web.Application(middlewares=[access_log, errors, faults])
    app[CONFIG] = config
    app[FAULTS] = FaultInjector()

    async def store_ctx(app: web.Application) -> AsyncIterator[None]:
        app[STORE] = await asyncio.to_thread(Store, config.db_path)
        yield
        app[STORE].close()

    app.cleanup_ctx.append(store_ctx)
    if config.rooms is not None:
        rooms_config = config.rooms

        async def dispatches_ctx(app: web.Application) -> AsyncIterator[None]:
            app[DISPATCHES] = await asyncio.to_thread(Dispatches, rooms_config.namespace, rooms_config.kubeconfig)
            yield
            app[DISPATCHES].close()

        app.cleanup_ctx.append(dispatches_ctx)
    app.router.add_get("/healthz", healthz)
    app.router.add_routes(routes.routes)
    app.router.add_routes(rooms.routes)
    app.router.add_routes(admin.routes)
    if web_root is not None:
        add_learner_page(app, web_root)
    return app


def add_learner_page(app: web.Application, web_root: Path) -> None:
    """``/learn/`` → the page's index.html; its assets beside it. Same origin as the API, so the
    page calls /api/v1/rooms/join without CORS."""
    index = web_root / "index.html"

    async def page(request: web.Request) -> web.FileResponse:
        return web.FileResponse(index, headers={"Cache-Control": "no-store"})

    async def to_page(request: web.Request) -> web.Response:
        raise web.HTTPFound(f"/learn/{request.query_string and '?' + request.query_string}")

    app.router.add_get("/learn", to_page)
    app.router.add_get("/learn/", page)
    app.router.add_static("/learn/assets/", web_root / "assets")

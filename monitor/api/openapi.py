"""HTTP conventions declared once for every route: bearer auth, error answers, 405 ``Allow``.

* The schema declares the bearer security scheme (``Authorize`` in /docs) on every operation
  that needs a token, and the 4xx answers each operation can give that its decorator does not
  name: 401/403 (auth), 404 (an unknown project or path id), 400 (a body that is not JSON),
  413 (``server.max_body_bytes``),
  422 (validation), plus the conflicts listed in :data:`EXTRA_ERRORS`.
* Timestamps: the store keeps naive UTC; :class:`UTCTimestamps` writes every one in a JSON answer
  as RFC 3339 with ``Z``, so clients and the schema's ``date-time`` agree.
* A 405 answer carries ``Allow`` with every method the path accepts (Starlette names only the
  first route that matched the path).
"""

from __future__ import annotations

import contextlib
import json
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path
from starlette.types import Message, Receive, Scope, Send

from tuneloop.monitor.api.deps import MAX_UNIX_SECONDS
from tuneloop.monitor.api.middleware import HttpOnly

SCHEME = "bearerAuth"
PUBLIC_PATHS = {"/healthz", "/readyz", "/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"}
OPTIONAL_AUTH_PATHS = {"/metrics"}  # public while server.metrics_public, role admin otherwise
ERROR_SCHEMA = {
    "title": "Error",
    "type": "object",
    "required": ["detail"],
    "properties": {"detail": {"description": "A message, or for 422 the list of problems with their field path"}},
}
EXTRA_ERRORS: dict[tuple[str, str], dict[int, str]] = {
    ("POST", "/v1/checks"): {409: "Not enough data for a check yet"},
    ("POST", "/v1/projects"): {409: "The project exists"},
    ("POST", "/v1/projects/{project}/adopt"): {409: "The project cannot be adopted yet (too few labels)"},
    ("POST", "/v1/models/{version}/register"): {409: "The version exists or cannot be loaded"},
    ("POST", "/v1/models/{version}/promote"): {409: "The version cannot be promoted"},
    ("POST", "/v1/models/rollback"): {409: "Nothing to roll back to"},
    ("POST", "/v1/retrain/runs/{run_id}/cancel"): {409: "The run is no longer queued or running"},
    ("POST", "/v1/predictions"): {429: "The write queue is full: retry after Retry-After seconds"},
    ("POST", "/v1/feedback"): {429: "The write queue is full: retry after Retry-After seconds"},
}
GENERIC = {
    400: "The body is not valid JSON, or not sent as application/json",
    401: "No token, or an unknown, revoked or malformed one",
    403: "The token's role may not do this",
    404: "Unknown project, or no such item",
    413: "Body larger than server.max_body_bytes",
    422: "Invalid parameters or body (detail names the field path)",
}


def _needs_404(path: str, op: dict[str, Any]) -> bool:
    params = op.get("parameters", [])
    return "{" in path or any(p.get("name") == "project" for p in params) or "requestBody" in op


def _declare(op: dict[str, Any], code: int, description: str) -> None:
    responses = op.setdefault("responses", {})
    if str(code) in responses:
        return
    responses[str(code)] = {"description": description,
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _accept_unix_seconds(schema: dict[str, Any]) -> None:
    """A date-time query parameter also takes Unix seconds (as the server parses it): say so."""
    for branch in schema.get("anyOf", [schema]):
        if branch.get("format") == "date-time" and branch.get("type") == "string":
            options = schema.setdefault("anyOf", [])
            if branch is schema:
                options.append({k: schema.pop(k) for k in ("type", "format") if k in schema})
            options.append({"type": "number", "minimum": 0, "maximum": MAX_UNIX_SECONDS, "description": "Unix seconds"})
            return


def complete_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """Add the security scheme and the undeclared 4xx answers to a generated OpenAPI document."""
    components = schema.setdefault("components", {})
    components.setdefault("securitySchemes", {})[SCHEME] = {
        "type": "http", "scheme": "bearer", "description": "A token from `tuneloop token create` or POST /v1/tokens",
    }
    components.setdefault("schemas", {})["Error"] = ERROR_SCHEMA
    for path, ops in schema.get("paths", {}).items():
        for method, op in ops.items():
            for param in op.get("parameters", []):
                _accept_unix_seconds(param.get("schema", {}))
            if path in PUBLIC_PATHS:
                continue
            if path in OPTIONAL_AUTH_PATHS:
                op["security"] = [{}, {SCHEME: []}]
            else:
                op["security"] = [{SCHEME: []}]
            for code in (401, 403):
                _declare(op, code, GENERIC[code])
            if path in OPTIONAL_AUTH_PATHS:
                continue
            if _needs_404(path, op):
                _declare(op, 404, GENERIC[404])
            if "requestBody" in op:
                _declare(op, 400, GENERIC[400])
                _declare(op, 413, GENERIC[413])
            if op.get("parameters") or "requestBody" in op:
                _declare(op, 422, GENERIC[422])
            for code, description in EXTRA_ERRORS.get((method.upper(), path), {}).items():
                _declare(op, code, description)
    return schema


def install(app: FastAPI) -> None:
    """Serve the completed schema and answer 405 with a full ``Allow``."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = complete_schema(get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    methods_by_path: list[tuple[re.Pattern[str], set[str], bool]] = []

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 405:
            if not methods_by_path:
                methods_by_path.extend(route_methods(app.router.routes))
            allowed = allowed_methods(methods_by_path, request.url.path)
            exc.headers = {**(exc.headers or {}), "Allow": ", ".join(allowed)}
        return await http_exception_handler(request, exc)


def route_methods(routes: list[Any], prefix: str = "") -> list[tuple[re.Pattern[str], set[str], bool]]:
    """(path regex, methods, has parameters) of every route, through included routers (newer FastAPI nests them)."""
    out = []
    for route in routes:
        if hasattr(route, "original_router"):
            out += route_methods(route.original_router.routes, prefix + route.include_context.prefix)
        elif getattr(route, "methods", None):
            regex, _, params = compile_path(prefix + route.path)
            out.append((regex, set(route.methods), bool(params)))
    return out


def allowed_methods(routes: list[tuple[re.Pattern[str], set[str], bool]], path: str) -> list[str]:
    """Methods of the routes for ``path``: a literal path (``/v1/models/rollback``) hides the templates
    it also matches (``/v1/models/{version}``)."""
    matching = [(methods, templated) for regex, methods, templated in routes if regex.fullmatch(path)]
    literal = [methods for methods, templated in matching if not templated]
    return sorted({m for methods in (literal or [m for m, _ in matching]) for m in methods})


# -- timestamps: the store keeps naive UTC; every answer says so with an explicit offset -----------
TIMESTAMP_KEYS = {"ts", "since", "until", "started", "finished", "bucket", "hour", "cutoff", "last_prediction_ts"}
TIMESTAMP_SUFFIXES = ("_ts", "_at", "_start", "_end")
NAIVE_ISO = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?")


def is_timestamp_key(key: str) -> bool:
    return key in TIMESTAMP_KEYS or key.endswith(TIMESTAMP_SUFFIXES)


def mark_utc(value: Any, key: str = "") -> Any:
    """JSON data with every naive timestamp under a timestamp-named key written as RFC 3339 UTC (``...Z``).

    Only keys that name a time are touched, so user text that happens to look like a date is left alone.
    """
    if isinstance(value, dict):
        return {k: mark_utc(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [mark_utc(v, key) for v in value]
    if isinstance(value, str) and key and is_timestamp_key(key) and NAIVE_ISO.fullmatch(value):
        return value.replace(" ", "T", 1) + "Z"
    return value


class UTCTimestamps(HttpOnly):
    """ASGI middleware: JSON answers get :func:`mark_utc` (the one place naive UTC becomes RFC 3339)."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        start: Message | None = None
        chunks: list[bytes] = []

        async def buffered(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                headers = dict(message.get("headers", []))
                if not headers.get(b"content-type", b"").startswith(b"application/json"):
                    await send(message)
                    return
                start = message
                return
            if start is None:  # not JSON: as it comes
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body"):
                return
            body = b"".join(chunks)
            if NAIVE_ISO.search(body.decode("utf-8", "replace")):  # most answers hold no timestamp at all
                with contextlib.suppress(ValueError):  # not JSON after all, or NaN: sent as it is
                    body = json.dumps(mark_utc(json.loads(body)), separators=(",", ":"), ensure_ascii=False,
                                      allow_nan=False).encode()
            headers = [(k, v) for k, v in start.get("headers", []) if k != b"content-length"]
            headers.append((b"content-length", str(len(body)).encode()))
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, buffered)

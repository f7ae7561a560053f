"""Errors in OpenAI's shape, a body-size cap, and handlers that never let a traceback out.

Every error a client sees is ``{"error": {"message", "type", "param", "code"}}`` (the shape the
``openai`` package parses into BadRequestError, NotFoundError, RateLimitError, ...). Messages name
the field and the rule, never echo the input: a 4 MB request does not come back as a 4 MB error.
"""
from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

log = logging.getLogger(__name__)

TYPES = {400: "invalid_request_error", 404: "not_found_error", 405: "invalid_request_error",
         413: "invalid_request_error", 422: "invalid_request_error", 429: "rate_limit_exceeded",
         499: "client_closed_request", 500: "server_error", 503: "server_error", 504: "timeout"}


class APIError(Exception):
    """Raise anywhere in a handler: becomes ``status`` with OpenAI's error JSON."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers


def error_response(status: int, message: str, param: str | None = None, code: str | None = None,
                   headers: dict | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": TYPES.get(status, "invalid_request_error"),
                      "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def _describe(err: dict) -> tuple[str, str | None]:
    """One pydantic error -> (message naming the field and the rule, param). No input echoed."""
    loc = [str(x) for x in err.get("loc", ()) if x != "body"]
    where = ".".join(loc) or "body"
    kind = err.get("type", "")
    if kind in ("json_invalid", "json_type"):
        return "the request body is not valid JSON (UTF-8 encoded, no NaN or Infinity)", None
    if kind == "missing":
        return f"{where} is required", loc[0] if loc else None
    if kind == "extra_forbidden":
        return f"{where} is not a known field", loc[0] if loc else None
    msg = str(err.get("msg", "is invalid"))
    # pydantic's own messages state the rule ("Input should be a valid integer", "... less than or
    # equal to 4"); the ones of our validators start with "Value error, "
    msg = msg.removeprefix("Value error, ")
    return f"{where}: {msg}", loc[0] if loc else None


def install(app: FastAPI, validation_status: int = 400, paths_422: tuple[str, ...] = ()):
    """Give ``app`` OpenAI-shaped errors: validation -> ``validation_status`` (400 as OpenAI does;
    422 on ``paths_422``, FastAPI's habit, kept for /v1/forecast's existing clients), HTTP errors
    keep their code, anything unexpected -> 500 with no detail (logged server-side)."""

    @app.exception_handler(APIError)
    async def _api_error(request: Request, e: APIError):
        return error_response(e.status, e.message, e.param, e.code, e.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, e: RequestValidationError):
        errors = e.errors()
        msg, param = _describe(errors[0]) if errors else ("the request is invalid", None)
        if len(errors) > 1:
            msg += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
        status = 422 if request.url.path in paths_422 else validation_status
        if any(x.get("type") in ("json_invalid", "json_type") for x in errors):
            status = 400
        return error_response(status, msg, param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException):
        msg = e.detail if isinstance(e.detail, str) else "request failed"
        if msg == "There was an error parsing the body":          # FastAPI's words for undecodable bytes
            msg = "the request body is not valid JSON (UTF-8 encoded, no NaN or Infinity)"
        return error_response(e.status_code, msg, headers=getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, e: Exception):
        log.exception("unhandled error on %s", request.url.path)
        return error_response(500, f"internal error ({type(e).__name__}); see the server log")


class BodyLimit:
    """ASGI middleware: refuse request bodies over ``max_bytes`` with 413, by Content-Length up
    front and by counting a chunked body as it arrives (so a huge body is never parsed)."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_big = error_response(413, f"the request body is over the {self.max_bytes}-byte limit")
        for k, v in scope.get("headers", []):
            if k == b"content-length":
                try:
                    n = int(v)
                except ValueError:
                    return await error_response(400, "bad Content-Length header")(scope, receive, send)
                if n > self.max_bytes:
                    return await too_big(scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooBig(413, f"the request body is over the {self.max_bytes}-byte limit")
            return msg

        started = False

        async def tracked_send(msg):
            nonlocal started
            started = started or msg["type"] == "http.response.start"
            await send(msg)

        try:
            await self.app(scope, counted, tracked_send)
        except _TooBig:
            if not started:
                await too_big(scope, receive, send)


class _TooBig(StarletteHTTPException):
    """An HTTPException, so FastAPI's body parsing passes it on (as 413) instead of a 400."""

"""Problem details (RFC 9457): every HTTP error body, produced in one place."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from agent import metrics
from agent.protocol import ErrorCode, ProtocolError

PROBLEM_JSON = "application/problem+json"
log = logging.getLogger(__name__)

# protocol errors that concern one field of the body: named in `errors` like a validation error
_FIELD_OF = {ErrorCode.text_too_long: "text", ErrorCode.unknown_voice: "voice", ErrorCode.duplicate_id: "id",
             ErrorCode.unknown_utterance: "id"}

# protocol error code -> HTTP status, for commands that arrive over HTTP
PROTOCOL_STATUS = {
    ErrorCode.bad_message: 422,
    ErrorCode.text_too_long: 422,
    ErrorCode.unknown_voice: 422,
    ErrorCode.unknown_utterance: 404,
    ErrorCode.duplicate_id: 409,
    ErrorCode.queue_full: 429,
    ErrorCode.rate_limited: 429,
    ErrorCode.engine_error: 503,
    ErrorCode.unauthorized: 403,
}

TITLES = {400: "Bad Request", 401: "Unauthorized", 408: "Request Timeout", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
          409: "Conflict", 413: "Content Too Large", 415: "Unsupported Media Type", 422: "Unprocessable Content",
          429: "Too Many Requests", 500: "Internal Server Error", 503: "Service Unavailable"}


class Problem(Exception):
    def __init__(self, status: int, detail: str, *, code: str | None = None, headers: dict | None = None, **extra):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.code = code
        self.headers = headers or {}
        self.extra = extra


def problem_response(status: int, detail: str, *, code: str | None = None, headers: dict | None = None,
                     **extra) -> JSONResponse:
    body = {"type": f"https://tts-agent.dev/problems/{code or status}", "title": TITLES.get(status, "Error"),
            "status": status, "detail": detail}
    if code:
        body["code"] = code
    body.update(extra)
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_JSON)


def install(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def _problem(_: Request, exc: Problem):
        return problem_response(exc.status, exc.detail, code=exc.code, headers=exc.headers, **exc.extra)

    @app.exception_handler(ProtocolError)
    async def _protocol(_: Request, exc: ProtocolError):
        status = PROTOCOL_STATUS.get(exc.code, 400)
        metrics.ERRORS.labels(exc.code.value).inc()  # as Room.receive counts them for the data channel
        extra = {}
        field = _FIELD_OF.get(exc.code)
        if field is not None:
            extra["errors"] = [{"loc": ["body", field], "msg": exc.message}]
        if exc.id is not None:
            extra["id"] = exc.id
        # a full queue drains as the room speaks: tell a polite client (a chat bridge) when to retry
        headers = {"Retry-After": "1"} if exc.code is ErrorCode.queue_full else None
        return problem_response(status, exc.message, code=exc.code.value, headers=headers, **extra)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError):
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in exc.errors()]
        first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
        field = ".".join(str(p) for p in first["loc"] if p != "body")
        return problem_response(422, f"{field}: {first['msg']}" if field else first["msg"], code="bad_message",
                                errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        detail = str(exc.detail)
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no resource at {request.url.path}"
        elif exc.status_code == 405 and detail == "Method Not Allowed":
            detail = f"{request.method} is not allowed on {request.url.path}"
        return problem_response(exc.status_code, detail, headers=getattr(exc, "headers", None))

    @app.exception_handler(ClientDisconnect)
    async def _gone(_: Request, exc: ClientDisconnect):
        # the client left mid-body: nobody reads this answer, and it is not our error to log
        return problem_response(400, "the client disconnected before sending the whole body")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc,
                  extra={"path": request.url.path})
        return problem_response(500, "internal error")

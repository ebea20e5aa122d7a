"""Errors as RFC 9457 problem details, with the library's error names as their codes.

Every error the service answers with is an ``application/problem+json`` object::

    {"type": "urn:agency-data:problem:not-found", "title": "Not found", "status": 404,
     "detail": "there is no agent 1f0c...", "code": "NotFound", "instance": "/v1/agents/1f0c...",
     "field": null}

``code`` is the class name in :mod:`agency_data.errors` (``NotFound``, ``LeaseLost``, ...), so
a client maps it back to the exception the library would have raised; the most specific class
wins. Errors of the web framework itself (an unknown path, a malformed body) get the code of
the library error they amount to. An unexpected exception is logged with its traceback and
answered with a 500 that names no detail of it.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException, InternalServerException
from litestar.exceptions import ValidationException as FrameworkValidation
from msgspec import ValidationError as MsgspecError

from agency_data import errors
from agency_data.errors import AgencyDataError

__all__ = ["PROBLEM_JSON", "problem_response", "status_of"]

PROBLEM_JSON = "application/problem+json"

_log = logging.getLogger("agency_data.service")

# The HTTP status of each error class; a class not listed takes its nearest listed ancestor's.
_STATUS: dict[type[AgencyDataError], int] = {
    errors.AgencyDataError: 500,
    errors.ValidationError: 422,
    errors.PayloadTooLarge: 413,
    errors.NotFound: 404,
    errors.Conflict: 409,
    errors.ChangesLost: 410,
    errors.AuthenticationFailed: 401,
    errors.PermissionDenied: 403,
    errors.RateLimited: 429,
    errors.LockNotAcquired: 423,
    errors.LockNotOwned: 409,
    errors.BackendUnavailable: 503,
    errors.SerializationFailure: 503,
    errors.QueryTimeout: 504,
    errors.RequestTimeout: 504,
    errors.StorageFull: 507,
    errors.EmbedderError: 502,
}

# What a framework status amounts to in the library's tree.
_FRAMEWORK: dict[int, type[AgencyDataError]] = {
    400: errors.ValidationError,
    401: errors.AuthenticationFailed,
    403: errors.PermissionDenied,
    404: errors.NotFound,
    405: errors.ValidationError,
    409: errors.Conflict,
    413: errors.PayloadTooLarge,
    415: errors.ValidationError,
    422: errors.ValidationError,
    429: errors.RateLimited,
}

# Attributes of an error a client can act on, copied into the problem when present.
_EXTENSIONS = ("field", "entity", "sqlstate", "retry_after", "name", "limit")


def status_of(error_type: type[AgencyDataError]) -> int:
    """The HTTP status the service answers ``error_type`` with."""
    for cls in error_type.__mro__:
        status = _STATUS.get(cls)
        if status is not None:
            return status
    return 500


def problem_response(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """The problem details for ``exc`` raised while serving ``request``."""
    if isinstance(exc, AgencyDataError):
        status = status_of(type(exc))
        code = type(exc).__name__
        detail = str(exc)
        extra = {
            name: _plain(value)
            for name in _EXTENSIONS
            if (value := getattr(exc, name, None)) is not None
        }
        if isinstance(exc, errors.LeaseLost | errors.TaskCancelled):
            extra["task_id"] = str(exc.task_id)
        if isinstance(exc, errors.LeaseLost):
            extra["task_status"] = exc.status
    elif (body_fields := _misread_body(exc)) is not None:
        # The framework reports a body field named like a handler's dependency (``tenant``)
        # as its own failure; it is the caller's input all the same (the handlers'
        # dependencies are objects the service makes, never validated from a request).
        status, code, extra = 422, "ValidationError", {"field": body_fields[0]}
        detail = "the body has fields this operation does not take: " + ", ".join(body_fields)
    elif isinstance(exc, RecursionError):
        # A body nested thousands of levels deep overflows the decoder's stack.
        status, code, extra = 422, "ValidationError", {"field": "body"}
        detail = "the body is nested too deeply to read; send a flatter document"
    elif isinstance(exc, HTTPException):
        # The framework's input validation, and a body it could not parse, are the library's
        # ValidationError: 422 alike, so a client can tell the status from the code.
        refused_input = isinstance(exc, FrameworkValidation) or exc.status_code == 400
        status = 422 if refused_input else exc.status_code
        kind = _FRAMEWORK.get(status, errors.AgencyDataError)
        code = kind.__name__
        detail = _framework_detail(exc)
        extra = {}
    else:
        _log.error("unexpected error serving %s %s", request.method, request.url.path, exc_info=exc)
        status, code, detail, extra = 500, "AgencyDataError", "the service failed unexpectedly", {}
    if status >= 500 and isinstance(exc, AgencyDataError) and status not in (503, 504, 507):
        _log.error("error serving %s %s", request.method, request.url.path, exc_info=exc)
    body = {
        "type": f"urn:agency-data:problem:{_kebab(code)}",
        "title": _title(code),
        "status": status,
        "detail": detail,
        "code": code,
        "instance": request.url.path,
        **extra,
    }
    headers: dict[str, str] = {}
    retry_after = extra.get("retry_after")
    if isinstance(retry_after, int | float):
        headers["Retry-After"] = str(max(1, round(retry_after)))
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="agency-data"'
    return Response(content=body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _misread_body(exc: Exception) -> list[str] | None:
    """The body fields at fault, when ``exc`` is the framework's 500 for a body it refused."""
    cause = exc.__cause__
    if not isinstance(exc, InternalServerException) or not isinstance(cause, MsgspecError):
        return None
    found = getattr(cause, "errors", None)
    if not isinstance(found, list):
        return None
    fields = []
    for error in found:
        where = [str(part) for part in error.get("loc", ())] if isinstance(error, dict) else []
        if not where:
            return None
        fields.append(".".join(where[1:] if where[0] == "data" else where))
    return fields or None


def _framework_detail(exc: HTTPException) -> str:
    detail = str(exc.detail)
    if isinstance(exc, FrameworkValidation) and exc.extra:
        # The framework's own list of what failed: the field and why, without the input.
        parts = []
        for item in exc.extra if isinstance(exc.extra, list) else [exc.extra]:
            if isinstance(item, dict):
                where = item.get("key") or item.get("source") or ""
                parts.append(f"{where}: {item.get('message', '')}".strip(": "))
        if parts:
            detail = f"{detail}: " + "; ".join(parts)
    return detail


def _plain(value: Any) -> Any:
    return value if value is None or isinstance(value, str | int | float | bool) else str(value)


def _kebab(code: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "-", code).lower()


def _title(code: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", " ", code).capitalize()

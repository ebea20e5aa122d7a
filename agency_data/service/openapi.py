"""The OpenAPI 3.1 document: generated from the handlers, then given the error responses.

The framework describes successes from the handlers' types; errors are described here, once:
every operation may answer with an RFC 9457 problem (``Problem``) for the statuses its kind of
route can produce, so a generated client (and a schema-driven fuzzer) knows every response.
"""

from __future__ import annotations

import copy
from collections.abc import Collection
from typing import Any

from agency_data.service.problems import PROBLEM_JSON

__all__ = ["PROBLEM_SCHEMA", "finish_document"]

PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "An RFC 9457 problem; `code` names the library's exception class.",
    "required": ["type", "title", "status", "detail", "code"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "code": {"type": "string"},
        "instance": {"type": "string"},
        "field": {"type": ["string", "null"]},
        "entity": {"type": ["string", "null"]},
        "sqlstate": {"type": ["string", "null"]},
        "retry_after": {"type": "number"},
        "name": {"type": "string"},
        "limit": {"type": "number"},
        "task_id": {"type": "string"},
        "task_status": {"type": ["string", "null"]},
    },
    "additionalProperties": True,
}

_REASONS = {
    "400": "The request is malformed",
    "401": "No API key, or one that is not valid",
    "403": "The key's role does not allow this",
    "404": "No such record (or route) for this tenant",
    "405": "The route does not take this method",
    "409": "A version, lease or uniqueness rule did not hold",
    "410": "What the cursor points at is gone",
    "413": "The body is larger than service.max_body_bytes",
    "415": "The body is not JSON",
    "422": "The input was refused",
    "423": "The lock was not granted in time",
    "429": "The key is over its rate limit",
    "500": "The service failed",
    "502": "A collection's embedder failed",
    "503": "A server the service needs does not answer",
    "504": "The request ran past its time limit",
    "507": "The database server's disk is full",
}
_EVERY = ["400", "404", "405", "413", "415", "422", "500", "503", "504"]
_AUTHENTICATED = ["401", "403", "409", "410", "423", "429", "502", "507"]


def finish_document(document: dict[str, Any], public: Collection[str]) -> dict[str, Any]:
    """``document`` with every operation's error responses set to problems; the ``public``
    paths need no key."""
    doc = copy.deepcopy(document)
    public = {*public, *_document_routes(doc)}
    doc.setdefault("components", {}).setdefault("schemas", {})["Problem"] = PROBLEM_SCHEMA
    problem = {
        "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }
    for path, item in doc.get("paths", {}).items():
        for operation in item.values():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            if path in public:
                operation["security"] = []
            guarded = path not in public
            responses = operation["responses"]
            for status in list(responses):
                if status[0] in "45":
                    del responses[status]
            for status in _EVERY + (_AUTHENTICATED if guarded else []):
                responses[status] = {"description": _REASONS[status], **problem}
    return doc


_DOCUMENT_TYPE = "application/vnd.oai.openapi+json"


def _document_routes(doc: dict[str, Any]) -> list[str]:
    """The framework's routes that serve this document (those under the prefix of the path
    answering ``application/vnd.oai.openapi+json``), described as they answer: public (the gate
    skips them), the document a JSON object rather than a string; their catch-all, which only
    ever answers 404, left out. Returns their paths."""
    paths: dict[str, Any] = doc.get("paths", {})
    prefix = None
    for path, item in paths.items():
        ok = item.get("get", {}).get("responses", {}).get("200", {})
        content = ok.get("content", {})
        if _DOCUMENT_TYPE in content:
            content[_DOCUMENT_TYPE]["schema"] = {"type": "object"}
            prefix = path.rsplit("/", 1)[0]
    if not prefix:
        return []
    mine = [p for p in paths if p == prefix or p.startswith(prefix + "/")]
    for path in mine:
        if "{" in path:
            del paths[path]
    return [p for p in mine if p in paths]

"""The committed ``openapi.json`` is the service's document, and the document is valid OpenAPI 3.1.

Generated clients (clients/typescript) are built from the committed file: a change to the API
that is not regenerated there would go unnoticed by them, so a stale file fails here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import jsonschema_rs
import pytest
import schemathesis

from agency_data.service import openapi_document
from tests.service_support import Service

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "openapi.json"
REGENERATE = "regenerate it: agency-data openapi -o openapi.json (from the repository's root)"


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return openapi_document()


def test_the_committed_document_is_the_services(document: dict[str, Any]) -> None:
    assert COMMITTED.exists(), f"openapi.json is missing; {REGENERATE}"
    committed = json.loads(COMMITTED.read_text())
    if committed != document:
        old, new = set(committed.get("paths", {})), set(document.get("paths", {}))
        raise AssertionError(
            f"openapi.json differs from the service's document (paths added: "
            f"{sorted(new - old)}, removed: {sorted(old - new)}); {REGENERATE}"
        )


def test_the_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    assert document["openapi"].startswith("3.1.")
    # Schemathesis checks the document against the OpenAPI 3.1 meta-schema.
    schemathesis.openapi.from_dict(document).validate()
    # ... which leaves each schema object free-form: they are JSON Schema 2020-12, checked here.
    for name, schema in document["components"]["schemas"].items():
        try:
            jsonschema.Draft202012Validator.check_schema(schema)
        except jsonschema.SchemaError as exc:
            raise AssertionError(f"components.schemas.{name}: {exc.message}") from None


def test_operation_ids_are_unique_and_every_error_is_a_problem(document: dict[str, Any]) -> None:
    seen: dict[str, str] = {}
    for path, item in document["paths"].items():
        for method, operation in item.items():
            op_id = operation["operationId"]
            assert op_id not in seen, f"{method} {path} and {seen[op_id]} share {op_id}"
            seen[op_id] = f"{method} {path}"
            for status, response in operation["responses"].items():
                if status[0] in "45":
                    content = response["content"]
                    assert list(content) == ["application/problem+json"], (method, path, status)


def test_the_validator_catches_a_broken_document(document: dict[str, Any]) -> None:
    broken = json.loads(json.dumps(document))
    broken["paths"]["/v1/agents"]["get"]["responses"] = "none"
    with pytest.raises(jsonschema_rs.ValidationError, match=r"\"none\" is not of type"):
        schemathesis.openapi.from_dict(broken).validate()


async def test_what_the_document_calls_public_answers_without_a_key(service: Service) -> None:
    served = await service.client.get("/schema/openapi.json")
    assert served.status_code == 200
    document = served.json()
    assert document == json.loads(COMMITTED.read_text())
    public = [
        path
        for path, item in document["paths"].items()
        if item.get("get", {}).get("security") == [] and "{" not in path
    ]
    assert {"/health", "/ready", "/metrics", "/schema", "/schema/openapi.json"} <= set(public)
    for path in public:
        response = await service.client.get(path)
        assert response.status_code == 200, (path, response.status_code, response.text[:200])
    # ... and what it does not call public needs a key.
    assert (await service.client.get("/v1/agents")).status_code == 401

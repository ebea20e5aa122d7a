"""``agency-data keys create|issued|revoke`` and ``agency-data serve``, run as a user would."""

from __future__ import annotations

import signal
import socket
import subprocess
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from agency_data.cli import app
from tests.conftest import DatabaseDsn
from tests.test_cli import CLI, agency_data, cli_env

pytestmark = pytest.mark.timeout(180)


def test_keys_are_shown_once_listed_without_secrets_and_revoked(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    opts = {"dsn": database, "redis_url": redis_url, "tmp_path": tmp_path}
    made = agency_data(
        "keys", "create", "--tenant", "acme", "--role", "read-only", "--name", "ci", **opts
    )
    assert made.returncode == 0, made.stderr
    secret = made.stdout.strip()
    assert secret.startswith("adk_")
    assert "not shown again" in made.stderr
    key_id = secret.split(".")[1]
    listed = agency_data("keys", "issued", "--tenant", "acme", **opts)
    assert listed.returncode == 0, listed.stderr
    assert key_id in listed.stdout
    assert "read-only" in listed.stdout
    assert secret.split(".")[2] not in listed.stdout
    revoked = agency_data("keys", "revoke", key_id, **opts)
    assert revoked.returncode == 0, revoked.stderr
    assert f"revoked API key {key_id}" in revoked.stdout
    assert key_id in agency_data("keys", "issued", "--revoked", **opts).stdout
    # Bad input: a clear error line and exit code 2, no traceback.
    for args in (
        ("keys", "create", "--tenant", "no spaces", "--role", "admin"),
        ("keys", "revoke", "0000000000000000"),
    ):
        result = agency_data(*args, **opts)
        assert result.returncode == 2, result.stdout + result.stderr
        assert "error:" in result.stderr
        assert "Traceback" not in result.stderr


def test_serve_answers_with_a_key_until_interrupted(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    opts = {"dsn": database, "redis_url": redis_url, "tmp_path": tmp_path}
    secret = agency_data("keys", "create", "--tenant", "acme", "--role", "read-write", **opts)
    key = secret.stdout.strip()
    process = subprocess.Popen(
        [*CLI, "serve", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(database, redis_url, tmp_path),
    )
    try:
        assert process.stdout is not None
        lines = [process.stdout.readline() for _ in range(2)]
        assert lines[0].strip() == "ready", lines
        url = lines[1].split(":", 1)[1].strip()
        with httpx.Client(base_url=url) as client:
            assert client.get("/health").json() == {"status": "ok"}
            assert client.get("/v1/agents").status_code == 401
            headers = {"Authorization": f"Bearer {key}"}
            created = client.post("/v1/agents", json={"name": "a", "type": "t"}, headers=headers)
            assert created.status_code == 201, created.text
            assert created.json()["tenant_id"] == "acme"
    finally:
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    assert process.returncode == 0, out + err
    assert key not in out + err


def test_serve_on_a_port_in_use_is_a_clear_error(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    # In this process (the command's own code, without a process's start): exit 2, one line.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(
            app, ["serve", "--port", str(port)], env=cli_env(database, redis_url, tmp_path)
        )
    assert result.exit_code == 2, result.output
    assert "cannot listen" in result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_openapi_prints_the_document(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["openapi", "-o", str(tmp_path / "doc.json")])
    assert result.exit_code == 0, result.output
    assert '"openapi": "3.1.0"' in (tmp_path / "doc.json").read_text()

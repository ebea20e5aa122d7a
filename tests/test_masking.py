"""Masking: the rules on their own, then on the real servers: the layer's logs (the slow-query
log among them), its errors' texts, and exports of agents, tasks and a collection."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agency_data import DataLayer, DataLayerConfig
from agency_data.errors import ConfigError, NotFound, ValidationError
from agency_data.security.masking import BUILTIN_RULES, Masker, MaskRule, masker_from_config
from tests.conftest import DatabaseDsn, make_config
from tests.test_cli import agency_data

CARD = "4111 1111 1111 1111"  # passes the Luhn check
NOT_A_CARD = "4111 1111 1111 1112"  # does not
KEY = "sk-live-" + "a1B2c3D4e5F6g7H8i9J0"


def default_masker() -> Masker:
    return masker_from_config(DataLayerConfig().masking)


def test_the_named_rules() -> None:
    mask = default_masker().text
    assert mask("write to alice.smith+x@mail.example.org now") == "write to [email] now"
    assert mask(f"card {CARD}, not {NOT_A_CARD}") == f"card [card], not {NOT_A_CARD}"
    assert mask("4111111111111111") == "[card]"
    assert mask(f"key={KEY}") == "key=[api_key]"
    assert mask("AKIAABCDEFGHIJKLMNOP and ghp_" + "x" * 36) == "[api_key] and [api_key]"
    assert mask("Authorization: Bearer abcdefghijklmnop1234") == "Authorization: [api_key]"
    assert mask("call +44 20 7946 0958") == "call [phone]"
    assert mask("appelez +33 6 12 34 56 78") == "appelez [phone]"
    # What must stay: ids, timestamps and stream ids, plain numbers.
    kept = "task 7f1e2d3c-0000-4000-8000-123456789012 at 1796484642557-0, 1234567890123 rows"
    assert mask(kept) == kept


@given(st.text(max_size=200))
def test_masking_twice_changes_nothing_more(text: str) -> None:
    masker = default_masker()
    once = masker.text(text)
    assert masker.text(once) == once


@given(
    st.from_regex(r"[a-z]{1,10}@[a-z]{1,10}\.(com|org|io)", fullmatch=True),
    st.text(alphabet=" ,;:()", max_size=5),
)
def test_no_email_survives(email: str, around: str) -> None:
    assert email not in default_masker().text(f"{around}{email}{around}")


def test_paths_hide_values_whatever_they_hold() -> None:
    masker = Masker(
        [BUILTIN_RULES["email"]],
        {"tasks": ["data.customer", "result.items.*.token", "data.absent.deeper"]},
    )
    row = {
        "id": "t1",
        "data": {"customer": {"name": "Alice"}, "note": "mail bob@example.com"},
        "result": {"items": [{"token": "abc", "n": 1}, {"token": "def", "n": 2}]},
    }
    assert masker.row("tasks", row) == {
        "id": "t1",
        "data": {"customer": "[masked]", "note": "mail [email]"},
        "result": {"items": [{"token": "[masked]", "n": 1}, {"token": "[masked]", "n": 2}]},
    }
    assert row["data"]["customer"] == {"name": "Alice"}  # the row itself is left alone
    assert masker.row("agents", row)["data"]["customer"] == {"name": "Alice"}


def test_custom_rules_and_what_config_refuses() -> None:
    config = DataLayerConfig(
        masking={"rules": ["email", {"name": "ticket", "pattern": r"TCK-\d+", "replacement": "#"}]}
    )
    masker = masker_from_config(config.masking)
    assert masker.text("TCK-123 from a@b.io") == "# from [email]"
    for masking, problem in (
        ({"rules": ["ssn"]}, "unknown mask rule 'ssn'"),
        ({"rules": [{"name": "x", "pattern": "("}]}, "not a regular expression"),
        ({"rules": [{"name": "x", "pattern": "a*"}]}, "matches the empty string"),
        ({"paths": {"tasks": ["data..x"]}}, "not a dotted path"),
    ):
        with pytest.raises(ConfigError, match=problem):
            DataLayerConfig(masking=masking)
    assert MaskRule("x", BUILTIN_RULES["email"].pattern, "?").apply("a@b.io") == "?"


async def test_logs_and_errors_are_masked(
    database: DatabaseDsn, redis_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = make_config(database, redis_url, tmp_path, monitoring={"slow_query_ms": 1})
    caplog.set_level(logging.WARNING, logger="agency_data")
    async with DataLayer(config) as dl:
        # The slow-query log keeps identifiers (literals it replaces by ? itself).
        await dl.fetch('SELECT pg_sleep(0.01) AS "alice@example.com"')
        slow = [r.getMessage() for r in caplog.records if r.name == "agency_data.slow_query"]
        assert slow
        assert "[email]" in slow[-1]
        assert "alice@example.com" not in caplog.text
        with pytest.raises(ValidationError) as caught:
            dl.tenant("bob@example.com")
        assert "bob@example.com" not in str(caught.value)
        assert "[email]" in str(caught.value)
        assert "bob@example.com" in caught.value.args[0]  # kept for code that inspects it
        with pytest.raises(NotFound):
            [row async for row in dl.export("no_such_collection")]
    # Closed, the layer masks nothing more.
    assert "bob@example.com" in str(ValidationError("bob@example.com"))


async def test_masking_can_be_switched_off(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    config = make_config(database, redis_url, tmp_path, masking={"errors": False, "logs": False})
    async with DataLayer(config) as dl:
        with pytest.raises(ValidationError) as caught:
            dl.tenant("bob@example.com")
        assert "bob@example.com" in str(caught.value)


async def test_exports_are_masked_unless_asked(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    config = make_config(
        database,
        redis_url,
        tmp_path,
        masking={"paths": {"tasks": ["data.customer"], "notes": ["metadata.ssn"]}},
    )
    async with DataLayer(config) as dl:
        acme = dl.tenant("acme")
        await acme.agents.create("scout", "search", capabilities={"owner": "ann@acme.io"})
        await acme.tasks.create(
            "charge", {"customer": {"name": "Ann"}, "card": CARD, "note": f"key {KEY}"}
        )
        await dl.tenant("other").tasks.create("charge", {"customer": "someone else"})
        await dl.admin.create_collection("notes", dimension=2)
        notes = acme.embeddings.collection("notes")
        await notes.store(
            {
                "entity_type": "doc",
                "entity_id": "1",
                "vector": [0.5, 0.25],
                "content": "reach me at ann@acme.io",
                "metadata": {"ssn": "078-05-1120", "lang": "en"},
            }
        )
        agents = [row async for row in acme.export("agents")]
        assert [a["capabilities"] for a in agents] == [{"owner": "[email]"}]
        (task,) = [row async for row in acme.export("tasks")]
        assert task["data"] == {"customer": "[masked]", "card": "[card]", "note": "key [api_key]"}
        assert "search" not in task  # search columns are left out
        (plain,) = [row async for row in acme.export("tasks", masked=False)]
        assert plain["data"]["card"] == CARD
        (doc,) = [row async for row in acme.export("notes", batch_size=1)]
        assert doc["content"] == "reach me at [email]"
        assert doc["metadata"] == {"ssn": "[masked]", "lang": "en"}
        assert doc["vector"] == [0.5, 0.25]
        assert "content_tsv" not in doc
        for bad, problem in (("", "source must be"), (5, "source must be")):
            with pytest.raises(ValidationError, match=problem):
                [row async for row in acme.export(bad)]  # type: ignore[arg-type]
        with pytest.raises(ValidationError, match="batch_size"):
            [row async for row in acme.export("tasks", batch_size=0)]
        with pytest.raises(ValidationError, match="masked"):
            [row async for row in acme.export("tasks", masked="no")]  # type: ignore[arg-type]


async def test_the_command_line_exports_json_lines(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    async with DataLayer(make_config(database, redis_url, tmp_path)) as dl:
        await dl.tenant("acme").tasks.create("charge", {"card": CARD})

    def run(*args: str) -> list[dict[str, object]]:
        done = agency_data("export", *args, dsn=database, redis_url=redis_url, tmp_path=tmp_path)
        assert done.returncode == 0, done.stderr
        return [json.loads(line) for line in done.stdout.splitlines()]

    assert [row["data"] for row in run("tasks", "--tenant", "acme")] == [{"card": "[card]"}]
    assert [row["data"] for row in run("tasks", "-t", "acme", "--unmasked")] == [{"card": CARD}]
    assert run("tasks", "--tenant", "nobody") == []
    missing = agency_data("export", "nothing", dsn=database, redis_url=redis_url, tmp_path=tmp_path)
    assert missing.returncode == 2
    assert "Traceback" not in missing.stderr

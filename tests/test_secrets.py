"""Secrets never shown: redact_dsn on every DSN form, DSNs checked when the config is built.

Pure unit tests: nothing here starts a server (one test connects to a closed local port).
"""

from __future__ import annotations

import json
import logging
import shlex
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import psycopg
import psycopg_pool
import pydantic
import pytest
from hypothesis import given
from hypothesis import strategies as st
from psycopg.conninfo import conninfo_to_dict

from agency_data import ConfigError, DataLayerConfig
from agency_data.config import PostgresConfig, RedisConfig, redact_dsn, redact_url
from agency_data.errors import BackendUnavailable, PoolTimeout, QueryError
from agency_data.postgres.errors import to_agency_error, translate_errors
from agency_data.postgres.pool import _where, open_pool

SECRET = "s3cret"

# Any password a user could pick (NUL aside: no connection string can carry it).
passwords = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1)
# A password typed into a URL without percent-encoding it (a common mistake).
raw_url_passwords = st.text(
    st.characters(codec="utf-8", exclude_categories=("Zs", "Zl", "Zp", "Cc")), min_size=1
).filter(lambda pw: not any(ch.isspace() for ch in pw))
words = st.from_regex(r"[a-z][a-z0-9_.-]{0,15}", fullmatch=True)


def _libpq_quoted(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace("'", "\\'")
    return f"'{escaped}'"


def _libpq_value(value: str) -> str:
    # psycopg's own rule (make_conninfo): backslash-escape \ and ', quote if there is a space.
    escaped = value.replace("\\", "\\\\").replace("'", "\\'")
    return f"'{escaped}'" if any(ch.isspace() for ch in escaped) else escaped


# Each form: (text before the password, the password as written in the form, text after).
FORMS: dict[str, Callable[[str], tuple[str, str, str]]] = {
    "postgresql url": lambda pw: ("postgresql://app:", quote(pw, safe=""), "@db:5432/agents"),
    "postgres url": lambda pw: ("postgres://app:", quote(pw, safe=""), "@db/agents"),
    "redis url": lambda pw: ("redis://:", quote(pw, safe=""), "@cache:6379/0"),
    "rediss url": lambda pw: ("rediss://user:", quote(pw, safe=""), "@cache:6380/1"),
    "unix url": lambda pw: ("unix://:", quote(pw, safe=""), "@/run/valkey/valkey.sock"),
    "postgresql query": lambda pw: (
        "postgresql://app@db/agents?password=",
        quote(pw, safe=""),
        "&sslmode=require",
    ),
    "postgresql sslpassword query": lambda pw: (
        "postgresql://app@db/agents?sslmode=verify-full&sslpassword=",
        quote(pw, safe=""),
        "",
    ),
    "redis query": lambda pw: ("redis://cache:6379/0?password=", quote(pw, safe=""), ""),
    "unix query": lambda pw: ("unix:///run/valkey.sock?password=", quote(pw, safe=""), "&db=2"),
    "key=value": lambda pw: ("host=db port=5432 password=", _libpq_value(pw), " dbname=agents"),
    "key = 'quoted'": lambda pw: ("host=db password = ", _libpq_quoted(pw), " dbname=agents"),
    "sslpassword key=value": lambda pw: ("sslpassword=", _libpq_value(pw), " host=db"),
}
LIBPQ_FORMS = {
    "postgresql url",
    "postgres url",
    "postgresql query",
    "postgresql sslpassword query",
    "key=value",
    "key = 'quoted'",
    "sslpassword key=value",
}


# --- redact_dsn ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("postgresql://app:pw@db/agents", "postgresql://app:***@db/agents"),
        ("postgres://app:pw@db:5432/agents", "postgres://app:***@db:5432/agents"),
        ("redis://:pw@cache", "redis://:***@cache"),
        ("rediss://user:pw@cache:6380/1", "rediss://user:***@cache:6380/1"),
        ("unix://:pw@/path/valkey.sock", "unix://:***@/path/valkey.sock"),
        (
            "postgresql://db/agents?password=pw&sslmode=require",
            "postgresql://db/agents?password=***&sslmode=require",
        ),
        ("postgresql://db/agents?sslpassword=pw", "postgresql://db/agents?sslpassword=***"),
        ("redis://cache?password=pw", "redis://cache?password=***"),
        ("unix:///s.sock?password=pw", "unix:///s.sock?password=***"),
        ("host=db password=secret dbname=x", "host=db password=*** dbname=x"),
        ("host=db password = 'with spaces \\' quote' x=1", "host=db password = *** x=1"),
        ("sslpassword=pw host=db", "sslpassword=*** host=db"),
        ("PGPASSWORD=pw psql -h db", "PGPASSWORD=*** psql -h db"),
        ("export PGPASSWORD='a'\"'\"'b c' && psql", "export PGPASSWORD=*** && psql"),
        ("AGENCY_DATA_POSTGRESQL__PASSWORD=pw", "AGENCY_DATA_POSTGRESQL__PASSWORD=***"),
        ("{'password': 'pw', 'host': 'db'}", "{'password': '***', 'host': 'db'}"),
        ('{"sslpassword":"pw"}', '{"sslpassword":"***"}'),
        # Unescaped @ and / in a URL password (libpq and urllib split these differently).
        ("postgresql://app:p@ss@db/agents", "postgresql://app:***@db/agents"),
        ("postgresql://app:pa/ss@db/agents", "postgresql://app:***@db/agents"),
        # psycopg's own error text, quoting a DSN it could not parse.
        (
            'missing "=" after "postgresql+psycopg://app:pw@db/x" in connection info string',
            'missing "=" after "postgresql+psycopg://app:***@db/x" in connection info string',
        ),
        ("host=db password='unterminated", "host=db password=***"),
    ],
)
def test_redact_examples(text: str, expected: str) -> None:
    assert redact_dsn(text) == expected
    assert redact_dsn(expected) == expected  # idempotent


@pytest.mark.parametrize(
    "text",
    [
        "",
        "postgresql://app@db:5432/agents",
        "host=db port=5432 dbname=agents user=app sslmode=require",
        "redis://cache:6379/0",
        "unix:///run/valkey.sock?db=2",
        "https://example.com:8080/path?q=1",
        'password authentication failed for user "app"',
        'connection to server at "127.0.0.1", port 1 failed: Connection refused',
        "password='' host=db",
        "the password is not shown",
    ],
)
def test_text_without_secrets_is_unchanged(text: str) -> None:
    assert redact_dsn(text) == text


def test_redact_url_still_works() -> None:
    assert redact_url("postgresql://app:s3cr3t@db:5432/x") == "postgresql://app:***@db:5432/x"
    assert redact_url("postgresql://app@db/x") == "postgresql://app@db/x"


@pytest.mark.parametrize("form", sorted(FORMS))
@given(password=passwords)
def test_every_form_is_redacted(form: str, password: str) -> None:
    before, written, after = FORMS[form](password)
    dsn = f"{before}{written}{after}"
    if form in LIBPQ_FORMS:  # the test data is what libpq really reads
        key = "sslpassword" if "sslpassword" in form else "password"
        assert conninfo_to_dict(dsn)[key] == password
    message = f"connecting with {dsn} failed: timed out"
    expected = f"connecting with {before}***{after} failed: timed out"
    redacted = redact_dsn(message)
    assert redacted == expected
    for secret in (password, written):
        if secret not in expected:  # (a one-letter password may occur in "db", say)
            assert secret not in redacted


@given(password=raw_url_passwords)
def test_unescaped_url_password_is_redacted(password: str) -> None:
    redacted = redact_dsn(f"dsn postgresql://app:{password}@db/agents here")
    assert redacted == "dsn postgresql://app:***@db/agents here"


@given(password=passwords)
def test_shell_assignment_is_redacted(password: str) -> None:
    # Shell quoting differs from libpq's; the value may be over-redacted, never leaked.
    redacted = redact_dsn(f"PGPASSWORD={shlex.quote(password)} psql -h db")
    assert redacted.startswith("PGPASSWORD=***")
    if password not in "PGPASSWORD=*** psql -h db":
        assert password not in redacted


@given(user=words, host=words, db=words, port=st.integers(1, 65535))
def test_dsns_without_passwords_are_unchanged(user: str, host: str, db: str, port: int) -> None:
    for text in (
        f"postgresql://{user}@{host}:{port}/{db}",
        f"host={host} port={port} dbname={db} user={user}",
        f"redis://{host}:{port}/0",
        f"could not connect to {host}:{port}/{db} as {user}",
    ):
        assert redact_dsn(text) == text


@given(text=st.text())
def test_redact_never_raises_and_leaves_plain_text(text: str) -> None:
    redacted = redact_dsn(text)
    if "://" not in text and "password" not in text.casefold():
        assert redacted == text


# --- DSNs validated when the config is built -------------------------------------------------

MALFORMED_POSTGRES_DSNS = [
    f"postgresql+psycopg://app:{SECRET}@db/agents",
    f"mysql://app:{SECRET}@db/agents",
    f"http://app:{SECRET}@db/agents",
    f"POSTGRESQL://app:{SECRET}@db/agents",
    f"postgresql://app:{SECRET}%zz@db/agents",
    f"postgresql://app:{SECRET}%@db/agents",
    f"postgresql://app:{SECRET} x@db/agents",
    f"postgresql://app:{SECRET}@x@db/agents",
    f"postgresql://app:{SECRET}/x@db/agents",
    f"postgresql://db/agents?password={SECRET}&sslmod=require",
    f"postgresql://[::1:{SECRET}/agents",
    f"host=db passwrd={SECRET}",
    f"host=db password='{SECRET}",
    f"host=db password={SECRET} extra",
    f"host=db port={SECRET}",
    f"host=db\x00password={SECRET}",
    SECRET,
    "",
    "   ",
]
VALID_POSTGRES_DSNS = [
    f"postgresql://app:{SECRET}@db:5432/agents",
    "postgres://app@db/agents",
    "postgresql://app:p%40ss%2Fw%25@db/agents?sslmode=require&application_name=agents",
    "postgresql:///agents?host=/var/run/postgresql",
    "postgresql://db1:5432,db2:5433/agents?target_session_attrs=read-write",
    "postgresql://app@[::1]:5432/agents",
    f"host=db port=5432 dbname=agents user=app password={SECRET}",
    "host=db password='with spaces \\' quote' sslmode=prefer",
    f"host=db sslpassword={SECRET} sslcert=/etc/app.crt",
    "dbname=agents",
]
MALFORMED_REDIS_URLS = [
    f"http://:{SECRET}@cache:6379",
    f"valkey://:{SECRET}@cache",
    f"REDIS://:{SECRET}@cache",
    f"redis://:{SECRET}@cache:port/0",
    f"redis://:{SECRET}@cache:99999/0",
    f"redis://:{SECRET}@[::1/0",
    f"redis://cache/0?db={SECRET}",
    f"cache:6379 {SECRET}",
    f" redis://:{SECRET}@cache",
]
VALID_REDIS_URLS = [
    "redis://cache:6379/0",
    f"rediss://user:{SECRET}@cache:6380/1",
    f"redis://:{SECRET}@cache",
    f"redis://cache?password={SECRET}",
    "unix:///run/valkey.sock?db=2",
    f"unix://:{SECRET}@/run/valkey.sock",
]


def _assert_hidden(exc: BaseException, *secrets: str) -> None:
    # Not in the message, nor anywhere down the cause/context chain.
    seen: BaseException | None = exc
    while seen is not None:
        for secret in secrets:
            if secret.strip():
                assert secret not in str(seen)
                assert secret not in repr(seen)
        seen = seen.__cause__ or seen.__context__


@pytest.mark.parametrize("field", ["dsn", "admin_dsn"])
@pytest.mark.parametrize("dsn", MALFORMED_POSTGRES_DSNS)
def test_malformed_postgres_dsn(dsn: str, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        DataLayerConfig(postgresql={field: dsn})
    assert info.value.field == f"postgresql.{field}"
    assert f"postgresql.{field}" in str(info.value)
    assert "postgresql://user:password@host:port/dbname" in str(info.value)
    _assert_hidden(info.value, SECRET, dsn)


@pytest.mark.parametrize(
    ("dsn", "says"),
    [
        (f"postgresql+psycopg://app:{SECRET}@db/x", "scheme is not supported"),
        (f"postgresql://app:{SECRET}%zz@db/x", "invalid percent-escape"),
        (f"postgresql://app:{SECRET}%00@db/x", "%00"),
        (f"postgresql://app:{SECRET} x@db/x", "percent-encode them as %20"),
        (f"host=db passwrd={SECRET}", "unknown connection keyword"),
        (f"postgresql://db/x?passwrd={SECRET}", "unknown connection keyword"),
        (f"host=db password='{SECRET}", "unterminated quoted value"),
        (f"postgresql://app:{SECRET}@x@db/x", "%40"),
        (f"host=db port={SECRET}", "port"),
        (f"{SECRET}", "not a valid connection string"),
        ("", "empty"),
    ],
)
def test_malformed_dsn_says_what_is_wrong(dsn: str, says: str) -> None:
    with pytest.raises(ConfigError) as info:
        DataLayerConfig(postgresql={"dsn": dsn})
    assert says in str(info.value)
    assert SECRET not in str(info.value)


@pytest.mark.parametrize("dsn", VALID_POSTGRES_DSNS)
def test_valid_postgres_dsn(dsn: str) -> None:
    config = DataLayerConfig(postgresql={"dsn": dsn, "admin_dsn": dsn})
    assert config.postgresql.conninfo() == dsn
    assert config.postgresql.admin_conninfo() == dsn


@pytest.mark.parametrize("url", MALFORMED_REDIS_URLS)
def test_malformed_redis_url(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        DataLayerConfig(redis={"url": url})
    assert info.value.field == "redis.url"
    assert "redis://" in str(info.value)
    _assert_hidden(info.value, SECRET, url)


@pytest.mark.parametrize("url", VALID_REDIS_URLS)
def test_valid_redis_url(url: str) -> None:
    config = DataLayerConfig(redis={"url": url})
    assert config.redis.url is not None
    assert config.redis.url.get_secret_value() == url


@given(password=passwords, user=words, host=words, db=words)
def test_any_password_in_a_valid_dsn_is_accepted(
    password: str, user: str, host: str, db: str
) -> None:
    url = f"postgresql://{user}:{quote(password, safe='')}@{host}/{db}"
    pairs = f"host={host} dbname={db} user={user} password={_libpq_value(password)}"
    for dsn in (url, pairs):
        config = PostgresConfig(dsn=dsn)
        assert conninfo_to_dict(config.conninfo())["password"] == password
        assert repr(config) == repr(PostgresConfig(dsn="dbname=other"))


@given(before=st.text(), after=st.text())
def test_a_refused_dsn_is_never_quoted(before: str, after: str) -> None:
    marker = "XS3CRETX"
    for values in (
        {"postgresql": {"dsn": f"{before}{marker}{after}"}},
        {"postgresql": {"dsn": f"postgresql://app:{before}{marker}{after}@db/x"}},
        {"postgresql": {"admin_dsn": f"host=db password={before}{marker}{after}"}},
        {"redis": {"url": f"redis://:{before}{marker}{after}@cache/0"}},
        {"redis": {"url": f"{before}{marker}{after}"}},
    ):
        try:
            DataLayerConfig(**values)
        except ConfigError as exc:
            error = exc
        else:
            continue  # (some texts are valid DSNs)
        assert error.field in ("postgresql.dsn", "postgresql.admin_dsn", "redis.url")
        _assert_hidden(error, marker)


def test_sections_built_directly_hide_the_dsn() -> None:
    with pytest.raises(pydantic.ValidationError) as info:
        PostgresConfig(dsn=f"mysql://app:{SECRET}@db/x")
    assert SECRET not in str(info.value)
    with pytest.raises(pydantic.ValidationError) as redis_info:
        RedisConfig(url=f"http://:{SECRET}@cache")
    assert SECRET not in str(redis_info.value)


# --- through the environment and a TOML file -----------------------------------------------


def test_dsns_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENCY_DATA_POSTGRESQL__DSN", f"host=db user=app password={SECRET}")
    monkeypatch.setenv("AGENCY_DATA_POSTGRESQL__ADMIN_DSN", f"postgresql://own:{SECRET}@db/x")
    monkeypatch.setenv("AGENCY_DATA_REDIS__URL", f"redis://:{SECRET}@cache:6379/0")
    config = DataLayerConfig()
    assert config.postgresql.conninfo() == f"host=db user=app password={SECRET}"
    assert config.postgresql.admin_conninfo() == f"postgresql://own:{SECRET}@db/x"
    assert SECRET not in repr(config)


@pytest.mark.parametrize(
    ("variable", "value", "field"),
    [
        ("AGENCY_DATA_POSTGRESQL__DSN", f"postgresql+psycopg://app:{SECRET}@db/x", "dsn"),
        ("AGENCY_DATA_POSTGRESQL__DSN", f"host=db passwd={SECRET}", "dsn"),
        ("AGENCY_DATA_POSTGRESQL__ADMIN_DSN", f"postgresql://own:{SECRET}%g0@db/x", "admin_dsn"),
        ("AGENCY_DATA_REDIS__URL", f"http://:{SECRET}@cache", "url"),
    ],
)
def test_malformed_dsn_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, field: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as info:
        DataLayerConfig()
    section = "redis" if field == "url" else "postgresql"
    assert info.value.field == f"{section}.{field}"
    _assert_hidden(info.value, SECRET, value)


def test_dsns_from_a_toml_file(tmp_path: Path) -> None:
    path = tmp_path / "agency-data.toml"
    dsn = f"postgresql://app:{SECRET}@db/agents"
    admin = f"host=db user=own password='{SECRET} x'"
    path.write_text(
        f"[postgresql]\ndsn = {json.dumps(dsn)}\nadmin_dsn = {json.dumps(admin)}\n"
        f'[redis]\nurl = "rediss://:{SECRET}@cache:6380/0"\n'
    )
    config = DataLayerConfig.load(path)
    assert config.postgresql.conninfo() == dsn
    assert config.postgresql.admin_conninfo() == admin


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("postgresql", "dsn", f"mysql://app:{SECRET}@db/agents"),
        ("postgresql", "admin_dsn", f"host=db password='{SECRET}"),
        ("redis", "url", f"redis://:{SECRET}@cache:port"),
    ],
)
def test_malformed_dsn_from_a_toml_file(tmp_path: Path, section: str, key: str, value: str) -> None:
    path = tmp_path / "agency-data.toml"
    path.write_text(f"[{section}]\n{key} = {json.dumps(value)}\n")
    with pytest.raises(ConfigError) as info:
        DataLayerConfig.load(path)
    assert info.value.field == f"{section}.{key}"
    _assert_hidden(info.value, SECRET, value)


# --- the config never shows a secret --------------------------------------------------------


def test_config_repr_and_dump_hide_secrets() -> None:
    config = DataLayerConfig(
        postgresql={
            "dsn": f"postgresql://app:{SECRET}@db/agents",
            "admin_dsn": f"host=db user=own password={SECRET}",
            "password": SECRET,
        },
        redis={"url": f"redis://:{SECRET}@cache:6379/0", "password": SECRET},
    )
    for text in (
        repr(config),
        str(config),
        repr(config.postgresql),
        repr(config.redis),
        config.model_dump_json(),
        str(config.model_dump()),
    ):
        assert SECRET not in text


def test_admin_dsn_defaults_to_none() -> None:
    config = DataLayerConfig()
    assert config.postgresql.admin_dsn is None
    assert config.postgresql.admin_conninfo() is None


# --- least-privilege role names ---------------------------------------------------------------


def test_role_defaults_and_overrides() -> None:
    postgresql = DataLayerConfig().postgresql
    assert (postgresql.owner_role, postgresql.app_role, postgresql.readonly_role) == (
        "agency_owner",
        "agency_app",
        "agency_readonly",
    )
    custom = DataLayerConfig(postgresql={"app_role": "svc_rw", "readonly_role": "svc_ro"})
    assert custom.postgresql.app_role == "svc_rw"


@pytest.mark.parametrize("role", ["", "Owner", "1owner", "own-er", "own er", "a" * 64, "x;drop"])
@pytest.mark.parametrize("key", ["owner_role", "app_role", "readonly_role"])
def test_bad_role_names(key: str, role: str) -> None:
    with pytest.raises(ConfigError) as info:
        DataLayerConfig(postgresql={key: role})
    assert info.value.field == f"postgresql.{key}"


def test_roles_must_differ() -> None:
    with pytest.raises(ConfigError, match="three different roles") as info:
        DataLayerConfig(postgresql={"owner_role": "agency_app"})
    assert info.value.field == "postgresql"


# --- driver errors and the pool ---------------------------------------------------------------


@pytest.mark.parametrize(
    "exc",
    [
        psycopg.OperationalError(f"connection failed for postgresql://app:{SECRET}@db/x"),
        psycopg.OperationalError(f"could not connect with host=db password={SECRET}"),
        psycopg.InterfaceError(f"PGPASSWORD={SECRET} was rejected"),
        psycopg.ProgrammingError(f'invalid percent-encoded token: "{SECRET}%zz"'),
        psycopg.ProgrammingError(
            f'missing "=" after "postgresql+psycopg://app:{SECRET}@db/x" in connection info string'
        ),
        psycopg.ProgrammingError(f'unexpected spaces found in "{SECRET} x", use %20'),
        psycopg_pool.PoolTimeout(f"couldn't get a connection to redis://:{SECRET}@x"),
        psycopg_pool.TooManyRequests(f"too many: ?password={SECRET}"),
        RuntimeError(f"password='{SECRET}'"),
    ],
)
def test_translated_driver_errors_hide_passwords(exc: Exception) -> None:
    error = to_agency_error(exc, "opening")
    assert SECRET not in str(error)
    assert str(error).startswith("opening: ")


def test_real_parse_error_is_withheld() -> None:
    with pytest.raises(QueryError) as info, translate_errors("connecting"):
        psycopg.connect(f"postgresql://app:{SECRET}%zz@127.0.0.1:1/db")
    assert SECRET not in str(info.value)
    assert "malformed" in str(info.value)


@pytest.mark.parametrize(
    "dsn",
    [f"postgresql://app:{SECRET}@127.0.0.1:1/db", f"host=127.0.0.1 port=1 password={SECRET}"],
)
def test_failed_connection_logs_and_errors_hide_password(
    dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    # A closed port: libpq's text names host and port only; psycopg logs host/port/hostaddr.
    caplog.set_level(logging.DEBUG, logger="psycopg")
    with pytest.raises(BackendUnavailable) as info, translate_errors("connecting"):
        psycopg.connect(dsn, connect_timeout=2)
    assert "127.0.0.1" in str(info.value)
    _assert_hidden(info.value, SECRET)
    assert caplog.records
    assert SECRET not in caplog.text


@pytest.mark.parametrize(
    "conninfo",
    [
        f"postgresql://app:{SECRET}@db:5433/agents",
        f"host=db port=5433 dbname=agents password={SECRET}",
        f"postgresql+psycopg://app:{SECRET}@db/agents",
        f"postgresql://app:{SECRET}%zz@db/agents",
        f"host=db password='{SECRET}",
        "",
    ],
)
def test_where_never_shows_a_password(conninfo: str) -> None:
    where = _where(conninfo)
    assert SECRET not in where
    if "5433" in conninfo and "+" not in conninfo:
        assert where == "db:5433/agents"


async def test_open_pool_refuses_a_malformed_conninfo_before_connecting() -> None:
    config = PostgresConfig()
    with pytest.raises(ConfigError) as info:
        await open_pool(config, f"postgresql+psycopg://app:{SECRET}@127.0.0.1:1/db")
    _assert_hidden(info.value, SECRET)


def test_pool_timeout_message_is_redacted() -> None:
    error = to_agency_error(psycopg_pool.PoolTimeout("couldn't get a connection after 5 sec"))
    assert isinstance(error, PoolTimeout)
    assert "couldn't get a connection after 5 sec" in str(error)

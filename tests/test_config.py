"""Config loading from each source, precedence, validation errors, and secrets kept out of sight."""

from __future__ import annotations

from pathlib import Path

import pytest

from agency_data import ConfigError, DataLayerConfig
from agency_data.config import ConfigWarning, redact_url


def test_defaults_use_embedded_servers() -> None:
    config = DataLayerConfig()
    assert config.postgresql.is_embedded
    assert config.redis.is_embedded
    assert config.vector.dimension == 768
    assert config.cache.eviction_policy == "lru"
    assert config.migration.table_name == "agency_data_migrations"


def test_keyword_arguments() -> None:
    config = DataLayerConfig(
        postgresql={"host": "db.internal", "port": 6543, "pool_max_size": 30},
        vector={"dimension": 1536, "index_type": "ivfflat", "distance_metric": "inner_product"},
        cache={"default_ttl": 60, "max_memory": "256MB", "eviction_policy": "lfu"},
    )
    assert not config.postgresql.is_embedded
    assert config.postgresql.port == 6543
    assert config.vector.distance_metric == "inner_product"
    assert config.cache.max_memory_bytes == 256 * 1024 * 1024
    assert "host=db.internal" in config.postgresql.conninfo()
    assert "port=6543" in config.postgresql.conninfo()


def test_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENCY_DATA_POSTGRESQL__DSN", "postgresql://app@db/agents")
    monkeypatch.setenv("AGENCY_DATA_CACHE__DEFAULT_TTL", "42")
    monkeypatch.setenv("AGENCY_DATA_REDIS__CLUSTER", "true")
    monkeypatch.setenv("AGENCY_DATA_MIGRATION__DIRECTORIES", '{"myapp": "db/migrations"}')
    config = DataLayerConfig()
    assert config.postgresql.conninfo() == "postgresql://app@db/agents"
    assert config.cache.default_ttl == 42
    assert config.redis.cluster is True
    assert config.migration.directories == {"myapp": Path("db/migrations")}


def test_toml_file(tmp_path: Path) -> None:
    path = tmp_path / "agency-data.toml"
    path.write_text(
        '[postgresql]\ndsn = "postgresql://toml@db/x"\npool_max_size = 25\n'
        '[redis]\nurl = "redis://cache:6379/2"\n'
        '[redis.sentinel]\nmaster_name = "main"\nsentinels = ["s1:26379", "s2:26379"]\n'
        "[vector]\ndimension = 384\n"
    )
    config = DataLayerConfig.load(path)
    assert config.postgresql.pool_max_size == 25
    assert config.vector.dimension == 384
    assert config.redis.sentinel is not None
    assert config.redis.sentinel.sentinels == ["s1:26379", "s2:26379"]


def test_precedence_kwargs_over_env_over_toml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[cache]\ndefault_ttl = 1\nmax_entries = 7\ncompression = true\n")
    monkeypatch.setenv("AGENCY_DATA_CACHE__DEFAULT_TTL", "2")
    monkeypatch.setenv("AGENCY_DATA_CACHE__MAX_ENTRIES", "8")
    config = DataLayerConfig.load(path, cache={"default_ttl": 3})
    assert config.cache.default_ttl == 3  # keyword argument wins
    assert config.cache.max_entries == 8  # environment beats the file
    assert config.cache.compression is True  # the file fills in the rest


def test_config_file_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[vector]\ndimension = 99\n")
    monkeypatch.setenv("AGENCY_DATA_CONFIG_FILE", str(path))
    assert DataLayerConfig().vector.dimension == 99


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"postgresql": {"port": 0}}, "postgresql.port"),
        ({"postgresql": {"pool_min_size": 9, "pool_max_size": 3}}, "postgresql"),
        ({"postgresql": {"pool_timeout": -1}}, "postgresql.pool_timeout"),
        ({"vector": {"dimension": 0}}, "vector.dimension"),
        ({"vector": {"distance_metric": "hamming"}}, "vector.distance_metric"),
        ({"vector": {"index_type": "flat"}}, "vector.index_type"),
        ({"cache": {"eviction_policy": "fifo"}}, "cache.eviction_policy"),
        ({"cache": {"max_memory": "lots"}}, "cache.max_memory"),
        ({"migration": {"table_name": "drop table x;--"}}, "migration.table_name"),
        ({"migration": {"directories": {"agency_data": "x"}}}, "migration"),
        ({"redis": {"sentinel": {"master_name": "m", "sentinels": ["nohost"]}}}, "redis.sentinel"),
        ({"redis": {"db": 99}}, "redis.db"),
        ({"postgresql": {"unknown_setting": 1}}, "postgresql.unknown_setting"),
    ],
)
def test_invalid_values_name_the_field(values: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        DataLayerConfig(**values)
    assert info.value.field == field
    assert field in str(info.value)


def test_invalid_environment_value_names_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENCY_DATA_POSTGRESQL__POOL_MAX_SIZE", "many")
    with pytest.raises(ConfigError, match=r"postgresql\.pool_max_size"):
        DataLayerConfig()


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        DataLayerConfig.load(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[postgresql\ndsn = ")
    with pytest.raises(ConfigError, match="not valid TOML"):
        DataLayerConfig.load(bad)


def test_passwords_never_shown() -> None:
    config = DataLayerConfig(
        postgresql={"dsn": "postgresql://app:hunter2@db/agents", "password": "hunter2"},
        redis={"url": "redis://:hunter2@cache:6379/0", "password": "hunter2"},
    )
    for text in (repr(config), str(config), repr(config.postgresql), config.model_dump_json()):
        assert "hunter2" not in text
    # The secret is still there for the code that needs it.
    assert "hunter2" in config.postgresql.conninfo()


def test_password_not_echoed_in_errors() -> None:
    with pytest.raises(ConfigError) as info:
        DataLayerConfig(postgresql={"password": "hunter2", "port": 99999})
    assert "hunter2" not in str(info.value)
    with pytest.raises(ConfigError) as info:
        DataLayerConfig(redis={"password": ["hunter2"]})
    assert "hunter2" not in str(info.value)


def test_redact_url() -> None:
    assert redact_url("postgresql://app:s3cr3t@db:5432/x") == "postgresql://app:***@db:5432/x"
    assert redact_url("redis://:s3cr3t@cache/0") == "redis://:***@cache/0"
    assert redact_url("postgresql://app@db/x") == "postgresql://app@db/x"


def test_paths_in_a_toml_file_are_relative_to_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "project"
    folder.mkdir()
    path = folder / "agency-data.toml"
    path.write_text(
        "[migration]\n"
        'directories = { myapp = "db/migrations", shared = "/srv/migrations" }\n'
        'backup_dir = "backups"\n'
        "[embedded]\n"
        'data_dir = "../data"\n'
    )
    monkeypatch.chdir(tmp_path)  # anywhere but the file's folder
    config = DataLayerConfig.load(Path("project/agency-data.toml"))
    assert config.migration.directories == {
        "myapp": folder / "db" / "migrations",
        "shared": Path("/srv/migrations"),
    }
    assert config.migration.backup_dir == folder / "backups"
    assert config.embedded.data_dir == folder / ".." / "data"
    # Values from the environment stay as given: relative to the working directory.
    monkeypatch.setenv("AGENCY_DATA_MIGRATION__BACKUP_DIR", "elsewhere")
    assert DataLayerConfig.load(path).migration.backup_dir == Path("elsewhere")


def test_misspelt_environment_section_warns_without_its_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AGENCY_DATA_POSTGRES__DSN", "postgresql://app:hunter2@db/agents")
    with pytest.warns(ConfigWarning) as caught:
        config = DataLayerConfig()
    assert config.postgresql.is_embedded  # ignored, as the warning says
    (warning,) = caught
    message = str(warning.message)
    assert "AGENCY_DATA_POSTGRES__DSN" in message
    assert "postgresql" in message  # the known sections, and the likely one
    assert "hunter2" not in message


def test_backups_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    assert DataLayerConfig().migration.keep_backups == 5
    monkeypatch.setenv("AGENCY_DATA_MIGRATION__KEEP_BACKUPS", "2")
    assert DataLayerConfig().migration.keep_backups == 2
    with pytest.raises(ConfigError, match=r"migration\.keep_backups"):
        DataLayerConfig(migration={"keep_backups": -1})


_BOUNCER = "postgresql://agency_app:hunter2@pgbouncer:6432/agents"
_OWNER = "postgresql://agency_owner:hunter2@db:5432/agents"
_DIRECT = "postgresql://agency_app:hunter2@db:5432/agents"


def test_pgbouncer_settings() -> None:
    config = DataLayerConfig(
        postgresql={"dsn": _BOUNCER, "admin_dsn": _OWNER, "pgbouncer": True, "direct_dsn": _DIRECT}
    )
    assert config.postgresql.pgbouncer is True
    assert config.postgresql.direct_conninfo() == _DIRECT
    assert "hunter2" not in repr(config.postgresql)
    # Without a direct connection for wake-ups it is still a working config (they poll).
    assert (
        DataLayerConfig(
            postgresql={"dsn": _BOUNCER, "admin_dsn": _OWNER, "pgbouncer": True}
        ).postgresql.direct_conninfo()
        is None
    )
    assert DataLayerConfig().postgresql.pgbouncer is False


@pytest.mark.parametrize(
    ("postgresql", "problem"),
    [
        ({"pgbouncer": True}, "needs dsn"),
        ({"dsn": _BOUNCER, "pgbouncer": True}, "needs admin_dsn"),
        ({"host": "pgbouncer", "pgbouncer": True}, "needs admin_dsn"),
        ({"dsn": _BOUNCER, "admin_dsn": _BOUNCER, "pgbouncer": True}, "admin_dsn is the same"),
        (
            {"dsn": _BOUNCER, "admin_dsn": _OWNER, "direct_dsn": _BOUNCER, "pgbouncer": True},
            "direct_dsn is the same",
        ),
        ({"dsn": _DIRECT, "direct_dsn": _DIRECT}, "pgbouncer is false"),
        ({"dsn": _BOUNCER, "admin_dsn": _OWNER, "pgbouncer": True, "direct_dsn": "x=1"}, "direct"),
    ],
)
def test_impossible_pgbouncer_combinations(postgresql: dict[str, object], problem: str) -> None:
    with pytest.raises(ConfigError, match=problem) as info:
        DataLayerConfig(postgresql=postgresql)
    assert info.value.field is not None
    assert info.value.field.startswith("postgresql")
    assert "hunter2" not in str(info.value)

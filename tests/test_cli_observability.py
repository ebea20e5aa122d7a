"""``agency-data up --metrics-port`` and ``agency-data top``, run as a user would, on the real servers."""

from __future__ import annotations

import io
import json
import os
import pty
import queue
import re
import select
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from typing import IO, get_args

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

from agency_data.cli import _common, monitor
from agency_data.observability.statements import Order, StatementStats
from tests.conftest import DatabaseDsn
from tests.test_cli import CLI, agency_data, cli_env

# Every literal is a bind parameter once pg_stat_statements has normalised it; the long
# aliases make the text wider than a terminal.
MARKER_SQL = (
    "SELECT pg_sleep(0.1) AS cli_top_marker, 'cli-secret-literal' AS first_padding_column_name,"
    " 4242 AS second_padding_column_name, 'more' AS third_padding_column_name,"
    " 17 AS fourth_padding_column_name, 'end' AS fifth_padding_column_name"
)


class LineReader:
    """The lines a process writes, read in a thread so that a silent process cannot hang a test."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def next(self, timeout: float = 120.0) -> str:
        """The next line; AssertionError at the end of the output or after ``timeout``."""
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no line within {timeout} s") from None
        assert line is not None, "the output ended"
        return line

    def rest(self) -> list[str]:
        """The lines left, once the process has ended; the stream is closed then."""
        self._thread.join(timeout=30)
        assert not self._thread.is_alive(), "the output did not end"
        self._stream.close()
        lines: list[str] = []
        while (line := self._lines.get_nowait()) is not None:
            lines.append(line)
        return lines


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a scrape, parsed by prometheus_client."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_up_serves_metrics_until_interrupted(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    errors = tmp_path / "up.err"
    with errors.open("w") as err:
        process = subprocess.Popen(
            [*CLI, "up", "--metrics-port", "0"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=cli_env(database, redis_url, tmp_path),
        )
    assert process.stdout is not None
    out = LineReader(process.stdout)
    try:
        lines = [out.next() for _ in range(4)]
        assert lines[0] == "ready", (lines, errors.read_text())
        assert lines[1].startswith("PostgreSQL: ")
        assert lines[2].startswith("Redis:      ")
        found = re.fullmatch(r"Metrics:    (http://127\.0\.0\.1:(\d+)/metrics)", lines[3])
        assert found is not None, lines
        assert int(found.group(2)) != 0  # the port picked, not the 0 asked for
        with urllib.request.urlopen(found.group(1), timeout=30) as response:
            scraped = samples(response.read().decode())
        assert scraped[("agency_data_backend_up", frozenset({("backend", "postgresql")}))] == 1
        assert scraped[("agency_data_backend_up", frozenset({("backend", "redis")}))] == 1
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0, errors.read_text()
        assert "stopping" in out.rest()
        assert "Traceback" not in errors.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
            out.rest()


def test_up_with_the_metrics_port_taken_is_a_clear_error(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = agency_data(
            "up",
            "--metrics-port",
            str(port),
            dsn=database,
            redis_url=redis_url,
            tmp_path=tmp_path,
        )
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"error: cannot serve metrics on 127.0.0.1:{port}" in result.stderr
    assert "choose another port" in result.stderr
    assert "ready" not in result.stdout
    assert "Traceback" not in result.stderr


def usage_error(result: subprocess.CompletedProcess[str]) -> str:
    """The message of a refused command line, without the box drawn around it."""
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", result.stderr).split())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["up", "--metrics-host", "0.0.0.0"], "serves nothing without --metrics-port"),
        (["up", "--metrics-port", "70000"], "'--metrics-port': Input should be less than or"),
        (["top", "--limit", "0"], "'--limit' / '-n': Input should be greater than or equal to 1"),
        (["top", "-n", "1001"], "Input should be less than or equal to 1000"),
        (["top", "--order", "fastest"], "'fastest' is not one of 'total', 'mean', 'calls', 'rows'"),
    ],
)
def test_bad_options_are_refused_before_connecting(
    args: list[str], message: str, tmp_path: Path
) -> None:
    # No server is configured nor started: the refusal comes first.
    result = agency_data(*args, tmp_path=tmp_path, AGENCY_DATA_EMBEDDED__DATA_DIR=str(tmp_path))
    assert message in usage_error(result)
    assert not (tmp_path / "postgres").exists()


def enable_statements(database: DatabaseDsn) -> None:
    with psycopg.connect(database.superuser, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        conn.execute("GRANT pg_read_all_stats TO agency_owner")
        # Empty the view first: see enable_statements in test_observability.py.
        conn.execute("SELECT pg_stat_statements_reset()")


def on_a_terminal(args: list[str], env: dict[str, str]) -> str:
    """The command's stdout when it is a terminal (a pty), without colours; it must succeed."""
    leader, follower = pty.openpty()
    try:
        process = subprocess.Popen(
            [*CLI, *args],
            stdin=subprocess.DEVNULL,
            stdout=follower,
            stderr=subprocess.PIPE,
            env={**env, "NO_COLOR": "1"},
        )
        os.close(follower)
        chunks: list[bytes] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 1.0)
            if not ready:
                if process.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the child closed its terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        _, err = process.communicate(timeout=60)
    finally:
        os.close(leader)
    assert process.returncode == 0, err.decode()
    text = b"".join(chunks).decode().replace("\r\n", "\n")
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)


def test_top_lists_a_slow_statement(database: DatabaseDsn, redis_url: str, tmp_path: Path) -> None:
    enable_statements(database)
    with psycopg.connect(database) as conn:  # the application role, as the app would
        conn.execute(MARKER_SQL)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return agency_data(*args, dsn=database, redis_url=redis_url, tmp_path=tmp_path)

    result = run("top", "--limit", "50", "--json")
    assert result.returncode == 0, result.stderr
    listed = [StatementStats.model_validate(item) for item in json.loads(result.stdout)]
    marked = [s for s in listed if "cli_top_marker" in s.query]
    assert len(marked) == 1, [s.query for s in listed]
    (marker,) = marked
    assert marker.calls == 1
    assert marker.mean_ms >= 100
    assert 0 < marker.share <= 1
    assert marker.query.startswith("SELECT pg_sleep(")
    assert "cli-secret-literal" not in result.stdout
    # In the statements' text: the numbers of the report (times, shares) may hold any digits.
    assert not [s.query for s in listed if "4242" in s.query]
    assert [s.total_ms for s in listed] == sorted((s.total_ms for s in listed), reverse=True)

    by_calls = run("top", "--order", "calls", "-n", "3", "--json")
    assert by_calls.returncode == 0, by_calls.stderr
    calls = [item["calls"] for item in json.loads(by_calls.stdout)]
    assert 0 < len(calls) <= 3
    assert calls == sorted(calls, reverse=True)

    # Piped: the whole text on the statement's one line, the figures before it.
    table = run("top", "--limit", "1000")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert re.split(r"  +", lines[0]) == [
        "calls",
        "total ms",
        "mean ms",
        "p95~ ms",
        "rows",
        "share %",
        "query",
    ]
    (row,) = [line for line in lines if "cli_top_marker" in line]
    *figures, query = row.split(maxsplit=6)
    assert query == marker.query
    assert figures[0] == "1"
    assert float(figures[2]) >= 100  # mean ms
    # Each run of the command adds its own statements to the total: the share moves.
    assert 0 < float(figures[5]) <= 100

    # On a terminal: each statement on one line of the screen, its text cut to fit.
    screen = on_a_terminal(
        ["top", "--limit", "50"], cli_env(database, redis_url, tmp_path, COLUMNS="100")
    )
    assert max(len(line) for line in screen.splitlines()) <= 100
    (shown,) = [line for line in screen.splitlines() if "cli_top_marker" in line]
    assert "…" in shown
    assert marker.query not in screen


def test_top_on_the_embedded_server_needs_no_setup(data_dir: Path, tmp_path: Path) -> None:
    # The embedded server keeps the view in its own postgres database, ready from the start.
    result = agency_data(
        "top",
        "--order",
        "calls",
        "--json",
        "--data-dir",
        str(data_dir),
        tmp_path=tmp_path,
        AGENCY_DATA_EMBEDDED__POSTGRES_SETTINGS='{"fsync": "off"}',
    )
    assert result.returncode == 0, result.stdout + result.stderr
    listed = [StatementStats.model_validate(item) for item in json.loads(result.stdout)]
    assert listed  # connecting alone ran statements
    assert [s.calls for s in listed] == sorted((s.calls for s in listed), reverse=True)
    assert not (data_dir / "postgres" / "postmaster.pid").exists()  # stopped after


def test_top_without_pg_stat_statements_says_how_to_enable_it(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    # A fresh database: the server preloads the module, but the view was never created here.
    result = agency_data("top", dsn=database, redis_url=redis_url, tmp_path=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith("error: pg_stat_statements is not set up")
    assert "CREATE EXTENSION pg_stat_statements" in result.stderr
    assert "shared_preload_libraries" in result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr


def test_the_orders_are_the_librarys() -> None:
    assert [order.value for order in monitor.StatementOrder] == list(get_args(Order))


def stats(query: str, calls: int = 3) -> StatementStats:
    return StatementStats(
        query=query,
        calls=calls,
        total_ms=1234.56,
        mean_ms=411.52,
        p95_ms=600.004,
        max_ms=700.0,
        rows=calls,
        share=0.25,
    )


def test_rows_keep_the_whole_text_unless_a_width_is_given() -> None:
    long = "SELECT " + ", ".join(f"column_number_{i}" for i in range(40)) + " FROM t"
    (whole,) = monitor.statement_rows([stats(long)], None)
    assert whole == ["3", "1234.6", "411.52", "600.00", "3", "25.0", long]
    (cut,) = monitor.statement_rows([stats(long)], 80)
    assert cut[:-1] == whole[:-1]
    assert cut[-1].endswith("…")
    assert long.startswith(cut[-1][:-1])
    # However narrow the terminal, some of the text stays.
    (narrow,) = monitor.statement_rows([stats(long)], 10)
    assert len(narrow[-1]) >= 16


@pytest.mark.parametrize("width", [80, 120])
def test_a_terminal_table_gives_each_statement_one_line(
    width: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = io.StringIO()
    screen = Console(file=out, width=width, force_terminal=True, color_system=None)
    monkeypatch.setattr(_common, "console", screen)
    monkeypatch.setattr(_common, "plain", lambda: False)
    queries = [
        "SELECT " + ", ".join(f"column_number_{i}" for i in range(40)) + " FROM t",
        "SELECT 1",
    ]
    monitor.print_statements([stats(queries[0], 12345), stats(queries[1])])
    lines = out.getvalue().splitlines()
    assert max(len(line) for line in lines) <= width
    # Borders, the header, its rule, and a line for each statement: nothing folded.
    assert len(lines) == 6, out.getvalue()
    assert "SELECT 1" in lines[4]
    assert "12345" in lines[3]


def test_an_empty_list_is_a_header_and_a_note(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(_common, "plain", lambda: True)
    monitor.print_statements([])
    out, err = capsys.readouterr()
    assert re.split(r"  +", out.strip()) == list(monitor.HEADERS)
    assert err == "note: no statement recorded for this database since the last reset\n"


# -- health: pool, disk, replication, alerts ------------------------------------------------------


def test_health_shows_pool_disk_replication_and_alerts(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    watched = {"AGENCY_DATA_MONITORING__DISK_PATHS": json.dumps({"scratch": str(tmp_path)})}
    text = agency_data("health", dsn=database, redis_url=redis_url, tmp_path=tmp_path, **watched)
    assert text.returncode == 0, text.stderr
    assert re.search(r"^connections: \d+ of \d+ in use \(every client\)$", text.stdout, re.M)
    assert re.search(r"^disk \(scratch\): \d+% free, [\d.]+ of [\d.]+ GiB$", text.stdout, re.M)
    as_json = agency_data(
        "health", "--json", dsn=database, redis_url=redis_url, tmp_path=tmp_path, **watched
    )
    report = json.loads(as_json.stdout)
    assert report["disk"]["scratch"]["total_bytes"] > report["disk"]["scratch"]["free_bytes"] > 0
    assert report["replication"] == {"standby": False, "lag_seconds": None, "replicas": {}}
    assert report["alerts"] == []
    assert report["components"]["postgresql"]["details"]["max_size"] >= 1
    server = report["components"]["postgresql"]["details"]["server_connections"]
    assert 1 <= server["used"] <= server["max"]

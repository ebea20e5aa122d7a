"""The shipped Prometheus rules and Grafana dashboard (``deploy/``).

``promtool`` (Debian's ``prometheus`` package; ``.ci/run`` installs it) checks the rules and
runs their unit tests; without it these fail on CI and skip elsewhere. The rule names must be
the ones the library's in-process alerts use, and every metric the rules and the dashboard
query must be one the layer exposes, as seen in a real scrape after a workload.

The files are read without a YAML library (PyYAML is not a dependency): rule names and metric
names are found by pattern, and promtool, which does parse them, vouches for the structure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agency_data import DataLayer, NotFound

ROOT = Path(__file__).resolve().parent.parent
RULES = "deploy/prometheus/agency-data-rules.yml"
RULE_TESTS = "deploy/prometheus/agency-data-rules.test.yml"
DASHBOARD = ROOT / "deploy/grafana/agency-data-dashboard.json"

# Gauges published by the recall probe and the index sampler once a collection has been
# probed; a fresh layer may not show them in its first scrape.
PROBED_GAUGES = {"agency_data_vector_recall_estimate", "agency_data_vector_dead_rows_ratio"}
SEVERITIES = {
    "AgencyDataBackendDown": "critical",
    "AgencyDataDiskSpaceLow": "critical",
    "AgencyDataVectorIndexInvalid": "critical",
}

# What the dashboard must show: a panel of this title whose queries read this metric.
REQUIRED_PANELS = {
    "Operation rate by operation": "agency_data_query_duration_seconds_count",
    "p95 latency by operation": "agency_data_query_duration_seconds_bucket",
    "Errors by operation": "agency_data_query_duration_seconds_count",
    "Pool connections": "agency_data_pool_connections",
    "Cache hit rate": "agency_data_cache_requests_total",
    "Vector search p95 by collection and kind": "agency_data_vector_search_duration_seconds_bucket",
    "Recall estimate": "agency_data_vector_recall_estimate",
    "Index size": "agency_data_vector_index_bytes",
    "Tasks by status": "agency_data_tasks",
    "Oldest pending task age": "agency_data_tasks_oldest_pending_age_seconds",
    "Backends up": "agency_data_backend_up",
    "Slow queries": "agency_data_slow_queries_total",
    "Disk free": "agency_data_disk_free_bytes",
    "Change feed fill": "agency_data_changes_retained",
    "Lost change consumers": "agency_data_change_consumers_lost",
    "Oldest unsent outbox message age": "agency_data_outbox_oldest_unsent_seconds",
}


def promtool() -> str:
    """The promtool binary; a failure on CI, a skip elsewhere, when it is missing."""
    found = shutil.which("promtool")
    if found is None:
        message = "promtool is not installed: apt-get install prometheus (.ci/run does)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


def run_promtool(*args: str) -> str:
    """Run promtool from the repository root; its output, after asserting it succeeded."""
    result = subprocess.run(
        [promtool(), *args], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"promtool {' '.join(args)} failed:\n{output}"
    return output


def rule_names() -> list[str]:
    """The alert names of the rules file, in order."""
    text = (ROOT / RULES).read_text()
    return re.findall(r"^\s*- alert: (\S+)\s*$", text, re.MULTILINE)


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel that is not a row, including those folded inside rows."""
    found: list[dict[str, Any]] = []
    for panel in board["panels"]:
        if panel["type"] == "row":
            found.extend(panel.get("panels", []))
        else:
            found.append(panel)
    return found


def expressions(panel: dict[str, Any]) -> list[str]:
    return [target["expr"] for target in panel.get("targets", [])]


_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
# Not preceded by a digit or dot, so exponents (1e9) and durations (5m) are not names.
_WORD = re.compile(r"(?<![\w.$])[A-Za-z_:][A-Za-z0-9_:]*")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (Grafana variables allowed).

    Strings, label matchers, ranges and grouping clauses go first (they hold label names and
    variables); what is left is functions and aggregations (followed by a parenthesis),
    keywords, numbers and metric names.
    """
    for pattern in (_STRINGS, _MATCHERS, _RANGES, _GROUPING):
        expr = pattern.sub(" ", expr)
    names: set[str] = set()
    for match in _WORD.finditer(expr):
        if expr[match.end() :].lstrip().startswith("("):
            continue
        if match.group().lower() in _KEYWORDS:
            continue
        names.add(match.group())
    return names


def test_metric_names_finds_only_the_selected_metrics() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (operation, le) (rate(agency_data_x_bucket{instance=~"$i",'
        ' outcome="ok"}[$__rate_interval]))) > 1e9 and on (instance) up offset 5m or vector(0)'
    )
    assert metric_names(expr) == {"agency_data_x_bucket", "up"}


# -- promtool ------------------------------------------------------------------------------------


def test_promtool_checks_the_rules() -> None:
    output = run_promtool("check", "rules", RULES)
    assert f"SUCCESS: {len(rule_names())} rules found" in output


def test_promtool_unit_tests_of_the_rules_pass() -> None:
    output = run_promtool("test", "rules", RULE_TESTS)
    assert "SUCCESS" in output


def test_the_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    # promtool parses PromQL only inside rule files: each query becomes a recording rule, with
    # Grafana's variables replaced by what Grafana would put there. JSON is valid YAML.
    rules = []
    for number, panel in enumerate(panels(dashboard())):
        for position, expr in enumerate(expressions(panel)):
            query = expr.replace("$__rate_interval", "1m").replace("$instance", ".*")
            rules.append({"record": f"dashboard:panel_{number}_{position}", "expr": query})
    assert len(rules) >= len(REQUIRED_PANELS)
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    output = run_promtool("check", "rules", str(path))
    assert f"SUCCESS: {len(rules)} rules found" in output


# -- the rules file ------------------------------------------------------------------------------


def test_the_rule_names_are_the_in_process_alerts() -> None:
    from agency_data.observability.alerts import RULE_NAMES

    names = rule_names()
    assert len(names) == len(set(names)), f"a rule name appears twice: {names}"
    assert sorted(names) == sorted(RULE_NAMES)


def test_the_slow_operation_rule_spares_what_the_in_process_alert_spares() -> None:
    from agency_data.observability.alerts import _UNBUDGETED

    # The same operations have no p95 budget in Prometheus as in the layer's own alert.
    assert f'operation!~"{_UNBUDGETED.pattern}"' in (ROOT / RULES).read_text()


def test_every_rule_has_a_severity_a_summary_and_a_description() -> None:
    text = (ROOT / RULES).read_text()
    assert re.findall(r"^  - name: (\S+)\s*$", text, re.MULTILINE) == ["agency-data"]
    # Each rule's text runs from its "- alert:" line to the next one.
    blocks = re.split(r"^\s*- alert: ", text, flags=re.MULTILINE)[1:]
    assert len(blocks) == len(rule_names()) == 13
    for block in blocks:
        name = block.split()[0]
        severity = SEVERITIES.get(name, "warning")
        assert f"severity: {severity}\n" in block, f"{name} should be {severity}"
        assert "summary: " in block, name
        assert "description: " in block, name


def test_every_rule_is_unit_tested_firing_and_quiet() -> None:
    text = (ROOT / RULE_TESTS).read_text()
    # A test case is a "- eval_time:" item; it expects alerts when "exp_alerts:" follows.
    cases = re.split(r"^\s*- eval_time: ", text, flags=re.MULTILINE)[1:]
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in cases:
        name = re.search(r"alertname: (\S+)", case)
        assert name is not None
        (firing if "exp_alerts:" in case else quiet).add(name.group(1))
    assert firing == set(rule_names())
    assert quiet == set(rule_names())


# -- metric names against a real scrape ----------------------------------------------------------


async def exposed_names(dl: DataLayer) -> set[str]:
    """Every metric name a scrape of ``dl`` can show after a workload touching each store."""
    agent = await dl.agents.create("scraped", "worker")
    await dl.agents.get(agent.id)
    with pytest.raises(NotFound):
        await dl.agents.get(uuid.uuid4())
    await dl.cache.set("here", 1)
    assert await dl.cache.get("here") == 1
    assert await dl.cache.get("absent") is None
    await dl.tasks.create("resize", {})
    await dl.tasks.create("email", {})
    assert len(await dl.tasks.claim(agent.id, types=["email"])) == 1
    await dl.admin.create_collection("notes", dimension=3)
    notes = dl.embeddings.collection("notes")
    await notes.store_many(
        [
            {"entity_type": "note", "entity_id": str(i), "vector": [1.0, 0.0, float(i)]}
            for i in range(20)
        ]
    )
    await notes.create_index("hnsw")
    await notes.find_similar([1.0, 0.0, 1.0], 3)

    names = set(PROBED_GAUGES)
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count")}
    for family in text_string_to_metric_families(await dl.metrics_text()):
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ()))
    return names


async def test_rules_and_dashboard_read_only_metrics_the_layer_exposes(dl: DataLayer) -> None:
    exposed = await exposed_names(dl)
    # The workload shows in the scrape (the names are not merely declared).
    assert {
        "agency_data_query_duration_seconds_bucket",
        "agency_data_pool_connections",
        "agency_data_cache_requests_total",
        "agency_data_vector_search_duration_seconds_count",
        "agency_data_vector_index_valid",
        "agency_data_tasks",
        "agency_data_backend_up",
        "agency_data_denials_total",
    } <= exposed

    # Rules: every agency_data_ name anywhere in the file, expressions and annotations alike.
    in_rules = set(re.findall(r"\bagency_data_[a-z0-9_]+", (ROOT / RULES).read_text()))
    assert in_rules, "no metric found in the rules file"
    assert in_rules - exposed == set()

    board = dashboard()
    queried: set[str] = set()
    for panel in panels(board):
        for expr in expressions(panel):
            names = metric_names(expr)
            assert names, f"panel {panel['title']!r} selects no metric: {expr}"
            queried |= names
    assert queried - exposed == set()


def test_the_dashboard_has_the_panels_operators_need() -> None:
    board = dashboard()
    by_title = {panel["title"]: panel for panel in panels(board)}
    for title, metric in REQUIRED_PANELS.items():
        assert title in by_title, f"no panel {title!r}; there are {sorted(by_title)}"
        selected = set().union(*(metric_names(e) for e in expressions(by_title[title])))
        assert metric in selected, f"panel {title!r} should read {metric}, reads {selected}"


def test_the_dashboard_imports_anywhere() -> None:
    board = dashboard()
    assert [i["name"] for i in board["__inputs"]] == ["DS_PROMETHEUS"]
    assert board["schemaVersion"] >= 36
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["instance"]["datasource"]["uid"] == "${DS_PROMETHEUS}"
    nested = [inner for row in board["panels"] for inner in row.get("panels", [])]
    ids = [panel["id"] for panel in board["panels"] + nested]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels(board):
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        assert panel.get("description"), f"panel {panel['title']!r} has no description"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
            # Every selector follows the instance picker.
            selectors = re.findall(r"agency_data_[a-z0-9_]+(\{[^}]*\})?", target["expr"])
            assert selectors, panel["title"]
            for selector in selectors:
                assert 'instance=~"$instance"' in selector, f"{panel['title']}: {target['expr']}"

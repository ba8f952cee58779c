"""manifests/monitoring/: the alert rules pass `promtool check rules` and their unit tests (`promtool test rules`),
each alert has a firing and a quiet case there, every dashboard expression is valid PromQL (checked by promtool as a
recording rule), and every metric name the rules and the dashboard use is one the operator exports — taken from the
exposition of the manager `rayop run` builds, with Rays and RayJobs in its caches.

promtool comes with Debian's `prometheus` package, which hack/install-deps.sh installs (`make test` runs it first):
these tests fail, not skip, without it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from rayop.jobreconciler import RAYJOB
from rayop.reconciler import RAY
from tests.unit.test_cluster_metrics import head_pod, operator, ray

REPO = Path(__file__).resolve().parents[2]
MONITORING = REPO / "manifests" / "monitoring"
RULES = MONITORING / "rayop-alerts.yaml"
RULE_TESTS = MONITORING / "rayop-alerts.test.yaml"
DASHBOARD = MONITORING / "rayop-dashboard.json"
# Grafana's variables, as a query would see them.
VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h", "$job": "rayop", "$namespace": ".*"}


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool is not installed: hack/install-deps.sh installs Debian's prometheus package")
    return found


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=120, cwd=MONITORING)


# -- PromQL: which names are metric names -----------------------------------------------------------------------

KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset",
            "inf", "nan", "atan2"}
AGGREGATIONS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk",
                "quantile"}
LABEL_LISTS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
TOKEN = re.compile(r"""
    (?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
  | (?P<range>\[[^\]]*\])
  | (?P<number>(?<![\w:])(?:0x[0-9a-fA-F]+|\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+)(?:ms|s|m|h|d|w|y)*)
  | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
  | (?P<punct>=~|!~|!=|==|<=|>=|[-+*/%^(){},=<>@])
  | (?P<space>\s+)
""", re.VERBOSE)


def tokens(expr: str) -> Iterator[tuple[str, str]]:
    pos = 0
    while pos < len(expr):
        m = TOKEN.match(expr, pos)
        if m is None:
            raise ValueError(f"cannot read PromQL at {expr[pos:pos + 20]!r} in {expr!r}")
        pos = m.end()
        if m.lastgroup != "space":
            yield str(m.lastgroup), m.group()


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects: identifiers outside label matchers and label lists that are not
    keywords nor called as functions, and the values of `__name__` matchers."""
    toks = list(tokens(expr))
    names: set[str] = set()
    braces = 0
    i = 0
    while i < len(toks):
        kind, text = toks[i]
        nxt = toks[i + 1][1] if i + 1 < len(toks) else ""
        if text == "{":
            braces += 1
        elif text == "}":
            braces -= 1
        elif braces and kind == "ident" and text == "__name__" and nxt == "=":
            names.add(toks[i + 2][1][1:-1])
        elif not braces and kind == "ident":
            if text in LABEL_LISTS and nxt == "(":
                i = toks.index(("punct", ")"), i)  # skip the label list
            elif text in AGGREGATIONS and nxt in ("by", "without"):
                pass  # `sum by (...) (...)`: an aggregation, its label list comes next
            elif text not in KEYWORDS and nxt != "(":
                names.add(text)
        i += 1
    assert braces == 0, f"unbalanced braces in {expr!r}"
    return names


def substitute(expr: str) -> str:
    for name, value in sorted(VARIABLES.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(name, value)
    assert "$" not in expr, f"a Grafana variable this test does not know: {expr}"
    return expr


# -- the expressions ----------------------------------------------------------------------------------------------


def rules() -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def dashboard_targets(node: Any = None) -> Iterator[tuple[str, str]]:
    """(panel title, expression) of every query in the dashboard, rows' nested panels included."""
    node = json.loads(DASHBOARD.read_text()) if node is None else node
    for panel in node.get("panels") or ():
        for target in panel.get("targets") or ():
            if target.get("expr"):
                yield str(panel.get("title")), substitute(str(target["expr"]))
        yield from dashboard_targets(panel)
    for variable in (node.get("templating") or {}).get("list") or ():
        query = variable.get("query")
        m = re.fullmatch(r"label_values\((.*),\s*\w+\)", query) if isinstance(query, str) else None
        if m:
            yield f"variable {variable['name']}", substitute(m.group(1))


def exposition() -> tuple[bytes, bytes]:
    """The /metrics bodies of `rayop run`'s manager (RayJobs on, per-group series) with a Ray, its head pod and a
    RayJob cached, and of one with leader election on (for `rayop_leader`)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        manager = operator(Path(tmp), "--cluster-metrics", "groups")
        elected = operator(Path(tmp), "--leader-elect", "--leader-election-namespace", "default")
    pods = next(i for (resource, _, _), i in manager.informers.items() if resource.plural == "pods")
    pods.apply("ADDED", head_pod("a-head-x", "rayproject/ray:2.60.0"))
    manager.informer(RAY).apply("ADDED", ray("a", ready="True", head="a-head-x", groups=(("small", 1, 1),),
                                             launch=("True", "Launched")))
    manager.informers[(RAYJOB, None, None)].apply("ADDED", {
        "metadata": {"namespace": "ns", "name": "j", "resourceVersion": "1"}, "spec": {"clusterSelector": {"a": "b"}}})
    return manager.metrics.exposition(), elected.metrics.exposition()


def exported_names() -> set[str]:
    """Every sample name the operator's /metrics can show (`exposition`), families included (a labelled family
    without children yet shows its name only), plus the suffixes of counters and histograms."""
    names = set()
    for body in exposition():
        for family in text_string_to_metric_families(body.decode()):
            names.add(family.name)
            names.update(s.name for s in family.samples)
            if family.type == "counter":
                names.update({family.name + "_total", family.name + "_created"})
            if family.type == "histogram":
                names.update(family.name + suffix for suffix in ("_bucket", "_sum", "_count", "_created"))
    return names


def used_names() -> dict[str, set[str]]:
    used: dict[str, set[str]] = {}
    for rule in rules():
        for name in metric_names(rule["expr"]):
            used.setdefault(name, set()).add(f"alert {rule['alert']}")
    for title, expr in dashboard_targets():
        for name in metric_names(expr):
            used.setdefault(name, set()).add(f"panel {title}")
    return used


# -- the tests ----------------------------------------------------------------------------------------------------


def test_the_rules_pass_promtool_check() -> None:
    result = run_promtool("check", "rules", RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout


def test_the_rules_pass_their_unit_tests() -> None:
    result = run_promtool("test", "rules", RULE_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_is_tested_firing_and_quiet() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test") or ():
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    alerts = {r["alert"] for r in rules()}
    assert alerts, "no alert in the rules"
    assert alerts - firing == set(), "alerts never tested firing"
    assert alerts - quiet == set(), "alerts never tested quiet"


def test_every_dashboard_expression_is_valid_promql(tmp_path: Path) -> None:
    targets = list(dashboard_targets())
    assert len(targets) >= 20
    records = [{"record": f"dashboard:query_{i}", "expr": expr} for i, (_, expr) in enumerate(targets)]
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": records}]}))
    result = run_promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_dashboard_is_importable() -> None:
    """What Grafana needs to import it: unique panel ids, a place on the grid, each query with its own refId and
    the dashboard's data source variable."""
    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    assert {"datasource", "job", "namespace"} <= {v["name"] for v in dashboard["templating"]["list"]}
    for panel in panels:
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]) and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        refs = [t["refId"] for t in panel.get("targets") or ()]
        assert len(refs) == len(set(refs)), panel["title"]
        if panel["type"] != "row":
            assert refs and panel["datasource"]["uid"] == "${datasource}", panel["title"]


def test_every_metric_the_rules_and_the_dashboard_use_is_exported() -> None:
    exported = exported_names()
    used = used_names()
    # The names of the operator's own families must all be there; `up` is Prometheus's own.
    missing = {name: sorted(where) for name, where in used.items() if name not in exported and name != "up"}
    assert not missing, f"not exported by the operator: {missing}"
    # The test sees what matters: the per-cluster, reconcile, queue, API and process series.
    for name in ("rayop_cluster_condition", "rayop_cluster_workers_desired", "controller_runtime_reconcile_total",
                 "workqueue_queue_duration_seconds_bucket", "rayop_api_requests_total", "process_cpu_seconds_total",
                 "rayop_cluster_provisioned_duration_seconds_bucket", "rayop_leader"):
        assert name in used and name in exported, name


def test_the_exposition_passes_promtool_check_metrics() -> None:
    for body in exposition():
        result = subprocess.run([promtool(), "check", "metrics"], input=body, capture_output=True, timeout=60)
        assert result.returncode == 0, (result.stdout + result.stderr).decode()
        assert b"rayop_" in body


@pytest.mark.parametrize("expr,names", [
    ('sum by (controller, le) (rate(x_bucket{job=~"a", le!="1"}[5m]))', {"x_bucket"}),
    ('a / on (namespace) group_left (form) b unless c offset 5m', {"a", "b", "c"}),
    ('{__name__="x", job="y"} > bool 0.5e3', {"x"}),
    ('histogram_quantile(0.9, rate(h_bucket[1h])) and absent(up == 1)', {"h_bucket", "up"}),
    ('label_replace(m, "dst", "$1", "src", "(.*)")', {"m"}),
])
def test_metric_names(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names

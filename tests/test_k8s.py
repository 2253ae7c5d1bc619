"""The Kubernetes packaging, checked offline: scripts/k8s-validate.sh passes on the chart (helm lint and
template with every values file, kubeconform -strict against local schemas, promtool, shellcheck), it fails
on an invalid object, the chart refuses more consumers than partitions, and the dashboard and the alerts only
query metrics that the code exports."""

from __future__ import annotations

import json
import os
import re
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml
from prometheus_client import REGISTRY
from prometheus_client.metrics_core import Metric

from pinrec.localstack.provision import GO_TOOLS, go_tool_path
from pinrec.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "k8s-validate.sh"
CHART = ROOT / "helm" / "pinrec"
KUBE_VERSION = "1.31.0"
TOOLS = {tool.name: go_tool_path(Settings.from_env().local_stack, tool) for tool in GO_TOOLS}

pytestmark = pytest.mark.skipif(
    not all(path.exists() for path in TOOLS.values()),
    reason="helm and kubeconform are not provisioned under .pinrec/tools (`make tools` builds them)",
)


def run_validation(*args: str | Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HELM": str(TOOLS["helm"]), "KUBECONFORM": str(TOOLS["kubeconform"])}
    return subprocess.run(
        ["bash", str(SCRIPT), *map(str, args)], capture_output=True, text=True, env=env, timeout=300
    )


def helm_template(*sets: str) -> subprocess.CompletedProcess:
    command = [str(TOOLS["helm"]), "template", "pinrec", str(CHART), "--kube-version", KUBE_VERSION]
    for value in sets:
        command += ["--set", value]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def validation(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, Path]:
    """One run of the whole validation; the rendered manifests stay in its --out folder."""
    out = tmp_path_factory.mktemp("k8s-rendered")
    return run_validation("--out", out), out


def rendered(out: Path, values: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all((out / f"{values}.yaml").read_text()) if doc]


def test_validation_script_passes(validation: tuple[subprocess.CompletedProcess, Path]) -> None:
    result, out = validation
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "k8s validation passed" in result.stdout
    assert {"default.yaml", "kind.yaml", "production.yaml", "rules.yaml"} <= {p.name for p in out.iterdir()}


def test_validation_fails_on_an_invalid_object(
    validation: tuple[subprocess.CompletedProcess, Path], tmp_path: Path
) -> None:
    _, out = validation
    docs = rendered(out, "kind")
    isvc = next(doc for doc in docs if doc["kind"] == "InferenceService")
    isvc["metadata"]["name"] = "typo-in-spec"
    isvc["spec"]["predictor"]["minReplica"] = 1  # unknown field (minReplicas)
    consumer = next(doc for doc in docs if doc["kind"] == "Deployment")
    consumer["metadata"]["name"] = "string-replicas"
    consumer["spec"]["replicas"] = "3"  # a string where the schema wants an integer
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump_all([isvc, consumer]))

    result = run_validation("--extra-manifest", broken)

    assert result.returncode == 1
    report = result.stdout + result.stderr
    assert re.search(r"InferenceService typo-in-spec is invalid.*'minReplica' not allowed", report)
    assert re.search(r"Deployment string-replicas is invalid.*/spec/replicas", report)
    assert "Invalid: 2" in report
    assert "- kubeconform" in result.stderr


def test_chart_app_version_is_the_package_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert chart["appVersion"] == project["version"]


@pytest.mark.parametrize("replicas, accepted", [(3, True), (4, False)])
def test_consumers_are_bounded_by_partitions(replicas: int, accepted: bool) -> None:
    result = helm_template("kafka.topics.events.partitions=3", f"consumer.replicas={replicas}")
    assert (result.returncode == 0) == accepted, result.stderr
    if not accepted:
        assert "consumer.replicas (4) must not exceed kafka.topics.events.partitions (3)" in result.stderr


PROMQL_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
}
PROMQL_KEYWORDS |= {"offset", "inf", "nan"}


def promql_metric_names(expr: str) -> set[str]:
    """Metric names an expression selects: identifiers that are not functions, keywords, label names (in
    matchers and in by/on/... lists), strings or durations."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.$])[A-Za-z_:][A-Za-z0-9_:]*", expr):
        word = match.group()
        if expr[match.end() :].lstrip().startswith("(") or word.lower() in PROMQL_KEYWORDS:
            continue
        names.add(word)
    return names


def series_names(family: Metric) -> set[str]:
    """The series names of a metric family as Prometheus stores them."""
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("", "_sum", "_count", "_created"),
        "info": ("_info",),
    }.get(family.type, ("",))
    return {family.name + suffix for suffix in suffixes}


def exported_series() -> set[str]:
    """Everything the predictor's and the consumer's /metrics can expose: KServe's own (on the default
    registry), the serving metrics (the model server puts them there too) and the consumer's registry."""
    import kserve.metrics  # noqa: F401  (registers request_*_seconds)

    from pinrec.serving.metrics import ServingMetrics
    from pinrec.stream.metrics import ConsumerMetrics

    names: set[str] = set()
    for registry in (REGISTRY, ServingMetrics().registry, ConsumerMetrics().registry):
        for family in registry.collect():
            names |= series_names(family)
    return names


def test_promql_metric_names() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (le, surface) (rate(pinrec_request_stage_seconds_bucket"
        '{stage="total", namespace="$namespace"}[$__rate_interval])))'
        " / ignoring(stage) (up or vector(1e-9)) > 0.1"
    )
    assert promql_metric_names(expr) == {"pinrec_request_stage_seconds_bucket", "up"}


def test_dashboard_and_alerts_query_exported_metrics(
    validation: tuple[subprocess.CompletedProcess, Path],
) -> None:
    _, out = validation
    docs = rendered(out, "production")
    rule = next(doc for doc in docs if doc["kind"] == "PrometheusRule")
    alert_exprs = [r["expr"] for group in rule["spec"]["groups"] for r in group["rules"]]
    configmap = next(
        doc for doc in docs if doc["kind"] == "ConfigMap" and "pinrec.json" in doc.get("data", {})
    )
    dashboard = json.loads(configmap["data"]["pinrec.json"])
    panel_exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    variable_metrics = {
        match
        for variable in dashboard["templating"]["list"]
        for match in re.findall(r"label_values\(\s*([A-Za-z_:][\w:]*)", json.dumps(variable.get("query", "")))
    }

    referenced = {name for expr in alert_exprs + panel_exprs for name in promql_metric_names(expr)}
    referenced |= variable_metrics
    assert len(alert_exprs) >= 5 and len(panel_exprs) >= 10
    assert {"pinrec_request_stage_seconds_bucket", "pinrec_feature_freshness_seconds_bucket"} <= referenced
    assert {"pinrec_consumer_lag_messages", "pinrec_consumer_events_dead_lettered_total"} <= referenced
    assert {"pinrec_response_unique_share_bucket"} <= referenced
    unknown = sorted(referenced - exported_series())
    assert not unknown, f"the dashboard or the alerts query metrics nothing exports: {unknown}"

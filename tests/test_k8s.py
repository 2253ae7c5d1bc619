"""The Kubernetes packaging, checked offline: scripts/k8s-validate.sh passes on the chart (helm lint and
template with every values file, kubeconform -strict against local schemas, promtool, shellcheck), it fails
on an invalid object, the chart refuses more consumers than partitions, the predictor listens on every
interface with its deadline and size limit, only listed callers reach its API and Prometheus only its metrics
port, and the dashboard and the alerts only query metrics that the code exports."""

from __future__ import annotations

import json
import os
import re
import subprocess
import tomllib
from itertools import pairwise
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


def helm_template(*sets: str, set_json: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    command = [str(TOOLS["helm"]), "template", "pinrec", str(CHART), "--kube-version", KUBE_VERSION]
    for value in sets:
        command += ["--set", value]
    for value in set_json:
        command += ["--set-json", value]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def helm_objects(*sets: str) -> list[dict]:
    result = helm_template(*sets)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


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


def the_object(docs: list[dict], kind: str, name: str = "pinrec") -> dict:
    return next(doc for doc in docs if doc["kind"] == kind and doc["metadata"]["name"] == name)


def predictor_container(docs: list[dict]) -> dict:
    isvc = the_object(docs, "InferenceService")
    return next(c for c in isvc["spec"]["predictor"]["containers"] if c["name"] == "kserve-container")


def flag_values(args: list[str]) -> dict[str, str]:
    """`--flag value` pairs of a container's args (flags without a value are left out)."""
    return {
        flag: value for flag, value in pairwise(args) if flag.startswith("--") and not value.startswith("--")
    }


def predictor_policy_rules(docs: list[dict]) -> list[dict]:
    return the_object(docs, "NetworkPolicy", "pinrec-predictor")["spec"]["ingress"]


def rule_ports(rule: dict) -> set[int]:
    return {port["port"] for port in rule["ports"]}


def test_predictor_listens_on_every_interface_with_a_deadline_and_a_size_limit(
    validation: tuple[subprocess.CompletedProcess, Path],
) -> None:
    _, out = validation
    flags = flag_values(predictor_container(rendered(out, "default"))["args"])
    assert flags["--host"] == "0.0.0.0"
    assert (flags["--http-port"], flags["--grpc-port"], flags["--metrics-port"]) == ("8080", "8081", "8082")
    assert flags["--request-timeout-ms"] == "10000"
    assert flags["--max-request-bytes"] == "4194304"  # an integer, not Helm's float 4.194304e+06

    docs = helm_objects(
        "predictor.metricsPort=9095", "predictor.requestTimeoutMs=2500", "predictor.maxRequestBytes=16777216"
    )
    container = predictor_container(docs)
    flags = flag_values(container["args"])
    assert (flags["--metrics-port"], flags["--request-timeout-ms"], flags["--max-request-bytes"]) == (
        "9095",
        "2500",
        "16777216",
    )
    assert {"name": "metrics", "containerPort": 9095, "protocol": "TCP"} in container["ports"]


@pytest.mark.parametrize("values", ["default", "kind", "production"])
def test_predictor_network_policy_admits_listed_callers_and_prometheus_on_metrics_only(
    validation: tuple[subprocess.CompletedProcess, Path], values: str
) -> None:
    _, out = validation
    rules = predictor_policy_rules(rendered(out, values))
    peers = [peer for rule in rules for peer in rule["from"]]
    assert peers and all(selector.get("matchLabels") for peer in peers for selector in peer.values()), (
        f"a peer selects every pod or namespace: {peers}"
    )
    prometheus = [
        rule for rule in rules if any("namespaceSelector" in p and "podSelector" in p for p in rule["from"])
    ]
    assert [rule_ports(rule) for rule in prometheus] == [{8082}]
    api = [rule for rule in rules if rule_ports(rule) & {8080, 8081}]
    assert [rule_ports(rule) for rule in api] == [{8080, 8081}]


def test_predictor_network_policy_defaults_to_labelled_client_pods(
    validation: tuple[subprocess.CompletedProcess, Path],
) -> None:
    _, out = validation
    api = [rule for rule in predictor_policy_rules(rendered(out, "default")) if 8080 in rule_ports(rule)]
    assert api[0]["from"] == [{"podSelector": {"matchLabels": {"pinrec.io/predictor-client": "true"}}}]


def test_predictor_network_policy_without_callers_admits_nobody_to_the_api() -> None:
    docs = helm_objects(
        "networkPolicy.predictor.allowedPods=null", "networkPolicy.predictor.allowedNamespaces=null"
    )
    assert [rule_ports(rule) for rule in predictor_policy_rules(docs)] == [{8082}]


@pytest.mark.parametrize("key", ["allowedPods", "allowedNamespaces"])
def test_predictor_network_policy_refuses_a_selector_of_everything(key: str) -> None:
    result = helm_template(set_json=(f"networkPolicy.predictor.{key}=[{{}}]",))
    assert result.returncode != 0
    assert f"/networkPolicy/predictor/{key}/0" in result.stderr


def test_predictor_metrics_port_must_not_be_an_api_port() -> None:
    result = helm_template("predictor.metricsPort=8081")
    assert result.returncode != 0
    assert "predictor.metricsPort must differ from the predictor's API ports" in result.stderr


def test_pod_monitor_scrapes_the_predictor_metrics_port(
    validation: tuple[subprocess.CompletedProcess, Path],
) -> None:
    _, out = validation
    docs = rendered(out, "production")
    monitor = the_object(docs, "PodMonitor", "pinrec-predictor")
    assert [(e["port"], e["path"]) for e in monitor["spec"]["podMetricsEndpoints"]] == [
        ("metrics", "/metrics")
    ]
    ports = {port["name"]: port["containerPort"] for port in predictor_container(docs)["ports"]}
    assert ports == {"http1": 8080, "h2c": 8081, "metrics": 8082}


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

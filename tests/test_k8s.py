"""The Kubernetes packaging, checked offline: scripts/k8s-validate.sh passes on the chart (helm lint and
template with every values file, kubeconform -strict against local schemas, promtool, shellcheck) and on the
ci/ scenarios, it fails on an invalid object, the chart refuses more consumers than partitions and objects
whose API the cluster lacks, the predictor listens on every interface with its deadline and size limit, only
listed callers reach its API and Prometheus only its metrics port, the `helm test` pods are such callers,
every workload takes the scheduling values, the images can be pinned by digest, KEDA scales the consumer on
its lag, the chart README is generated from values.yaml, and the dashboard and the alerts only query metrics
that the code exports."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import pytest
import yaml
from prometheus_client import REGISTRY, start_http_server
from prometheus_client.metrics_core import Metric

from pinrec.featurestore.store import FeatureStoreSettings
from pinrec.localstack.provision import GO_TOOLS, go_tool_path
from pinrec.settings import Settings
from pinrec.stream.metrics import ConsumerMetrics
from tests import serving_helpers
from tests.helpers import cli_env

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "k8s-validate.sh"
CHART = ROOT / "helm" / "pinrec"
KUBE_VERSION = "1.31.0"
KIND_VALUES = CHART / "values-kind.yaml"
CI_SCENARIOS = sorted((CHART / "ci").glob("*-values.yaml"))
# The custom resource APIs of ../shared/k8s/crds, as a cluster with them would report; helm template reports
# none by itself, and the chart refuses an object whose API is missing.
SERVED_APIS = ("serving.kserve.io/v1beta1", "monitoring.coreos.com/v1")
KEDA_API = "keda.sh/v1alpha1"  # no CRD in ../shared/k8s/crds: kubeconform cannot check its objects
HELM_TEST_SCRIPT = CHART / "files" / "helm-test.py"
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


def helm_template(
    *sets: str,
    set_json: tuple[str, ...] = (),
    values_files: tuple[Path, ...] = (),
    api_versions: tuple[str, ...] = SERVED_APIS,
) -> subprocess.CompletedProcess:
    command = [str(TOOLS["helm"]), "template", "pinrec", str(CHART), "--kube-version", KUBE_VERSION]
    command += ["--namespace", "pinrec"]
    for api in api_versions:
        command += ["--api-versions", api]
    for path in values_files:
        command += ["-f", str(path)]
    for value in sets:
        command += ["--set", value]
    for value in set_json:
        command += ["--set-json", value]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def helm_objects(*sets: str, **options) -> list[dict]:
    result = helm_template(*sets, **options)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


# Every scheduling value set, the workloads' own over the release-wide ones, and the images by digest.
DIGEST = "sha256:" + "ab" * 32
PINNED_AND_PLACED = (
    "sink.enabled=true",
    "sink.out=s3://bucket/events",
    f"image.digest={DIGEST}",
    f"kafka.image.digest={DIGEST}",
    f"redis.builtin.image.digest={DIGEST}",
    "scheduling.priorityClassName=pinrec-default",
    "scheduling.nodeSelector.kubernetes\\.io/os=linux",
    "predictor.priorityClassName=pinrec-serving",
    "predictor.nodeSelector.pinrec\\.io/pool=serving",
)
PLACEMENT_JSON = (
    'scheduling.tolerations=[{"key": "pinrec.io/dedicated", "operator": "Exists", "effect": "NoSchedule"}]',
    'scheduling.topologySpreadConstraints=[{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname",'
    ' "whenUnsatisfiable": "ScheduleAnyway"}]',
    'scheduling.affinity={"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 1,'
    ' "preference": {"matchExpressions": [{"key": "pinrec.io/spot", "operator": "DoesNotExist"}]}}]}}',
    'hooks.tolerations=[{"key": "pinrec.io/batch", "operator": "Exists"}]',
)


def extra_renders() -> dict[str, list[dict]]:
    """Renders validated besides the values files: each ci/ scenario on the kind values, every scheduling
    value, and KEDA autoscaling, whose ScaledObject is left out (no KEDA CRD, so no schema for it)."""
    renders = {
        f"ci-{path.name.removesuffix('-values.yaml')}": helm_objects(values_files=(KIND_VALUES, path))
        for path in CI_SCENARIOS
    }
    renders["pinned-and-placed"] = helm_objects(
        *PINNED_AND_PLACED, values_files=(KIND_VALUES,), set_json=PLACEMENT_JSON
    )
    autoscaled = helm_objects("consumer.autoscaling.enabled=true", api_versions=(*SERVED_APIS, KEDA_API))
    renders["autoscaled"] = [doc for doc in autoscaled if not doc["apiVersion"].startswith("keda.sh/")]
    return renders


@pytest.fixture(scope="module")
def validation(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, Path]:
    """One run of the whole validation, with the extra renders as --extra-manifest; every rendered manifest
    stays in its --out folder."""
    out = tmp_path_factory.mktemp("k8s-rendered")
    extra: list[str | Path] = []
    for name, docs in extra_renders().items():
        (out / f"{name}.yaml").write_text(yaml.safe_dump_all(docs))
        extra += ["--extra-manifest", out / f"{name}.yaml"]
    return run_validation("--out", out, *extra), out


def rendered(out: Path, values: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all((out / f"{values}.yaml").read_text()) if doc]


def test_validation_script_passes(validation: tuple[subprocess.CompletedProcess, Path]) -> None:
    result, out = validation
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "k8s validation passed" in result.stdout
    assert {"default.yaml", "kind.yaml", "production.yaml", "rules.yaml"} <= {p.name for p in out.iterdir()}
    assert {"ci-monitoring.yaml", "ci-production-like.yaml", "pinned-and-placed.yaml", "autoscaled.yaml"} <= {
        p.name for p in out.iterdir()
    }


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
        "networkPolicy.predictor.allowedPods=null",
        "networkPolicy.predictor.allowedNamespaces=null",
        "tests.enabled=false",
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


def pods(docs: list[dict]) -> dict[str, tuple[dict, dict]]:
    """The labels and the spec of every pod a render creates, by "Kind/name" of what creates it: workload
    templates, hook and test pods, the predictor (KServe copies its labels onto the pods)."""
    found = {}
    for doc in docs:
        name, spec = f"{doc['kind']}/{doc['metadata']['name']}", doc.get("spec", {})
        if doc["kind"] in ("Deployment", "StatefulSet", "Job"):
            found[name] = (spec["template"]["metadata"]["labels"], spec["template"]["spec"])
        elif doc["kind"] == "Pod":
            found[name] = (doc["metadata"]["labels"], spec)
        elif doc["kind"] == "InferenceService":
            found[name] = (spec["predictor"]["labels"], spec["predictor"])
    return found


def pod_specs(docs: list[dict]) -> dict[str, dict]:
    return {name: spec for name, (_, spec) in pods(docs).items()}


def pod_labels(docs: list[dict], name: str) -> dict[str, str]:
    return the_object(docs, "Pod", name)["metadata"]["labels"]


def admitted(rules: list[dict], labels: dict[str, str], port: int) -> bool:
    """Whether a pod of the release's namespace with these labels may reach this port under these rules."""
    return any(
        port in rule_ports(rule)
        and any(
            "namespaceSelector" not in peer and peer["podSelector"]["matchLabels"].items() <= labels.items()
            for peer in rule["from"]
        )
        for rule in rules
    )


@pytest.mark.parametrize("values", ["default", "kind", "production"])
def test_helm_test_pods_are_callers_the_network_policies_admit(
    validation: tuple[subprocess.CompletedProcess, Path], values: str
) -> None:
    _, out = validation
    docs = rendered(out, values)
    tests = {name: spec for name, spec in pod_specs(docs).items() if name.startswith("Pod/pinrec-test-")}
    assert set(tests) == {"Pod/pinrec-test-rest", "Pod/pinrec-test-grpc", "Pod/pinrec-test-consumer-metrics"}
    for name in ("pinrec-test-rest", "pinrec-test-grpc"):
        assert admitted(predictor_policy_rules(docs), pod_labels(docs, name), 8080)
        assert admitted(predictor_policy_rules(docs), pod_labels(docs, name), 8081)
    consumer_rules = the_object(docs, "NetworkPolicy", "pinrec-consumer")["spec"]["ingress"]
    consumer = the_object(docs, "Deployment", "pinrec-consumer")["spec"]["template"]["spec"]["containers"][0]
    assert admitted(
        consumer_rules,
        pod_labels(docs, "pinrec-test-consumer-metrics"),
        consumer["ports"][0]["containerPort"],
    )
    for name, spec in tests.items():
        pod = the_object(docs, "Pod", name.removeprefix("Pod/"))
        assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
        assert spec["restartPolicy"] == "Never"
        (container,) = spec["containers"]
        assert container["image"] == consumer["image"]
        script, check = container["args"]
        compile(script, "files/helm-test.py", "exec")  # the script is whole Python
        assert name == f"Pod/pinrec-test-{check}"


def test_every_pod_meets_the_restricted_pod_security_level(
    validation: tuple[subprocess.CompletedProcess, Path],
) -> None:
    _, out = validation
    for name, spec in pod_specs(rendered(out, "default")).items():
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        for container in spec.get("initContainers", []) + spec["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["capabilities"]["drop"] == ["ALL"], name


def test_helm_test_pods_call_every_surface_and_the_consumer(
    validation: tuple[subprocess.CompletedProcess, Path],
) -> None:
    _, out = validation
    env = {
        e["name"]: e["value"]
        for e in pod_specs(rendered(out, "default"))["Pod/pinrec-test-rest"]["containers"][0]["env"]
    }
    assert env["PINREC_TEST_SURFACES"] == "home,search,related"
    assert env["PINREC_TEST_PREDICTOR_URL"] == "http://pinrec-predictor.pinrec.svc"
    assert env["PINREC_TEST_PREDICTOR_GRPC"] == "pinrec-predictor.pinrec.svc:8081"
    assert env["PINREC_TEST_CONSUMER_METRICS_URL"] == "http://pinrec-consumer.pinrec.svc:9400/metrics"


def test_helm_test_needs_a_caller_label_the_predictor_admits() -> None:
    result = helm_template("networkPolicy.predictor.allowedPods=null")
    assert result.returncode != 0
    assert "tests.enabled: the predictor's test pods carry the labels of the first" in result.stderr
    docs = helm_objects("networkPolicy.predictor.allowedPods=null", "tests.enabled=false")
    assert not [doc for doc in docs if doc["kind"] == "Pod"]


def run_helm_test_check(check: str, **env: str) -> subprocess.CompletedProcess:
    """files/helm-test.py as the test pods run it: `python -c SCRIPT CHECK` with PINREC_TEST_* set."""
    command = [sys.executable, "-c", HELM_TEST_SCRIPT.read_text(), check]
    return subprocess.run(command, env={**os.environ, **env}, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def predictor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[serving_helpers.Served]:
    """A real `pinrec serve` of a small trained artifact, reading users' sequences from a feature store."""
    root = tmp_path_factory.mktemp("helm-test")
    data = serving_helpers.small_world()
    (artifact,) = serving_helpers.train_artifacts(data, root, versions=1)
    features = FeatureStoreSettings(repo_dir=root / "repo")
    server = serving_helpers.Served(
        data, artifact, [artifact], features, serving_helpers.store_sequences(data, features), "", ""
    )
    serving_helpers.start_server(server, cli_env(root / "state"), root / "serve.log")
    yield server
    serving_helpers.stop_server(server)


@pytest.mark.parametrize("check", ["rest", "grpc"])
def test_helm_test_calls_every_surface_of_a_real_predictor(
    predictor: serving_helpers.Served, check: str
) -> None:
    result = run_helm_test_check(
        check,
        PINREC_TEST_PREDICTOR_URL=predictor.http,
        PINREC_TEST_PREDICTOR_GRPC=predictor.grpc,
        PINREC_TEST_SURFACES="home,search,related",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.findall(r"^ok  \S+ \S+ (\w+): [1-9]\d* items", result.stdout, re.MULTILINE) == [
        "home",
        "search",
        "related",
    ]


def test_helm_test_fails_on_a_surface_the_predictor_does_not_serve(predictor: serving_helpers.Served) -> None:
    result = run_helm_test_check(
        "rest", PINREC_TEST_PREDICTOR_URL=predictor.http, PINREC_TEST_SURFACES="home,checkout"
    )
    assert result.returncode == 1
    assert "not the configured surfaces ['checkout']" in result.stderr


def test_helm_test_reads_the_consumer_metrics() -> None:
    """Against the consumer's own registry, served the way `pinrec consume` serves it."""
    server, _ = start_http_server(0, addr="127.0.0.1", registry=ConsumerMetrics().registry)
    try:
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        result = run_helm_test_check("consumer-metrics", PINREC_TEST_CONSUMER_METRICS_URL=url)
    finally:
        server.shutdown()
    assert result.returncode == 0, result.stderr
    assert "pinrec_consumer_lag_messages" in result.stdout


@pytest.mark.parametrize(
    "enabled, kind, api",
    [
        ("", "InferenceService", "serving.kserve.io/v1beta1"),
        ("monitoring.podMonitor.enabled", "PodMonitor", "monitoring.coreos.com/v1"),
        ("monitoring.serviceMonitor.enabled", "ServiceMonitor", "monitoring.coreos.com/v1"),
        ("monitoring.prometheusRule.enabled", "PrometheusRule", "monitoring.coreos.com/v1"),
        ("consumer.autoscaling.enabled", "ScaledObject", KEDA_API),
    ],
)
def test_an_object_whose_api_the_cluster_lacks_fails_the_render_with_the_reason(
    enabled: str, kind: str, api: str
) -> None:
    sets = (f"{enabled}=true",) if enabled else ()
    served = tuple(a for a in (*SERVED_APIS, KEDA_API) if a != api)
    result = helm_template(*sets, api_versions=served)
    assert result.returncode != 0
    who = enabled or "The predictor"
    assert f"{who} needs the {kind} API ({api}), which the cluster does not serve" in result.stderr
    assert f"Pass --api-versions {api}" in result.stderr
    assert helm_template(*sets, api_versions=(*served, api)).returncode == 0


@pytest.mark.parametrize(
    "sets, limits",
    [
        ((), {"maxUnavailable": 1}),
        (
            (
                "predictor.podDisruptionBudget.minAvailable=50%",
                "predictor.podDisruptionBudget.maxUnavailable=",
            ),
            {"minAvailable": "50%"},
        ),
    ],
)
def test_predictor_disruption_budget_selects_kserve_pods(sets: tuple[str, ...], limits: dict) -> None:
    budget = the_object(helm_objects(*sets), "PodDisruptionBudget", "pinrec-predictor")["spec"]
    assert budget == {**limits, "selector": {"matchLabels": {"serving.kserve.io/inferenceservice": "pinrec"}}}


def test_predictor_disruption_budget_takes_one_limit() -> None:
    result = helm_template("predictor.podDisruptionBudget.minAvailable=1")
    assert result.returncode != 0
    assert (
        "predictor.podDisruptionBudget: set exactly one of minAvailable and maxUnavailable" in result.stderr
    )


def test_every_pod_takes_the_scheduling_values_and_the_image_digests(
    validation: tuple[subprocess.CompletedProcess, Path],
) -> None:
    _, out = validation
    found = pods(rendered(out, "pinned-and-placed"))
    workloads = {"Deployment/pinrec-consumer", "Deployment/pinrec-sink", "Deployment/pinrec-redis"}
    workloads |= {"StatefulSet/pinrec-kafka", "InferenceService/pinrec", "Job/pinrec-kafka-topics"}
    workloads |= {"Job/pinrec-feast-apply", "Job/pinrec-model-bootstrap", "Pod/pinrec-test-rest"}
    assert workloads <= set(found)
    for name, (labels, spec) in found.items():
        hook = name.startswith(("Job/", "Pod/"))
        predictor = name == "InferenceService/pinrec"
        assert spec["priorityClassName"] == ("pinrec-serving" if predictor else "pinrec-default"), name
        assert spec["nodeSelector"] == (
            {"pinrec.io/pool": "serving"} if predictor else {"kubernetes.io/os": "linux"}
        )
        assert [t["key"] for t in spec["tolerations"]] == [
            "pinrec.io/batch" if hook else "pinrec.io/dedicated"
        ]
        assert spec["affinity"]["nodeAffinity"], name
        (spread,) = spec["topologySpreadConstraints"]
        assert spread["labelSelector"]["matchLabels"].items() <= labels.items(), name  # its own pods
        for container in spec.get("initContainers", []) + spec["containers"]:
            assert container["image"].endswith(f"@{DIGEST}"), (name, container["image"])


def test_redis_and_kafka_images_are_pinned_to_a_version() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for image in (values["redis"]["builtin"]["image"], values["kafka"]["image"]):
        assert re.fullmatch(r"\d+\.\d+\.\d+(-[a-z0-9.]+)?", image["tag"]), image
    result = helm_template("kafka.image.tag=latest")
    assert result.returncode != 0
    assert "/kafka/image/tag" in result.stderr


def test_keda_scales_the_consumer_on_its_group_lag() -> None:
    docs = helm_objects(
        "consumer.autoscaling.enabled=true",
        values_files=(CHART / "values-production.yaml",),
        api_versions=(*SERVED_APIS, KEDA_API),
    )
    scaled = the_object(docs, "ScaledObject", "pinrec-consumer")["spec"]
    assert scaled["scaleTargetRef"] == {"name": "pinrec-consumer"}
    assert (scaled["minReplicaCount"], scaled["maxReplicaCount"]) == (1, 12)  # one per partition
    (trigger,) = scaled["triggers"]
    assert trigger["type"] == "kafka"
    assert {k: trigger["metadata"][k] for k in ("consumerGroup", "topic", "tls", "sasl")} == {
        "consumerGroup": "pinrec-sequences",
        "topic": "pinrec-events",
        "tls": "enable",
        "sasl": "scram_sha512",
    }
    auth = the_object(docs, "TriggerAuthentication", trigger["authenticationRef"]["name"])["spec"]
    assert {ref["parameter"]: ref["name"] for ref in auth["secretTargetRef"]} == {
        "username": "pinrec-kafka-user",
        "password": "pinrec-kafka-user",
        "ca": "pinrec-kafka-ca",
    }
    assert "replicas" not in the_object(docs, "Deployment", "pinrec-consumer")["spec"]  # KEDA's HPA owns it


def test_keda_may_not_scale_past_the_partitions() -> None:
    result = helm_template(
        "consumer.autoscaling.enabled=true",
        "consumer.autoscaling.maxReplicas=7",
        api_versions=(*SERVED_APIS, KEDA_API),
    )
    assert result.returncode != 0
    assert (
        "consumer.autoscaling.maxReplicas (7) must not exceed kafka.topics.events.partitions (6)"
        in result.stderr
    )


def test_keda_reaches_the_built_in_broker() -> None:
    docs = helm_objects(
        "consumer.autoscaling.enabled=true",
        values_files=(KIND_VALUES,),
        api_versions=(*SERVED_APIS, KEDA_API),
    )
    peers = the_object(docs, "NetworkPolicy", "pinrec-kafka")["spec"]["ingress"][0]["from"]
    assert {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "keda"}},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "keda-operator"}},
    } in peers
    assert (
        "authenticationRef" not in the_object(docs, "ScaledObject", "pinrec-consumer")["spec"]["triggers"][0]
    )


def test_ci_scenarios_render_what_they_are_for(validation: tuple[subprocess.CompletedProcess, Path]) -> None:
    _, out = validation
    monitored = {doc["kind"] for doc in rendered(out, "ci-monitoring")}
    assert {"PodMonitor", "ServiceMonitor", "PrometheusRule"} <= monitored
    docs = rendered(out, "ci-production-like")
    budget = the_object(docs, "PodDisruptionBudget", "pinrec-predictor")["spec"]
    assert budget["minAvailable"] == 1 and "maxUnavailable" not in budget
    assert all(spec.get("topologySpreadConstraints") for spec in pod_specs(docs).values())


def test_chart_metadata_names_its_home_and_sources() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["home"].startswith("https://")
    assert chart["sources"] and all(source.startswith("https://") for source in chart["sources"])


def test_chart_readme_is_generated_from_the_values_comments() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "chart_readme.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


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


@pytest.mark.parametrize(
    ("keep", "policy"), [(False, "before-hook-creation,hook-succeeded"), (True, "before-hook-creation")]
)
def test_passing_test_pods_are_deleted_unless_kept_for_their_logs(keep: bool, policy: str) -> None:
    # helm uninstall never deletes hook pods: deleted on success, none is left (the live e2e checks it).
    docs = helm_objects(f"tests.keepPods={str(keep).lower()}")
    tests = [d for d in docs if d["metadata"].get("annotations", {}).get("helm.sh/hook") == "test"]
    assert len(tests) == 3
    assert {d["metadata"]["annotations"]["helm.sh/hook-delete-policy"] for d in tests} == {policy}

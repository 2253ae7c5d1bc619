"""The Kubernetes packaging, checked offline: scripts/k8s-validate.sh passes on the chart (helm lint and
template with every values file and ci/ scenario, kubeconform -strict against local schemas, the retraining
TrainJob its ConfigMap carries included, promtool, shellcheck), it fails on an invalid object, the chart
refuses more consumers than partitions and objects whose API the cluster lacks, the predictor listens on every
interface with its deadline and size limit, only listed callers reach its API and Prometheus only its metrics
port, the `helm test` pods are such callers, every workload takes the scheduling values, the images can be
pinned by digest, KEDA scales the consumer on its lag, retraining runs files/retrain.sh in a TrainJob on the
chart's or a cluster's runtime (torchrun, then finetune and the promotion gate on node 0) and on a schedule
with an account that may only submit TrainJobs, the chart README is generated from values.yaml, and the
dashboard and the alerts only query metrics that the code exports."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
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
TRAINING_VALUES = CHART / "ci" / "training-values.yaml"
# The custom resource APIs of ../shared/k8s/crds, as a cluster with them would report; helm template reports
# none by itself, and the chart refuses an object whose API is missing.
TRAINER_API = "trainer.kubeflow.org/v1alpha1"
SERVED_APIS = ("serving.kserve.io/v1beta1", "monitoring.coreos.com/v1", TRAINER_API)
KEDA_API = "keda.sh/v1alpha1"  # no CRD in ../shared/k8s/crds: kubeconform cannot check its objects
HELM_TEST_SCRIPT = CHART / "files" / "helm-test.py"
RETRAIN_SCRIPT = CHART / "files" / "retrain.sh"
SUBMIT_SCRIPT = CHART / "files" / "submit-trainjob.py"
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
    "training.enabled=true",
    "training.eventLog=/mnt/models/event-log",
    "training.schedule=0 3 * * *",
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


# Retraining on an existing ClusterTrainingRuntime, with a TrainJob at install: the TrainJob's runtimePatches.
CLUSTER_RUNTIME = ("training.runtime.clusterTrainingRuntime=torch-distributed", "training.runOnInstall=true")


def extra_renders() -> dict[str, list[dict]]:
    """Renders validated besides the values files and the ci/ scenarios (the script renders those): every
    scheduling value, retraining on a cluster's runtime, and KEDA autoscaling, whose ScaledObject is left out
    (no KEDA CRD, so no schema for it)."""
    renders = {
        "pinned-and-placed": helm_objects(
            *PINNED_AND_PLACED, values_files=(KIND_VALUES,), set_json=PLACEMENT_JSON
        ),
        "cluster-runtime": helm_objects(
            *CLUSTER_RUNTIME, *PINNED_AND_PLACED, values_files=(KIND_VALUES,), set_json=PLACEMENT_JSON
        ),
    }
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
    assert {
        "ci-monitoring.yaml",
        "ci-production-like.yaml",
        "ci-training.yaml",
        "ci-training-embedded.yaml",
    } <= {p.name for p in out.iterdir()}
    assert {"pinned-and-placed.yaml", "cluster-runtime.yaml", "autoscaled.yaml"} <= {
        p.name for p in out.iterdir()
    }
    assert "embedded TrainJob/pinrec-retrain-" in result.stdout


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
    templates, hook and test pods, the CronJob's pods, the predictor (KServe copies its labels onto the pods)
    and the training runtime's pods ("TrainingRuntime/name/job")."""
    found = {}
    for doc in docs:
        name, spec = f"{doc['kind']}/{doc['metadata']['name']}", doc.get("spec", {})
        if doc["kind"] in ("Deployment", "StatefulSet", "Job"):
            found[name] = (spec["template"]["metadata"]["labels"], spec["template"]["spec"])
        elif doc["kind"] == "CronJob":
            template = spec["jobTemplate"]["spec"]["template"]
            found[name] = (template["metadata"]["labels"], template["spec"])
        elif doc["kind"] == "Pod":
            found[name] = (doc["metadata"]["labels"], spec)
        elif doc["kind"] == "InferenceService":
            found[name] = (spec["predictor"]["labels"], spec["predictor"])
        elif doc["kind"] == "TrainingRuntime":
            for job in spec["template"]["spec"]["replicatedJobs"]:
                template = job["template"]["spec"]["template"]
                found[f"{name}/{job['name']}"] = (template["metadata"]["labels"], template["spec"])
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


@pytest.mark.parametrize("values", ["default", "ci-training"])
def test_every_pod_meets_the_restricted_pod_security_level(
    validation: tuple[subprocess.CompletedProcess, Path], values: str
) -> None:
    _, out = validation
    for name, spec in pod_specs(rendered(out, values)).items():
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
    workloads |= {"CronJob/pinrec-retrain", "TrainingRuntime/pinrec-trainer/node"}
    assert workloads <= set(found)
    for name, (labels, spec) in found.items():
        hook = name.startswith(("Job/", "Pod/", "CronJob/"))
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


def trainjob_of(docs: list[dict]) -> dict:
    """The TrainJob every retraining creates: the one the training ConfigMap carries."""
    configmap = the_object(docs, "ConfigMap", "pinrec-training")
    return yaml.safe_load(configmap["data"]["trainjob.yaml"])


@pytest.mark.parametrize(
    ("sets", "runtime_ref"),
    [
        ((), {"apiGroup": "trainer.kubeflow.org", "kind": "TrainingRuntime", "name": "pinrec-trainer"}),
        (
            ("training.runtime.clusterTrainingRuntime=torch-distributed",),
            {
                "apiGroup": "trainer.kubeflow.org",
                "kind": "ClusterTrainingRuntime",
                "name": "torch-distributed",
            },
        ),
    ],
)
def test_the_trainjob_runs_on_the_charts_runtime_or_a_cluster_runtime(
    sets: tuple[str, ...], runtime_ref: dict
) -> None:
    docs = helm_objects(*sets, values_files=(KIND_VALUES, TRAINING_VALUES))
    trainjob = trainjob_of(docs)
    assert trainjob["metadata"]["generateName"] == "pinrec-retrain-" and "name" not in trainjob["metadata"]
    assert trainjob["spec"]["runtimeRef"] == runtime_ref
    trainer = trainjob["spec"]["trainer"]
    assert trainer["command"] == ["bash", "/etc/pinrec/training/retrain.sh"]
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (1, 1)
    assert trainer["resourcesPerNode"]["limits"] == {"cpu": "2", "memory": "3Gi"}
    assert not [e for e in trainer["env"] if e["name"].startswith("PET_")], "the torch runtime sets PET_*"
    runtimes = [doc for doc in docs if doc["kind"] == "TrainingRuntime"]
    if runtime_ref["kind"] == "TrainingRuntime":
        (runtime,) = runtimes
        assert runtime["spec"]["mlPolicy"] == {"numNodes": 1, "torch": {}}
        (job,) = runtime["spec"]["template"]["spec"]["replicatedJobs"]
        assert job["name"] == "node"
        assert job["template"]["metadata"]["labels"] == {
            "trainer.kubeflow.org/trainjob-ancestor-step": "trainer"
        }
        pod = job["template"]["spec"]["template"]["spec"]
        assert "runtimePatches" not in trainjob["spec"]
    else:
        assert not runtimes
        (patch,) = trainjob["spec"]["runtimePatches"]
        (job,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
        assert job["name"] == "node"
        pod = job["template"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["name"] == "node"  # the trainer container Trainer looks for
    assert {m["name"]: m["mountPath"] for m in container["volumeMounts"]} == {
        "tmp": "/tmp",
        "models": "/mnt/models",
        "feature-repo": "/var/lib/pinrec/feature_repo",
        "training": "/etc/pinrec/training",
    }
    assert (
        pod["securityContext"]["runAsNonRoot"]
        and container["securityContext"]["allowPrivilegeEscalation"] is False
    )
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["models"]["persistentVolumeClaim"] == {"claimName": "pinrec-models"}
    assert volumes["training"]["configMap"]["name"] == "pinrec-training"


def test_a_cluster_runtimes_pods_get_the_charts_placement_through_runtime_patches(
    validation: tuple[subprocess.CompletedProcess, Path],
) -> None:
    _, out = validation
    docs = rendered(out, "cluster-runtime")
    hook = the_object(docs, "TrainJob", "pinrec-retrain-initial")  # training.runOnInstall
    assert hook["metadata"]["annotations"]["helm.sh/hook"] == "post-install"
    assert hook["spec"] == trainjob_of(docs)["spec"]
    assert hook["spec"]["trainer"]["image"].endswith(f"@{DIGEST}")
    (patch,) = hook["spec"]["runtimePatches"]
    template = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"][
        "template"
    ]
    assert template["metadata"]["labels"]["app.kubernetes.io/component"] == "trainer"
    assert template["spec"]["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert [t["key"] for t in template["spec"]["tolerations"]] == ["pinrec.io/dedicated"]
    assert template["spec"]["affinity"]["nodeAffinity"]
    # runtimePatches carry no topology spread or priority class: the cluster's runtime places those.
    assert not {"topologySpreadConstraints", "priorityClassName"} & template["spec"].keys()


@pytest.mark.parametrize(("value", "expected"), [(4, 4), ("auto", None)])
def test_num_proc_per_node_auto_leaves_it_to_trainer(value: int | str, expected: int | None) -> None:
    docs = helm_objects(f"training.numProcPerNode={value}", values_files=(KIND_VALUES, TRAINING_VALUES))
    assert trainjob_of(docs)["spec"]["trainer"].get("numProcPerNode") == expected
    refused = helm_template("training.numProcPerNode=gpu", values_files=(KIND_VALUES, TRAINING_VALUES))
    assert refused.returncode != 0 and "/training/numProcPerNode" in refused.stderr


def test_training_on_gpus_takes_a_cuda_image_and_the_gpus_of_resources_per_node() -> None:
    """GPU nodes: the TrainJob asks for the GPUs, Trainer starts one process per GPU, and the trainer pods run
    the CUDA image (the release's own keeps a CPU-only torch); `pinrec train --device auto` then trains each
    process on its GPU with NCCL."""
    gpu_values = (
        "training.numProcPerNode=auto",
        "training.image.repository=ghcr.io/pinrec/pinrec-cuda",
        "training.image.tag=cu128",
    )
    resources = 'training.resourcesPerNode={"limits": {"cpu": "16", "memory": "64Gi", "nvidia.com/gpu": 2}}'
    gpu_toleration = (
        'training.tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]'
    )
    docs = helm_objects(
        *gpu_values, set_json=(resources, gpu_toleration), values_files=(KIND_VALUES, TRAINING_VALUES)
    )
    trainer = trainjob_of(docs)["spec"]["trainer"]
    assert trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == 2 and "numProcPerNode" not in trainer
    assert trainer["image"] == "ghcr.io/pinrec/pinrec-cuda:cu128"
    (runtime,) = [doc for doc in docs if doc["kind"] == "TrainingRuntime"]
    pod = runtime["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == "ghcr.io/pinrec/pinrec-cuda:cu128"
    assert [t["key"] for t in pod["tolerations"]] == ["nvidia.com/gpu"]
    serving = the_object(docs, "Deployment", "pinrec-consumer")["spec"]["template"]["spec"]["containers"][0]
    assert serving["image"] == "pinrec:dev", "only training takes the CUDA image"
    digest = helm_objects(
        "training.image.repository=r/cuda",
        f"training.image.digest={DIGEST}",
        values_files=(KIND_VALUES, TRAINING_VALUES),
    )
    assert trainjob_of(digest)["spec"]["trainer"]["image"] == f"r/cuda@{DIGEST}"


RETRAIN_STUB = """#!/usr/bin/env bash
# Records its call (one line, shell-quoted) and exits as told.
printf '%q ' "$(basename "$0")" "$@" >> "$RETRAIN_CALLS"
echo >> "$RETRAIN_CALLS"
if [[ $(basename "$0") == pinrec && $1 == promote ]]; then exit "${PROMOTE_STATUS:-0}"; fi
exit "${STUB_STATUS:-0}"
"""


def run_retrain(
    tmp_path: Path, args: list[str], **env: str
) -> tuple[subprocess.CompletedProcess, list[list[str]]]:
    """files/retrain.sh as the trainer runs it, with `torchrun` and `pinrec` replaced by recording stubs."""
    stubs = tmp_path / "bin"
    stubs.mkdir(exist_ok=True)
    for name in ("torchrun", "pinrec"):
        (stubs / name).write_text(RETRAIN_STUB)
        (stubs / name).chmod(0o755)
    calls = tmp_path / "calls"
    calls.unlink(missing_ok=True)
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("PET_", "JOB_COMPLETION_INDEX"))}
    environment |= {"PATH": f"{stubs}:{os.environ['PATH']}", "RETRAIN_CALLS": str(calls), **env}
    result = subprocess.run(
        ["bash", str(RETRAIN_SCRIPT), *args], env=environment, capture_output=True, text=True, timeout=60
    )
    recorded = [shlex.split(line) for line in calls.read_text().splitlines()] if calls.exists() else []
    return result, recorded


@pytest.fixture(scope="module")
def training_render() -> list[dict]:
    return helm_objects(values_files=(KIND_VALUES, TRAINING_VALUES))


def test_the_trainer_runs_torchrun_then_finetunes_and_promotes_on_node_0(
    training_render: list[dict], tmp_path: Path
) -> None:
    trainer = trainjob_of(training_render)["spec"]["trainer"]
    shipped = the_object(training_render, "ConfigMap", "pinrec-training")["data"]["retrain.sh"]
    assert shipped == RETRAIN_SCRIPT.read_text()

    result, calls = run_retrain(tmp_path, trainer["args"], PET_NODE_RANK="0", PET_NNODES="2")

    assert result.returncode == 0, result.stderr
    (release,) = re.findall(r"/mnt/models/releases/(\d{8}T\d{6}Z)/pretrained", " ".join(calls[0]))
    pretrained, candidate = (
        f"/mnt/models/releases/{release}/pretrained",
        f"/mnt/models/releases/{release}/finetuned-{release}",
    )
    log = ["--data", "/mnt/models/event-log"]
    assert calls == [
        ["torchrun", "--no-python", "pinrec", "train", *log, "--out", pretrained, "--time-budget-min", "10"],
        ["pinrec", "finetune", "--artifact", pretrained, *log]
        + ["--surface", "home", "--surface", "search", "--surface", "related", "--out", candidate],
        [
            "pinrec",
            "promote",
            "--candidate",
            candidate,
            "--serving",
            "/mnt/models/current",
            "--tolerance",
            "0",
        ],
    ]
    assert f"now serving {candidate}" in result.stdout


def test_only_node_0_finetunes_and_promotes(training_render: list[dict], tmp_path: Path) -> None:
    args = trainjob_of(training_render)["spec"]["trainer"]["args"]
    result, calls = run_retrain(tmp_path, args, PET_NODE_RANK="1", PET_NNODES="2")
    assert result.returncode == 0, result.stderr
    assert [call[:4] for call in calls] == [["torchrun", "--no-python", "pinrec", "train"]]
    # Without PET_NODE_RANK, the Job's completion index says which node this is.
    _, calls = run_retrain(tmp_path, args, JOB_COMPLETION_INDEX="1")
    assert len(calls) == 1


@pytest.mark.parametrize(("promote_status", "exit_status"), [("3", 0), ("1", 1)])
def test_a_refused_candidate_ends_the_run_successfully(
    training_render: list[dict], tmp_path: Path, promote_status: str, exit_status: int
) -> None:
    args = trainjob_of(training_render)["spec"]["trainer"]["args"]
    result, calls = run_retrain(tmp_path, args, PROMOTE_STATUS=promote_status)
    assert result.returncode == exit_status, result.stderr
    assert calls[-1][:2] == ["pinrec", "promote"]


def test_a_failed_training_stops_the_run(training_render: list[dict], tmp_path: Path) -> None:
    args = trainjob_of(training_render)["spec"]["trainer"]["args"]
    result, calls = run_retrain(tmp_path, args, STUB_STATUS="1")
    assert result.returncode == 1
    assert [call[0] for call in calls] == ["torchrun"]
    result, _ = run_retrain(tmp_path, ["--event-log", "/x", "--models", "/mnt/models"])
    assert result.returncode == 2 and "--serving" in result.stderr


def test_the_retrain_script_is_valid_bash_and_shellcheck_clean() -> None:
    assert subprocess.run(["bash", "-n", str(RETRAIN_SCRIPT)], capture_output=True).returncode == 0
    assert RETRAIN_SCRIPT.read_text().splitlines()[:1] == ["#!/usr/bin/env bash"]
    assert "set -euo pipefail" in RETRAIN_SCRIPT.read_text()
    shellcheck = ROOT / ".venv" / "bin" / "shellcheck"
    if shellcheck.exists():
        result = subprocess.run([str(shellcheck), str(RETRAIN_SCRIPT)], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout


def test_the_cronjob_submits_retraining_only_with_a_schedule(training_render: list[dict]) -> None:
    cronjob = the_object(training_render, "CronJob", "pinrec-retrain")["spec"]
    assert (cronjob["schedule"], cronjob["timeZone"], cronjob["concurrencyPolicy"]) == (
        "0 3 * * *",
        "Etc/UTC",
        "Forbid",
    )
    assert (cronjob["successfulJobsHistoryLimit"], cronjob["failedJobsHistoryLimit"]) == (3, 3)
    pod = cronjob["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "pinrec-retrain" and pod["automountServiceAccountToken"] is True
    (container,) = pod["containers"]
    assert container["command"] == ["python", "/etc/pinrec/training/submit-trainjob.py"]
    unscheduled = helm_objects("training.schedule=", values_files=(KIND_VALUES, TRAINING_VALUES))
    assert not {"CronJob", "Role", "RoleBinding"} & {doc["kind"] for doc in unscheduled}
    assert trainjob_of(unscheduled) == trainjob_of(training_render)


def test_the_submitter_may_only_create_get_and_list_trainjobs(training_render: list[dict]) -> None:
    (role,) = [doc for doc in training_render if doc["kind"] in ("Role", "ClusterRole")]
    assert role["rules"] == [
        {
            "apiGroups": ["trainer.kubeflow.org"],
            "resources": ["trainjobs"],
            "verbs": ["create", "get", "list"],
        }
    ]
    (binding,) = [doc for doc in training_render if doc["kind"] in ("RoleBinding", "ClusterRoleBinding")]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "pinrec-retrain", "namespace": "pinrec"}
    ]
    # Every other pod of the release keeps its token out.
    for name, spec in pod_specs(training_render).items():
        assert spec.get("automountServiceAccountToken") is (name == "CronJob/pinrec-retrain"), name


def load_submit_script():
    spec = importlib.util.spec_from_file_location("submit_trainjob", SUBMIT_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_submitter_takes_the_trainjob_the_chart_renders(
    training_render: list[dict], tmp_path: Path
) -> None:
    submit = load_submit_script()
    configmap = the_object(training_render, "ConfigMap", "pinrec-training")
    manifest = tmp_path / "trainjob.yaml"
    manifest.write_text(configmap["data"]["trainjob.yaml"])
    assert submit.load_manifest(str(manifest)) == trainjob_of(training_render)
    named = trainjob_of(training_render)
    named["metadata"]["name"] = "fixed"
    manifest.write_text(yaml.safe_dump(named))
    with pytest.raises(SystemExit, match="generateName, no name"):
        submit.load_manifest(str(manifest))
    running = {"status": {"conditions": [{"type": "Created", "status": "True"}]}}
    done = {
        "status": {
            "conditions": [{"type": "Created", "status": "True"}, {"type": "Complete", "status": "True"}]
        }
    }
    assert (submit.finished({}), submit.finished(running), submit.finished(done)) == (False, False, True)


def test_training_pods_admit_only_each_other(training_render: list[dict]) -> None:
    trainers = {
        "app.kubernetes.io/name": "pinrec",
        "app.kubernetes.io/instance": "pinrec",
        "app.kubernetes.io/component": "trainer",
    }
    policy = the_object(training_render, "NetworkPolicy", "pinrec-trainer")["spec"]
    assert policy["podSelector"] == {"matchLabels": trainers}
    # Any port: torchrun's store on 29400, and gloo's or NCCL's connections on ports they pick.
    assert policy["ingress"] == [{"from": [{"podSelector": {"matchLabels": trainers}}]}]
    pod_labels_ = pods(training_render)["TrainingRuntime/pinrec-trainer/node"][0]
    assert trainers.items() <= pod_labels_.items()


def test_training_without_the_trainer_api_fails_the_render_with_the_reason() -> None:
    served = tuple(api for api in SERVED_APIS if api != TRAINER_API)
    result = helm_template(values_files=(KIND_VALUES, TRAINING_VALUES), api_versions=served)
    assert result.returncode != 0
    assert (
        f"training.enabled needs the TrainJob API ({TRAINER_API}), which the cluster does not serve"
        in result.stderr
    )
    assert f"Pass --api-versions {TRAINER_API}" in result.stderr
    assert helm_template(api_versions=served).returncode == 0  # training off: no Trainer needed


def test_training_reads_an_object_store_event_log_and_names_its_release_after_the_trainjob() -> None:
    docs = helm_objects(
        "sink.out=s3://bucket/events", "sink.volume.claimName=", values_files=(KIND_VALUES, TRAINING_VALUES)
    )
    runtime = next(d for d in docs if d["kind"] == "TrainingRuntime")
    assert runtime["spec"]["template"]["spec"]["failurePolicy"] == {"maxRestarts": 2}
    config = next(d for d in docs if d["kind"] == "ConfigMap" and "trainjob.yaml" in d.get("data", {}))
    trainer = yaml.safe_load(config["data"]["trainjob.yaml"])["spec"]["trainer"]
    assert trainer["args"][trainer["args"].index("--event-log") + 1] == "s3://bucket/events"
    release = next(e for e in trainer["env"] if e["name"] == "PINREC_RELEASE_ID")
    assert (
        release["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.labels['jobset.sigs.k8s.io/jobset-name']"
    )


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (
            ("model.storageUri=s3://models/v1", "model.bootstrap.enabled=false"),
            "training.enabled retrains into the model claim",
        ),
        (("training.eventLog=/data/events",), "which is on no claim the trainer mounts"),
        (("sink.enabled=false", "sink.out="), "training.enabled needs an event log"),
    ],
)
def test_training_refuses_values_it_cannot_run_with(sets: tuple[str, ...], message: str) -> None:
    result = helm_template(*sets, values_files=(KIND_VALUES, TRAINING_VALUES))
    assert result.returncode != 0
    assert message in result.stderr

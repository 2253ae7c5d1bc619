"""The chart against a live API server (k8s/e2e.sh, the same as `make k8s-e2e`): a private control plane with
kwok nodes; the install, its hooks, pods and InferenceService, `helm test`, the upgrade and the uninstall all
pass; a value Pod Security refuses fails the run with the API server's own message; and a run that is
interrupted (SIGTERM) or killed (SIGKILL) leaves no process behind. The binaries come from
`make k8s-tools` (`make test` builds them first); the pure parts are checked without a cluster."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import yaml

from pinrec.localstack.chart_e2e import (
    claims,
    embedded_objects,
    predictor_pod,
    restricted_namespace,
    volume_for,
)
from pinrec.localstack.control_plane import STOP_ORDER
from pinrec.localstack.k8s_tools import k8s_tool_paths
from pinrec.localstack.processes import die_with_parent
from pinrec.settings import Settings
from tests.helpers import REPO
from tests.test_k8s import CHART, helm_objects

E2E = REPO / "k8s" / "e2e.sh"
STEPS = [
    "control plane",
    "CRDs",
    "namespace",
    "dry-runs",
    "volumes",
    "install",
    "hooks",
    "pods",
    "InferenceService",
    "retraining",
    "helm test",
    "upgrade",
    "uninstall",
    "stop",
]


def require_tools() -> None:
    missing = [name for name, path in k8s_tool_paths(Settings().local_stack).items() if not path.is_file()]
    if missing:
        pytest.fail(f"{', '.join(missing)} not built: run `make k8s-tools` (make test does it first)")


def start_e2e(state: Path, *args: str) -> subprocess.Popen:
    """k8s/e2e.sh as make k8s-e2e runs it, bound to this test run: if pytest dies, it dies."""
    require_tools()
    return subprocess.Popen(
        ["bash", str(E2E), "--state-dir", str(state), "--summary-json", str(state.parent / "summary.json")]
        + list(args),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
        preexec_fn=die_with_parent,
    )


def finish(process: subprocess.Popen, timeout_s: float = 600) -> str:
    try:
        output, _ = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        pytest.fail(f"the e2e run took over {timeout_s:.0f} s:\n{output[-4000:]}")
    return output


def processes_of(state: Path) -> list[str]:
    """Live processes started for this run: each names a file of its state folder on its command line."""
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        try:
            if process.info["status"] != psutil.STATUS_ZOMBIE and str(state) in " ".join(
                process.info["cmdline"]
            ):
                found.append(" ".join(process.info["cmdline"])[:120])
        except (psutil.Error, TypeError):
            continue
    return found


def no_processes_left(state: Path, within_s: float = 20) -> list[str]:
    deadline = time.monotonic() + within_s
    while (left := processes_of(state)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def test_the_chart_installs_passes_helm_test_upgrades_and_uninstalls(tmp_path: Path) -> None:
    state = tmp_path / "state"
    process = start_e2e(state)
    output = finish(process)
    assert process.returncode == 0, output[-6000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["passed"], summary
    steps = {step["name"]: step["detail"] for step in summary["steps"]}
    assert list(steps) == STEPS
    assert "7 applied server-side and Established" in steps["CRDs"]
    assert "enforce=restricted" in steps["namespace"]
    assert "defaults: " in steps["dry-runs"] and "values-production.yaml: " in steps["dry-runs"]
    # The retraining scenario, and the TrainJob its CronJob creates, against Kubeflow Trainer's CRD.
    assert "values-kind.yaml + training-values.yaml: " in steps["dry-runs"]
    assert "TrainJob pinrec-retrain-* (dry-run create)" in steps["dry-runs"]
    assert steps["dry-runs"].endswith("accepted, no warning")
    for kind in ("InferenceService", "StatefulSet", "TrainingRuntime", "CronJob"):
        assert kind in steps["install"]
    assert "1 sink" in steps["pods"]
    # The CronJob's own script, run as its ServiceAccount: it creates the TrainJob (against the Trainer CRD;
    # no controller runs it), holds back the next while that one is unfinished, and may not read pods.
    retraining = steps["retraining"]
    assert retraining.startswith("CronJob pinrec-retrain '0 3 * * *': its script, run as pinrec-retrain,")
    assert (
        "created TrainJob pinrec-retrain-" in retraining
        and "(runtime TrainingRuntime pinrec-trainer)" in retraining
    )
    assert "then held back while it is unfinished; the account may not read pods" in retraining
    for job in ("kafka-topics", "feast-apply", "model-bootstrap"):
        assert f"Job pinrec-{job}" in steps["hooks"]
    assert "strict server-side dry-run against KServe's CRD passed" in steps["InferenceService"]
    assert "passes Pod Security restricted" in steps["InferenceService"]
    assert "3 test pods Succeeded" in steps["helm test"]
    # The production-like values: a consumer per partition, spread over the three nodes.
    assert (
        "pinrec-consumer 1->3" in steps["upgrade"]
        and "(3 consumer, 1 kafka, 1 redis, 1 sink) on 3 of" in steps["upgrade"]
    )
    assert "InferenceService serves /mnt/models/releases/v2" in steps["upgrade"]
    assert "every pod removed" in steps["uninstall"]
    assert steps["stop"] == "stopped " + ", ".join(STOP_ORDER)
    assert "k8s e2e passed" in output
    assert not state.exists(), "a passing run removes its state folder"
    assert no_processes_left(state) == []


def test_a_value_pod_security_refuses_fails_with_the_api_servers_message(tmp_path: Path) -> None:
    state = tmp_path / "state"
    process = start_e2e(state, "--set", "containerSecurityContext.allowPrivilegeEscalation=true")
    output = finish(process)
    assert process.returncode == 1, output[-6000:]
    assert 'violates PodSecurity "restricted:latest": allowPrivilegeEscalation != false' in output
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert not summary["passed"]
    install = next(step for step in summary["steps"] if step["name"] == "install")
    assert install["detail"].startswith("FAILED: helm install: the API server refused pods")
    assert install["seconds"] < 60, "refused pods fail the run at once, not at helm's timeout"
    assert summary["steps"][-1]["detail"] == "stopped " + ", ".join(STOP_ORDER)
    assert (state / "logs" / "kube-apiserver.log").is_file(), "a failed run keeps its logs"
    assert no_processes_left(state) == []


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL])
def test_an_interrupted_run_leaves_no_process_behind(tmp_path: Path, signum: signal.Signals) -> None:
    state = tmp_path / "state"
    process = start_e2e(state)
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("control plane up"):
            break
    else:
        pytest.fail(f"the control plane never came up: rc {process.wait()}")
    assert len(processes_of(state)) >= len(STOP_ORDER)
    process.send_signal(signum)
    output = finish(process, timeout_s=120)
    assert process.returncode != 0
    if signum == signal.SIGTERM:  # stopped in order, with the summary printed
        assert "interrupted by SIGTERM" in output
        assert "stopped " + ", ".join(STOP_ORDER) in output
    assert no_processes_left(state) == [], "SIGKILL: every process dies with the run (PR_SET_PDEATHSIG)"


def rendered_kind_release() -> list[dict]:
    """The chart rendered offline with the e2e's install values."""
    return helm_objects(values_files=(CHART / "values-kind.yaml", CHART / "ci" / "monitoring-values.yaml"))


def test_every_claim_of_the_release_gets_a_volume_reserved_for_it(tmp_path: Path) -> None:
    docs = rendered_kind_release()
    found = dict(claims(docs))
    assert set(found) == {"pinrec-feature-repo", "pinrec-models", "data-pinrec-kafka-0"}
    volume = volume_for("data-pinrec-kafka-0", found["data-pinrec-kafka-0"], "ns", tmp_path)
    assert volume["spec"]["claimRef"] == {"namespace": "ns", "name": "data-pinrec-kafka-0"}
    assert volume["spec"]["capacity"]["storage"] == "2Gi"  # values-kind.yaml's kafka persistence
    assert volume["spec"]["accessModes"] == found["data-pinrec-kafka-0"]["accessModes"]


def test_the_predictor_pod_keeps_the_pod_fields_and_drops_kserves_own() -> None:
    isvc = next(doc for doc in rendered_kind_release() if doc["kind"] == "InferenceService")
    pod = predictor_pod(isvc, "ns")
    predictor = isvc["spec"]["predictor"]
    assert pod["spec"]["containers"] == predictor["containers"]
    assert pod["spec"]["securityContext"] == predictor["securityContext"]
    assert pod["metadata"]["labels"] == predictor["labels"]
    for kserve_only in ("minReplicas", "maxReplicas", "labels", "scaleMetric"):
        assert kserve_only not in pod["spec"]


def test_the_release_namespace_enforces_restricted_pod_security() -> None:
    labels = restricted_namespace("x")["metadata"]["labels"]
    assert {labels[f"pod-security.kubernetes.io/{mode}"] for mode in ("enforce", "warn", "audit")} == {
        "restricted"
    }
    yaml.safe_dump(restricted_namespace("x"))  # plain data, as server-side apply sends it


def test_the_trainjob_a_configmap_carries_gets_its_own_dry_run() -> None:
    training = helm_objects(values_files=(CHART / "values-kind.yaml", CHART / "ci" / "training-values.yaml"))
    (trainjob,) = embedded_objects(training)
    assert trainjob["kind"] == "TrainJob" and trainjob["metadata"]["generateName"] == "pinrec-retrain-"
    assert embedded_objects(rendered_kind_release()) == []  # the dashboard's JSON is no object

"""The chart against a live API server (`pinrec local k8s-e2e`, `make k8s-e2e`): start a private control
plane, apply the CRDs, enforce the `restricted` Pod Security level on the release namespace, install the
chart, check what it created, validate the InferenceService server-side against KServe's CRD, run
`helm test`, upgrade and check the rollout, uninstall, stop everything. Each step's outcome and time go to
a summary; the first failure stops the run with the API server's own message."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import yaml

from pinrec.localstack.control_plane import ControlPlane, ControlPlaneSettings
from pinrec.localstack.kube_api import KubeApi, KubeApiError, has_condition, wait_for
from pinrec.localstack.processes import die_with_parent
from pinrec.localstack.provision import GO_TOOLS, go_tool_path
from pinrec.settings import LocalStackSettings

log = logging.getLogger(__name__)

INSTANCE_LABEL = "app.kubernetes.io/instance"
# KServe's fields of a predictor that are not the pod's (ComponentExtensionSpec and the framework specs):
# stripped to build the pod KServe's RawDeployment mode would create from it.
_KSERVE_ONLY_FIELDS = frozenset(
    {
        "minReplicas",
        "maxReplicas",
        "scaleTarget",
        "scaleMetric",
        "scaleMetricType",
        "autoScaling",
        "containerConcurrency",
        "timeout",
        "canaryTrafficPercent",
        "logger",
        "batcher",
        "labels",
        "annotations",
        "deploymentStrategy",
        "storageUris",
        "workerSpec",
        "model",
    }
)


class E2EFailure(RuntimeError):
    """A step of the e2e run failed; the message says which and why."""


class Interrupted(E2EFailure):
    """A signal asked the run to stop: what was started is stopped in order before exiting."""


def _interrupt(signum: int, frame: object) -> None:
    raise Interrupted(f"interrupted by {signal.Signals(signum).name}")


@dataclass(frozen=True)
class ChartE2ESettings:
    chart: Path  # the chart folder (helm/pinrec)
    crds: Path  # CRDs applied before the install (../shared/k8s/crds)
    state_dir: Path  # the control plane's state, helm's home, the summary
    install_values: tuple[Path, ...]  # -f files of the install
    # Renders checked by a strict server-side dry-run of every object before the install, each -f files.
    dry_run_values: tuple[tuple[Path, ...], ...]
    upgrade_values: tuple[Path, ...]  # -f files added by the upgrade
    # The artifact folder the upgrade rolls the predictor to, in the model claim (pvc://<claim>/<path>): where
    # a retraining's gate promotes to.
    upgrade_model_path: str = "releases/v2"
    install_set: tuple[str, ...] = ()  # extra --set of the install (for example a deliberately broken value)
    namespace: str = "pinrec-e2e"
    release: str = "pinrec"
    nodes: int = 3
    timeout_s: float = 300.0  # each helm call's --timeout


@dataclass
class Step:
    name: str
    seconds: float
    detail: str


@dataclass
class Summary:
    steps: list[Step] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    @contextmanager
    def step(self, name: str) -> Iterator[list[str]]:
        """Time a step; what the body appends to the yielded list is its detail."""
        detail: list[str] = []
        began = time.monotonic()
        log.info("e2e: %s ...", name)
        try:
            yield detail
        except Exception as error:
            self.steps.append(Step(name, time.monotonic() - began, f"FAILED: {error}"))
            raise
        self.steps.append(Step(name, time.monotonic() - began, "; ".join(detail)))
        log.info("e2e: %s done in %.1f s: %s", name, time.monotonic() - began, "; ".join(detail))

    def table(self) -> str:
        width = max(len(step.name) for step in self.steps)
        lines = [f"{step.name:<{width}}  {step.seconds:6.1f} s  {step.detail}" for step in self.steps]
        lines.append(f"{'total':<{width}}  {time.monotonic() - self.started:6.1f} s")
        return "\n".join(lines)

    def as_json(self) -> dict:
        return {
            "steps": [step.__dict__ for step in self.steps],
            "total_s": round(time.monotonic() - self.started, 1),
        }


class Helm:
    """The provisioned helm, with its own home under the state folder and the control plane's kubeconfig."""

    def __init__(self, tools: LocalStackSettings, kubeconfig: Path, home: Path, namespace: str) -> None:
        helm = next(tool for tool in GO_TOOLS if tool.name == "helm")
        self.binary = go_tool_path(tools, helm)
        if not self.binary.is_file():
            raise FileNotFoundError(f"helm is not at {self.binary}: run `pinrec local install`")
        self.prefix = [str(self.binary), "--kubeconfig", str(kubeconfig), "--namespace", namespace]
        self.env = {
            **os.environ,
            "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_CACHE_HOME": str(home / "cache"),
            "HELM_DATA_HOME": str(home / "data"),
        }

    def start(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen(
            [*self.prefix, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=self.env,
            preexec_fn=die_with_parent,
        )

    def render(self, release: str, chart: Path, values_args: list[str]) -> list[dict]:
        """`helm template --validate`: rendered with the live API server's version and APIs."""
        return _documents(self.run("template", release, str(chart), "--validate", *values_args))

    def run(self, *args: str) -> str:
        result = subprocess.run(
            [*self.prefix, *args], capture_output=True, text=True, env=self.env, preexec_fn=die_with_parent
        )
        if result.returncode != 0:
            raise E2EFailure(f"helm {args[0]} failed:\n{(result.stderr or result.stdout).strip()}")
        return result.stdout


def _documents(text: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def refused_pods(api: KubeApi, namespace: str, since: float) -> str | None:
    """The API server's message when a controller could not create pods (Pod Security, quota, a bad
    field): these never become ready, so waiting for them would only time out."""
    for event in api.list("v1", "Event", namespace):
        if event.get("type") == "Warning" and event.get("reason") == "FailedCreate":
            stamp = event.get("lastTimestamp") or event.get("eventTime")
            if stamp and datetime.fromisoformat(stamp).timestamp() < since:
                continue  # from an earlier step
            involved = event["involvedObject"]
            return f"{involved['kind']} {involved['name']}: {event['message']}"
    return None


def run_helm_watched(helm: Helm, api: KubeApi, namespace: str, args: list[str]) -> str:
    """Run a helm command that waits for readiness; stop it early when the API server refuses pods."""
    began = time.time() - 1
    process = helm.start(*args)
    try:
        while process.poll() is None:
            refused = refused_pods(api, namespace, began)
            if refused is not None:
                raise E2EFailure(f"helm {args[0]}: the API server refused pods: {refused}")
            time.sleep(1)
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=30)
    output = process.stdout.read() if process.stdout else ""
    if process.returncode != 0:
        raise E2EFailure(f"helm {args[0]} failed:\n{output.strip()}")
    return output


def apply_crds(api: KubeApi, folder: Path) -> list[str]:
    """Server-side apply every CRD in folder (KServe's is too large for client-side apply), then wait
    until each is Established."""
    names = []
    for path in sorted(folder.glob("*.yaml")):
        for crd in _documents(path.read_text()):
            if crd.get("kind") == "CustomResourceDefinition":
                api.apply(crd)
                names.append(crd["metadata"]["name"])
    if not names:
        raise E2EFailure(f"no CustomResourceDefinition in {folder}")

    def not_established() -> str | None:
        waiting = [
            name
            for name in names
            if not has_condition(
                api.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", name), "Established"
            )
        ]
        return ", ".join(waiting) or None

    wait_for(not_established, what="CRDs Established", timeout_s=60)
    return names


def restricted_namespace(name: str) -> dict:
    """The release namespace, enforcing (and warning and auditing at) the `restricted` Pod Security level."""
    levels = {f"pod-security.kubernetes.io/{mode}": "restricted" for mode in ("enforce", "warn", "audit")}
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": levels}}


def server_dry_run(api: KubeApi, manifests: list[dict], namespace: str) -> list[str]:
    """A strict server-side dry-run apply of every object, in a namespace of its own at Pod Security
    `restricted`: what the API server refuses (schema, unknown fields, Pod Security for pods) and what it
    warns about (Pod Security for workloads). The objects ConfigMaps carry for a CronJob to create (the
    retraining TrainJob, named by generateName) get a strict dry-run create, as the CronJob will make them.
    Only the ServiceAccounts are created for real (admission looks pods' accounts up), and the namespaces
    objects name for themselves (a dashboard's `monitoring`); the namespaces are deleted afterwards."""
    api.apply(restricted_namespace(namespace))
    others = {m["metadata"]["namespace"] for m in manifests if m["metadata"].get("namespace")} - {namespace}
    for other in others:
        api.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": other}})
    api.take_warnings()
    problems = []
    accounts_first = sorted(manifests, key=lambda m: m["kind"] != "ServiceAccount")
    for manifest in accounts_first:
        try:
            api.apply(manifest, namespace, dry_run=manifest["kind"] != "ServiceAccount")
        except KubeApiError as error:
            problems.append(str(error))
        problems += [f"{_object_name(manifest)}: {w}" for w in api.take_warnings()]
    for embedded in embedded_objects(manifests):
        try:
            api.create_dry_run(embedded, namespace)
        except KubeApiError as error:
            problems.append(f"{_object_name(embedded)} (in a ConfigMap): {error}")
        problems += [f"{_object_name(embedded)}: {w}" for w in api.take_warnings()]
    for created in (namespace, *others):
        api.delete("v1", "Namespace", created)
    return problems


def embedded_objects(manifests: list[dict]) -> list[dict]:
    """The objects rendered ConfigMaps carry for someone else to create (a `*.yaml` entry holding one object,
    such as the TrainJob the retraining CronJob submits)."""
    found = []
    for configmap in (m for m in manifests if m["kind"] == "ConfigMap"):
        for key, text in configmap.get("data", {}).items():
            if key.endswith(".yaml"):
                document = yaml.safe_load(text)
                if isinstance(document, dict) and {"apiVersion", "kind", "metadata"} <= document.keys():
                    found.append(document)
    return found


def _object_name(manifest: dict) -> str:
    metadata = manifest["metadata"]
    return f"{manifest['kind']} {metadata.get('name') or metadata.get('generateName', '?') + '*'}"


def _names(files: tuple[Path, ...]) -> str:
    return " + ".join(path.name for path in files) or "defaults"


def claims(manifests: list[dict]) -> list[tuple[str, dict]]:
    """Every claim the release will make: its PersistentVolumeClaims and those of its StatefulSets'
    volumeClaimTemplates, by name, with their spec."""
    found = [(m["metadata"]["name"], m["spec"]) for m in manifests if m["kind"] == "PersistentVolumeClaim"]
    for sts in (m for m in manifests if m["kind"] == "StatefulSet"):
        for template in sts["spec"].get("volumeClaimTemplates", []):
            for ordinal in range(sts["spec"].get("replicas", 1)):
                name = f"{template['metadata']['name']}-{sts['metadata']['name']}-{ordinal}"
                found.append((name, template["spec"]))
    return found


def volume_for(claim: str, spec: dict, namespace: str, root: Path) -> dict:
    """A hostPath PersistentVolume reserved for one claim (no provisioner runs here)."""
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": f"{namespace}-{claim}", "labels": {"pinrec.io/e2e": "true"}},
        "spec": {
            "capacity": {"storage": spec["resources"]["requests"]["storage"]},
            "accessModes": spec["accessModes"],
            "persistentVolumeReclaimPolicy": "Delete",
            "storageClassName": spec.get("storageClassName", ""),
            "hostPath": {"path": str(root / claim), "type": "DirectoryOrCreate"},
            "claimRef": {"namespace": namespace, "name": claim},
        },
    }


def predictor_pod(isvc: dict, namespace: str) -> dict:
    """The pod KServe's RawDeployment mode would create for the InferenceService's predictor: its pod
    fields as they are, its labels and annotations on the pod."""
    predictor = isvc["spec"]["predictor"]
    spec = {key: value for key, value in predictor.items() if key not in _KSERVE_ONLY_FIELDS}
    metadata = {
        "name": f"{isvc['metadata']['name']}-predictor-dry-run",
        "namespace": namespace,
        "labels": predictor.get("labels", {}),
        "annotations": predictor.get("annotations", {}),
    }
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


def rollout_incomplete(api: KubeApi, namespace: str, release: str) -> str | None:
    """Which Deployments and StatefulSets of the release have not rolled out their latest spec."""
    waiting = []
    selector = f"{INSTANCE_LABEL}={release}"
    for kind in ("Deployment", "StatefulSet"):
        for workload in api.list("apps/v1", kind, namespace, selector=selector):
            status, want = workload.get("status", {}), workload["spec"].get("replicas", 1)
            done = (
                status.get("observedGeneration", 0) >= workload["metadata"]["generation"]
                and status.get("updatedReplicas", 0) == want
                and status.get("readyReplicas", 0) == want
                and status.get("replicas", 0) == want
            )
            if not done:
                waiting.append(
                    f"{kind} {workload['metadata']['name']} {status.get('readyReplicas', 0)}/{want}"
                )
    return ", ".join(waiting) or None


def _pods_running(api: KubeApi, namespace: str) -> str:
    """Every pod of the namespace Running and Ready: how many of each component, on how many nodes."""
    pods = api.list("v1", "Pod", namespace)
    stuck = [p["metadata"]["name"] for p in pods if not has_condition(p, "Ready")]
    if stuck or not pods:
        raise E2EFailure(f"pods not Running and Ready: {', '.join(stuck) or 'there are none'}")
    components = Counter(
        p["metadata"].get("labels", {}).get("app.kubernetes.io/component", "?") for p in pods
    )
    nodes = {p["spec"].get("nodeName") for p in pods}
    listed = ", ".join(f"{count} {name}" for name, count in sorted(components.items()))
    return f"{len(pods)} Running and Ready ({listed}) on {len(nodes)} of the nodes"


def _hooks_succeeded(helm: Helm, release: str, *, tests: bool) -> list[str]:
    """The release's hooks (or its test hooks), each of whose last run must have Succeeded."""
    hooks = [
        hook
        for hook in json.loads(helm.run("status", release, "-o", "json")).get("hooks", [])
        if ("test" in hook.get("events", [])) == tests
    ]
    failed = [h["name"] for h in hooks if (h.get("last_run") or {}).get("phase") != "Succeeded"]
    if failed or not hooks:
        raise E2EFailure(f"hooks not Succeeded: {', '.join(failed) or 'there are none'}")
    return [f"{h['kind']} {h['name']}" for h in hooks]


def _isvc(api: KubeApi, manifests: list[dict], namespace: str) -> dict:
    rendered = next(m for m in manifests if m["kind"] == "InferenceService")
    live = api.get(rendered["apiVersion"], "InferenceService", rendered["metadata"]["name"], namespace)
    if live is None:
        raise E2EFailure(f"InferenceService {rendered['metadata']['name']} was not created")
    return live


def _artifacts_path(isvc: dict) -> str | None:
    """The --artifacts argument of the predictor's server."""
    for container in isvc["spec"]["predictor"].get("containers", []):
        args = container.get("args", [])
        if "--artifacts" in args:
            return args[args.index("--artifacts") + 1]
    return None


def _values_args(files: tuple[Path, ...], sets: tuple[str, ...] = ()) -> list[str]:
    return [arg for path in files for arg in ("-f", str(path))] + [arg for s in sets for arg in ("--set", s)]


def run_chart_e2e(
    tools: LocalStackSettings,
    settings: ChartE2ESettings,
    summary: Summary,
    on_ready: Callable[[ControlPlane], None] | None = None,
) -> None:
    """The whole run, step by step into summary; raises at the first failed step. The control plane is
    stopped in every case. on_ready is told the control plane once it is up."""
    plane = ControlPlane(tools, ControlPlaneSettings(settings.state_dir, nodes=settings.nodes))
    try:
        with summary.step("control plane") as detail:
            plane.start()
            detail.append(f"etcd, kube-apiserver {plane.server}, controller-manager, scheduler, kwok")
            detail.append(f"{settings.nodes} fake nodes Ready")
        if on_ready is not None:
            on_ready(plane)
        api = plane.api()
        try:
            helm = Helm(tools, plane.kubeconfig, settings.state_dir / "helm", settings.namespace)
            _install_test_upgrade_uninstall(summary, plane, api, helm, settings)
        finally:
            api.close()
    finally:
        with summary.step("stop") as detail:
            detail.append("stopped " + ", ".join(plane.stop()))


def _install_test_upgrade_uninstall(
    summary: Summary, plane: ControlPlane, api: KubeApi, helm: Helm, settings: ChartE2ESettings
) -> None:
    namespace, release, timeout = settings.namespace, settings.release, f"{settings.timeout_s:.0f}s"
    install_args = _values_args(settings.install_values, settings.install_set)
    with summary.step("CRDs") as detail:
        detail.append(f"{len(apply_crds(api, settings.crds))} applied server-side and Established")
    with summary.step("namespace") as detail:
        api.apply(restricted_namespace(namespace))
        detail.append(f"{namespace}, Pod Security enforce=restricted")
    with summary.step("dry-runs") as detail:
        for index, files in enumerate(settings.dry_run_values):
            dry_run_namespace = f"{namespace}-dry-run-{index}"
            # A later --namespace overrides the one helm's prefix names.
            objects = helm.render(
                release, settings.chart, [*_values_args(files), "--namespace", dry_run_namespace]
            )
            problems = server_dry_run(api, objects, dry_run_namespace)
            if problems:
                raise E2EFailure(f"the render of {_names(files)} was refused:\n" + "\n".join(problems))
            carried = ", ".join(_object_name(m) for m in embedded_objects(objects))
            detail.append(
                f"{_names(files)}: {len(objects)} objects"
                + (f" + {carried} (dry-run create)" if carried else "")
            )
        detail.append("accepted, no warning")
    with summary.step("volumes") as detail:
        rendered = helm.render(release, settings.chart, install_args)
        for claim, spec in claims(rendered):
            api.apply(volume_for(claim, spec, namespace, settings.state_dir / "volumes"))
            detail.append(claim)
    with summary.step("install") as detail:
        run_helm_watched(
            helm,
            api,
            namespace,
            ["install", release, str(settings.chart), *install_args, "--wait", "--wait-for-jobs"]
            + ["--timeout", timeout],
        )
        manifests = _documents(helm.run("get", "manifest", release))
        _check_objects(api, manifests, namespace, detail)
    with summary.step("hooks") as detail:
        hooks = _hooks_succeeded(helm, release, tests=False)
        detail.append(f"{len(hooks)} completed: {', '.join(hooks)}")
    with summary.step("pods") as detail:
        detail.append(_pods_running(api, namespace))
    with summary.step("InferenceService") as detail:
        isvc = _isvc(api, manifests, namespace)
        rendered_isvc = next(m for m in manifests if m["kind"] == "InferenceService")
        api.apply(rendered_isvc, namespace, dry_run=True)
        detail.append("admitted; strict server-side dry-run against KServe's CRD passed")
        api.create_dry_run(predictor_pod(isvc, namespace), namespace)
        detail.append("its predictor pod passes Pod Security restricted (server-side dry-run)")
    with summary.step("retraining") as detail:
        detail.append(_submit_trainjobs(plane, api, manifests, namespace))
    with summary.step("helm test") as detail:
        helm.run("test", release, "--timeout", timeout)
        tests = _hooks_succeeded(helm, release, tests=True)
        detail.append(f"{len(tests)} test pods Succeeded: {', '.join(tests)}")
    with summary.step("upgrade") as detail:
        before = _replicas(api, namespace, release)
        upgrade_args = _values_args(
            settings.upgrade_values, (f"model.pvc.path={settings.upgrade_model_path}",)
        )
        run_helm_watched(
            helm,
            api,
            namespace,
            [
                "upgrade",
                release,
                str(settings.chart),
                *install_args,
                *upgrade_args,
                "--wait",
                "--wait-for-jobs",
            ]
            + ["--timeout", timeout],
        )
        wait_for(
            lambda: rollout_incomplete(api, namespace, release), what="rollout", timeout_s=settings.timeout_s
        )
        after = _replicas(api, namespace, release)
        changed = [
            f"{name} {before.get(name, 0)}->{count}"
            for name, count in after.items()
            if before.get(name) != count
        ]
        detail.append("rolled out; ready replicas " + (", ".join(changed) or "unchanged"))
        detail.append(_pods_running(api, namespace))
        served = _artifacts_path(_isvc(api, _documents(helm.run("get", "manifest", release)), namespace))
        if served != f"/mnt/models/{settings.upgrade_model_path}":
            raise E2EFailure(f"the InferenceService serves {served!r}, not {settings.upgrade_model_path!r}")
        detail.append(f"InferenceService serves {served}")
    with summary.step("uninstall") as detail:
        manifests = _documents(helm.run("get", "manifest", release))
        helm.run("uninstall", release, "--wait", "--timeout", timeout)
        kept = _check_removed(api, manifests, namespace)
        wait_for(
            lambda: ", ".join(p["metadata"]["name"] for p in api.list("v1", "Pod", namespace)) or None,
            what="pods gone",
            timeout_s=settings.timeout_s,
        )
        detail.append(f"{len(manifests) - len(kept)} objects and every pod removed")
        claims_left = [c["metadata"]["name"] for c in api.list("v1", "PersistentVolumeClaim", namespace)]
        detail.append(f"kept (helm.sh/resource-policy: keep): claims {', '.join(claims_left) or 'none'}")


def _submit_trainjobs(plane: ControlPlane, api: KubeApi, manifests: list[dict], namespace: str) -> str:
    """Run the retraining CronJob's own script (files/submit-trainjob.py, from the release's ConfigMap) as
    its ServiceAccount, twice: the first run creates the TrainJob (admitted against Kubeflow Trainer's CRD;
    no controller runs it here), the second holds back while that one is unfinished. The account's Role must
    allow that and nothing else (reading pods is refused)."""
    cronjobs = [m for m in manifests if m["kind"] == "CronJob"]
    if not cronjobs:
        return "training off: no CronJob"
    cronjob = cronjobs[0]
    pod = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    account = pod["serviceAccountName"]
    configmap = next(
        m for m in manifests if m["kind"] == "ConfigMap" and "submit-trainjob.py" in m.get("data", {})
    )
    folder = plane.settings.state_dir / "retraining"
    folder.mkdir(exist_ok=True)
    (folder / "submit-trainjob.py").write_text(configmap["data"]["submit-trainjob.py"])
    (folder / "trainjob.yaml").write_text(configmap["data"]["trainjob.yaml"])
    kubeconfig = plane.write_kubeconfig(folder / "kubeconfig", api.service_account_token(account, namespace))
    env = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "PINREC_NAMESPACE": namespace,
        "PINREC_TRAINJOB_MANIFEST": str(folder / "trainjob.yaml"),
    }
    outputs = []
    for _ in range(2):
        result = subprocess.run(
            [sys.executable, str(folder / "submit-trainjob.py")], capture_output=True, text=True, env=env
        )
        if result.returncode != 0:
            raise E2EFailure(
                f"the CronJob's submit-trainjob.py failed as {account}:\n{result.stderr.strip()}"
            )
        outputs.append(result.stdout.strip())
    if not outputs[0].startswith("created TrainJob") or "still running" not in outputs[1]:
        raise E2EFailure(f"submit-trainjob.py: expected a TrainJob, then a hold-back; got {outputs}")
    as_account = KubeApi(plane.server, api.service_account_token(account, namespace), plane.ca)
    try:
        as_account.list("v1", "Pod", namespace)
        raise E2EFailure(f"ServiceAccount {account} may read pods: its Role is wider than TrainJobs")
    except KubeApiError as error:
        if error.status != 403:
            raise
    finally:
        as_account.close()
    trainjob = outputs[0].split()[2]
    stored = api.get("trainer.kubeflow.org/v1alpha1", "TrainJob", trainjob, namespace) or {}
    runtime = stored.get("spec", {}).get("runtimeRef", {})
    if runtime.get("kind") == "TrainingRuntime" and not api.get(
        "trainer.kubeflow.org/v1alpha1", "TrainingRuntime", runtime["name"], namespace
    ):
        raise E2EFailure(f"TrainJob {trainjob} names TrainingRuntime {runtime['name']}, which is absent")
    schedule = f"CronJob {cronjob['metadata']['name']} '{cronjob['spec']['schedule']}'"
    return (
        f"{schedule}: its script, run as {account}, "
        f"created TrainJob {trainjob} (runtime {runtime.get('kind')} {runtime.get('name')}), then held back "
        "while it is unfinished; the account may not read pods"
    )


def _check_objects(api: KubeApi, manifests: list[dict], namespace: str, detail: list[str]) -> None:
    """Every object of the release's manifest exists on the API server."""
    missing = [
        f"{m['kind']} {m['metadata']['name']}"
        for m in manifests
        if api.get(m["apiVersion"], m["kind"], m["metadata"]["name"], _namespace_of(api, m, namespace))
        is None
    ]
    if missing:
        raise E2EFailure(f"objects of the release missing on the API server: {', '.join(missing)}")
    kinds = Counter(m["kind"] for m in manifests)
    detail.append(f"{len(manifests)} objects: " + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())))


def _check_removed(api: KubeApi, manifests: list[dict], namespace: str) -> list[str]:
    """The objects still there after uninstall, which must be those helm is told to keep."""
    kept, left = [], []
    for m in manifests:
        name = f"{m['kind']} {m['metadata']['name']}"
        if api.get(m["apiVersion"], m["kind"], m["metadata"]["name"], _namespace_of(api, m, namespace)):
            policy = m["metadata"].get("annotations", {}).get("helm.sh/resource-policy")
            (kept if policy == "keep" else left).append(name)
    if left:
        raise E2EFailure(f"left after uninstall: {', '.join(left)}")
    return kept


def _namespace_of(api: KubeApi, manifest: dict, namespace: str) -> str | None:
    namespaced = api.resource(manifest["apiVersion"], manifest["kind"]).namespaced
    return manifest["metadata"].get("namespace", namespace) if namespaced else None


def _replicas(api: KubeApi, namespace: str, release: str) -> dict[str, int]:
    selector = f"{INSTANCE_LABEL}={release}"
    return {
        w["metadata"]["name"]: w.get("status", {}).get("readyReplicas", 0)
        for kind in ("Deployment", "StatefulSet")
        for w in api.list("apps/v1", kind, namespace, selector=selector)
    }


def run_and_report(
    tools: LocalStackSettings, settings: ChartE2ESettings, *, keep_state: bool, summary_json: Path | None
) -> int:
    """The CLI's run: SIGTERM, SIGHUP and SIGINT stop it in order; the summary is printed (and written as
    JSON) whatever happens; the state folder is removed after a pass unless kept, and kept after a failure."""
    summary = Summary()
    handled = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)
    previous = {signum: signal.signal(signum, _interrupt) for signum in handled}
    failure: Exception | None = None
    try:
        run_chart_e2e(
            tools,
            settings,
            summary,
            on_ready=lambda plane: print(f"control plane up: KUBECONFIG={plane.kubeconfig}", flush=True),
        )
    except (E2EFailure, KubeApiError, TimeoutError, RuntimeError, OSError) as error:
        failure = error
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    print(summary.table(), flush=True)
    if summary_json is not None:
        report = summary.as_json() | {"passed": failure is None, "failure": str(failure) if failure else None}
        summary_json.write_text(json.dumps(report, indent=2) + "\n")
    if failure is not None:
        log.error("k8s e2e FAILED: %s\nstate and logs kept in %s", failure, settings.state_dir)
        return 1
    if not keep_state:
        shutil.rmtree(settings.state_dir, ignore_errors=True)
    print(f"k8s e2e passed{f': state kept in {settings.state_dir}' if keep_state else ''}", flush=True)
    return 0

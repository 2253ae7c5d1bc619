"""A private, live Kubernetes control plane on 127.0.0.1 for the chart's e2e run: etcd, kube-apiserver,
kube-controller-manager, kube-scheduler, and kwok playing the kubelet of fake nodes (pods reach Running
and Jobs complete without containers). Everything lives in one state folder; every process is bound to
ours (the kernel kills it if we die) and is stopped in the order that does not hang: kwok, the scheduler,
the controller manager, the API server, then etcd."""

from __future__ import annotations

import logging
import secrets
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pinrec.localstack.certificates import ControlPlaneCertificates, write_certificates
from pinrec.localstack.k8s_tools import k8s_tool_paths, kwok_stages_dir
from pinrec.localstack.kube_api import KubeApi, has_condition, wait_for
from pinrec.localstack.processes import pick_port, spawn, stop, wait_until
from pinrec.settings import LocalStackSettings

log = logging.getLogger(__name__)

FAKE_NODE_ANNOTATION = "kwok.x-k8s.io/node"
SERVICE_CIDR = "10.96.0.0/16"
# kwok's shipped stages used here: nodes become Ready and renew their leases, pods become Running and
# Ready, pods of Jobs complete, deleted pods go.
_KWOK_STAGES = (
    "node/fast/node-initialize.yaml",
    "node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
    "pod/fast/pod-ready.yaml",
    "pod/fast/pod-complete.yaml",
    "pod/fast/pod-delete.yaml",
)
# Our own stage: `helm test` pods are bare pods (no Job owns them); they succeed once Running.
_HELM_TEST_POD_COMPLETE = """\
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: helm-test-pod-complete
spec:
  resourceRef:
    apiGroup: v1
    kind: Pod
  selector:
    matchExpressions:
    - key: '.metadata.deletionTimestamp'
      operator: 'DoesNotExist'
    - key: '.status.phase'
      operator: 'In'
      values: ['Running']
    - key: '.metadata.annotations["helm.sh/hook"]'
      operator: 'In'
      values: ['test', 'test-success']
  next:
    statusTemplate: |
      {{ $now := Now }}
      containerStatuses:
      {{ range .spec.containers }}
      - image: {{ .image | Quote }}
        name: {{ .name | Quote }}
        ready: false
        restartCount: 0
        started: false
        state:
          terminated:
            exitCode: 0
            finishedAt: {{ $now | Quote }}
            reason: Completed
            startedAt: {{ $now | Quote }}
      {{ end }}
      phase: Succeeded
"""
# The order of stopping: the API server hangs on shutdown when etcd is gone first.
STOP_ORDER = ("kwok", "kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd")


@dataclass(frozen=True)
class ControlPlaneSettings:
    state_dir: Path  # certificates, etcd's data, kubeconfig, logs
    nodes: int = 3  # fake nodes, each in its own zone
    start_timeout_s: float = 120.0


@dataclass
class ControlPlane:
    """Start with start(), stop with stop() (idempotent); or use as a context manager."""

    tools: LocalStackSettings
    settings: ControlPlaneSettings
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    server: str = ""
    token: str = ""

    @property
    def kubeconfig(self) -> Path:
        return self.settings.state_dir / "kubeconfig"

    def log_path(self, name: str) -> Path:
        return self.settings.state_dir / "logs" / f"{name}.log"

    def __enter__(self) -> ControlPlane:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        binaries = k8s_tool_paths(self.tools)
        missing = [name for name, path in binaries.items() if not path.is_file()]
        if missing:
            raise FileNotFoundError(
                f"{', '.join(missing)} not built: run `pinrec local install --k8s` (about 9 minutes cold)"
            )
        state = self.settings.state_dir
        state.mkdir(parents=True, exist_ok=True)
        certs = write_certificates(state / "pki")
        self.token = secrets.token_hex(24)
        tokens = state / "pki" / "tokens.csv"
        tokens.write_text(f'{self.token},pinrec-e2e-admin,pinrec-e2e-admin,"system:masters"\n')
        tokens.chmod(0o600)
        ports: list[int] = []
        for _ in range(6):
            ports.append(pick_port(0, ports))
        etcd_client, etcd_peer, apiserver, controller_manager, scheduler, kwok = ports
        self.server = f"https://127.0.0.1:{apiserver}"
        self.write_kubeconfig(self.kubeconfig, self.token)

        started = time.monotonic()
        self._spawn("etcd", self._etcd_command(binaries["etcd"], etcd_client, etcd_peer))
        self._spawn(
            "kube-apiserver",
            self._apiserver_command(binaries["kube-apiserver"], certs, etcd_client, apiserver),
        )
        api = self.api()
        try:
            wait_until(
                api.ready,
                what="kube-apiserver",
                timeout_s=self.settings.start_timeout_s,
                alive=lambda: self._alive("kube-apiserver") and self._alive("etcd"),
                log_path=self.log_path("kube-apiserver"),
            )
            log.info("kube-apiserver ready at %s in %.1f s", self.server, time.monotonic() - started)
            common = [f"--kubeconfig={self.kubeconfig}", "--leader-elect=false", "--bind-address=127.0.0.1"]
            self._spawn(
                "kube-controller-manager",
                [
                    str(binaries["kube-controller-manager"]),
                    *common,
                    f"--secure-port={controller_manager}",
                    f"--service-account-private-key-file={certs.service_account_key}",
                    f"--root-ca-file={certs.ca}",
                    f"--service-cluster-ip-range={SERVICE_CIDR}",
                    f"--authentication-kubeconfig={self.kubeconfig}",
                    f"--authorization-kubeconfig={self.kubeconfig}",
                ],
            )
            self._spawn(
                "kube-scheduler",
                [
                    str(binaries["kube-scheduler"]),
                    *common,
                    f"--secure-port={scheduler}",
                    f"--authentication-kubeconfig={self.kubeconfig}",
                    f"--authorization-kubeconfig={self.kubeconfig}",
                ],
            )
            self._spawn("kwok", self._kwok_command(binaries["kwok"], kwok))
            self._add_nodes(api)
            wait_for(
                lambda: self._not_ready_nodes(api),
                what="fake nodes Ready",
                timeout_s=self.settings.start_timeout_s,
            )
            wait_for(
                lambda: (
                    None if api.get("v1", "ServiceAccount", "default", "default") else "no default account"
                ),
                what="the controller manager's default service account",
                timeout_s=self.settings.start_timeout_s,
            )
        finally:
            api.close()
        log.info(
            "control plane up in %.1f s: %d fake nodes, kubeconfig %s",
            time.monotonic() - started,
            self.settings.nodes,
            self.kubeconfig,
        )

    def api(self) -> KubeApi:
        return KubeApi(self.server, self.token, self.ca)

    def stop(self) -> list[str]:
        """Stop whatever is running, in STOP_ORDER; returns the names stopped."""
        stopped = []
        for name in STOP_ORDER:
            process = self.processes.pop(name, None)
            if process is not None and process.poll() is None:
                stop(process.pid, [Path(process.args[0]).name], timeout_s=20)
                process.wait(timeout=15)
                stopped.append(name)
        return stopped

    def _alive(self, name: str) -> bool:
        return self.processes[name].poll() is None

    def _spawn(self, name: str, command: list[str]) -> None:
        self.processes[name] = spawn(command, self.log_path(name), bound_to_parent=True)

    @property
    def ca(self) -> Path:
        return self.settings.state_dir / "pki" / "ca.crt"

    def write_kubeconfig(self, path: Path, token: str) -> Path:
        """A kubeconfig for this API server as the bearer of token (owner-readable only)."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "pinrec-e2e",
                    "cluster": {"server": self.server, "certificate-authority": str(self.ca)},
                }
            ],
            "users": [{"name": "pinrec-e2e-admin", "user": {"token": token}}],
            "contexts": [
                {"name": "pinrec-e2e", "context": {"cluster": "pinrec-e2e", "user": "pinrec-e2e-admin"}}
            ],
            "current-context": "pinrec-e2e",
        }
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        return path

    def _etcd_command(self, binary: Path, client: int, peer: int) -> list[str]:
        return [
            str(binary),
            "--name=pinrec-e2e",
            f"--data-dir={self.settings.state_dir / 'etcd'}",
            f"--listen-client-urls=http://127.0.0.1:{client}",
            f"--advertise-client-urls=http://127.0.0.1:{client}",
            f"--listen-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-cluster=pinrec-e2e=http://127.0.0.1:{peer}",
            "--listen-metrics-urls=",
            # A throwaway cluster: durability is not worth the fsyncs on a slow disk.
            "--unsafe-no-fsync",
        ]

    def _apiserver_command(
        self, binary: Path, certs: ControlPlaneCertificates, etcd_client: int, port: int
    ) -> list[str]:
        return [
            str(binary),
            f"--etcd-servers=http://127.0.0.1:{etcd_client}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={port}",
            f"--tls-cert-file={certs.serving_cert}",
            f"--tls-private-key-file={certs.serving_key}",
            f"--token-auth-file={self.settings.state_dir / 'pki' / 'tokens.csv'}",
            "--authorization-mode=RBAC",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={certs.service_account_public_key}",
            f"--service-account-signing-key-file={certs.service_account_key}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--profiling=false",
        ]

    def _kwok_command(self, binary: Path, port: int) -> list[str]:
        stages = kwok_stages_dir(self.tools)
        own = self.settings.state_dir / "kwok-helm-test-stage.yaml"
        own.write_text(_HELM_TEST_POD_COMPLETE)
        configs = [f"--config={stages / stage}" for stage in _KWOK_STAGES] + [f"--config={own}"]
        return [
            str(binary),
            f"--kubeconfig={self.kubeconfig}",
            f"--manage-nodes-with-annotation-selector={FAKE_NODE_ANNOTATION}=fake",
            "--node-lease-duration-seconds=40",
            f"--server-address=127.0.0.1:{port}",
            *configs,
        ]

    def _add_nodes(self, api: KubeApi) -> None:
        """Fake nodes for kwok (it reports them Ready with ample capacity), each in its own zone."""
        for index in range(self.settings.nodes):
            name = f"kwok-node-{index}"
            api.apply(
                {
                    "apiVersion": "v1",
                    "kind": "Node",
                    "metadata": {
                        "name": name,
                        "annotations": {FAKE_NODE_ANNOTATION: "fake"},
                        "labels": {
                            "kubernetes.io/hostname": name,
                            "kubernetes.io/os": "linux",
                            "kubernetes.io/arch": "amd64",
                            "topology.kubernetes.io/zone": f"zone-{index}",
                            "type": "kwok",
                        },
                    },
                }
            )

    def _not_ready_nodes(self, api: KubeApi) -> str | None:
        waiting = [
            node["metadata"]["name"] for node in api.list("v1", "Node") if not has_condition(node, "Ready")
        ]
        return f"not Ready: {', '.join(waiting)}" if waiting else None

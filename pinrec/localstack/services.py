"""The three local services: how each is configured, started and probed for readiness."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import urllib.request
import uuid
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pinrec.localstack.processes import pick_port
from pinrec.localstack.provision import kafka_libs_dir
from pinrec.settings import LocalStackSettings


@dataclass
class ServiceRecord:
    """What `local up` remembers about a process it started, so that `down` stops exactly that one."""

    name: str
    pid: int
    ports: dict[str, int]
    markers: list[str]  # substrings of the command line that identify the process as ours
    log: str
    endpoint: dict[str, str] = field(default_factory=dict)
    started: float | None = None  # the process's start time: a reused PID has another (None: not recorded)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> ServiceRecord:
        return cls(**data)


@dataclass(frozen=True)
class LaunchPlan:
    command: list[str]
    ports: dict[str, int]
    markers: list[str]
    endpoint: dict[str, str]


class Service(ABC):
    """A service the local stack can run: subclasses say how to install-check, configure and probe it."""

    name: str
    install_hint = "run `pinrec local install`"

    def __init__(self, settings: LocalStackSettings) -> None:
        self.settings = settings
        self.dir = settings.state_dir / self.name

    @abstractmethod
    def missing(self) -> str | None:
        """Why the service cannot start here (tool not installed), or None."""

    @abstractmethod
    def plan(self, taken_ports: list[int], ports: dict[str, int] | None = None) -> LaunchPlan:
        """Write the configuration and return the command line to start; ports: reuse these (restart)."""

    @abstractmethod
    def ready(self, endpoint: dict[str, str]) -> bool:
        """True once the service answers requests."""


class KafkaService(Service):
    name = "kafka"

    def missing(self) -> str | None:
        if shutil.which("java") is None:
            return "java not found; install Java 17"
        if not (kafka_libs_dir(self.settings) / ".complete").exists():
            return f"Kafka jars not provisioned; {self.install_hint}"
        return None

    def plan(self, taken_ports: list[int], ports: dict[str, int] | None = None) -> LaunchPlan:
        port = ports["broker"] if ports else pick_port(self.settings.kafka_port, taken_ports)
        controller = (
            ports["controller"]
            if ports
            else pick_port(self.settings.kafka_controller_port, [*taken_ports, port])
        )
        data = self.dir / "data"
        config = self.dir / "server.properties"
        self.dir.mkdir(parents=True, exist_ok=True)
        config.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.bootstrap.servers=127.0.0.1:{controller}",
                    f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}",
                    f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}",
                    "controller.listener.names=CONTROLLER",
                    "inter.broker.listener.name=PLAINTEXT",
                    "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                    f"log.dirs={data}",
                    "num.partitions=3",
                    "offsets.topic.replication.factor=1",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "share.coordinator.state.topic.replication.factor=1",
                    "share.coordinator.state.topic.min.isr=1",
                    # One broker, so nothing to wait for when a consumer group forms.
                    "group.initial.rebalance.delay.ms=0",
                    # Topics are created on purpose (with their partition count), never by a typo.
                    "auto.create.topics.enable=false",
                ]
            )
            + "\n"
        )
        java_cp = [
            "java",
            f"-Xmx{self.settings.kafka_heap_mb}m",
            "-Xms128m",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            "-cp",
            f"{kafka_libs_dir(self.settings)}/*",
        ]
        if not (data / "meta.properties").exists():
            self._format_storage(java_cp, config)
        bootstrap = f"127.0.0.1:{port}"
        return LaunchPlan(
            command=[*java_cp, "kafka.Kafka", str(config)],
            ports={"broker": port, "controller": controller},
            markers=["kafka.Kafka", str(config)],
            endpoint={"bootstrap": bootstrap},
        )

    def _format_storage(self, java_cp: list[str], config: Path) -> None:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        result = subprocess.run(
            [
                *java_cp,
                "kafka.tools.StorageTool",
                "format",
                # "=" form: a random base64 id may start with "-", which a separate argument would not allow.
                f"--cluster-id={cluster_id}",
                "-c",
                str(config),
                "--standalone",
            ],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"formatting Kafka storage failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}"
            )

    def ready(self, endpoint: dict[str, str]) -> bool:
        from pinrec.stream.topics import broker_ready

        return broker_ready(endpoint["bootstrap"])


class RedisService(Service):
    name = "redis"

    def missing(self) -> str | None:
        return None if shutil.which("redis-server") else f"redis-server not installed; {self.install_hint}"

    def plan(self, taken_ports: list[int], ports: dict[str, int] | None = None) -> LaunchPlan:
        port = ports["redis"] if ports else pick_port(self.settings.redis_port, taken_ports)
        self.dir.mkdir(parents=True, exist_ok=True)
        return LaunchPlan(
            # No persistence: after a restart `pinrec backfill` rebuilds the online store from the event log
            # (and consumers put back the rows they know); daemonize off so the PID is ours.
            command=[
                "redis-server",
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--dir",
                str(self.dir),
            ],
            ports={"redis": port},
            # Redis rewrites its process title to "redis-server 127.0.0.1:<port>".
            markers=["redis-server", f":{port}"],
            endpoint={"url": f"redis://127.0.0.1:{port}/0"},
        )

    def ready(self, endpoint: dict[str, str]) -> bool:
        import redis

        try:
            return bool(redis.Redis.from_url(endpoint["url"], socket_timeout=1).ping())
        except redis.RedisError:
            return False


class PrometheusService(Service):
    name = "prometheus"

    def missing(self) -> str | None:
        return None if shutil.which("prometheus") else f"prometheus not installed; {self.install_hint}"

    @property
    def targets_dir(self) -> Path:
        return self.dir / "targets"

    def plan(self, taken_ports: list[int], ports: dict[str, int] | None = None) -> LaunchPlan:
        port = ports["prometheus"] if ports else pick_port(self.settings.prometheus_port, taken_ports)
        self.targets_dir.mkdir(parents=True, exist_ok=True)
        config = self.dir / "prometheus.yml"
        interval = f"{self.settings.scrape_interval_s:g}s"
        # JSON is valid YAML; processes register themselves by dropping a file into targets/.
        config.write_text(
            json.dumps(
                {
                    "global": {"scrape_interval": interval, "evaluation_interval": interval},
                    "scrape_configs": [
                        {"job_name": "prometheus", "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]},
                        {
                            "job_name": "pinrec",
                            "file_sd_configs": [
                                {"files": [str(self.targets_dir / "*.json")], "refresh_interval": "1s"}
                            ],
                        },
                    ],
                },
                indent=2,
            )
        )
        return LaunchPlan(
            command=[
                "prometheus",
                f"--config.file={config}",
                f"--storage.tsdb.path={self.dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--storage.tsdb.retention.time=1d",
            ],
            ports={"prometheus": port},
            markers=["prometheus", str(config)],
            endpoint={"url": f"http://127.0.0.1:{port}", "targets_dir": str(self.targets_dir)},
        )

    def ready(self, endpoint: dict[str, str]) -> bool:
        try:
            with urllib.request.urlopen(endpoint["url"] + "/-/ready", timeout=1) as response:
                return response.status == 200
        except OSError:
            return False


SERVICES: tuple[type[Service], ...] = (KafkaService, RedisService, PrometheusService)

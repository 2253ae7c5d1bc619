"""Install the local stack's tools from package registries: Kafka jars (Maven Central), Go-built tools
(helm, kubeconform) and Debian packages (Redis, Prometheus). Idempotent; everything lands under
PINREC_HOME/tools except the apt packages."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pinrec.settings import LocalStackSettings

log = logging.getLogger(__name__)

KAFKA_VERSION = "4.1.1"  # single-node KRaft; Kafka 4 needs Java 17
SCALA_VERSION = "2.13"
SLF4J_VERSION = "1.7.36"  # the binding must match the slf4j-api that Kafka 4.1 depends on
APT_PACKAGES = {"redis-server": "redis-server", "prometheus": "prometheus"}  # binary -> package


@dataclass(frozen=True)
class GoTool:
    name: str
    module: str  # go install path
    version: str


GO_TOOLS = (
    GoTool("helm", "helm.sh/helm/v3/cmd/helm", "v3.22.0"),
    GoTool("kubeconform", "github.com/yannh/kubeconform/cmd/kubeconform", "v0.7.0"),
)

_KAFKA_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>pinrec.local</groupId>
  <artifactId>kafka-broker</artifactId>
  <version>{kafka}</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_{scala}</artifactId>
      <version>{kafka}</version>
    </dependency>
    <dependency>
      <groupId>org.slf4j</groupId>
      <artifactId>slf4j-simple</artifactId>
      <version>{slf4j}</version>
    </dependency>
  </dependencies>
</project>
"""


class ProvisionError(RuntimeError):
    """A tool could not be installed; the message says what to install by hand."""


def kafka_libs_dir(settings: LocalStackSettings) -> Path:
    return settings.tools_dir / f"kafka_{SCALA_VERSION}-{KAFKA_VERSION}" / "libs"


def go_tool_path(settings: LocalStackSettings, tool: GoTool) -> Path:
    return settings.tools_dir / f"{tool.name}-{tool.version}" / tool.name


def _complete_marker(directory: Path) -> Path:
    return directory / ".complete"


def require_binary(binary: str, hint: str) -> str:
    path = shutil.which(binary)
    if path is None:
        raise ProvisionError(f"`{binary}` is not on PATH: {hint}")
    return path


def run_step(command: list[str], what: str, env: dict[str, str] | None = None) -> str:
    """Run one install step; its standard output, or a ProvisionError with the last lines it printed."""
    log.info("%s: %s", what, " ".join(command))
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip().splitlines()[-20:]
        raise ProvisionError(f"{what} failed (exit {result.returncode}):\n" + "\n".join(output))
    return result.stdout


def install_kafka(settings: LocalStackSettings) -> Path:
    """Resolve the broker's runtime jars from Maven Central into the tools folder (once)."""
    libs = kafka_libs_dir(settings)
    if _complete_marker(libs).exists():
        return libs
    mvn = require_binary("mvn", "install Maven (apt-get install maven) and Java 17")
    require_binary("java", "install Java 17 (apt-get install openjdk-17-jre-headless)")
    root = libs.parent
    if libs.exists():
        shutil.rmtree(libs)
    root.mkdir(parents=True, exist_ok=True)
    pom = root / "pom.xml"
    pom.write_text(_KAFKA_POM.format(kafka=KAFKA_VERSION, scala=SCALA_VERSION, slf4j=SLF4J_VERSION))
    run_step(
        [
            mvn,
            "-q",
            "-B",
            "-f",
            str(pom),
            "dependency:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={libs}",
        ],
        f"downloading Kafka {KAFKA_VERSION} jars from Maven Central",
    )
    _complete_marker(libs).touch()
    return libs


def install_go_tool(settings: LocalStackSettings, tool: GoTool) -> Path:
    """Build a pinned Go tool with `go install` into its own versioned folder (once)."""
    path = go_tool_path(settings, tool)
    if path.exists():
        return path
    go = require_binary("go", "install Go (https://go.dev/doc/install)")
    env = {**os.environ, "GOBIN": str(path.parent), "CGO_ENABLED": "0"}
    run_step([go, "install", f"{tool.module}@{tool.version}"], f"building {tool.name} {tool.version}", env)
    return path


def missing_apt_binaries() -> list[str]:
    return [binary for binary in APT_PACKAGES if shutil.which(binary) is None]


def install_apt_packages() -> list[str]:
    """Install Redis and Prometheus from Debian when missing; returns the packages installed."""
    packages = [APT_PACKAGES[binary] for binary in missing_apt_binaries()]
    if not packages:
        return []
    prefix: list[str] = []
    if os.geteuid() != 0:
        if shutil.which("sudo") is None:
            raise ProvisionError(f"run as root or install by hand: apt-get install -y {' '.join(packages)}")
        prefix = ["sudo", "-n"]
    apt = require_binary("apt-get", f"install these packages with your package manager: {' '.join(packages)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    run_step([*prefix, apt, "update", "-q"], "apt-get update", env)
    run_step(
        [*prefix, apt, "install", "-y", "-q", "--no-install-recommends", *packages],
        f"apt-get install {' '.join(packages)}",
        env,
    )
    return packages


def install_all(
    settings: LocalStackSettings, *, apt: bool = True, go_tools: bool = True, k8s: bool = False
) -> dict[str, str]:
    """Everything the local stack and the later checks need (with `k8s`, a live control plane's binaries
    too); returns what is where."""
    installed: dict[str, str] = {}
    if apt:
        installed["apt"] = ", ".join(install_apt_packages()) or "already installed"
    installed["kafka"] = str(install_kafka(settings))
    if go_tools:
        for tool in GO_TOOLS:
            installed[tool.name] = str(install_go_tool(settings, tool))
    if k8s:
        from pinrec.localstack.k8s_tools import install_k8s_tools  # it builds on this module

        installed |= install_k8s_tools(settings)
    return installed

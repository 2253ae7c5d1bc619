"""Build a live Kubernetes control plane's binaries from the Go module proxy into PINREC_HOME/tools, for
tests that install the chart against a real API server: kube-apiserver, kube-controller-manager and
kube-scheduler, etcd, and kwok (the kubelet of fake nodes). Idempotent: a binary that is there and whose
`--version` names the pinned version is kept; only what is missing or stale is built.

Why wrapper modules: kubernetes' go.mod replaces its `k8s.io/*` staging modules with folders of its own
repository (`./staging/src/...`), and `go install pkg@version` refuses any module with replace directives.
The wrapper requires k8s.io/kubernetes, replaces each staging module (read from kubernetes' own go.mod, so
none is forgotten) with its published copy (v0.X.Y for v1.X.Y), and names the commands in a `tool` block,
so `go mod tidy` resolves the whole graph from the proxy. etcd's `main` lives in its root module, which
has replace directives for the same reason: a two-file wrapper calls `etcdmain.Main`.

Measured cold on 2 cores (Go 1.26.8, empty caches for these modules): etcd 48 s, kwok 80 s, the control
plane 6 minutes (resolve 8 s, kube-apiserver 254 s, kube-controller-manager 102 s, kube-scheduler 8 s),
8.5 minutes in all at a peak of 2.0 GB resident; the Go build cache grew by 3.6 GB and the module cache by
1.2 GB; the binaries take 376 MB. A re-run with everything built takes under 2 s and needs no Go.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from pinrec.localstack.provision import (
    GoTool,
    ProvisionError,
    go_tool_path,
    install_go_tool,
    require_binary,
    run_step,
)
from pinrec.settings import LocalStackSettings

log = logging.getLogger(__name__)

# Every version of the Kubernetes tools, pinned here only.
KUBERNETES_VERSION = "v1.36.3"  # kube-apiserver, kube-controller-manager, kube-scheduler
ETCD_VERSION = "v3.6.16"  # go.etcd.io/etcd/server/v3; the 3.6 line is the one Kubernetes 1.36 is tested with
KWOK = GoTool("kwok", "sigs.k8s.io/kwok/cmd/kwok", "v0.8.0")
KWOK_MODULE = "sigs.k8s.io/kwok"
KWOK_STAGES = "kustomize/stage"  # where kwok's stage definitions (pod and node lifecycles) ship in its module
# The `go` line of kubernetes v1.36.3's and etcd v3.6.16's go.mod (the `tool` block alone needs 1.24).
MIN_GO = (1, 26)

CONTROL_PLANE = ("kube-apiserver", "kube-controller-manager", "kube-scheduler")

# A staging module in kubernetes' go.mod: `k8s.io/api => ./staging/src/k8s.io/api`, in a replace block or
# on a `replace` line of its own, with or without a version on the left.
_STAGING_REPLACE = re.compile(r"^\s*(?:replace\s+)?([^\s()]+)(?:\s+v\S+)?\s*=>\s*\./staging/", re.MULTILINE)

_ETCD_MAIN = """// etcd's own main (go.etcd.io/etcd/v3/main.go), built from the published server module.
package main

import (
\t"os"

\t"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
\tetcdmain.Main(os.Args)
}
"""


@dataclass(frozen=True)
class GoEnvironment:
    """The go command and the settings of it that the builds depend on."""

    go: str
    proxy: str  # GOPROXY
    mod_cache: Path  # GOMODCACHE: module sources, 1.2 GB more after these builds
    build_cache: Path  # GOCACHE: compiled packages, 3.6 GB more after these builds


def kubernetes_dir(settings: LocalStackSettings) -> Path:
    return settings.tools_dir / f"kubernetes-{KUBERNETES_VERSION}"


def etcd_path(settings: LocalStackSettings) -> Path:
    return settings.tools_dir / f"etcd-{ETCD_VERSION}" / "etcd"


def kwok_stages_dir(settings: LocalStackSettings) -> Path:
    return go_tool_path(settings, KWOK).parent / "stage"


def k8s_tool_paths(settings: LocalStackSettings) -> dict[str, Path]:
    """Where each binary is, built or not."""
    paths = {name: kubernetes_dir(settings) / name for name in CONTROL_PLANE}
    return paths | {"etcd": etcd_path(settings), "kwok": go_tool_path(settings, KWOK)}


def expected_versions() -> dict[str, str]:
    """What each binary's `--version` prints when it is the pinned one."""
    kubernetes = {name: f"Kubernetes {KUBERNETES_VERSION}" for name in CONTROL_PLANE}
    return kubernetes | {"etcd": f"etcd Version: {ETCD_VERSION.removeprefix('v')}", "kwok": KWOK.version}


def reports_version(binary: Path, expected: str) -> bool:
    """Whether `binary --version` runs and names `expected` (and not a longer version that starts with it):
    the test that decides to skip a build."""
    if not binary.is_file():
        return False
    try:
        result = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    found = re.search(re.escape(expected) + r"(?![\w.])", result.stdout + result.stderr)
    return result.returncode == 0 and found is not None


def staging_modules(kubernetes_go_mod: str) -> list[str]:
    """The modules that kubernetes' go.mod replaces with its own ./staging folders."""
    return sorted(set(_STAGING_REPLACE.findall(kubernetes_go_mod)))


def published_staging_version(kubernetes_version: str) -> str:
    """The tag of the staging modules' published copies: v1.36.3 -> v0.36.3."""
    match = re.fullmatch(r"v1\.(\d+)\.(\d+)", kubernetes_version)
    if match is None:
        raise ValueError(f"expected a Kubernetes release such as v1.36.3, got {kubernetes_version!r}")
    return f"v0.{match[1]}.{match[2]}"


def kubernetes_wrapper_go_mod(kubernetes_version: str, staging: list[str]) -> str:
    """The wrapper module's go.mod before `go mod tidy` adds the rest of the graph."""
    published = published_staging_version(kubernetes_version)
    replaces = "".join(f"\t{module} => {module} {published}\n" for module in staging)
    tools = "".join(f"\tk8s.io/kubernetes/cmd/{name}\n" for name in CONTROL_PLANE)
    return (
        "// Written by `pinrec local install --k8s`: builds kubernetes' commands from the Go module proxy.\n"
        "module pinrec.local/kubernetes\n\n"
        f"go {MIN_GO[0]}.{MIN_GO[1]}\n\n"
        f"require k8s.io/kubernetes {kubernetes_version}\n\n"
        f"replace (\n{replaces})\n\n"
        f"tool (\n{tools})\n"
    )


def etcd_wrapper_files(etcd_version: str) -> dict[str, str]:
    """go.mod and main.go of the module whose binary is etcd's server."""
    go_mod = (
        "// Written by `pinrec local install --k8s`: etcd's server from the Go module proxy.\n"
        "module pinrec.local/etcd\n\n"
        f"go {MIN_GO[0]}.{MIN_GO[1]}\n\n"
        f"require go.etcd.io/etcd/server/v3 {etcd_version}\n"
    )
    return {"go.mod": go_mod, "main.go": _ETCD_MAIN}


def kubernetes_version_ldflags(kubernetes_version: str) -> str:
    """What Kubernetes' own build (hack/lib/version.sh) stamps in. Without it the binaries, and the API
    server's /version that helm reads as the cluster's version, say v0.0.0-master."""
    major, minor = kubernetes_version.removeprefix("v").split(".")[:2]
    values = {"gitVersion": kubernetes_version, "gitMajor": major, "gitMinor": minor, "gitTreeState": "clean"}
    stamps = [
        f"-X {package}.{name}={value}"
        for package in ("k8s.io/client-go/pkg/version", "k8s.io/component-base/version")
        for name, value in values.items()
    ]
    return " ".join(["-s", "-w", *stamps])


def go_environment() -> GoEnvironment:
    """The go command, checked to be new enough and to have a module proxy."""
    go = require_binary(
        "go",
        f"install Go {MIN_GO[0]}.{MIN_GO[1]} or newer, then rerun `pinrec local install --k8s`",
    )
    values = json.loads(
        run_step([go, "env", "-json", "GOVERSION", "GOPROXY", "GOMODCACHE", "GOCACHE"], "go env")
    )
    version = re.search(r"go(\d+)\.(\d+)", values["GOVERSION"])
    if version is None or (int(version[1]), int(version[2])) < MIN_GO:
        raise ProvisionError(
            f"Go {MIN_GO[0]}.{MIN_GO[1]} or newer is needed (kubernetes {KUBERNETES_VERSION} and etcd "
            f"{ETCD_VERSION} ask for it); `go` here is {values['GOVERSION']}: install a newer Go"
        )
    if values["GOPROXY"] in ("", "off"):
        raise ProvisionError(
            f"GOPROXY is {values['GOPROXY'] or 'empty'}: the Kubernetes tools are built from the Go module "
            "proxy; set GOPROXY to a proxy this machine reaches (`go env -w GOPROXY=...`)"
        )
    return GoEnvironment(go, values["GOPROXY"], Path(values["GOMODCACHE"]), Path(values["GOCACHE"]))


def _from_proxy(go_env: GoEnvironment, command: list[str], what: str) -> str:
    """A step that downloads modules: its failure says which proxy had to answer."""
    try:
        return run_step(command, what, _build_env())
    except ProvisionError as error:
        raise ProvisionError(
            f"{error}\nThe modules come from the Go module proxy (GOPROXY={go_env.proxy}): check that this "
            "machine reaches it, or set GOPROXY to one it does"
        ) from None


def _build_env() -> dict[str, str]:
    return {**os.environ, "CGO_ENABLED": "0"}  # static binaries, as Kubernetes releases them


def _build(
    go_env: GoEnvironment, module: Path, package: str, binary: Path, ldflags: str, what: str, started: float
) -> None:
    """`go build` one command in the wrapper module; the binary replaces the old one only when complete.
    The time logged counts from `started`."""
    with tempfile.TemporaryDirectory(dir=binary.parent, prefix=".build-") as out:
        run_step(
            [go_env.go, "-C", str(module), "build", "-trimpath", "-buildvcs=false", f"-ldflags={ldflags}"]
            + ["-o", f"{out}/", package],
            f"building {what}",
            _build_env(),
        )
        os.replace(Path(out) / binary.name, binary)
    log.info("built %s in %.0f s: %s", what, time.monotonic() - started, binary)


def _kept(name: str, binary: Path) -> bool:
    if reports_version(binary, expected_versions()[name]):
        log.info("%s: already built (%s)", name, binary)
        return True
    return False


def install_control_plane(settings: LocalStackSettings) -> dict[str, Path]:
    """kube-apiserver, kube-controller-manager and kube-scheduler, each built unless already there."""
    paths = k8s_tool_paths(settings)
    missing = [name for name in CONTROL_PLANE if not _kept(name, paths[name])]
    if not missing:
        return {name: paths[name] for name in CONTROL_PLANE}
    go_env = go_environment()
    log.info(
        "building %s %s from the Go module proxy: cold, about 6 minutes and 2 GB of memory on 2 cores, "
        "and 5 GB more in the Go caches (%s, %s)",
        ", ".join(missing),
        KUBERNETES_VERSION,
        go_env.build_cache,
        go_env.mod_cache,
    )
    module = kubernetes_dir(settings) / "module"
    module.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    kubernetes = f"k8s.io/kubernetes@{KUBERNETES_VERSION}"
    download_command = [go_env.go, "-C", str(module), "mod", "download", "-json", kubernetes]
    download = json.loads(_from_proxy(go_env, download_command, f"downloading {kubernetes}"))
    staging = staging_modules(Path(download["GoMod"]).read_text())
    if not staging:
        raise ProvisionError(f"no ./staging replace directives in {download['GoMod']}: its layout changed")
    (module / "go.mod").write_text(kubernetes_wrapper_go_mod(KUBERNETES_VERSION, staging))
    _from_proxy(go_env, [go_env.go, "-C", str(module), "mod", "tidy"], "resolving the wrapper module's graph")
    log.info(
        "resolved kubernetes %s with %d staging modules at %s in %.0f s",
        KUBERNETES_VERSION,
        len(staging),
        published_staging_version(KUBERNETES_VERSION),
        time.monotonic() - started,
    )
    ldflags = kubernetes_version_ldflags(KUBERNETES_VERSION)
    for name in missing:
        what = f"{name} {KUBERNETES_VERSION}"
        package = f"k8s.io/kubernetes/cmd/{name}"
        _build(go_env, module, package, paths[name], ldflags, what, time.monotonic())
    return {name: paths[name] for name in CONTROL_PLANE}


def install_etcd(settings: LocalStackSettings) -> Path:
    """etcd's server from its published module through a two-file wrapper, unless already there."""
    binary = etcd_path(settings)
    if _kept("etcd", binary):
        return binary
    go_env = go_environment()
    started = time.monotonic()
    module = binary.parent / "module"
    module.mkdir(parents=True, exist_ok=True)
    for name, text in etcd_wrapper_files(ETCD_VERSION).items():
        (module / name).write_text(text)
    _from_proxy(go_env, [go_env.go, "-C", str(module), "mod", "tidy"], f"resolving etcd {ETCD_VERSION}")
    _build(go_env, module, ".", binary, "-s -w", f"etcd {ETCD_VERSION}", started)
    return binary


def install_kwok(settings: LocalStackSettings) -> Path:
    """kwok with `go install`, and a copy of its stage definitions beside it, unless already there."""
    binary = go_tool_path(settings, KWOK)
    stages = kwok_stages_dir(settings)
    if stages.is_dir() and _kept("kwok", binary):
        return binary
    go_env = go_environment()
    binary.unlink(missing_ok=True)  # install_go_tool keeps any binary that exists, stale or not
    started = time.monotonic()
    try:
        install_go_tool(settings, KWOK)
    except ProvisionError as error:
        raise ProvisionError(
            f"{error}\nkwok comes from the Go module proxy (GOPROXY={go_env.proxy})"
        ) from None
    download = json.loads(
        run_step([go_env.go, "mod", "download", "-json", f"{KWOK_MODULE}@{KWOK.version}"], "locating kwok")
    )
    _copy_stages(Path(download["Dir"]) / KWOK_STAGES, stages)
    log.info(
        "built kwok %s in %.0f s: %s (stages: %s)", KWOK.version, time.monotonic() - started, binary, stages
    )
    return binary


def _copy_stages(source: Path, target: Path) -> None:
    """The stage YAML (node/fast, pod/general, ...; not the test data), file by file: the module cache is
    read-only, and a copy of its modes could not be deleted."""
    if not source.is_dir():
        raise ProvisionError(f"kwok's stage definitions are not at {source}: its module layout changed")
    if target.exists():
        shutil.rmtree(target)
    for file in source.rglob("*.yaml"):
        if "testdata" not in file.relative_to(source).parts:
            destination = target / file.relative_to(source)
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.write_bytes(file.read_bytes())


def install_k8s_tools(settings: LocalStackSettings) -> dict[str, str]:
    """Everything a live control plane needs; returns what is where. The short builds go first, so that a
    missing Go or proxy shows in seconds, not after the long one."""
    installed = {"etcd": str(install_etcd(settings)), "kwok": str(install_kwok(settings))}
    installed["kwok stages"] = str(kwok_stages_dir(settings))
    return installed | {name: str(path) for name, path in install_control_plane(settings).items()}

"""The Kubernetes tools' install decisions, checked without building anything: the wrapper module replaces
every staging module that kubernetes' go.mod names (and nothing else) with its published copy and names the
three commands in a `tool` block that Go reads back as written; etcd's wrapper calls etcdmain.Main; a binary
that reports the pinned version is kept even where Go is missing, and a stale one is rebuilt, with an error
that says what to install when Go is not there."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from pinrec.localstack.k8s_tools import (
    CONTROL_PLANE,
    ETCD_VERSION,
    KUBERNETES_VERSION,
    MIN_GO,
    etcd_wrapper_files,
    expected_versions,
    install_k8s_tools,
    k8s_tool_paths,
    kubernetes_version_ldflags,
    kubernetes_wrapper_go_mod,
    kwok_stages_dir,
    published_staging_version,
    reports_version,
    staging_modules,
)
from pinrec.localstack.provision import ProvisionError
from pinrec.settings import LocalStackSettings

# The shape of kubernetes' go.mod: a replace block of staging folders, a replace of another kind, and a
# staging module replaced on a line of its own with a version on the left.
FAKE_KUBERNETES_GO_MOD = """module k8s.io/kubernetes

go 1.25.0

require (
\tgithub.com/spf13/cobra v1.9.1
\tk8s.io/api v0.0.0
\tk8s.io/client-go v0.0.0
)

replace (
\tk8s.io/api => ./staging/src/k8s.io/api
\tk8s.io/apiserver => ./staging/src/k8s.io/apiserver
\tk8s.io/client-go => ./staging/src/k8s.io/client-go
\tk8s.io/component-base => ./staging/src/k8s.io/component-base
\tgithub.com/example/forked => github.com/example/fork v1.2.3
)

replace k8s.io/kms v0.0.0 => ./staging/src/k8s.io/kms
"""
STAGING = ["k8s.io/api", "k8s.io/apiserver", "k8s.io/client-go", "k8s.io/component-base", "k8s.io/kms"]
GO = shutil.which("go")


def settings_in(home: Path) -> LocalStackSettings:
    return LocalStackSettings(home=home, state_dir=home / "run")


def fake_binary(path: Path, prints: str, exit_code: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\necho '{prints}'\nexit {exit_code}\n")
    path.chmod(0o755)
    return path


def test_staging_modules_are_the_replaces_by_staging_folders() -> None:
    assert staging_modules(FAKE_KUBERNETES_GO_MOD) == STAGING


def test_wrapper_replaces_every_staging_module_with_its_published_copy() -> None:
    go_mod = kubernetes_wrapper_go_mod("v1.36.3", STAGING)
    assert "require k8s.io/kubernetes v1.36.3\n" in go_mod
    for module in STAGING:
        assert f"\t{module} => {module} v0.36.3\n" in go_mod
    assert "./staging" not in go_mod and "github.com/example" not in go_mod
    tools = go_mod.split("tool (\n")[1].split(")")[0].split()
    assert tools == [f"k8s.io/kubernetes/cmd/{name}" for name in CONTROL_PLANE]


@pytest.mark.skipif(GO is None, reason="go is not on PATH")
def test_go_reads_the_wrapper_as_written(tmp_path: Path) -> None:
    (tmp_path / "go.mod").write_text(kubernetes_wrapper_go_mod(KUBERNETES_VERSION, STAGING))
    parsed = json.loads(
        subprocess.run(
            [GO, "mod", "edit", "-json"], cwd=tmp_path, capture_output=True, text=True, check=True
        ).stdout
    )
    published = published_staging_version(KUBERNETES_VERSION)
    assert {(r["Old"]["Path"], r["New"]["Path"], r["New"]["Version"]) for r in parsed["Replace"]} == {
        (module, module, published) for module in STAGING
    }
    assert [tool["Path"] for tool in parsed["Tool"]] == [f"k8s.io/kubernetes/cmd/{n}" for n in CONTROL_PLANE]
    assert parsed["Require"] == [{"Path": "k8s.io/kubernetes", "Version": KUBERNETES_VERSION}]


def test_published_staging_version_follows_the_release() -> None:
    assert published_staging_version("v1.36.3") == "v0.36.3"
    for bad in ("1.36.3", "v2.0.0", "v1.36"):
        with pytest.raises(ValueError, match="v1.36.3"):
            published_staging_version(bad)


def test_binaries_are_stamped_with_the_release() -> None:
    ldflags = kubernetes_version_ldflags("v1.36.3")
    assert "-X k8s.io/component-base/version.gitVersion=v1.36.3" in ldflags
    assert "-X k8s.io/component-base/version.gitMinor=36" in ldflags


def test_etcd_wrapper_calls_etcdmain(tmp_path: Path) -> None:
    files = etcd_wrapper_files(ETCD_VERSION)
    assert f"require go.etcd.io/etcd/server/v3 {ETCD_VERSION}\n" in files["go.mod"]
    assert "etcdmain.Main(os.Args)" in files["main.go"]
    if GO is not None:
        (tmp_path / "main.go").write_text(files["main.go"])
        gofmt = Path(GO).parent / "gofmt"
        assert subprocess.run([gofmt, "-l", tmp_path], capture_output=True, text=True).stdout == ""


def test_version_check_needs_the_exact_pinned_version(tmp_path: Path) -> None:
    assert reports_version(fake_binary(tmp_path / "ok", "Kubernetes v1.36.3"), "Kubernetes v1.36.3")
    assert not reports_version(fake_binary(tmp_path / "longer", "Kubernetes v1.36.30"), "Kubernetes v1.36.3")
    assert not reports_version(fake_binary(tmp_path / "old", "Kubernetes v1.35.0"), "Kubernetes v1.36.3")
    assert not reports_version(fake_binary(tmp_path / "fails", "Kubernetes v1.36.3", 2), "Kubernetes v1.36.3")
    assert not reports_version(tmp_path / "missing", "Kubernetes v1.36.3")


def test_built_tools_are_kept_without_go_and_a_stale_one_rebuilt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_in(tmp_path)
    paths = k8s_tool_paths(settings)
    for name, prints in expected_versions().items():
        fake_binary(paths[name], f"{prints} (linux/amd64)")
    (kwok_stages_dir(settings) / "pod" / "general").mkdir(parents=True)
    monkeypatch.setenv("PATH", str(tmp_path / "no-go-here"))  # a build would need go: none is reached
    assert install_k8s_tools(settings) == {name: str(path) for name, path in paths.items()} | {
        "kwok stages": str(kwok_stages_dir(settings))
    }

    fake_binary(paths["kube-scheduler"], "Kubernetes v1.35.0")
    with pytest.raises(
        ProvisionError, match=rf"`go` is not on PATH: install Go {MIN_GO[0]}\.{MIN_GO[1]} or newer"
    ):
        install_k8s_tools(settings)

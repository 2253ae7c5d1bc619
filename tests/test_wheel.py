"""The package as the image installs it: the sdist and the wheel built from it, installed with its locked
dependencies by scripts/install-wheel.sh (the Dockerfile's own step) into a fresh virtualenv outside the
source tree, then run from there."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from pinrec.localstack.processes import pick_port, spawn, wait_for_http

from .helpers import REPO
from .serving_helpers import small_world, train_artifacts

UV = Path(sys.executable).with_name("uv")
PARTS = ("pinrec", "stream", "featurestore", "model", "serving")  # installed as pinrec and pinrec.<part>

# Lists every leaf subcommand of the installed parser, as argument lists.
LIST_COMMANDS = """
import argparse, json
from pinrec.cli import build_parser

def leaves(parser, path):
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return [path]
    return [leaf for name, sub in subs[0].choices.items() for leaf in leaves(sub, [*path, name])]

print(json.dumps(leaves(build_parser(), [])))
"""


def in_wheel(module: Path) -> str:
    """Where a source module lands in the wheel: stream/x.py -> pinrec/stream/x.py, pinrec/x.py stays."""
    parts = module.relative_to(REPO).parts
    return "/".join(parts if parts[0] == "pinrec" else ("pinrec", *parts))


def run(command: list[str], cwd: Path, env: dict[str, str], timeout_s: float = 600) -> str:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout_s)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def wheel_and_env(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, str]]:
    """The wheel, a fresh virtualenv holding it and its locked dependencies: the wheel, the virtualenv's bin
    folder and the environment to run it in."""
    work = tmp_path_factory.mktemp("wheel")
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env |= {"PINREC_HOME": str(work / "home"), "UV": str(UV)}
    run([str(UV), "build", "--out-dir", str(work / "dist"), str(REPO)], cwd=work, env=env)
    wheels = list((work / "dist").glob("pinrec-*.whl"))
    assert len(wheels) == 1, wheels
    run([str(UV), "venv", "--python", sys._base_executable, str(work / "venv")], cwd=work, env=env)
    python = work / "venv" / "bin" / "python"
    run(["bash", str(REPO / "scripts" / "install-wheel.sh"), str(python), str(wheels[0])], cwd=work, env=env)
    return wheels[0], work / "venv" / "bin", env


@pytest.fixture(scope="module")
def installed(wheel_and_env) -> tuple[Path, dict[str, str]]:
    _, bin_dir, env = wheel_and_env
    return bin_dir, env


def test_the_wheel_holds_every_module_of_the_source_tree(wheel_and_env):
    wheel = wheel_and_env[0]
    with zipfile.ZipFile(wheel) as archive:
        shipped = {name for name in archive.namelist() if name.endswith(".py")}
    expected = {in_wheel(module) for part in PARTS for module in (REPO / part).rglob("*.py")}
    assert expected <= shipped, sorted(expected - shipped)


def test_the_wheel_runs_outside_the_source_tree(installed):
    bin_dir, env = installed
    probe = "import pinrec.cli; print(pinrec.cli.__file__)"
    where = run([str(bin_dir / "python"), "-c", probe], bin_dir, env)
    assert "site-packages" in where and str(REPO) not in where
    assert "usage: pinrec" in run([str(bin_dir / "pinrec"), "--help"], bin_dir, env)


def test_every_subcommand_of_the_wheel_has_help(installed):
    bin_dir, env = installed
    commands = json.loads(run([str(bin_dir / "python"), "-c", LIST_COMMANDS], bin_dir, env))
    assert ["serve"] in commands and ["consume"] in commands and ["bench", "serve"] in commands
    for command in commands:
        text = run([str(bin_dir / "pinrec"), *command, "--help"], bin_dir, env, timeout_s=120)
        assert text.startswith(f"usage: pinrec {' '.join(command)}"), command


def test_the_wheel_serves_an_artifact(installed, tmp_path):
    bin_dir, env = installed
    artifact = train_artifacts(small_world(), tmp_path / "artifacts", versions=1)[0]
    http_port = pick_port(0)
    grpc_port = pick_port(0, taken=[http_port])
    command = [str(bin_dir / "pinrec"), "serve", "--artifacts", str(artifact), "--no-feature-store"]
    command += ["--http-port", str(http_port), "--grpc-port", str(grpc_port)]
    log_path = tmp_path / "serve.log"
    server = spawn(command, log_path, bound_to_parent=True, cwd=tmp_path, env=env)
    try:
        ready = f"http://127.0.0.1:{http_port}/v2/health/ready"
        wait_for_http(ready, server, what="the wheel's pinrec serve", timeout_s=180, log_path=log_path)
    finally:
        server.terminate()
        server.wait(30)

"""What the image runs (`pinrec serve`, `pinrec consume`) never loads development tooling: the local-stack
provisioning, the demo or the benchmarks."""

from __future__ import annotations

import argparse
import inspect
import json
import subprocess
import sys

import pytest

from .helpers import REPO

DEV_TOOLING = ("pinrec.localstack", "pinrec.demo", "pinrec.bench")

# Build the parser, then import what each runtime command's handler imports, and list pinrec's modules.
PROBE = """
import json, sys
from pinrec.cli import build_parser
build_parser().parse_args({argv})
{imports}
print(json.dumps(sorted(name for name in sys.modules if name.startswith("pinrec"))))
"""

RUNTIME = {
    "serve": "import pinrec.serving.server, pinrec.featurestore.store",
    "consume": "import pinrec.stream.consumer, pinrec.stream.topics, pinrec.stream.metrics, "
    "pinrec.featurestore.store",
}


@pytest.mark.parametrize("command", sorted(RUNTIME))
def test_runtime_commands_do_not_import_development_tooling(command):
    argv = ["serve", "--artifacts", "a"] if command == "serve" else ["consume", "--topic", "t"]
    code = PROBE.format(argv=argv, imports=RUNTIME[command])
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout.splitlines()[-1])
    assert not [name for name in loaded if name.startswith(DEV_TOOLING)], loaded


def leaf_parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
        return
    for name, sub in subs[0].choices.items():
        yield from leaf_parsers(sub, (*path, name))


def test_every_command_has_a_registered_handler_with_one_signature():
    from pinrec.cli import build_parser

    leaves = dict(leaf_parsers(build_parser()))
    assert len(leaves) >= 15, sorted(leaves)
    for path, parser in leaves.items():
        handler = parser.get_default("handler")
        assert handler is not None, f"pinrec {' '.join(path)} has no handler"
        assert list(inspect.signature(handler).parameters) == ["args", "settings"], path


def test_shared_flags_override_the_environment():
    from pinrec.cli import build_parser
    from pinrec.options import flag_overrides
    from pinrec.settings import Settings

    args = build_parser().parse_args(["consume", "--topic", "t", "--bootstrap", "b:9092", "--repo", "r"])
    environ = {"PINREC_KAFKA_BOOTSTRAP": "env:9092", "PINREC_ONLINE_STORE": "redis"}
    settings = Settings.from_env(environ, overrides=flag_overrides(args))
    assert (settings.kafka_bootstrap, str(settings.feature_repo)) == ("b:9092", "r")
    assert settings.online_store == "redis"

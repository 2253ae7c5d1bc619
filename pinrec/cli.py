"""The `pinrec` command line: one subcommand per job."""

from __future__ import annotations

import argparse
import logging
import sys
import warnings

from pinrec.commands import bench, events, gate, local, model, serve, stream
from pinrec.options import flag_overrides
from pinrec.settings import Settings

log = logging.getLogger("pinrec")

# The order of `pinrec --help`.
COMMAND_MODULES = (local, stream, events, model, gate, serve, bench)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pinrec", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module in COMMAND_MODULES:
        module.register(subparsers)
    return parser


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    # kafka-python logs routine coordinator moves and refused connections during start-up as warnings.
    logging.getLogger("kafka").setLevel(logging.ERROR)
    logging.getLogger("feast").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request otherwise


def main(argv: list[str] | None = None) -> int:
    # kafka-python 3.0 uses importlib APIs that Python 3.11 deprecates; the warnings say nothing to users.
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"kafka\..*|importlib\..*")
    args = build_parser().parse_args(argv)
    _configure_logging(args.verbose)
    try:
        settings = Settings.from_env(overrides=flag_overrides(args))
        return args.handler(args, settings)
    except (RuntimeError, ValueError, TimeoutError, FileNotFoundError, FileExistsError) as error:
        log.error("%s", error)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""Command-line options shared by several commands (Kafka, feature store), and what they resolve to.

Their `dest` names are fields of `pinrec.settings.Settings`: `pinrec.cli` lays the flags a user gave over
the environment when it builds the process's settings. The local stack is imported only when a command
needs a service the user did not name (so `pinrec serve` and `pinrec consume` never import it otherwise).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pinrec.settings import Settings

if TYPE_CHECKING:
    from pinrec.featurestore.store import FeatureStoreSettings

# Flags whose value overrides the settings field of the same name.
SETTINGS_FLAGS = ("kafka_bootstrap", "online_store", "redis_url", "feature_repo")


def add_kafka_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--bootstrap",
        dest="kafka_bootstrap",
        metavar="HOST:PORT[,HOST:PORT]",
        help="Kafka bootstrap servers (default: PINREC_KAFKA_BOOTSTRAP, else `pinrec local up`'s broker)",
    )


def add_store_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--online-store", choices=["sqlite", "redis"], help="default: PINREC_ONLINE_STORE or sqlite"
    )
    parser.add_argument(
        "--redis-url", help="redis://host:port/db (default: PINREC_REDIS_URL or the local stack's)"
    )
    parser.add_argument(
        "--repo",
        dest="feature_repo",
        metavar="DIR",
        type=Path,
        help="feature repository folder (default: PINREC_FEATURE_REPO or $PINREC_HOME/feature_repo)",
    )


def flag_overrides(args: argparse.Namespace) -> dict:
    """The shared flags the user gave, by settings field."""
    return {name: getattr(args, name) for name in SETTINGS_FLAGS if getattr(args, name, None) is not None}


def kafka_bootstrap(settings: Settings) -> str:
    """--bootstrap, else PINREC_KAFKA_BOOTSTRAP, else the broker of a running `pinrec local up`."""
    if settings.kafka_bootstrap:
        return settings.kafka_bootstrap
    from pinrec.localstack.stack import LocalStack

    kafka = LocalStack(settings.local_stack).status()["kafka"]
    if kafka["up"]:
        return kafka["bootstrap"]
    raise ValueError(
        "no Kafka broker: pass --bootstrap HOST:PORT, set PINREC_KAFKA_BOOTSTRAP or run `pinrec local up`"
    )


def feature_store(settings: Settings) -> FeatureStoreSettings:
    """The Feast repository and online store; Redis defaults to the local stack's when it runs."""
    from pinrec.featurestore.store import FeatureStoreSettings

    redis_url = settings.redis_url
    if settings.online_store == "redis" and not redis_url:
        from pinrec.localstack.stack import LocalStack

        redis = LocalStack(settings.local_stack).status()["redis"]
        redis_url = redis.get("url") if redis["up"] else None
    store = FeatureStoreSettings(
        repo_dir=settings.feature_repo or settings.home / "feature_repo",
        online_store=settings.online_store,
        redis_url=redis_url,
        project=settings.feast_project,
    )
    store.validate()
    return store


def config_from_args(config_class: type, args: argparse.Namespace) -> Any:
    """A dataclass of a job's settings from the flags named after its fields (the others keep defaults)."""
    names = [field.name for field in dataclasses.fields(config_class) if hasattr(args, field.name)]
    return config_class(**{name: getattr(args, name) for name in names})

"""The Feast objects of the project, declared in one place: the `user` entity, the push source that the
stream consumer writes through, and the `user_activity` feature view of recent activity sequences."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from feast import Entity, FeatureView, Field, FileSource, PushSource, ValueType
from feast.types import Array, Int64

USER_ACTIVITY_VIEW = "user_activity"
USER_ACTIVITY_PUSH = "user_activity_push"
SEQUENCE_FIELDS = ("item_ids", "actions", "surfaces", "event_times_ms", "event_keys")


def feature_definitions(offline_path: Path) -> list:
    """The objects `pinrec features apply` registers; offline_path is the Parquet offline source."""
    user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64, description="an end user")
    snapshots = FileSource(
        name="user_activity_snapshots",
        path=str(offline_path),
        timestamp_field="event_timestamp",
        description="user sequence snapshots; raw events live in the Parquet event log",
    )
    push = PushSource(name=USER_ACTIVITY_PUSH, batch_source=snapshots)
    activity = FeatureView(
        name=USER_ACTIVITY_VIEW,
        entities=[user],
        ttl=timedelta(days=365),
        schema=[
            *(Field(name=name, dtype=Array(Int64)) for name in SEQUENCE_FIELDS),
            Field(name="version_us", dtype=Int64),
        ],
        source=push,
        online=True,
        description="recent activity per user, oldest first, capped; written only by the stream consumer",
    )
    return [user, snapshots, push, activity]

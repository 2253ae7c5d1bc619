"""The layout of the Parquet event log that `pinrec sink` writes and training and `pinrec backfill` read.

    <log>/date=YYYY-MM-DD/part-p{partition:05d}-{first:020d}-{last:020d}.parquet

A hive-partitioned dataset of EVENT_LOG_SCHEMA rows, one folder per event date (UTC). A file holds the valid
events of Kafka offsets first..last (inclusive) of one topic partition that fall on its date; the events of
one flushed chunk that fall on several dates go to one file per date, all with the chunk's offsets in their
name and the chunk's dates in their footer (CHUNK_DATES_KEY), so a reader can tell a complete chunk from one
a crash cut short. Files are written under a hidden temporary name (a leading dot, which dataset readers
skip) and renamed. The log is any pyarrow filesystem: a local path, file://, s3://, gs://...
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from pinrec.featurestore.schema import EVENT_LOG_SCHEMA

DATE_PARTITION = "date"
DAY_MS = 86_400_000
CHUNK_DATES_KEY = b"pinrec.chunk_dates"  # footer metadata: the dates of every file of the file's chunk
TEMP_PREFIX = "."  # pyarrow's dataset discovery ignores names starting with "." or "_"
_FILE_NAME = re.compile(r"^part-p(\d+)-(\d{20})-(\d{20})\.parquet$")
_PARTITIONING = ds.partitioning(pa.schema([(DATE_PARTITION, pa.string())]), flavor="hive")


@dataclass(frozen=True)
class LogFile:
    """One data file of the log: which partition's offsets it holds, and for which event date."""

    path: str
    day: str  # YYYY-MM-DD
    partition: int
    first: int
    last: int


def open_log(uri: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem and base path of a log URI: a local path (relative ones are made absolute),
    file://, s3://, gs://, hdfs:// or anything else `pyarrow.fs.FileSystem.from_uri` knows."""
    if "://" not in uri:
        return pafs.LocalFileSystem(), str(Path(uri).expanduser().resolve())
    try:
        filesystem, path = pafs.FileSystem.from_uri(uri)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
        raise ValueError(f"event log URI {uri!r} names no filesystem pyarrow supports: {error}") from None
    return filesystem, path.rstrip("/")


def event_days(ts_ms: np.ndarray) -> np.ndarray:
    """(N,) day numbers since the epoch (UTC) of event times in ms."""
    return ts_ms // DAY_MS


def day_name(day_number: int) -> str:
    return date.fromordinal(date(1970, 1, 1).toordinal() + int(day_number)).isoformat()


def file_name(partition: int, first: int, last: int) -> str:
    return f"part-p{partition:05d}-{first:020d}-{last:020d}.parquet"


def file_path(base: str, day: str, partition: int, first: int, last: int) -> str:
    return f"{base}/{DATE_PARTITION}={day}/{file_name(partition, first, last)}"


def temp_path(final_path: str, token: str) -> str:
    folder, _, name = final_path.rpartition("/")
    return f"{folder}/{TEMP_PREFIX}{name}.{token}.tmp"


def list_days(filesystem: pafs.FileSystem, base: str) -> list[str]:
    """The dates that have a folder in the log, oldest first."""
    selector = pafs.FileSelector(base, allow_not_found=True)
    prefix = f"{DATE_PARTITION}="
    return sorted(
        info.base_name.removeprefix(prefix)
        for info in filesystem.get_file_info(selector)
        if info.type == pafs.FileType.Directory and info.base_name.startswith(prefix)
    )


def list_files(filesystem: pafs.FileSystem, base: str, days: list[str]) -> tuple[list[LogFile], list[str]]:
    """The data files and the leftover temporary files in these date folders."""
    files, temps = [], []
    for day in days:
        selector = pafs.FileSelector(f"{base}/{DATE_PARTITION}={day}", allow_not_found=True)
        for info in filesystem.get_file_info(selector):
            if info.type != pafs.FileType.File:
                continue
            if info.base_name.startswith(TEMP_PREFIX):
                temps.append(info.path)
            elif match := _FILE_NAME.match(info.base_name):
                partition, first, last = (int(group) for group in match.groups())
                files.append(LogFile(info.path, day, partition, first, last))
    return files, temps


def temp_partition(temp: str) -> int | None:
    """The partition a temporary file was being written for (None: not one of ours)."""
    name = temp.rpartition("/")[2].removeprefix(TEMP_PREFIX).split(".parquet.")[0] + ".parquet"
    match = _FILE_NAME.match(name)
    return int(match.group(1)) if match else None


def read_events(uri: str, since: date | None = None) -> pa.Table:
    """Every event of the log (on or after `since`), EVENT_LOG_SCHEMA columns, each event id once.

    Deduplicating by event id is a safety net: the sink writes each Kafka message once, but a producer that
    retried, or a sink that kept writing after losing its partitions, can still put an event in twice."""
    filesystem, base = open_log(uri)
    if not list_days(filesystem, base):
        raise FileNotFoundError(f"{uri} holds no {DATE_PARTITION}=YYYY-MM-DD folders of an event log")
    dataset = ds.dataset(base, filesystem=filesystem, format="parquet", partitioning=_PARTITIONING)
    where = ds.field(DATE_PARTITION) >= since.isoformat() if since else None
    table = dataset.to_table(columns=EVENT_LOG_SCHEMA.names, filter=where)
    return unique_events(table.cast(EVENT_LOG_SCHEMA))


def unique_events(table: pa.Table) -> pa.Table:
    """The first row of each event id, in the table's order."""
    rows = table.append_column("row", pa.array(np.arange(len(table), dtype=np.int64)))
    first = rows.group_by("event_id", use_threads=False).aggregate([("row", "min")])["row_min"]
    return table.take(np.sort(first.to_numpy()))


def is_event_log(filesystem: pafs.FileSystem, base: str) -> bool:
    return bool(list_days(filesystem, base))

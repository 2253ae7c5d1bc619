"""`pinrec local up | down | status`: run the services on 127.0.0.1, remember their PIDs in a state file,
and stop only what was started here. Services given from outside (PINREC_KAFKA_BOOTSTRAP, ...) are
reported, never started or stopped."""

from __future__ import annotations

import fcntl
import json
import logging
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pinrec.localstack import processes
from pinrec.localstack.services import SERVICES, PrometheusService, Service, ServiceRecord
from pinrec.settings import LocalStackSettings

log = logging.getLogger(__name__)

READY_TIMEOUT_S = {"kafka": 90.0, "redis": 15.0, "prometheus": 30.0}


class LocalStack:
    """The local services of one state directory."""

    def __init__(self, settings: LocalStackSettings, *, bound_to_parent: bool = False) -> None:
        # bound_to_parent: services die with this process (test sessions); otherwise they outlive it (CLI).
        self.settings = settings
        self.bound_to_parent = bound_to_parent
        self.services: dict[str, Service] = {cls.name: cls(settings) for cls in SERVICES}
        self.state_file = settings.state_dir / "state.json"

    def external(self, name: str) -> dict[str, str] | None:
        """The endpoint of a service the user runs elsewhere, from the settings."""
        endpoint = {
            "kafka": {"bootstrap": self.settings.kafka_bootstrap},
            "redis": {"url": self.settings.redis_url},
            "prometheus": {"url": self.settings.prometheus_url},
        }[name]
        return endpoint if all(endpoint.values()) else None

    # --- state file -------------------------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.settings.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.settings.state_dir / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _records(self) -> dict[str, ServiceRecord]:
        if not self.state_file.exists():
            return {}
        data = json.loads(self.state_file.read_text())
        return {name: ServiceRecord.from_json(record) for name, record in data.items()}

    def _save(self, records: dict[str, ServiceRecord]) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({name: r.to_json() for name, r in records.items()}, indent=2))
        tmp.replace(self.state_file)

    def _running(self, record: ServiceRecord) -> bool:
        return processes.process_matches(record.pid, record.markers, record.started)

    # --- commands ---------------------------------------------------------------------------------

    def up(self, wanted: dict[str, bool | None]) -> list[str]:
        """Start the wanted services that are not running yet, wait until each is ready, and return the
        names of those started by this call. When one fails, those started by this call are stopped.

        wanted maps a service name to True (must start), False (skip) or None (start when installed).
        Kafka is always wanted.
        """
        wanted = {**wanted, "kafka": True}
        started: list[str] = []
        with self._locked():
            records = {name: r for name, r in self._records().items() if self._running(r)}
            self._save(records)
            try:
                for name, service in self.services.items():
                    want = wanted.get(name)
                    if want is False or name in records or self.external(name):
                        continue
                    reason = service.missing()
                    if reason:
                        if want:
                            raise RuntimeError(f"cannot start {name}: {reason}")
                        log.info("skipping %s: %s", name, reason)
                        continue
                    records[name] = self._start(service, records)
                    started.append(name)
                    self._save(records)
            except BaseException:
                self._stop(records, started)
                raise
        return started

    def _start(
        self, service: Service, records: dict[str, ServiceRecord], ports: dict[str, int] | None = None
    ) -> ServiceRecord:
        taken = [port for record in records.values() for port in record.ports.values()]
        plan = service.plan(taken, ports)
        log_path = service.dir / f"{service.name}.log"
        started = time.monotonic()
        process = processes.spawn(
            plan.command, log_path, bound_to_parent=self.bound_to_parent, cwd=service.dir
        )
        pid = process.pid
        record = ServiceRecord(
            service.name,
            pid,
            plan.ports,
            plan.markers,
            str(log_path),
            plan.endpoint,
            started=processes.started_at(pid),
        )
        try:
            processes.wait_until(
                lambda: service.ready(plan.endpoint),
                what=service.name,
                timeout_s=READY_TIMEOUT_S[service.name],
                alive=lambda: process.poll() is None,
                log_path=log_path,
            )
        except BaseException:
            processes.stop(pid, plan.markers, timeout_s=5, started=record.started)
            raise
        log.info(
            "%s ready in %.1f s (pid %d, %s)", service.name, time.monotonic() - started, pid, plan.endpoint
        )
        return record

    def _stop(self, records: dict[str, ServiceRecord], names: list[str]) -> list[str]:
        """Stop the named services, newest first, dropping them from records and the state file."""
        stopped = []
        for name in reversed(names):
            record = records.pop(name)
            if processes.stop(record.pid, record.markers, started=record.started):
                stopped.append(name)
            self._save(records)
        return stopped

    def down(self, only: list[str] | None = None, *, purge: bool = False) -> list[str]:
        """Stop the services this state directory started (or only those named; newest first) and return
        the names stopped; purge also deletes their data and logs."""
        with self._locked():
            records = self._records()
            names = [name for name in records if only is None or name in only]
            stopped = self._stop(records, names)
            if purge:
                for name in names if only is not None else self.services:
                    shutil.rmtree(self.services[name].dir, ignore_errors=True)
        return stopped

    def restart(self, name: str, pause_s: float = 0.0) -> None:
        """Stop a running service, wait pause_s, and start it again on the same ports with its data."""
        with self._locked():
            records = self._records()
            record = records[name]
            self._stop(records, [name])
            time.sleep(pause_s)
            records[name] = self._start(self.services[name], records, record.ports)
            self._save(records)

    def status(self) -> dict[str, dict]:
        """Per service: up, its endpoint, and whether this stack manages it (pid, log) or it is external."""
        records = self._records()
        report: dict[str, dict] = {}
        for name, service in self.services.items():
            external = self.external(name)
            record = records.get(name)
            if external:
                report[name] = {"up": service.ready(external), "managed": False, **external}
            elif record and self._running(record):
                report[name] = {
                    "up": service.ready(record.endpoint),
                    "managed": True,
                    **record.endpoint,
                    "pid": record.pid,
                    "log": record.log,
                }
            else:
                report[name] = {
                    "up": False,
                    "managed": False,
                    "reason": service.missing() or "not started (pinrec local up)",
                }
        return report

    def register_scrape_target(self, job: str, address: str) -> Path | None:
        """Ask the local Prometheus to scrape address (host:port); None when it is not ours to configure."""
        record = self._records().get("prometheus")
        if record is None:
            return None
        service = self.services["prometheus"]
        assert isinstance(service, PrometheusService)
        path = service.targets_dir / f"{job}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps([{"targets": [address], "labels": {"pinrec_job": job}}]))
        tmp.replace(path)
        return path

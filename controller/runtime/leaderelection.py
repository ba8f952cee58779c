"""Leader election on a `coordination.k8s.io/v1` Lease.

Guarantees:
- At most one replica believes it leads at any moment, provided every replica's monotonic clock runs at about the
  same rate and `renew_deadline < lease_duration`:
  * a candidate takes the lease only when it is free (no holder, e.g. released) or when the record it last saw
    has not changed for the record's `leaseDurationSeconds`, timed on the candidate's own monotonic clock from
    the moment it saw that record change (never by comparing wall-clock times written by another process);
  * every write is a PUT guarded by the resourceVersion just read, so two candidates cannot both win;
  * the leader stamps its monotonic clock *before* sending a renewal and `is_leader()` turns False once
    `renew_deadline` has passed since the last successful renewal, even if the renewing thread is stuck. A
    replica whose `is_leader()` is False must not write (the manager closes the client's write gate).
- The leader renews every `retry_period`, retrying each renewal until `renew_deadline`; failing that it has lost
  the lease and `on_stopped_leading` runs. Candidates retry every `retry_period` stretched by random jitter.
- On graceful shutdown the leader releases the lease (empty holder, 1 s duration) so a standby takes over at its
  next retry instead of waiting out the lease.
- `acquireTime`/`renewTime` are written as RFC 3339 times with microseconds, for people and other tools; they are
  never read back for timing.
- Time comes from an injectable `Clock` and `sleep`, so tests drive every timing rule with a fake clock.
"""

from __future__ import annotations

import random
import socket
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Protocol

import structlog
import urllib3

from rayop.runtime.kube import JSON, ApiError, KubeClient, Resource
from rayop.runtime.workqueue import Clock, MonotonicClock

log = structlog.get_logger("rayop.leaderelection")

LEASES = Resource("coordination.k8s.io", "v1", "leases", "Lease")


def default_identity() -> str:
    return f"{socket.gethostname()}_{uuid.uuid4().hex[:12]}"


def micro_time(moment: datetime | None = None) -> str:
    moment = moment or datetime.now(timezone.utc)
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class LeaderElectionConfig:
    name: str = "rayop-leader"
    namespace: str = "default"
    identity: str = field(default_factory=default_identity)
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    jitter: float = 1.2
    release_on_cancel: bool = True

    def __post_init__(self) -> None:
        if not 0 < self.renew_deadline < self.lease_duration:
            raise ValueError("renew_deadline must be positive and shorter than lease_duration")
        if not 0 < self.retry_period < self.renew_deadline:
            raise ValueError("retry_period must be positive and shorter than renew_deadline")
        if not self.identity:
            raise ValueError("identity must not be empty")


class LeaseConflict(Exception):
    """The lease changed (or appeared) since it was read."""


class LeaseClient(Protocol):
    """The three Lease calls the elector makes. `get` returns (spec, resourceVersion) or None if absent."""

    def get(self) -> tuple[JSON, str] | None: ...

    def create(self, spec: JSON) -> str: ...

    def update(self, spec: JSON, resource_version: str) -> str: ...


class KubeLeaseClient:
    """`LeaseClient` on the API server."""

    def __init__(self, client: KubeClient, namespace: str, name: str, timeout: float = 10.0) -> None:
        self.client = client
        self.namespace = namespace
        self.name = name
        self.timeout = timeout

    def get(self) -> tuple[JSON, str] | None:
        try:
            lease = self.client.request("GET", LEASES.object(self.namespace, self.name), timeout=self.timeout)
        except ApiError as e:
            if e.not_found:
                return None
            raise
        return dict(lease.get("spec") or {}), str(lease["metadata"]["resourceVersion"])

    def create(self, spec: JSON) -> str:
        body = {
            "apiVersion": LEASES.api_version,
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": spec,
        }
        try:
            lease = self.client.request("POST", LEASES.collection(self.namespace), body=body, timeout=self.timeout)
        except ApiError as e:
            if e.conflict:
                raise LeaseConflict(str(e)) from e
            raise
        return str(lease["metadata"]["resourceVersion"])

    def update(self, spec: JSON, resource_version: str) -> str:
        body = {
            "apiVersion": LEASES.api_version,
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace, "resourceVersion": resource_version},
            "spec": spec,
        }
        try:
            lease = self.client.request(
                "PUT", LEASES.object(self.namespace, self.name), body=body, timeout=self.timeout
            )
        except ApiError as e:
            if e.conflict or e.not_found:
                raise LeaseConflict(str(e)) from e
            raise
        return str(lease["metadata"]["resourceVersion"])


def _record(spec: JSON) -> tuple[Any, ...]:
    """The parts of a lease spec whose change proves its holder is alive."""
    return (
        spec.get("holderIdentity") or "",
        spec.get("leaseDurationSeconds"),
        spec.get("acquireTime"),
        spec.get("renewTime"),
        spec.get("leaseTransitions"),
    )


class LeaderElector:
    """See the module docstring."""

    def __init__(
        self,
        config: LeaderElectionConfig,
        leases: LeaseClient,
        *,
        clock: Clock | None = None,
        sleep: Callable[[threading.Event, float], bool] | None = None,
        wall: Callable[[], datetime] | None = None,
        rand: Callable[[], float] = random.random,
        on_started_leading: Callable[[], None] | None = None,
        on_stopped_leading: Callable[[], None] | None = None,
        on_new_leader: Callable[[str], None] | None = None,
    ) -> None:
        self.config = config
        self.leases = leases
        self.clock = clock or MonotonicClock()
        self._sleep = sleep or (lambda stop, seconds: stop.wait(max(0.0, seconds)))
        self._wall = wall or (lambda: datetime.now(timezone.utc))
        self._rand = rand
        self.on_started_leading = on_started_leading
        self.on_stopped_leading = on_stopped_leading
        self.on_new_leader = on_new_leader
        self._lock = threading.Lock()
        self._observed: tuple[Any, ...] | None = None
        self._observed_spec: JSON = {}
        self._observed_at = 0.0
        self._renewed_at: float | None = None
        self.leader = ""  # the holder we last saw
        self.transitions_seen = 0

    # -- state --------------------------------------------------------------------------------------------------

    def is_leader(self) -> bool:
        with self._lock:
            renewed = self._renewed_at
        return renewed is not None and self.clock.now() < renewed + self.config.renew_deadline

    # -- one attempt --------------------------------------------------------------------------------------------

    def try_acquire_or_renew(self) -> bool:
        """Take or renew the lease once; True when we hold it afterwards."""
        cfg = self.config
        started = self.clock.now()
        try:
            current = self.leases.get()
            now_text = micro_time(self._wall())
            if current is None:
                spec: JSON = {
                    "holderIdentity": cfg.identity,
                    "leaseDurationSeconds": int(round(cfg.lease_duration)),
                    "acquireTime": now_text,
                    "renewTime": now_text,
                    "leaseTransitions": 0,
                }
                self.leases.create(spec)
                self._won(spec, started)
                return True
            spec, rv = current
            self._observe(spec)
            holder = spec.get("holderIdentity") or ""
            if holder and holder != cfg.identity:
                duration = float(spec.get("leaseDurationSeconds") or cfg.lease_duration)
                if self.clock.now() < self._observed_at + duration:
                    return False
            new = {
                "holderIdentity": cfg.identity,
                "leaseDurationSeconds": int(round(cfg.lease_duration)),
                "renewTime": now_text,
            }
            if holder == cfg.identity:
                new["acquireTime"] = spec.get("acquireTime") or now_text
                new["leaseTransitions"] = int(spec.get("leaseTransitions") or 0)
            else:
                new["acquireTime"] = now_text
                new["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
            self.leases.update(new, rv)
            self._won(new, started)
            return True
        except LeaseConflict:
            return False
        except (ApiError, urllib3.exceptions.HTTPError, OSError, ValueError, KeyError) as e:
            log.warning("lease request failed", lease=cfg.name, error=str(e))
            return False

    def _observe(self, spec: JSON) -> None:
        record = _record(spec)
        if record != self._observed:
            self._observed = record
            self._observed_spec = spec
            self._observed_at = self.clock.now()
            holder = spec.get("holderIdentity") or ""
            if holder != self.leader:
                self.leader = holder
                if holder and self.on_new_leader is not None:
                    self.on_new_leader(holder)

    def _won(self, spec: JSON, started: float) -> None:
        self._observe(spec)
        with self._lock:
            self._renewed_at = started

    # -- loops --------------------------------------------------------------------------------------------------

    def acquire(self, stop: threading.Event) -> bool:
        """Retry until we hold the lease (True) or `stop` is set (False)."""
        cfg = self.config
        while not stop.is_set():
            if self.try_acquire_or_renew():
                log.info("acquired lease", lease=f"{cfg.namespace}/{cfg.name}", identity=cfg.identity)
                return True
            if self._sleep(stop, cfg.retry_period * (1.0 + self._rand() * cfg.jitter)):
                return False
        return False

    def renew(self, stop: threading.Event) -> bool:
        """Keep renewing until `stop` (True) or until a renewal fails for `renew_deadline` (False: lost)."""
        cfg = self.config
        while True:
            if self._sleep(stop, cfg.retry_period):
                return True
            while True:
                if stop.is_set():
                    return True
                if self.try_acquire_or_renew():
                    break
                if not self.is_leader():
                    return False
                if self._sleep(stop, min(cfg.retry_period, self._time_left())):
                    return True
                if not self.is_leader():
                    return False

    def _time_left(self) -> float:
        with self._lock:
            renewed = self._renewed_at
        if renewed is None:
            return 0.0
        return max(0.0, renewed + self.config.renew_deadline - self.clock.now())

    def run(self, stop: threading.Event) -> bool:
        """Acquire, lead until stopped or lost, then release on a graceful stop. True if it ended gracefully."""
        if not self.acquire(stop):
            return True
        if self.on_started_leading is not None:
            self.on_started_leading()
        graceful = self.renew(stop)
        if not graceful:
            with self._lock:
                self._renewed_at = None
            log.error("lost lease", lease=f"{self.config.namespace}/{self.config.name}",
                      identity=self.config.identity)
        if self.on_stopped_leading is not None:
            self.on_stopped_leading()
        if graceful and self.config.release_on_cancel:
            self.release()
        return graceful

    def release(self) -> bool:
        """Give the lease up if we hold it: empty holder, 1 s duration. True when released."""
        if not self.is_leader():
            return False
        try:
            current = self.leases.get()
            if current is None:
                return False
            spec, rv = current
            if (spec.get("holderIdentity") or "") != self.config.identity:
                return False
            now_text = micro_time(self._wall())
            released = {
                "holderIdentity": "",
                "leaseDurationSeconds": 1,
                "acquireTime": now_text,
                "renewTime": now_text,
                "leaseTransitions": int(spec.get("leaseTransitions") or 0),
            }
            self.leases.update(released, rv)
        except (LeaseConflict, ApiError, urllib3.exceptions.HTTPError, OSError) as e:
            log.warning("could not release lease", lease=self.config.name, error=str(e))
            return False
        finally:
            with self._lock:
                self._renewed_at = None
        log.info("released lease", lease=f"{self.config.namespace}/{self.config.name}")
        return True

"""Kubernetes Events (core/v1) about the objects the operator manages.

Guarantees:
- Best effort: recording never raises; a failure is logged and dropped (an Event is not worth a retry storm).
- Repeats are aggregated: the same (object UID, type, reason, message) within the recorder's memory bumps
  `count` and `lastTimestamp` of the existing Event with one PATCH instead of creating a new object. The memory
  is bounded (least recently used entries are forgotten).
- Writes go through the manager's client, so a replica that is not the leader records nothing.
- Asynchronous: `record()` only queues the Event (taking what it needs of the object at once) and returns; one
  background thread sends them in order, so a reconcile never waits on an Event write. The queue is bounded: when
  it is full the Event is dropped and counted (`dropped`). `flush(timeout)` waits until everything queued was sent;
  the manager flushes before it gives up the lease. `asynchronous=False` sends inline (tests of the wire format).
"""

from __future__ import annotations

import queue
import socket
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import Any

import structlog

from rayop.runtime.kube import ApiError, KubeClient, WritesForbidden

log = structlog.get_logger("rayop.events")

NORMAL = "Normal"
WARNING = "Warning"


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class EventRecorder:
    def __init__(
        self,
        client: KubeClient,
        component: str = "rayop",
        *,
        instance: str | None = None,
        memory: int = 4096,
        now: Callable[[], str] = _now,
        asynchronous: bool = True,
        queue_size: int = 10000,
    ) -> None:
        self.client = client
        self.component = component
        self.instance = instance or socket.gethostname()
        self.memory = memory
        self._now = now
        self._seen: OrderedDict[tuple[str, str, str, str], tuple[str, str, int]] = OrderedDict()
        self._lock = threading.Lock()

        self.asynchronous = asynchronous
        self.dropped = 0
        self._queue: queue.Queue[tuple[dict[str, Any], str, str, str, str] | None] = queue.Queue(queue_size)
        self._sender: threading.Thread | None = None

    def record(self, obj: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        """Queue an Event about `obj` (or send it now when not asynchronous). Never raises."""
        meta = obj.get("metadata") or {}
        subject = {"apiVersion": obj.get("apiVersion", ""), "kind": obj.get("kind", ""),
                   "metadata": {k: meta.get(k) for k in ("namespace", "name", "uid", "resourceVersion")}}
        if not self.asynchronous:
            self._send(subject, type_, reason, message, self._now())
            return
        if self._sender is None:
            with self._lock:
                if self._sender is None:
                    self._sender = threading.Thread(target=self._drain, name="event-recorder", daemon=True)
                    self._sender.start()
        try:
            self._queue.put_nowait((subject, type_, reason, message, self._now()))
        except queue.Full:
            self.dropped += 1
            if self.dropped in (1, 10, 100) or self.dropped % 1000 == 0:
                log.warning("event queue full; events dropped", dropped=self.dropped)

    def _drain(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                self._send(*item)
            finally:
                self._queue.task_done()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued Event was sent (or `timeout` passed); True when the queue is empty."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True

    def _send(self, obj: Mapping[str, Any], type_: str, reason: str, message: str, now: str) -> None:
        meta = obj.get("metadata") or {}
        namespace = str(meta.get("namespace") or "default")
        uid = str(meta.get("uid") or "")
        message = message[:1024]
        cache_key = (uid, type_, reason, message)
        with self._lock:
            seen = self._seen.get(cache_key)
            if seen is not None:
                self._seen.move_to_end(cache_key)
        try:
            if seen is not None:
                name, ns, count = seen
                try:
                    self.client.patch(
                        f"/api/v1/namespaces/{ns}/events/{name}", {"count": count + 1, "lastTimestamp": now},
                        metadata_only=True,
                    )
                    self._remember(cache_key, (name, ns, count + 1))
                    return
                except ApiError as e:
                    if not e.not_found:
                        raise
            name = f"{meta.get('name', 'unknown')}.{uuid.uuid4().hex[:16]}"
            body = {
                "metadata": {"name": name, "namespace": namespace},
                "involvedObject": {
                    "apiVersion": obj.get("apiVersion", ""),
                    "kind": obj.get("kind", ""),
                    "namespace": namespace,
                    "name": meta.get("name", ""),
                    "uid": uid,
                    "resourceVersion": meta.get("resourceVersion", ""),
                },
                "type": type_,
                "reason": reason,
                "message": message,
                "source": {"component": self.component, "host": self.instance},
                "reportingComponent": self.component,
                "reportingInstance": self.instance,
                "firstTimestamp": now,
                "lastTimestamp": now,
                "count": 1,
            }
            self.client.create(f"/api/v1/namespaces/{namespace}/events", body, metadata_only=True)
            self._remember(cache_key, (name, namespace, 1))
        except WritesForbidden:
            pass
        except Exception as e:  # best effort by contract
            log.warning("could not record event", reason=reason, object=meta.get("name"), error=str(e))

    def _remember(self, key: tuple[str, str, str, str], value: tuple[str, str, int]) -> None:
        with self._lock:
            self._seen[key] = value
            self._seen.move_to_end(key)
            while len(self._seen) > self.memory:
                self._seen.popitem(last=False)

"""Kubernetes Events (core/v1) about the objects the operator manages.

Guarantees:
- Best effort: recording never raises; a failure is logged and dropped (an Event is not worth a retry storm).
- Repeats are aggregated: the same (object UID, type, reason, message) within the recorder's memory bumps
  `count` and `lastTimestamp` of the existing Event with one PATCH instead of creating a new object. The memory
  is bounded (least recently used entries are forgotten).
- Writes go through the manager's client, so a replica that is not the leader records nothing.
"""

from __future__ import annotations

import socket
import threading
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
    ) -> None:
        self.client = client
        self.component = component
        self.instance = instance or socket.gethostname()
        self.memory = memory
        self._now = now
        self._seen: OrderedDict[tuple[str, str, str, str], tuple[str, str, int]] = OrderedDict()
        self._lock = threading.Lock()

    def record(self, obj: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        meta = obj.get("metadata") or {}
        namespace = str(meta.get("namespace") or "default")
        uid = str(meta.get("uid") or "")
        message = message[:1024]
        cache_key = (uid, type_, reason, message)
        now = self._now()
        with self._lock:
            seen = self._seen.get(cache_key)
            if seen is not None:
                self._seen.move_to_end(cache_key)
        try:
            if seen is not None:
                name, ns, count = seen
                try:
                    self.client.patch(
                        f"/api/v1/namespaces/{ns}/events/{name}", {"count": count + 1, "lastTimestamp": now}
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
            self.client.create(f"/api/v1/namespaces/{namespace}/events", body)
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

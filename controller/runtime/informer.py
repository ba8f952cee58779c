"""The informer: reflector(s) + store + event handlers for one resource and one label/field selection.

Guarantees:
- One reflector per watched namespace (or one cluster-wide when all namespaces are watched) feeds one store; each
  reflector's relist replaces only its own namespace's content.
- Every object passes through the informer's transform (default: `store.trim_object`) before it is cached or
  handed to a handler, so handlers and readers see exactly what the store holds.
- Handlers receive `Event`s after the store has been updated, one at a time (dispatch is serialised), in the
  order the reflectors saw them. ADDED/MODIFIED are normalised against the cache: an update whose
  resourceVersion did not change is not dispatched, an ADDED for a cached object becomes MODIFIED. Deletions seen
  only through a relist are dispatched as DELETED with `final_state_unknown=True` and the last cached state.
- A handler added after start first receives every cached object as ADDED, so it never misses one.
- A handler that raises is logged and does not stop the informer.
- `has_synced()` is True once every reflector has completed its first list; until then a missing object must not
  be taken as deleted.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from rayop.runtime.kube import JSON, KubeClient, Resource
from rayop.runtime.projection import Projection
from rayop.runtime.reflector import Reflector, run_in_thread
from rayop.runtime.store import IndexFunc, ObjectKey, Store, resource_version, trim_object

log = structlog.get_logger("rayop.informer")

ADDED = "ADDED"
MODIFIED = "MODIFIED"
DELETED = "DELETED"


@dataclass(frozen=True, slots=True)
class Event:
    type: str
    obj: JSON
    old: JSON | None = None
    final_state_unknown: bool = False

    @property
    def key(self) -> ObjectKey:
        return ObjectKey.of(self.obj)


Handler = Callable[[Event], None]


class Informer:
    """See the module docstring."""

    def __init__(
        self,
        client: KubeClient,
        resource: Resource,
        *,
        namespaces: Sequence[str] | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        transform: Callable[[JSON], JSON] | None = trim_object,
        indexers: Mapping[str, IndexFunc] | None = None,
        min_watch_timeout: float = 300.0,
        page_size: int = 500,
        mutation_detector: bool | None = None,
        sleep: Callable[[threading.Event, float], bool] | None = None,
        projection: Projection | None = None,
    ) -> None:
        self.client = client
        self.resource = resource
        self.projection = projection
        self.label_selector = label_selector
        self.field_selector = field_selector
        self.transform = transform
        self.store = Store(indexers, mutation_detector=mutation_detector)
        self.events: Counter[str] = Counter()
        self._handlers: list[Handler] = []
        self._dispatch = threading.RLock()
        self._threads: list[threading.Thread] = []
        scopes: Sequence[str | None] = list(namespaces) if (namespaces and resource.namespaced) else [None]
        self.reflectors = [
            Reflector(
                client,
                resource.collection(scope),
                self,
                scope=scope,
                label_selector=label_selector,
                field_selector=field_selector,
                kind=resource.kind,
                api_version=resource.api_version,
                page_size=page_size,
                min_watch_timeout=min_watch_timeout,
                name=f"{resource}{'@' + scope if scope else ''}",
                sleep=sleep,
                projection=projection,
            )
            for scope in scopes
        ]

    @property
    def name(self) -> str:
        selector = f"[{self.label_selector}]" if self.label_selector else ""
        return f"{self.resource}{selector}"

    # -- lifecycle ----------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the reflectors; after `stop()` (and `join()`), start again resumes from the last resourceVersion."""
        if any(t.is_alive() for t in self._threads):
            return
        for reflector in self.reflectors:
            reflector.rearm()
        self._threads = [run_in_thread(r) for r in self.reflectors]

    def stop(self) -> None:
        for reflector in self.reflectors:
            reflector.stop()

    def join(self, timeout: float | None = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))

    def has_synced(self) -> bool:
        return all(r.synced.is_set() for r in self.reflectors)

    def wait_for_sync(self, timeout: float | None = None, stop: threading.Event | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.has_synced():
            if stop is not None and stop.is_set():
                return False
            if deadline is not None and time.monotonic() >= deadline:
                return False
            for r in self.reflectors:
                if not r.synced.is_set():
                    r.synced.wait(0.1)
                    break
        return True

    # -- handlers -----------------------------------------------------------------------------------------------

    def add_handler(self, handler: Handler) -> None:
        with self._dispatch:
            self._handlers.append(handler)
            for obj in self.store.list():
                self._call(handler, Event(ADDED, obj))

    def _call(self, handler: Handler, event: Event) -> None:
        try:
            handler(event)
        except Exception:
            log.exception("event handler failed", informer=self.name, key=str(event.key), type=event.type)

    def _emit(self, event: Event) -> None:
        self.events[event.type] += 1
        for handler in self._handlers:
            self._call(handler, event)

    # -- Sink (called by the reflectors) ------------------------------------------------------------------------

    def replace(self, items: list[JSON], resource_version: str, scope: str | None) -> None:
        transform = self.transform
        if transform is not None:
            items = [transform(obj) for obj in items]
        with self._dispatch:
            for change in self.store.replace(items, scope=scope):
                if change.new is None:
                    assert change.old is not None
                    self._emit(Event(DELETED, change.old, final_state_unknown=True))
                elif change.old is None:
                    self._emit(Event(ADDED, change.new))
                else:
                    self._emit(Event(MODIFIED, change.new, change.old))

    def apply(self, event_type: str, obj: JSON) -> None:
        if self.transform is not None:
            obj = self.transform(obj)
        with self._dispatch:
            if event_type == DELETED:
                self.store.delete(ObjectKey.of(obj))
                self._emit(Event(DELETED, obj))
                return
            old = self.store.upsert(obj)
            if old is None:
                self._emit(Event(ADDED, obj))
            elif resource_version(old) != resource_version(obj):
                self._emit(Event(MODIFIED, obj, old))

    # -- introspection ------------------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        total: Counter[str] = Counter()
        for r in self.reflectors:
            total.update(vars(r.stats))
        return dict(total)
